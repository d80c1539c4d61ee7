"""Loads the compiled extension lowrank_ops._C if it is there.

A missing or broken extension must not break `import lowrank_ops`: the ops then run their pure-torch
reference path, and one warning says so and how to build the extension."""

import warnings

import torch

try:
    from . import _C  # noqa: F401  (registers torch.ops.lowrank_ops.* on import)

    LOAD_ERROR = None
except ImportError as error:  # not built, or built against another torch
    LOAD_ERROR = error
    # A missing _C surfaces as Python's "cannot import name ... partially initialized module ... circular
    # import" (it is imported while the package initializes): say what it means instead.
    reason = "it was not built" if "partially initialized" in str(error) else str(error)
    warnings.warn(
        "lowrank_ops: the compiled extension lowrank_ops._C could not be loaded "
        f"({reason}); ops fall back to the pure-torch reference path (correct, slower). Build it with "
        "`pip install --no-build-isolation -e .` against the installed torch.",
        RuntimeWarning,
        stacklevel=3,
    )

LOADED = LOAD_ERROR is None

# The C++ kernels registered per device, read once at import: they cannot change afterwards, and a set
# lookup (unlike a dispatcher query) is traceable by torch.compile.
REGISTERED = {
    key: frozenset(name for name in torch._C._dispatch_get_registrations_for_dispatch_key(key)
                   if name.startswith("lowrank_ops::")) if LOADED else frozenset()
    for key in ("CPU", "CUDA")
}


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether torch.ops.lowrank_ops.<op> has a C++ kernel for `dispatch_key` ("CPU" or "CUDA")."""
    return f"lowrank_ops::{op}" in REGISTERED[dispatch_key]
