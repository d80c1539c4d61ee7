"""The sketch family in torch ops, from spec v1 (lowrank_ops/spec.py, docs/DESIGN.md §3).

P is an r x d matrix. Rademacher entry (i, j): bit (j % 32) of word (j % 128) // 32 of
philox((j // 128, i, 0, 0), seed), value (bit ? +1 : -1) / sqrt(d). Gaussian entry (i, j): the (j % 4)-th
of the Box-Muller pairs of philox((j // 4, i, 0, 0), seed), divided by sqrt(d); the Box-Muller arithmetic is
done in float32 as the kernels do it. The projections materialize P and run one dense matmul: simple, and
fast enough for a fallback (the compiled and Triton kernels never materialize P)."""

import math

import torch

from ..spec import BOX_MULLER_MIN_U, GAUSSIAN_GROUP, RADEMACHER_GROUP, TWO_PI, UNIFORM_SCALE, compute_dtype
from .philox import philox_words


def sketch_words(rows: int, groups: int, seed: int, device=None) -> torch.Tensor:
    """int64 [rows, groups, 4]: philox((g, i, 0, 0), seed) for row i and column group g (seed uint64)."""
    i = torch.arange(rows, dtype=torch.int64, device=device).view(rows, 1)
    g = torch.arange(groups, dtype=torch.int64, device=device).view(1, groups)
    zero = torch.zeros((), dtype=torch.int64, device=device)
    return torch.stack(philox_words(g, i, zero, zero, seed), dim=-1)


def uniform_from_words(w: torch.Tensor) -> torch.Tensor:
    """Triton's uint_to_uniform_float: view as int32, ~x when negative, times 2^-31, in float32."""
    x = torch.where(w >= 2**31, w - 2**32, w)
    x = torch.where(x < 0, ~x, x)
    return x.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def gaussian_from_words(w: torch.Tensor) -> torch.Tensor:
    """[..., 4] words -> [..., 4] standard normals (z0, z1) from (w0, w1), (z2, z3) from (w2, w3)."""
    u = uniform_from_words(w)
    u1 = torch.clamp_min(u[..., 0::2], torch.tensor(BOX_MULLER_MIN_U, dtype=torch.float32))
    theta = torch.tensor(TWO_PI, dtype=torch.float32) * u[..., 1::2]
    rho = torch.sqrt(torch.tensor(-2.0, dtype=torch.float32) * torch.log(u1))
    z = torch.stack((rho * torch.cos(theta), rho * torch.sin(theta)), dim=-1)  # [..., pair, (cos, sin)]
    return z.flatten(-2)


def unscaled_sketch(rows: int, cols: int, seed: int, kind: str, device=None) -> torch.Tensor:
    """float32 [rows, cols]: +-1 (Rademacher) or N(0, 1) (Gaussian) entries of spec v1 (seed uint64)."""
    if kind == "rademacher":
        groups = -(-cols // RADEMACHER_GROUP)
        words = sketch_words(rows, groups, seed, device)  # [rows, groups, 4]
        bits = (words.unsqueeze(-1) >> torch.arange(32, device=device)) & 1  # [rows, groups, 4, 32]
        return bits.reshape(rows, groups * RADEMACHER_GROUP)[:, :cols].to(torch.float32) * 2 - 1
    groups = -(-cols // GAUSSIAN_GROUP)
    z = gaussian_from_words(sketch_words(rows, groups, seed, device))
    return z.reshape(rows, groups * GAUSSIAN_GROUP)[:, :cols]


def sketch(rows: int, cols: int, seed: int, kind: str, dtype: torch.dtype, device=None) -> torch.Tensor:
    """P (rows x cols): entries computed in float32 (float64 for dtype float64), times the compute-precision
    rounding of 1 / sqrt(cols), then cast to `dtype`. `seed`: uint64, or the schema's int64."""
    compute = compute_dtype(dtype)
    scale = torch.tensor(1.0 / math.sqrt(cols), dtype=compute)
    return (unscaled_sketch(rows, cols, seed % 2**64, kind, device).to(compute) * scale).to(dtype)


def sketch_fill_(out: torch.Tensor, seed: int, kind: str) -> None:
    """The op lowrank_ops::sketch_fill_: writes P (out.shape) into `out`."""
    out.copy_(sketch(out.shape[0], out.shape[1], seed, kind, out.dtype, out.device))


def sketch_project(G: torch.Tensor, seed: int, rank: int, kind: str, side: str, out_dtype=None) -> torch.Tensor:
    """The op lowrank_ops::sketch_project: P G (left, d = G.shape[0]) or G P^T (right, d = G.shape[1]),
    computed in compute_dtype(G.dtype)."""
    compute = compute_dtype(G.dtype)
    d = G.shape[0] if side == "left" else G.shape[1]
    P = sketch(rank, d, seed, kind, compute, G.device)
    R = P @ G.to(compute) if side == "left" else G.to(compute) @ P.T
    return R.to(out_dtype or G.dtype)


def sketch_unproject(R: torch.Tensor, seed: int, dim: int, kind: str, side: str, out_dtype=None) -> torch.Tensor:
    """The op lowrank_ops::sketch_unproject: P^T R (left) or R P (right) for P of shape (rank, dim), rank
    read off R."""
    compute = compute_dtype(R.dtype)
    rank = R.shape[0] if side == "left" else R.shape[1]
    P = sketch(rank, dim, seed, kind, compute, R.device)
    Y = P.T @ R.to(compute) if side == "left" else R.to(compute) @ P
    return Y.to(out_dtype or R.dtype)
