"""Benchmarks of lowrank_ops.distributed on local gloo ranks (127.0.0.1; lowrank_ops.distributed.run_local).

    python -m bench.bench_distributed                    # all parts, written to bench/results/
    python -m bench.bench_distributed --part diloco      # one part: diloco | hook | table4
    python -m bench.bench_distributed --quick            # smaller models, fewer steps/seeds (a smoke run)

Parts (each row names the machine; benchmarks measure, never assert):
  diloco  DiLoCo on a stack of Linear layers (K workers, H inner steps per round), for each mode: plain
          DiLoCo (torch AdamW inner, full pseudo-gradients) and LowRankAdamW inner with "identical",
          "independent", "distributed" projections. Bytes per sync: what one worker hands to the
          all-reduce and the all-gather (`last_sync`), against a full-weight all-reduce of the same
          pseudo-gradients, plus ring-algorithm wire estimates (all-reduce of N bytes: each rank sends
          2 (K-1)/K N; all-gather of N bytes per rank: (K-1) N). Time per global step: H inner steps plus
          the sync (median over rounds), and the sync alone.
  hook    DDP comm hooks on a small MLP regression (2 ranks, Adam): plain all-reduce (torch's
          allreduce_hook), torch's powerSGD_hook and lowrank_allreduce_hook (warm-started and fresh
          per-step sketches) at several ranks. Bytes handed to all-reduces per step (counted by wrapping
          torch.distributed.all_reduce, the same way for every hook), time per step, held-out loss.
  table4  The duality paper's Table 4 ordering on a tiny model: K workers x rank r with K r constant
          ((2, 2r), (4, r), (8, r/2)), DiLoCo with identical / independent / distributed projections of
          the paper's kind "orthogonal" and of the seeded "sr_dct" (variants "<mode>+sr_dct": in
          distributed mode disjoint rows of one S C D, no QR), and the full-rank DiLoCo baseline;
          held-out loss of the global model after the last sync, mean and standard deviation over seeds.
          The paper finds distributed <= independent <= identical.
Times come from a shared CPU machine over loopback gloo: they show the cost structure, not a network.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make `bench` importable
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

import itertools

from bench import common
from lowrank_ops.distributed import MODES, run_local

MODE_NAMES = ("diloco_full",) + MODES  # "diloco_full": plain DiLoCo, torch AdamW inner


# ---------------------------------------------------------------------------------------------------
# Shared: a teacher-student regression with fresh data every step (no overfitting: loss = generalization)


def teacher_batch(step: int, worker: int, size: int, dim_in: int, dim_out: int, seed: int = 0):
    g = torch.Generator().manual_seed(1_000_003 * seed + 10_007 * worker + step)
    x = torch.randn(size, dim_in, generator=g)
    t = torch.Generator().manual_seed(77 + seed)
    W1 = torch.randn(2 * dim_in, dim_in, generator=t) / dim_in**0.5
    W2 = torch.randn(dim_out, 2 * dim_in, generator=t) / (2 * dim_in) ** 0.5
    return x, torch.tanh(x @ W1.T) @ W2.T


def mlp(dims, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in itertools.pairwise(dims):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def inner_factory(mode, rank, lr, projection="orthogonal"):
    from lowrank_ops.optim import LowRankAdamW

    if mode == "diloco_full":
        return lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=0.0)
    return lambda p: LowRankAdamW(p, lr=lr, weight_decay=0.0, rank=rank, projection=projection)


def held_out_loss(model, dims, seed):
    x, y = teacher_batch(10**6, 999, 2048, dims[0], dims[-1], seed)
    with torch.no_grad():
        return F.mse_loss(model(x), y).item()


# ---------------------------------------------------------------------------------------------------
# Part diloco: bytes and time per global step


def _diloco_rank(world_rank, world, mode, dims, r, H, rounds):
    from lowrank_ops.distributed import DiLoCo

    model = mlp(dims)
    diloco = DiLoCo(
        model,
        inner_factory(mode, r, 1e-3),
        sync_every=H,
        projection_init="identical" if mode == "diloco_full" else mode,
    )
    inner_t, sync_t = [], []
    for t in range(H * rounds):
        x, y = teacher_batch(t, world_rank, 32, dims[0], dims[-1])
        F.mse_loss(model(x), y).backward()
        t0 = time.perf_counter()
        diloco.step()
        (sync_t if (t + 1) % H == 0 else inner_t).append(time.perf_counter() - t0)
        diloco.zero_grad()
    inner = statistics.median(inner_t)
    return {
        "last_sync": diloco.last_sync,
        "inner_ms": inner * 1e3,
        "sync_ms": statistics.median([s - inner for s in sync_t]) * 1e3,
        "params": sum(p.numel() for p in model.parameters()),
    }


def part_diloco(res, args):
    dims = (64, 256, 256, 64) if args.quick else (256, 1024, 1024, 256)
    H, rounds = (5, 3) if args.quick else (10, 5)
    rows = []
    for K in (2, 4):
        r = dims[0] // (2 * K)  # K r = d / 2 of the smallest projected dimension
        for mode in MODE_NAMES:
            out = run_local(_diloco_rank, K, mode, dims, r, H, rounds, timeout=600, threads=1)
            o = out[0]
            s = o["last_sync"]
            ring = 2 * (K - 1) / K * s["allreduce_bytes"] + (K - 1) * s["allgather_bytes"]
            ring_dense = 2 * (K - 1) / K * s["dense_allreduce_bytes"]
            step_ms = H * o["inner_ms"] + o["sync_ms"]
            rows.append(
                res.add(
                    op="diloco_sync",
                    variant=mode,
                    shape=f"MLP{list(dims)}",
                    dtype="float32",
                    params={"workers": K, "rank": None if mode == "diloco_full" else r, "H": H},
                    time_ms=step_ms,
                    bytes=s["allreduce_bytes"] + s["allgather_bytes"],
                    allreduce_bytes=s["allreduce_bytes"],
                    allgather_bytes=s["allgather_bytes"],
                    dense_allreduce_bytes=s["dense_allreduce_bytes"],
                    payload_vs_dense=(s["allreduce_bytes"] + s["allgather_bytes"])
                    / s["dense_allreduce_bytes"],
                    ring_sent_bytes=ring,
                    ring_sent_dense_bytes=ring_dense,
                    inner_step_ms=o["inner_ms"],
                    sync_ms=o["sync_ms"],
                    workers=K,
                )
            )
    print(
        "\nDiLoCo: bytes one worker hands to the collectives per sync, and time per global step "
        f"(MLP{list(dims)}, {sum(a * b + b for a, b in itertools.pairwise(dims))} parameters, H = {H} inner "
        f"steps per round, median over {rounds} rounds)"
    )
    print(
        common.format_table(
            [
                "mode",
                "K",
                "r",
                "all-reduce B",
                "all-gather B",
                "full all-reduce B",
                "payload/full",
                "ring sent B",
                "ring full B",
                "inner ms",
                "sync ms",
                "global step ms",
            ],
            [
                [
                    r_["variant"],
                    r_["workers"],
                    r_["params"]["rank"],
                    r_["allreduce_bytes"],
                    r_["allgather_bytes"],
                    r_["dense_allreduce_bytes"],
                    common.fmt(r_["payload_vs_dense"]),
                    int(r_["ring_sent_bytes"]),
                    int(r_["ring_sent_dense_bytes"]),
                    common.fmt(r_["inner_step_ms"]),
                    common.fmt(r_["sync_ms"]),
                    common.fmt(r_["time_ms"]),
                ]
                for r_ in rows
            ],
        )
    )


# ---------------------------------------------------------------------------------------------------
# Part hook: DDP comm hooks


def _hook_rank(world_rank, world, hook, r, dims, steps):
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lowrank_ops.distributed import LowRankHookState, lowrank_allreduce_hook

    counted = [0]
    all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, *a, **k):
        counted[0] += tensor.numel() * tensor.element_size()
        return all_reduce(tensor, *a, **k)

    dist.all_reduce = counting_all_reduce  # every hook below calls torch.distributed.all_reduce
    model = DDP(mlp(dims, seed=3))
    if hook == "allreduce":
        model.register_comm_hook(None, default_hooks.allreduce_hook)
    elif hook == "powersgd":
        model.register_comm_hook(
            psgd.PowerSGDState(
                None, matrix_approximation_rank=r, start_powerSGD_iter=2, min_compression_rate=2
            ),
            psgd.powerSGD_hook,
        )
    else:
        model.register_comm_hook(
            LowRankHookState(rank=r, warm_start=hook == "lowrank_warm"), lowrank_allreduce_hook
        )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times, after_warmup = [], 0
    for t in range(steps):
        if t == 2:
            after_warmup = counted[0]
        x, y = teacher_batch(t, world_rank, 32, dims[0], dims[-1])
        t0 = time.perf_counter()
        F.mse_loss(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        opt.zero_grad()
    dist.all_reduce = all_reduce
    return {
        "loss": held_out_loss(model.module, dims, 0),
        "step_ms": statistics.median(times) * 1e3,
        "bytes_per_step": (counted[0] - after_warmup) / (steps - 2),
        "full_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
    }


def part_hook(res, args):
    dims = (32, 128, 128, 16) if args.quick else (64, 256, 256, 16)
    steps = 60 if args.quick else 300
    ranks = (4, 8) if args.quick else (2, 4, 8, 16)
    cases = [("allreduce", None)] + [
        (h, r) for r in ranks for h in ("powersgd", "lowrank_warm", "lowrank_fresh")
    ]
    rows = []
    for hook, r in cases:
        o = run_local(_hook_rank, 2, hook, r, dims, steps, timeout=600, threads=1)[0]
        rows.append(
            res.add(
                op="ddp_comm_hook",
                variant=hook,
                shape=f"MLP{list(dims)}",
                dtype="float32",
                params={"rank": r, "world_size": 2, "steps": steps, "optimizer": "Adam(lr=1e-3)"},
                time_ms=o["step_ms"],
                bytes=o["bytes_per_step"],
                full_bytes=o["full_bytes"],
                bytes_vs_full=o["bytes_per_step"] / o["full_bytes"],
                held_out_loss=o["loss"],
            )
        )
    base = rows[0]["held_out_loss"]
    for row in rows:
        row["loss_vs_allreduce"] = row["held_out_loss"] / base
    print(
        f"\nDDP comm hooks, 2 ranks, MLP{list(dims)}, {steps} Adam steps: bytes handed to all-reduces per "
        "step (after the 2 plain warm-up steps), held-out loss"
    )
    print(
        common.format_table(
            ["hook", "rank", "bytes/step", "x full", "held-out loss", "x all-reduce", "step ms"],
            [
                [
                    r_["variant"],
                    r_["params"]["rank"],
                    int(r_["bytes"]),
                    common.fmt(r_["bytes_vs_full"]),
                    common.fmt(r_["held_out_loss"], ".4g"),
                    common.fmt(r_["loss_vs_allreduce"], ".3f"),
                    common.fmt(r_["time_ms"]),
                ]
                for r_ in rows
            ],
        )
    )


# ---------------------------------------------------------------------------------------------------
# Part table4: the ordering of the projection initializations


# (variant name, DiLoCo mode, projection kind): the paper's "orthogonal" keeps the plain mode names
TABLE4_VARIANTS = (
    (("diloco_full", "diloco_full", None),)
    + tuple((mode, mode, "orthogonal") for mode in MODES)
    + tuple((f"{mode}+sr_dct", mode, "sr_dct") for mode in MODES)
)
TABLE4_KINDS = {"orthogonal": "", "sr_dct": "+sr_dct"}  # kind -> suffix of its variant names


def _table4_rank(world_rank, world, mode, dims, r, H, rounds, seed, projection):
    from lowrank_ops.distributed import DiLoCo

    model = mlp(dims, seed=seed)
    diloco = DiLoCo(
        model,
        inner_factory(mode, r, 3e-3, projection),
        sync_every=H,
        seed=seed,
        projection_init="identical" if mode == "diloco_full" else mode,
    )
    for t in range(H * rounds):
        x, y = teacher_batch(t, world_rank, 16, dims[0], dims[-1], seed)
        F.mse_loss(model(x), y).backward()
        diloco.step()
        diloco.zero_grad()
    return held_out_loss(model, dims, seed)


def part_table4(res, args):
    dims = (16, 64, 64, 16)  # the smallest projected dimension is 16: K r = 16 covers it in "distributed"
    H, rounds = (10, 10) if args.quick else (20, 30)
    seeds = (0, 1) if args.quick else (0, 1, 2, 3, 4)
    configs = ((2, 8), (4, 4)) if args.quick else ((2, 8), (4, 4), (8, 2))
    table = {}
    for K, r in configs:
        for variant, mode, projection in TABLE4_VARIANTS:
            losses = [
                run_local(_table4_rank, K, mode, dims, r, H, rounds, s, projection, timeout=600)[0] for s in seeds
            ]
            mean = statistics.mean(losses)
            std = statistics.stdev(losses) if len(losses) > 1 else 0.0
            table[(K, r, variant)] = (mean, std, losses)
            res.add(
                op="table4",
                variant=variant,
                shape=f"MLP{list(dims)}",
                dtype="float32",
                params={"workers": K, "rank": r, "H": H, "rounds": rounds, "seeds": list(seeds),
                        "projection": projection},
                held_out_loss=mean,
                held_out_loss_std=std,
                losses=losses,
            )
            print(f"  K={K} r={r} {variant:19s} loss {mean:.5f} +- {std:.5f}", flush=True)
    print(
        f"\nTable 4 ordering (held-out MSE of the global model after {rounds} rounds of H={H}; mean +- std over "
        f"{len(seeds)} seeds; paper: distributed <= independent <= identical)"
    )
    rows = []
    for K, r in configs:
        for projection, suffix in TABLE4_KINDS.items():
            dist, indep, ident = (table[(K, r, m + suffix)] for m in ("distributed", "independent", "identical"))
            cells = [f"{table[(K, r, 'diloco_full')][0]:.5f} +- {table[(K, r, 'diloco_full')][1]:.5f}"] + [
                f"{table[(K, r, m + suffix)][0]:.5f} +- {table[(K, r, m + suffix)][1]:.5f}" for m in MODES
            ]
            holds = dist[0] <= indep[0] <= ident[0]
            wins = [sum(a <= b for a, b in zip(dist[2], indep[2])), sum(a <= b for a, b in zip(indep[2], ident[2]))]
            rows.append(
                [f"({r}, {K})", projection]
                + cells
                + ["yes" if holds else "no", f"{wins[0]}/{len(seeds)}, {wins[1]}/{len(seeds)}"]
            )
            res.add(
                op="table4_ordering",
                variant=f"K={K},r={r}{suffix}",
                ordering_holds=holds,
                seeds_dist_le_indep=wins[0],
                seeds_indep_le_ident=wins[1],
                params={"workers": K, "rank": r, "projection": projection},
            )
    print(
        common.format_table(
            ["(rank, workers)", "projection"] + list(MODE_NAMES) + ["ordering (means)", "per seed: d<=ind, ind<=id"],
            rows,
        )
    )


PARTS = {"diloco": part_diloco, "hook": part_hook, "table4": part_table4}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=sorted(PARTS), action="append", help="run only these parts")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="results directory (default bench/results)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device("cpu")
    res = common.Results("distributed", device)
    res.meta.update(
        command=" ".join([sys.executable, "-m", "bench.bench_distributed"] + (argv or sys.argv[1:])),
        quick=args.quick,
        backend="gloo over 127.0.0.1, one torch thread per rank",
    )
    print(
        f"bench_distributed on {common.machine_label(res.info)}; torch {res.info['torch']}, commit "
        f"{res.info['commit']}, load average {res.info['load_average_1_5_15']}"
    )
    t0 = time.perf_counter()
    for name in args.part or list(PARTS):
        PARTS[name](res, args)
    res.meta["wall_s"] = time.perf_counter() - t0
    parts = "_".join(sorted(args.part)) if args.part else "all"
    common.write_run(res, args, f"distributed_cpu_{parts}{'_quick' if args.quick else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
