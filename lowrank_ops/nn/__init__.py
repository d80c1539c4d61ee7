"""The adapter view (duality paper, Cor. 3: GaLore is one-sided LoRA): LowRankLinear layers with a frozen,
optionally INT8/NF4-quantized base W0, a frozen projection P and a trainable A, and the model surgery around
them (convert, merge_and_reset, unconvert, reset_optimizer_state)."""

from .convert import (
    MOMENTS,
    convert,
    linear_targets,
    lowrank_modules,
    merge_and_reset,
    reset_optimizer_state,
    unconvert,
)
from .linear import BASE_FORMATS, LowRankLinear

__all__ = [
    "BASE_FORMATS",
    "MOMENTS",
    "LowRankLinear",
    "convert",
    "linear_targets",
    "lowrank_modules",
    "merge_and_reset",
    "reset_optimizer_state",
    "unconvert",
]
