"""Distributed training on torch.distributed (gloo on CPU, NCCL on GPU; launch with torchrun):

- DiLoCo: the outer loop of the duality paper's §4.2 with low-rank workers whose projections are
  "identical", "independent" or "distributed" (mutually orthogonal row blocks of one seeded basis);
  pseudo-gradients travel as r x n coefficients plus seeds (diloco.py).
- lowrank_allreduce_hook / LowRankHookState: a DDP comm hook that all-reduces seeded r x n sketches of the
  gradients with error feedback (comm_hook.py).
- FSDP2: importing this package registers LowRankAdamW's step of DTensor parameters (through
  lowrank_ops.optim.register_param_step): shard-local, or with one r x n all-reduce when the projected
  dimension is sharded; shard_placement_fn shards every weight so that its step is local (fsdp.py).
  Checkpoint with torch.distributed.checkpoint (get_state_dict / set_state_dict).
- run_local: run a function on K local gloo ranks with hard timeouts (tests, benchmarks, examples).
"""

from .comm_hook import LowRankHookState, lowrank_allreduce_hook
from .diloco import MODES, DiLoCo, worker_seed
from .fsdp import shard_placement_fn
from .local import run_local

__all__ = [
    "MODES",
    "DiLoCo",
    "LowRankHookState",
    "lowrank_allreduce_hook",
    "run_local",
    "shard_placement_fn",
    "worker_seed",
]
