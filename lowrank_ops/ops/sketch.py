"""The sketch family: seeded Gaussian/Rademacher projections that are regenerated, never stored.

P in R^{r x d} follows spec v1 (DESIGN.md §3; E[P P^T] = I_r as in the duality paper's Table 1):
  sketch(r, d, seed, kind)                     materializes P
  sketch_project(G, seed, r, kind, "left")     = P G      (d = G.shape[0])
  sketch_project(G, seed, r, kind, "right")    = G P^T    (d = G.shape[1])
  sketch_unproject(R, seed, d, kind, "left")   = P^T R
  sketch_unproject(R, seed, d, kind, "right")  = R P
Projections never materialize P: tiles of P are generated and consumed inside the kernels. Project and
unproject are linear maps and each is the other's adjoint, so each one's backward is the other.
"""

import torch

from . import _backend, _checks
from .. import _extension
from ..reference import sketch as reference

KINDS = ("rademacher", "gaussian")
SIDES = ("left", "right")


def _triton():
    from ..triton import sketch as triton_sketch  # imported on first use: triton is optional

    return triton_sketch


# Triton variants: their own ops, so torch.compile and autograd see them like the C++ ones.
@torch.library.custom_op("lowrank_ops::sketch_project_triton", mutates_args=())
def _sketch_project_triton(G: torch.Tensor, seed: int, rank: int, kind: str, side: str,
                           out_dtype: torch.dtype | None = None) -> torch.Tensor:
    return _triton().sketch_project(G, seed % 2**64, rank, kind, side, out_dtype)


@torch.library.custom_op("lowrank_ops::sketch_unproject_triton", mutates_args=())
def _sketch_unproject_triton(R: torch.Tensor, seed: int, dim: int, kind: str, side: str,
                             out_dtype: torch.dtype | None = None) -> torch.Tensor:
    return _triton().sketch_unproject(R, seed % 2**64, dim, kind, side, out_dtype)


@torch.library.custom_op("lowrank_ops::sketch_fill_triton_", mutates_args=("out",))
def _sketch_fill_triton_(out: torch.Tensor, seed: int, kind: str) -> None:
    _triton().sketch_fill(out, seed % 2**64, kind)


def _projected_shape(G, rank, side):
    return (rank, G.shape[1]) if side == "left" else (G.shape[0], rank)


def _unprojected_shape(R, dim, side):
    return (dim, R.shape[1]) if side == "left" else (R.shape[0], dim)


def _fake_project(G, seed, rank, kind, side, out_dtype=None):
    return G.new_empty(_projected_shape(G, rank, side), dtype=out_dtype or G.dtype)


def _fake_unproject(R, seed, dim, kind, side, out_dtype=None):
    return R.new_empty(_unprojected_shape(R, dim, side), dtype=out_dtype or R.dtype)


def _register_linear_pair(project, unproject):
    """Fake kernels and autograd for one (project, unproject) op pair of the same backend.

    d/dG <dY, P G> = P^T dY and d/dR <dY, P^T R> = P dY (left; right likewise), so the backward of
    each op is the other op of the same backend, applied to the incoming gradient."""
    torch.library.register_fake(project)(_fake_project)
    torch.library.register_fake(unproject)(_fake_unproject)

    def setup(ctx, inputs, output):
        # project: X = G, the size saved is G's projected dimension (unproject's dim); unproject: X = R,
        # the size saved is R's rank dimension (project's rank)
        X, seed, _, kind, side, _ = inputs
        ctx.args = (seed, X.shape[0] if side == "left" else X.shape[1], kind, side, X.dtype)

    def backward_project(ctx, grad):
        seed, dim, kind, side, dtype = ctx.args
        return unproject(grad, seed, dim, kind, side, dtype), None, None, None, None, None

    def backward_unproject(ctx, grad):
        seed, rank, kind, side, dtype = ctx.args
        return project(grad, seed, rank, kind, side, dtype), None, None, None, None, None

    torch.library.register_autograd(project, backward_project, setup_context=setup)
    torch.library.register_autograd(unproject, backward_unproject, setup_context=setup)


_register_linear_pair(_sketch_project_triton, _sketch_unproject_triton)
if _extension.LOADED:
    _register_linear_pair(torch.ops.lowrank_ops.sketch_project.default,
                          torch.ops.lowrank_ops.sketch_unproject.default)

    @torch.library.register_fake("lowrank_ops::philox4x32")
    def _fake_philox(counters, seed, rounds=10):
        return torch.empty_like(counters)

    @torch.library.register_fake("lowrank_ops::sketch_fill_")
    def _fake_fill(out, seed, kind):
        return None


