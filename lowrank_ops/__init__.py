"""lowrank_ops: kernels for memory-efficient LLM training with low-rank gradient projections
(GaLore-style) and their dual, one-sided adapters.

Layers: compiled kernels (lowrank_ops._C: C++ CPU and CUDA; lowrank_ops.triton) and a pure-torch
implementation of every op (lowrank_ops.pure_torch), registered per dispatch key as the torch custom ops
torch.ops.lowrank_ops.* (lowrank_ops/_ops.py; which implementation runs: lowrank_ops.backends); public
wrappers in lowrank_ops.ops; a thin Python layer on top.
"""

from . import _extension  # noqa: F401  (loads the compiled kernels, or warns once)
from . import _ops  # noqa: F401  (defines torch.ops.lowrank_ops.*)
from . import backends, ops
from . import memory, optim, projections
from . import duality, nn
from ._build_info import build_info, version
from .backends import cuda_backend, get_cuda_backend, set_cuda_backend

__all__ = ["backends", "build_info", "cuda_backend", "duality", "get_cuda_backend", "memory", "nn", "ops", "optim",
           "projections", "set_cuda_backend"]
__version__ = version()
