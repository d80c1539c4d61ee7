"""Backend choice for the public ops.

Backends: "cpu" (C++ in lowrank_ops._C), "cuda" (CUDA in lowrank_ops._C), "triton" (lowrank_ops.triton;
CUDA tensors, or CPU tensors under TRITON_INTERPRET=1), "reference" (pure torch, always there).
`backend=None` takes the first available backend of DEFAULT_ORDER for the tensor's device. On CUDA
Triton comes first: its GEMM-shaped kernels use tensor cores where the hand-written CUDA tiles do not.
This order is a prediction until bench/ has GPU measurements (see README, "Benchmarks").
"""

import importlib.util
import os

import torch

from . import _checks
from .. import _extension

BACKENDS = ("cpu", "cuda", "triton", "reference")
DEFAULT_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("triton", "cuda", "reference")}

# Read once: TRITON_INTERPRET must be set before triton is imported, so it cannot change later anyway.
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(backend: str, op: str, device: torch.device):
    """None if `backend` can run `op` on `device`, else a sentence saying why not."""
    if backend == "reference":
        return None
    if backend in ("cpu", "cuda"):
        if backend != device.type:
            return f"backend '{backend}' runs on {backend} tensors, got a tensor on {device}"
        if not _extension.has_kernel(op, backend.upper()):
            if not _extension.LOADED:
                return f"the compiled extension is not loaded ({_extension.LOAD_ERROR})"
            return f"lowrank_ops._C was built without {backend.upper()} kernels (see lowrank_ops.build_info())"
        return None
    if backend == "triton":
        if not TRITON_INSTALLED:
            return "triton is not installed (pip install triton)"
        if device.type == "cuda" or (device.type == "cpu" and TRITON_INTERPRET):
            return None
        return f"triton runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got a tensor on {device}"
    return f"unknown backend; expected one of {BACKENDS}"


def resolve(op: str, backend, device: torch.device) -> str:
    """The backend that runs `op` on `device`: `backend` itself (checked), or the default for the device."""
    if backend is None:
        for candidate in DEFAULT_ORDER.get(device.type, ("reference",)):
            if unavailable_reason(candidate, op, device) is None:
                return candidate
        return "reference"
    if backend not in BACKENDS:
        raise _checks.error(op, "backend", f"one of {BACKENDS} or None", repr(backend))
    reason = unavailable_reason(backend, op, device)
    if reason is not None:
        raise RuntimeError(f"lowrank_ops.{op}: backend '{backend}' is not available: {reason}")
    return backend
