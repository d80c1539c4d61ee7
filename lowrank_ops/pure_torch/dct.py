"""The DCT family in torch ops, from the definition (lowrank_ops/spec.py, docs/DESIGN.md §3): the
orthonormal DCT-II basis, as scipy.fft.dct(norm="ortho") defines it,

    D[k, t] = c_k cos(pi k (2t + 1) / (2N)),   c_0 = sqrt(1/N),  c_k = sqrt(2/N) (k >= 1),

scores = the l1 or l2 norms of the rows of D G (side "left", N = G.shape[0]) or of the columns of G D^T
(side "right", N = G.shape[1]) by a dense float64 matmul, and the top-k rule (select_top). Scores are
float64 internally and returned in the op's score dtype (float32, or float64 for float64 G); dct_topk
selects on those returned scores, as every backend does."""

import math

import torch

from .. import _checks
from ..spec import compute_dtype


def basis_rows(dim: int, indices: torch.Tensor | None, device=None) -> torch.Tensor:
    """float64 rows `indices` (default: all) of the dim x dim basis. The integer k (2t + 1) is reduced
    modulo 4N (one period of the cosine) before it becomes a float64 angle, so the angle is within one
    rounding of exact for every N."""
    t = torch.arange(dim, dtype=torch.int64, device=device)
    k = t if indices is None else indices.to(device=device, dtype=torch.int64)
    p = (k[:, None] * (2 * t[None, :] + 1)) % (4 * dim)
    D = torch.cos(p.to(torch.float64) * (math.pi / (2 * dim)))
    c = torch.full(k.shape, math.sqrt(2.0 / dim), dtype=torch.float64, device=device)
    c[k == 0] = math.sqrt(1.0 / dim)
    return c[:, None] * D


def select_top(scores: torch.Tensor, rank: int) -> torch.Tensor:
    """The `rank` indices of the largest scores, ascending, int32; equal scores go to the lower index (a
    stable descending sort keeps them in index order). NaN sorts above every number, as in torch.sort. The
    selection rule of every backend (the C++ kernels implement it in csrc/dct_impl.h)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[:rank]).values.to(torch.int32)


def dct_scores(G: torch.Tensor, side: str, norm: str = "l1", method: str = "auto") -> torch.Tensor:
    """The op lowrank_ops::dct_scores: norms of the rows of D G (left) or columns of G D^T (right),
    computed in float64. `method` picks the CPU kernel's algorithm; this implementation has one."""
    left = side == "left"
    D = basis_rows(G.shape[0] if left else G.shape[1], None, G.device)
    G64 = G.to(torch.float64)
    X = D @ G64 if left else G64 @ D.T
    dim = 1 if left else 0
    s = X.abs().sum(dim) if norm == "l1" else torch.linalg.vector_norm(X, 2, dim=dim)
    return s.to(compute_dtype(G.dtype))


def dct_topk(G: torch.Tensor, rank: int, side: str, norm: str = "l1", method: str = "auto") -> torch.Tensor:
    """The op lowrank_ops::dct_topk."""
    return select_top(dct_scores(G, side, norm, method), rank)


def dct_basis(indices: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """The op lowrank_ops::dct_basis: rows D[indices, :], computed in float64 and rounded once to `dtype`."""
    _checks.index_range("dct_basis", indices, dim)
    return basis_rows(dim, indices, indices.device).to(dtype)


def signed_rows(dim: int, indices: torch.Tensor, signs: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """P[i, t] = signs[t] D[indices[i], t] from the float64 basis rows, rounded once to `dtype`."""
    P = basis_rows(dim, indices, indices.device)
    return (P if signs is None else P * signs.to(torch.float64)).to(dtype)


def dct_project(G, indices, side, signs=None, out_dtype=None, method="auto") -> torch.Tensor:
    """The op lowrank_ops::dct_project: P G (left) or G P^T (right), P materialized (r x d) in the compute
    dtype. `method` picks the CPU kernel's algorithm; this implementation has one."""
    left = side == "left"
    dim = G.shape[0] if left else G.shape[1]
    _checks.index_range("dct_project", indices, dim)
    compute = compute_dtype(G.dtype)
    P = signed_rows(dim, indices, signs, compute)
    out = P @ G.to(compute) if left else G.to(compute) @ P.T
    return out.to(out_dtype or G.dtype)


def dct_unproject(R, indices, dim, side, signs=None, out_dtype=None, method="auto") -> torch.Tensor:
    """The op lowrank_ops::dct_unproject: P^T R (left) or R P (right)."""
    _checks.index_range("dct_unproject", indices, dim)
    compute = compute_dtype(R.dtype)
    P = signed_rows(dim, indices, signs, compute)
    out = P.T @ R.to(compute) if side == "left" else R.to(compute) @ P
    return out.to(out_dtype or R.dtype)
