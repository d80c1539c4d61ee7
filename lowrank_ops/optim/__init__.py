"""Optimizers with low-rank gradient projections: LowRankAdamW (the projection kinds of
lowrank_ops.projections), GaLoreAdamW (a galore-torch drop-in), and per-layer stepping in backward."""

from .galore import GaLoreAdamW
from .lowrank_adamw import LowRankAdamW
from .param_groups import param_groups
from .per_layer import BackwardStepper, step_in_backward

__all__ = ["BackwardStepper", "GaLoreAdamW", "LowRankAdamW", "param_groups", "step_in_backward"]
