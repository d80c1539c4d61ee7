"""Which implementation runs an op of torch.ops.lowrank_ops (docs/DESIGN.md §4).

Backends: "cpu" (C++ in lowrank_ops._C), "cuda" (CUDA in lowrank_ops._C), "triton" (lowrank_ops.triton;
CUDA tensors, or CPU tensors under TRITON_INTERPRET=1), "reference" (pure torch, always there). Every op
has one kernel per dispatch key (lowrank_ops/_ops.py), each choosing among these by the op's last schema
argument `backend` (the public functions' `backend=` keyword) or, when it is None, by its default:

  CPU tensors    "cpu" (the CPU kernel is registered only when the extension is built)
  CUDA tensors   the process-wide CUDA setting below, else the other CUDA implementation, else "reference"
  other devices  "reference" (the default kernel; also CPU tensors when the extension is not built)

The CUDA setting: set_cuda_backend("triton" | "cuda"), the context manager cuda_backend(...), or the
environment variable LOWRANK_OPS_CUDA_BACKEND read at import. Default "triton": its GEMM-shaped kernels
use tensor cores where the hand-written CUDA tiles do not. This is a prediction until bench/ has GPU
measurements. The setting is process-wide (not per thread) and is read when a kernel runs, so it also
applies to code compiled with torch.compile before it was changed.
"""

import contextlib
import importlib.util
import os

import torch

from . import _checks, _extension
from ._kernels import COMPOSITE, IMPLEMENTATIONS

BACKENDS = ("cpu", "cuda", "triton", "reference")
CUDA_BACKENDS = ("triton", "cuda")
CUDA_BACKEND_ENV = "LOWRANK_OPS_CUDA_BACKEND"
DEFAULT_CUDA_BACKEND = "triton"

# Read once: TRITON_INTERPRET must be set before triton is imported, so it cannot change later anyway.
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _checked_cuda_backend(name, where: str) -> str:
    if name not in CUDA_BACKENDS:
        raise ValueError(f"lowrank_ops: {where} must be one of {CUDA_BACKENDS}, got {name!r}")
    return name


_cuda_backend = _checked_cuda_backend(os.environ.get(CUDA_BACKEND_ENV, DEFAULT_CUDA_BACKEND),
                                      f"the environment variable {CUDA_BACKEND_ENV}")


def get_cuda_backend() -> str:
    """The implementation CUDA tensors run when no backend is named: "triton" or "cuda"."""
    return _cuda_backend


def set_cuda_backend(name: str) -> None:
    """Sets the implementation CUDA tensors run when no backend is named, for the whole process. An op
    without that implementation (or a build without it) runs the other one, else the pure-torch one."""
    global _cuda_backend
    _cuda_backend = _checked_cuda_backend(name, "the CUDA backend")


@contextlib.contextmanager
def cuda_backend(name: str):
    """`with lowrank_ops.cuda_backend("cuda"):` runs the block with that CUDA setting and restores the
    previous one after it (also when the block raises). Process-wide, like set_cuda_backend."""
    previous = get_cuda_backend()
    set_cuda_backend(name)
    try:
        yield
    finally:
        set_cuda_backend(previous)


# op -> the backends with an implementation of it in this installation (whatever the device); a composite
# op has its base op's. Read once (they cannot change), and a set lookup is traceable by torch.compile.
_IMPLEMENTED = {op: frozenset(table) for op, table in IMPLEMENTATIONS.items()}
_IMPLEMENTED.update({op: _IMPLEMENTED[base] for op, (_, base) in COMPOSITE.items()})


def implemented(op: str) -> frozenset:
    """The backends that have an implementation of `op` in this installation (whatever the device)."""
    return _IMPLEMENTED[op]


def unavailable_reason(backend: str, op: str, device: torch.device):
    """None if `backend` can run `op` on `device`, else a sentence saying why not."""
    if backend not in BACKENDS:
        return f"unknown backend; expected one of {BACKENDS}"
    if backend == "reference":
        return None
    if backend in ("cpu", "cuda"):
        if backend != device.type:
            return f"backend '{backend}' runs on {backend} tensors, got a tensor on {device}"
        if backend not in implemented(op):
            if not _extension.LOADED:
                return f"the compiled extension is not loaded ({_extension.LOAD_ERROR})"
            return f"lowrank_ops._C was built without {backend.upper()} kernels (see lowrank_ops.build_info())"
        return None
    if "triton" not in implemented(op):
        return f"{op} has no Triton kernel"
    if not TRITON_INSTALLED:
        return "triton is not installed (pip install triton)"
    if device.type == "cuda" or (device.type == "cpu" and TRITON_INTERPRET):
        return None
    return f"triton runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got a tensor on {device}"


def check(op: str, backend, device: torch.device, kernel: str | None = None):
    """`backend` itself when it can run the op `kernel` (default: `op`) on `device` (None stays None: the
    kernel's default); raises ValueError for an unknown name and RuntimeError for an unavailable backend,
    naming `op` (the function the caller called) and the reason."""
    if backend is None:
        return None
    if backend not in BACKENDS:
        raise _checks.error(op, "backend", f"one of {BACKENDS} or None", repr(backend))
    reason = unavailable_reason(backend, kernel or op, device)
    if reason is not None:
        raise RuntimeError(f"lowrank_ops.{op}: backend '{backend}' is not available: {reason}")
    return backend


def default_cuda(op: str) -> str:
    """What a CUDA tensor runs for `op` when no backend is named: the CUDA setting if `op` has it (for
    Triton: and triton is installed), else the other CUDA implementation, else "reference"."""
    available = implemented(op) - ({"triton"} if not TRITON_INSTALLED else set())
    for name in (_cuda_backend, *CUDA_BACKENDS):
        if name in available:
            return name
    return "reference"
