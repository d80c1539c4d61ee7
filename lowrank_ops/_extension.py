"""Loads the compiled extension lowrank_ops._C if it is there.

lowrank_ops._C holds the C++ kernels as plain functions, in the submodules `cpu` and (in a build with the
CUDA sources) `cuda`, one function per op with the op's schema arguments (csrc/lowrank_ops.h declares them);
lowrank_ops/_ops.py registers them as the ops' CPU and CUDA kernels. A missing or broken extension must not
break `import lowrank_ops`: every op then runs its pure-torch kernel, and one warning says so and how to
build the extension. LOWRANK_OPS_NO_EXT=1 (read at import) skips the extension, as a build without it."""

import os
import warnings

import torch  # noqa: F401  (loads libtorch and libc10, which _C links against, before _C is imported)

SKIP_ENV = "LOWRANK_OPS_NO_EXT"

if os.environ.get(SKIP_ENV, "0") == "1":
    _C = None
    LOAD_ERROR = ImportError(f"{SKIP_ENV}=1 is set")
    _reason = str(LOAD_ERROR)
else:
    try:
        from . import _C

        LOAD_ERROR = None
    except ImportError as error:  # not built, or built against another torch
        _C = None
        LOAD_ERROR = error
        # A missing _C surfaces as Python's "cannot import name ... partially initialized module ... circular
        # import" (it is imported while the package initializes): say what it means instead.
        _reason = "it was not built" if "partially initialized" in str(error) else str(error)

if LOAD_ERROR is not None:
    warnings.warn(
        "lowrank_ops: the compiled extension lowrank_ops._C could not be loaded "
        f"({_reason}); ops fall back to the pure-torch reference path (correct, slower). Build it with "
        "`pip install --no-build-isolation -e .` against the installed torch.",
        RuntimeWarning,
        stacklevel=3,
    )

LOADED = LOAD_ERROR is None


def compiled(device_type: str):
    """The module of C++ kernels for `device_type` ("cpu" or "cuda"), or None when this build has none."""
    return getattr(_C, device_type, None) if LOADED else None
