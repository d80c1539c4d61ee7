"""Run a function on K local processes joined in a gloo process group on 127.0.0.1: the harness of the
multi-process tests, the benchmarks and the examples (production runs use torchrun instead).

Bounded and self-terminating:
- the rendezvous is a TCPStore the parent opens on 127.0.0.1 with port 0 (the OS picks a free port, so
  concurrent runs never collide) and gloo is pinned to the loopback interface (GLOO_SOCKET_IFNAME=lo);
- every collective has the process-group timeout `pg_timeout` (a rank waiting on a dead peer raises);
- the parent waits at most `timeout` seconds in all; when a rank raises, the others are terminated and the
  rank's traceback is re-raised (torch.multiprocessing's ProcessContext.join); on the deadline every rank
  still alive is killed and TimeoutError names them.
Workers start from a forkserver that has imported torch and lowrank_ops once, so a run costs a fork per
rank, not an interpreter start; each worker runs torch with `threads` intra-op threads.
"""

import datetime
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# torch._dynamo: torch.optim imports it on the first optimizer construction (seconds)
PRELOAD = ["torch", "torch._dynamo", "torch.distributed.fsdp", "lowrank_ops.optim", "lowrank_ops.distributed"]


def _worker(rank, fn, world_size, port, pg_timeout, threads, result_dir, args):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    torch.set_num_threads(threads)
    timeout = datetime.timedelta(seconds=pg_timeout)
    store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(result_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_local(fn, world_size: int, *args, timeout: float = 120.0, pg_timeout: float = 60.0, threads: int = 1):
    """fn(rank, world_size, *args) on `world_size` local gloo ranks; returns the ranks' return values in
    rank order (anything torch.save can write). `fn` must be importable by name (a module-level function).
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(
            f"lowrank_ops.distributed.run_local: 'world_size' must be an int >= 1, got {world_size!r}"
        )
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    store = dist.TCPStore(
        "127.0.0.1",
        0,
        world_size,
        is_master=True,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=pg_timeout),
    )
    with tempfile.TemporaryDirectory(prefix="lowrank_ops_dist_") as result_dir:
        context = mp.start_processes(
            _worker,
            args=(fn, world_size, store.port, pg_timeout, threads, result_dir, args),
            nprocs=world_size,
            join=False,
            start_method="forkserver",
        )
        deadline = time.monotonic() + timeout
        while not context.join(timeout=max(0.05, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                alive = [rank for rank, p in enumerate(context.processes) if p.is_alive()]
                for rank in alive:
                    context.processes[rank].kill()
                for p in context.processes:
                    p.join(5)
                raise TimeoutError(
                    f"lowrank_ops.distributed.run_local: {fn.__name__} on {world_size} ranks did not finish "
                    f"within {timeout} s; killed ranks {alive}"
                )
        return [torch.load(Path(result_dir) / f"{rank}.pt", weights_only=False) for rank in range(world_size)]
