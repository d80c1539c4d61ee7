"""Reference of the sketch family, written straight from spec v1 (DESIGN.md §3).

P is an r x d matrix. Rademacher entry (i, j): bit (j % 32) of word (j % 128) // 32 of
philox((j // 128, i, 0, 0), seed), value (bit ? +1 : -1) / sqrt(d). Gaussian entry (i, j): the (j % 4)-th
of the Box-Muller pairs of philox((j // 4, i, 0, 0), seed), divided by sqrt(d); the Box-Muller arithmetic is
done in float32 exactly as the kernels do it. Projections materialize P and use a dense matmul."""

import math

import torch

from .philox import philox4x32

RADEMACHER_GROUP = 128
GAUSSIAN_GROUP = 4
UNIFORM_SCALE = 4.6566127342e-10  # 2^-31 as the kernels' float constant
TWO_PI = 6.283185307179586


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, bfloat16 and float16 accumulate in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sketch_words(rows: int, groups: int, seed: int, device=None) -> torch.Tensor:
    """int64 [rows, groups, 4]: philox((g, i, 0, 0), seed) for row i and column group g."""
    i = torch.arange(rows, dtype=torch.int64, device=device).view(rows, 1)
    g = torch.arange(groups, dtype=torch.int64, device=device).view(1, groups)
    zero = torch.zeros((), dtype=torch.int64, device=device)
    return torch.stack(philox4x32(g, i, zero, zero, seed), dim=-1)


def uniform_from_words(w: torch.Tensor) -> torch.Tensor:
    """Triton's uint_to_uniform_float: view as int32, ~x when negative, times 2^-31, in float32."""
    x = torch.where(w >= 2**31, w - 2**32, w)
    x = torch.where(x < 0, ~x, x)
    return x.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def gaussian_from_words(w: torch.Tensor) -> torch.Tensor:
    """[..., 4] words -> [..., 4] standard normals (z0, z1) from (w0, w1), (z2, z3) from (w2, w3)."""
    u = uniform_from_words(w)
    u1 = torch.clamp_min(u[..., 0::2], torch.tensor(1.0e-7, dtype=torch.float32))
    theta = torch.tensor(TWO_PI, dtype=torch.float32) * u[..., 1::2]
    rho = torch.sqrt(torch.tensor(-2.0, dtype=torch.float32) * torch.log(u1))
    z = torch.stack((rho * torch.cos(theta), rho * torch.sin(theta)), dim=-1)  # [..., pair, (cos, sin)]
    return z.flatten(-2)


def unscaled_sketch(rows: int, cols: int, seed: int, kind: str, device=None) -> torch.Tensor:
    """float32 [rows, cols]: +-1 (Rademacher) or N(0, 1) (Gaussian) entries of spec v1."""
    if kind == "rademacher":
        groups = -(-cols // RADEMACHER_GROUP)
        words = sketch_words(rows, groups, seed, device)  # [rows, groups, 4]
        bits = (words.unsqueeze(-1) >> torch.arange(32, device=device)) & 1  # [rows, groups, 4, 32]
        signs = bits.reshape(rows, groups * RADEMACHER_GROUP)[:, :cols].to(torch.float32) * 2 - 1
        return signs
    if kind == "gaussian":
        groups = -(-cols // GAUSSIAN_GROUP)
        z = gaussian_from_words(sketch_words(rows, groups, seed, device))
        return z.reshape(rows, groups * GAUSSIAN_GROUP)[:, :cols]
    raise ValueError(f"lowrank_ops.sketch: argument 'kind' must be \"rademacher\" or \"gaussian\", got {kind!r}")


def sketch(rows: int, cols: int, seed: int, kind: str = "rademacher", dtype=torch.float32, device=None):
    """P (rows x cols) of spec v1: entries computed in float32 (float64 for dtype float64), times the
    compute-precision rounding of 1 / sqrt(cols), then cast to `dtype`."""
    compute = compute_dtype(dtype)
    scale = torch.tensor(1.0 / math.sqrt(cols), dtype=compute)
    return (unscaled_sketch(rows, cols, seed, kind, device).to(compute) * scale).to(dtype)


def sketch_project(G, seed: int, rank: int, kind: str = "rademacher", side: str = "left", out_dtype=None):
    """P G (left, d = G.shape[0]) or G P^T (right, d = G.shape[1]), computed in compute_dtype(G.dtype)."""
    compute = compute_dtype(G.dtype)
    d = G.shape[0] if side == "left" else G.shape[1]
    P = sketch(rank, d, seed, kind, compute, G.device)
    R = P @ G.to(compute) if side == "left" else G.to(compute) @ P.T
    return R.to(out_dtype or G.dtype)


def sketch_unproject(R, seed: int, dim: int, kind: str = "rademacher", side: str = "left", out_dtype=None):
    """P^T R (left) or R P (right) for P of shape (rank, dim), rank read off R."""
    compute = compute_dtype(R.dtype)
    rank = R.shape[0] if side == "left" else R.shape[1]
    P = sketch(rank, dim, seed, kind, compute, R.device)
    Y = P.T @ R.to(compute) if side == "left" else R.to(compute) @ P
    return Y.to(out_dtype or R.dtype)
