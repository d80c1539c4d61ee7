"""Optimizers with low-rank gradient projections: LowRankAdamW (the projection kinds of
lowrank_ops.projections), GaLoreAdamW (a galore-torch drop-in), per-layer stepping in backward, and
LowRankAdamW's per-parameter stepping interface for tensor subclasses (register_param_step)."""

from .apollo import APOLLO
from .galore import GaLoreAdamW
from .lowrank_adamw import LowRankAdamW
from .param_groups import param_groups
from .param_step import LowRankParamStep, register_param_step
from .per_layer import BackwardStepper, step_in_backward

__all__ = [
    "APOLLO",
    "BackwardStepper",
    "GaLoreAdamW",
    "LowRankAdamW",
    "LowRankParamStep",
    "param_groups",
    "register_param_step",
    "step_in_backward",
]
