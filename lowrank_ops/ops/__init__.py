"""Public op functions. Each validates its arguments and calls torch.ops.lowrank_ops.* with its `backend`
(None: the kernel's default for the tensor's device; or "cpu", "cuda", "triton", "reference"; see
lowrank_ops.backends)."""

import inspect as _inspect

from .._dlpack import accept_dlpack as _accept_dlpack
from .apollo import lowrank_apollo_step_
from .apollo_multi import lowrank_apollo_multi_step_
from .dct import dct_basis, dct_project, dct_scores, dct_topk, dct_unproject
from .lowrank_adam import lowrank_adamw_step_
from .lowrank_adam_multi import lowrank_adamw_multi_step_
from .projection import Projection, SideOperator
from .quant import QuantizedWeight, dequant_matmul, dequantize, quantize
from .range_finder import adaptive_rank, range_finder
from .sketch import philox4x32, sketch, sketch_project, sketch_unproject

__all__ = [
    "Projection",
    "QuantizedWeight",
    "SideOperator",
    "adaptive_rank",
    "dct_basis",
    "dct_project",
    "dct_scores",
    "dct_topk",
    "dct_unproject",
    "dequant_matmul",
    "dequantize",
    "lowrank_adamw_multi_step_",
    "lowrank_adamw_step_",
    "lowrank_apollo_multi_step_",
    "lowrank_apollo_step_",
    "philox4x32",
    "quantize",
    "range_finder",
    "sketch",
    "sketch_project",
    "sketch_unproject",
]

# Every public function also takes DLPack arrays (NumPy; CuPy/JAX on CUDA) and returns the caller's array
# type, zero-copy where DLPack allows (lowrank_ops/_dlpack.py); with torch tensors the call is unchanged.
for _name in __all__:
    if _inspect.isfunction(globals()[_name]):
        globals()[_name] = _accept_dlpack(globals()[_name])
del _name
