"""Oracle of the DCT family, from the definition of the orthonormal DCT-II (lowrank_ops/spec.py,
docs/DESIGN.md §3; scipy.fft.dct(norm="ortho") defines the same basis):

    D[k, t] = c_k cos(pi k (2t + 1) / (2N)),   c_0 = sqrt(1/N),  c_k = sqrt(2/N) (k >= 1),

evaluated in NumPy float64 with the integer k (2t + 1) reduced modulo 4N first (cosine has period 4N in it),
so every angle is within one rounding of exact. Scores are l1 / l2 norms of the rows of D G (side "left",
N = G.shape[0]) or of the columns of G D^T (side "right", N = G.shape[1]), returned in the op's score dtype;
top-k takes the `rank` largest scores, a NaN above every number and ties to the lower index, ascending int32.
Projections with P[i, t] = signs[t] D[indices[i], t] are einsums with the float64 P rounded once to the
op's compute precision (float32, float64 for float64 data)."""

import math

import numpy as np
import torch

from ..spec import compute_dtype


def score_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the scores of a G of `dtype`."""
    return compute_dtype(dtype)


def dct_basis(dim: int, indices=None, dtype=torch.float64, device=None) -> torch.Tensor:
    """Rows `indices` (default: all) of the dim x dim basis, in float64, then cast to `dtype`."""
    k = np.arange(dim) if indices is None else np.asarray(torch.as_tensor(indices).cpu(), dtype=np.int64)
    numerator = np.multiply.outer(k, 2 * np.arange(dim) + 1) % (4 * dim)
    norm = np.where(k == 0, math.sqrt(1.0 / dim), math.sqrt(2.0 / dim))
    rows = norm[:, None] * np.cos(math.pi * numerator / (2.0 * dim))
    return torch.from_numpy(rows).to(dtype=dtype, device=device)


def dct_scores(G: torch.Tensor, side: str, norm: str = "l1") -> torch.Tensor:
    """Norms of the rows of D G (left) or columns of G D^T (right), computed in float64."""
    A = G.detach().double().cpu().numpy()
    if side == "right":
        A = A.T  # the columns of G D^T are the rows of D G^T
    X = dct_basis(A.shape[0]).numpy() @ A
    s = np.abs(X).sum(axis=1) if norm == "l1" else np.sqrt((X * X).sum(axis=1))
    return torch.from_numpy(s).to(dtype=score_dtype(G.dtype), device=G.device)


def dct_topk(G: torch.Tensor, rank: int, side: str, norm: str = "l1") -> torch.Tensor:
    """The `rank` best-scoring rows of the scores as the op returns them (score dtype)."""
    scores = dct_scores(G, side, norm).tolist()

    def order(k):  # NaN first, then the larger score, then the lower index
        return (0, 0.0, k) if math.isnan(scores[k]) else (1, -scores[k], k)

    best = sorted(range(len(scores)), key=order)[:rank]
    return torch.tensor(sorted(best), dtype=torch.int32, device=G.device)


# einsum subscripts of (P, X): project left P X, right X P^T; unproject left P^T X, right X P
_SUBSCRIPTS = {("project", "left"): "rd,dn->rn", ("project", "right"): "rd,md->mr",
               ("unproject", "left"): "rd,rn->dn", ("unproject", "right"): "rd,mr->md"}


def _signed_product(which: str, X, indices, dim: int, side: str, signs, out_dtype):
    compute = compute_dtype(X.dtype)
    P = dct_basis(dim, indices)
    if signs is not None:
        P = P * signs.detach().cpu().double()[None, :]
    P = P.to(dtype=compute, device=X.device)
    return torch.einsum(_SUBSCRIPTS[which, side], P, X.to(compute)).to(out_dtype or X.dtype)


def dct_project(G, indices, side: str, signs=None, out_dtype=None):
    """P G (left, d = rows of G) or G P^T (right, d = columns of G)."""
    return _signed_product("project", G, indices, G.shape[0] if side == "left" else G.shape[1], side, signs,
                           out_dtype)


def dct_unproject(R, indices, dim: int, side: str, signs=None, out_dtype=None):
    """P^T R (left) or R P (right) for P (len(indices) x dim)."""
    return _signed_product("unproject", R, indices, dim, side, signs, out_dtype)
