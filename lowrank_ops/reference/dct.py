"""Reference of the DCT family, written straight from the definition (DESIGN.md §3) in float64 torch (no
scipy): the orthonormal DCT-II basis, as scipy.fft.dct(norm="ortho") defines it,

    D[k, t] = c_k cos(pi k (2t + 1) / (2N)),   c_0 = sqrt(1/N),  c_k = sqrt(2/N) (k >= 1),

scores = the l1 or l2 norms of the rows of D G (side "left", N = G.shape[0]) or of the columns of G D^T
(side "right", N = G.shape[1]) by a dense float64 matmul, and the top-k rule: the `rank` largest scores,
ties to the lower index, returned ascending as int32.

Scores are float64 internally and returned in the op's score dtype: float32, or float64 for float64 G.
dct_topk selects on those returned scores, so a backend whose float32 scores are correctly rounded picks
exactly the reference's indices."""

import math

import torch

SIDES = ("left", "right")
NORMS = ("l1", "l2")


def score_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 G gives float64 scores; every other float dtype gives float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dct_basis(dim: int, indices=None, dtype=torch.float64, device=None) -> torch.Tensor:
    """Rows `indices` (default: all) of the dim x dim basis, computed in float64 and cast to `dtype`. The
    integer k (2t + 1) is reduced modulo 4N (one period of the cosine) before it becomes a float64 angle,
    so the angle is within one rounding of exact for every N."""
    t = torch.arange(dim, dtype=torch.int64, device=device)
    k = t if indices is None else torch.as_tensor(indices, device=device).to(torch.int64)
    p = (k[:, None] * (2 * t[None, :] + 1)) % (4 * dim)
    D = torch.cos(p.to(torch.float64) * (math.pi / (2 * dim)))
    c = torch.full(k.shape, math.sqrt(2.0 / dim), dtype=torch.float64, device=device)
    c[k == 0] = math.sqrt(1.0 / dim)
    return (c[:, None] * D).to(dtype)


def dct_scores(G: torch.Tensor, side: str, norm: str = "l1") -> torch.Tensor:
    """Norms of the rows of D G (left) or columns of G D^T (right), computed in float64."""
    left = side == "left"
    G64 = G.to(torch.float64)
    d = G.shape[0] if left else G.shape[1]
    D = dct_basis(d, device=G.device)
    X = D @ G64 if left else G64 @ D.T
    dim = 1 if left else 0
    s = X.abs().sum(dim) if norm == "l1" else torch.linalg.vector_norm(X, 2, dim=dim)
    return s.to(score_dtype(G.dtype))


def select_top(scores: torch.Tensor, rank: int) -> torch.Tensor:
    """The `rank` indices of the largest scores, ascending, int32; equal scores go to the lower index (a
    stable descending sort keeps them in index order). NaN sorts above every number, as in torch.sort."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[:rank]).values.to(torch.int32)


def dct_topk(G: torch.Tensor, rank: int, side: str, norm: str = "l1") -> torch.Tensor:
    return select_top(dct_scores(G, side, norm), rank)
