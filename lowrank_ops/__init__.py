"""lowrank_ops: kernels for memory-efficient LLM training with low-rank gradient projections
(GaLore-style) and their dual, one-sided adapters.

Layers: compiled kernels (lowrank_ops._C: C++ CPU and CUDA; lowrank_ops.triton), torch custom ops
(torch.ops.lowrank_ops.*, public wrappers in lowrank_ops.ops) and a thin Python layer on top.
"""

from . import _extension  # noqa: F401  (loads the compiled ops, or warns once)
from . import ops
from . import memory, optim, projections
from . import duality, nn
from ._build_info import build_info, version

__all__ = ["build_info", "duality", "memory", "nn", "ops", "optim", "projections"]
__version__ = version()
