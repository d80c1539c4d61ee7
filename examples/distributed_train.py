"""Distributed training with lowrank_ops on torch.distributed, launched by torchrun (gloo on CPU, NCCL on GPU).

    torchrun --standalone --nproc-per-node 4 examples/distributed_train.py --mode diloco   # DiLoCo, distributed-orthogonal P
    torchrun --standalone --nproc-per-node 2 examples/distributed_train.py --mode ddp      # DDP + low-rank all-reduce hook
    torchrun --standalone --nproc-per-node 2 examples/distributed_train.py --mode fsdp     # FSDP2 + LowRankAdamW, DCP save

A toy regression stands in for your model and data; each rank draws its own batches.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lowrank_ops.optim import LowRankAdamW


def batch(step, rank, device):
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(32, 64, generator=g)
    return x.to(device), torch.tanh(x[:, :16] - x[:, 16:32]).to(device)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("diloco", "ddp", "fsdp"), default="diloco")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    device = (
        torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 16)).to(
        device
    )

    if args.mode == "diloco":
        from lowrank_ops.distributed import DiLoCo

        # the workers' projections are mutually orthogonal row blocks of one seeded sketch, so workers x rank
        # must not exceed a weight's projected dimension (16 for the [16, 256] layer)
        rank_r = 16 // dist.get_world_size()
        trainer = DiLoCo(
            model,
            lambda params: LowRankAdamW(params, lr=1e-3, rank=rank_r, projection="orthogonal"),
            sync_every=50,
            outer_lr=0.7,
            outer_momentum=0.9,
            projection_init="distributed",
        )
        optimizer = trainer  # .step() is an inner step; every sync_every steps, the outer step
    elif args.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        from lowrank_ops.distributed import LowRankHookState, lowrank_allreduce_hook

        model = DDP(model)
        model.register_comm_hook(LowRankHookState(rank=8), lowrank_allreduce_hook)
        optimizer = LowRankAdamW(model.parameters(), lr=1e-3, rank=8)
    else:
        from torch.distributed.fsdp import fully_shard

        from lowrank_ops.distributed import shard_placement_fn  # importing it registers the DTensor step

        fully_shard(
            model, shard_placement_fn=shard_placement_fn(dist.get_world_size())
        )  # local optimizer steps
        optimizer = LowRankAdamW(model.parameters(), lr=1e-3, rank=8, projection="orthogonal")

    for step in range(args.steps):
        x, y = batch(step, rank, device)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0 and rank == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)

    if args.mode == "fsdp":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(model, optimizer)  # sharded; reload on any number of ranks
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id="checkpoints/fsdp_lowrank")
    if args.mode == "diloco" and rank == 0:
        print(f"last sync: {trainer.last_sync}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
