"""Oracle of the sketch family, entry by entry from spec v1 (lowrank_ops/spec.py, docs/DESIGN.md §3).

P is r x d. Entry (i, j) reads the Philox words of counter (g, i, 0, 0), g = j // group:
  Rademacher (group 128): word (j % 128) // 32, its bit j % 32; +1 if set, else -1.
  Gaussian (group 4): q = j % 4 picks the pair p = q // 2 of words (w_2p, w_2p+1) and the cosine (q even) or
    sine (q odd) branch of Box-Muller: z = sqrt(-2 ln u) cos|sin theta with u = max(U(w_2p), 1e-7) and
    theta = 2 pi U(w_2p+1), where U(w) = (w as int32, bitwise-inverted when negative) * 2^-31.
The spec rounds U, the clamp and theta to float32 (so does this oracle); the logarithm, square root and
cosine/sine are evaluated in float64 and z is rounded once to float32, the exact value every backend's
float32 libm approximates within a few ulp. P = z (or +-1) times 1/sqrt(d) rounded to the compute precision
(float32, or float64 for float64), then cast to the requested dtype. Products with P are float64 einsums
for float64 data, else in the op's compute precision."""

import math

import numpy as np
import torch

from ..spec import BOX_MULLER_MIN_U, GAUSSIAN_GROUP, RADEMACHER_GROUP, TWO_PI, UNIFORM_SCALE, compute_dtype
from .philox import philox4x32


def sketch_words(rows: int, groups: int, seed: int, device=None) -> torch.Tensor:
    """int64 [rows, groups, 4]: words of philox((g, i, 0, 0), seed) for row i and column group g."""
    g, i = np.meshgrid(np.arange(groups), np.arange(rows))  # [rows, groups] each
    zero = np.zeros_like(g)
    words = philox4x32(*(torch.from_numpy(a) for a in (g, i, zero, zero)), seed)
    return torch.stack(words, dim=-1).to(device)


def _uniform(words: np.ndarray) -> np.ndarray:
    """U(w) of the spec, a float32 array."""
    signed = words.astype(np.uint32).view(np.int32).astype(np.int64)
    magnitude = np.where(signed < 0, -signed - 1, signed)  # ~x = -x - 1
    return magnitude.astype(np.float32) * np.float32(UNIFORM_SCALE)


def _entries(rows: int, cols: int, seed: int, kind: str) -> np.ndarray:
    """float32 [rows, cols]: the +-1 or N(0, 1) entries of P before scaling."""
    j = np.arange(cols)
    group = RADEMACHER_GROUP if kind == "rademacher" else GAUSSIAN_GROUP
    words = sketch_words(rows, -(-cols // group), seed).numpy()  # [rows, groups, 4]
    if kind == "rademacher":
        word = words[:, j // RADEMACHER_GROUP, (j % RADEMACHER_GROUP) // 32]
        bit = (word >> (j % 32)) & 1
        return np.where(bit == 1, np.float32(1), np.float32(-1))
    q = j % GAUSSIAN_GROUP
    pair = words[:, j // GAUSSIAN_GROUP, :]  # [rows, cols, 4]
    first = np.take_along_axis(pair, (2 * (q // 2))[None, :, None], axis=2)[..., 0]
    second = np.take_along_axis(pair, (2 * (q // 2) + 1)[None, :, None], axis=2)[..., 0]
    u = np.maximum(_uniform(first), np.float32(BOX_MULLER_MIN_U)).astype(np.float64)
    theta = (np.float32(TWO_PI) * _uniform(second)).astype(np.float64)  # a float32 product, as the spec says
    radius = np.sqrt(-2.0 * np.log(u))
    return np.where(q % 2 == 0, radius * np.cos(theta), radius * np.sin(theta)).astype(np.float32)


def sketch(rows: int, cols: int, seed: int, kind: str = "rademacher", dtype=torch.float32, device=None):
    """P (rows x cols) of spec v1 in `dtype` (uint64 seed)."""
    if kind not in ("rademacher", "gaussian"):
        raise ValueError(f"unknown sketch kind {kind!r}")
    compute = compute_dtype(dtype)
    scale = torch.tensor(1.0 / math.sqrt(cols), dtype=compute)
    return (torch.from_numpy(_entries(rows, cols, seed, kind)).to(compute) * scale).to(dtype=dtype, device=device)


# einsum subscripts of (P, X) for each (product, side): project left P X, right X P^T; unproject left
# P^T X, right X P.
_SUBSCRIPTS = {("project", "left"): "rd,dn->rn", ("project", "right"): "rd,md->mr",
               ("unproject", "left"): "rd,rn->dn", ("unproject", "right"): "rd,mr->md"}


def _product(which: str, X, seed: int, rank: int, dim: int, kind: str, side: str, out_dtype):
    compute = compute_dtype(X.dtype)
    P = sketch(rank, dim, seed, kind, compute, X.device)
    return torch.einsum(_SUBSCRIPTS[which, side], P, X.to(compute)).to(out_dtype or X.dtype)


def sketch_project(G, seed: int, rank: int, kind: str = "rademacher", side: str = "left", out_dtype=None):
    """P G (left, d = rows of G) or G P^T (right, d = columns of G), in compute_dtype(G.dtype)."""
    return _product("project", G, seed, rank, G.shape[0] if side == "left" else G.shape[1], kind, side, out_dtype)


def sketch_unproject(R, seed: int, dim: int, kind: str = "rademacher", side: str = "left", out_dtype=None):
    """P^T R (left) or R P (right) for P (rank x dim), rank read off R."""
    return _product("unproject", R, seed, R.shape[0] if side == "left" else R.shape[1], dim, kind, side, out_dtype)
