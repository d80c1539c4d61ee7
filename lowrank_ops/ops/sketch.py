"""The sketch family: seeded Gaussian/Rademacher projections that are regenerated, never stored.

P in R^{r x d} follows spec v1 (docs/DESIGN.md §3; E[P P^T] = I_r as in the duality paper's Table 1):
  sketch(r, d, seed, kind)                     materializes P
  sketch_project(G, seed, r, kind, "left")     = P G      (d = G.shape[0])
  sketch_project(G, seed, r, kind, "right")    = G P^T    (d = G.shape[1])
  sketch_unproject(R, seed, d, kind, "left")   = P^T R
  sketch_unproject(R, seed, d, kind, "right")  = R P
Projections never materialize P: tiles of P are generated and consumed inside the kernels. Project and
unproject are linear maps and each is the other's adjoint, so each one's backward is the other.
"""

import torch

from .. import _checks, backends
from ..spec import PHILOX_MAX_ROUNDS, SIDES
from ..spec import SKETCH_KINDS as KINDS


def philox4x32(counters: torch.Tensor, seed: int, rounds: int = 10, *, backend=None) -> torch.Tensor:
    """Philox4x32-`rounds` (Random123): int64 counters [..., 4] holding uint32 values -> the four output
    words as int64 [..., 4], key = (seed & 0xffffffff, seed >> 32)."""
    op = "philox4x32"
    seed64 = _checks.seed_to_int64(op, seed)
    _checks.tensor(op, "counters", counters)
    if counters.dtype != torch.int64:
        raise _checks.error(op, "counters", "an int64 tensor [..., 4]", counters.dtype)
    if counters.dim() < 1 or counters.shape[-1] != 4:
        raise _checks.error(op, "counters", "of shape [..., 4]", list(counters.shape))
    rounds = _checks.int_in_range(op, "rounds", rounds, 1, PHILOX_MAX_ROUNDS)
    if _checks.has_values(counters) and counters.numel() and (counters.min() < 0 or counters.max() >= 2**32):
        raise _checks.error(op, "counters", "uint32 values in [0, 2^32)",
                            f"values in [{int(counters.min())}, {int(counters.max())}]")
    backend = backends.check(op, backend, counters.device)
    return torch.ops.lowrank_ops.philox4x32(counters, seed64, rounds, backend)


def sketch(rows: int, cols: int, seed: int, kind: str = "rademacher", dtype: torch.dtype = torch.float32,
           device=None, *, backend=None) -> torch.Tensor:
    """Materializes P (rows x cols) of spec v1: entries +-1/sqrt(cols) (Rademacher) or N(0, 1/cols)
    (Gaussian), computed in float32 (float64 for dtype float64) and cast to `dtype`."""
    op = "sketch"
    rows, cols = _checks.positive_int(op, "rows", rows), _checks.positive_int(op, "cols", cols)
    seed64 = _checks.seed_to_int64(op, seed)
    _checks.choice(op, "kind", kind, KINDS)
    if _checks.float_dtype(op, "dtype", dtype) is None:
        raise _checks.error(op, "dtype", "a floating dtype", None)
    device = _checks.device(op, "device", device)
    out = torch.empty(rows, cols, dtype=dtype, device=device)  # device None: torch's default device
    torch.ops.lowrank_ops.sketch_fill_(out, seed64, kind, backends.check(op, backend, out.device, "sketch_fill_"))
    return out


def _sketch_product(op: str, arg: str, X: torch.Tensor, seed: int, size_arg: str, size: int, kind: str, side: str,
                    out_dtype, backend, nonempty: str) -> torch.Tensor:
    """The body of sketch_project and sketch_unproject (`op`): check the arguments (X is argument `arg`, size
    argument `size_arg`; `nonempty` says what X needs along the side's dimension), then run the op on
    `backend` (None: the kernel's default)."""
    _checks.float_matrix(op, arg, X)
    seed64 = _checks.seed_to_int64(op, seed)
    size = _checks.positive_int(op, size_arg, size)
    _checks.choice(op, "kind", kind, KINDS)
    _checks.choice(op, "side", side, SIDES)
    _checks.float_dtype(op, "out_dtype", out_dtype)
    if X.shape[0 if side == "left" else 1] < 1:
        raise _checks.error(op, arg, f"{nonempty} (side {side!r})", list(X.shape))
    backend = backends.check(op, backend, X.device)
    return getattr(torch.ops.lowrank_ops, op)(X, seed64, size, kind, side, out_dtype, backend)


def sketch_project(G: torch.Tensor, seed: int, rank: int, kind: str = "rademacher", side: str = "left", *,
                   out_dtype: torch.dtype | None = None, backend=None) -> torch.Tensor:
    """P G (side "left", d = G.shape[0], result r x n) or G P^T (side "right", d = G.shape[1], result
    m x r) for the seeded sketch P (r x d), without materializing P. Accumulates in float32 (float64 for
    float64 G); the result has `out_dtype` (default G's dtype). Differentiable in G. NaN/Inf in G propagate to
    the result entries that sum over them (docs/DESIGN.md §4)."""
    return _sketch_product("sketch_project", "G", G, seed, "rank", rank, kind, side, out_dtype, backend,
                           "non-empty along the projected dimension")


def sketch_unproject(R: torch.Tensor, seed: int, dim: int, kind: str = "rademacher", side: str = "left", *,
                     out_dtype: torch.dtype | None = None, backend=None) -> torch.Tensor:
    """P^T R (side "left", R r x n, result dim x n) or R P (side "right", R m x r, result m x dim) for the
    seeded sketch P (r x dim), without materializing P. Differentiable in R. NaN/Inf in R propagate like
    sketch_project's."""
    return _sketch_product("sketch_unproject", "R", R, seed, "dim", dim, kind, side, out_dtype, backend,
                           "at least one row of the rank dimension")
