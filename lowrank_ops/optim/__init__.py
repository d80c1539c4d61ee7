"""Optimizers with low-rank gradient projections: LowRankAdamW (the projection kinds of
lowrank_ops.projections; float32 or blockwise 8-bit moments), GaLoreAdamW and GaLoreAdamW8bit (galore-torch
drop-ins), per-layer stepping in backward, and
LowRankAdamW's per-parameter stepping interface for tensor subclasses (register_param_step)."""

from .apollo import APOLLO
from .galore import GaLoreAdamW
from .galore8bit import GaLoreAdamW8bit
from .lowrank_adamw import LowRankAdamW
from .param_groups import param_groups
from .param_step import LowRankParamStep, register_param_step
from .per_layer import BackwardStepper, step_in_backward

__all__ = [
    "APOLLO",
    "BackwardStepper",
    "GaLoreAdamW",
    "GaLoreAdamW8bit",
    "LowRankAdamW",
    "LowRankParamStep",
    "param_groups",
    "register_param_step",
    "step_in_backward",
]