def philox4x32(counters: torch.Tensor, seed: int, rounds: int = 10, *, backend=None) -> torch.Tensor:
    """Philox4x32-`rounds` (Random123): int64 counters [..., 4] holding uint32 values -> the four output
    words as int64 [..., 4], key = (seed & 0xffffffff, seed >> 32)."""
    op = "philox4x32"
    seed64 = _checks.seed_to_int64(op, seed)
    if not isinstance(counters, torch.Tensor) or counters.dtype != torch.int64:
        got = counters.dtype if isinstance(counters, torch.Tensor) else type(counters).__name__
        raise _checks.error(op, "counters", "an int64 tensor [..., 4]", got)
    if counters.dim() < 1 or counters.shape[-1] != 4:
        raise _checks.error(op, "counters", "of shape [..., 4]", list(counters.shape))
    if not 1 <= rounds <= 16:
        raise _checks.error(op, "rounds", "in [1, 16]", rounds)
    if counters.numel() and (counters.min() < 0 or counters.max() >= 2**32):
        raise _checks.error(op, "counters", "uint32 values in [0, 2^32)",
                            f"values in [{int(counters.min())}, {int(counters.max())}]")
    chosen = _backend.resolve(op, backend, counters.device)
    if chosen in ("cpu", "cuda"):
        return torch.ops.lowrank_ops.philox4x32(counters, seed64, rounds)
    if chosen == "triton":
        raise RuntimeError("lowrank_ops.philox4x32: no Triton variant; the Triton kernels use tl.randint4x")
    return torch.stack(reference.philox4x32(*counters.unbind(-1), seed, rounds), dim=-1)


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
    out = torch.empty(rows, cols, dtype=dtype, device=device)  # device None: torch's default device
    chosen = _backend.resolve("sketch_fill_", backend, out.device)
    if chosen == "reference":
        return reference.sketch(rows, cols, seed, kind, dtype, out.device)
    if chosen == "triton":
        torch.ops.lowrank_ops.sketch_fill_triton_(out, seed64, kind)
    else:
        torch.ops.lowrank_ops.sketch_fill_(out, seed64, kind)
    return out


def _sketch_product(op: str, arg: str, X: torch.Tensor, seed: int, size_arg: str, size: int, kind: str, side: str,
                    out_dtype, backend, nonempty: str) -> torch.Tensor:
    """The body of sketch_project and sketch_unproject (`op`): check the arguments (X is argument `arg`, size
    argument `size_arg`; `nonempty` says what X needs along the side's dimension), then run `op` on the
    chosen backend."""
    _checks.float_matrix(op, arg, X)
    seed64 = _checks.seed_to_int64(op, seed)
    size = _checks.positive_int(op, size_arg, size)
    _checks.choice(op, "kind", kind, KINDS)
    _checks.choice(op, "side", side, SIDES)
    _checks.float_dtype(op, "out_dtype", out_dtype)
    if X.shape[0 if side == "left" else 1] < 1:
        raise _checks.error(op, arg, f"{nonempty} (side {side!r})", list(X.shape))
    chosen = _backend.resolve(op, backend, X.device)
    if chosen == "reference":
        return getattr(reference, op)(X, seed, size, kind, side, out_dtype)
    if chosen == "triton":
        return getattr(torch.ops.lowrank_ops, op + "_triton")(X, seed64, size, kind, side, out_dtype)
    return getattr(torch.ops.lowrank_ops, op)(X, seed64, size, kind, side, out_dtype)


def sketch_project(G: torch.Tensor, seed: int, rank: int, kind: str = "rademacher", side: str = "left", *,
                   out_dtype: torch.dtype | None = None, backend=None) -> torch.Tensor:
    """P G (side "left", d = G.shape[0], result r x n) or G P^T (side "right", d = G.shape[1], result
    m x r) for the seeded sketch P (r x d), without materializing P. Accumulates in float32 (float64 for
    float64 G); the result has `out_dtype` (default G's dtype). Differentiable in G."""
    return _sketch_product("sketch_project", "G", G, seed, "rank", rank, kind, side, out_dtype, backend,
                           "non-empty along the projected dimension")


def sketch_unproject(R: torch.Tensor, seed: int, dim: int, kind: str = "rademacher", side: str = "left", *,
                     out_dtype: torch.dtype | None = None, backend=None) -> torch.Tensor:
    """P^T R (side "left", R r x n, result dim x n) or R P (side "right", R m x r, result m x dim) for the
    seeded sketch P (r x dim), without materializing P. Differentiable in R."""
    return _sketch_product("sketch_unproject", "R", R, seed, "dim", dim, kind, side, out_dtype, backend,
                           "at least one row of the rank dimension")
