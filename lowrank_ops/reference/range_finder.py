"""Oracle of the range_finder family: Halko, Martinsson & Tropp's randomized range finder with
subspace (power) iteration (SIAM Review 2011, Algorithm 4.4 on A^T, then the SVD of Algorithm 5.1), and
AdaRankGrad's rank choice (the smallest rank keeping a fraction `energy` of ||G||_F^2), written with
Householder QR, a materialized sketch and a full SVD of the small factor.

Notation. A is the matrix whose dominant column space is sought: A = G for side "left" (d = m) and
A = G^T for side "right" (d = n); `other` is A's other dimension. With l = min(rank + oversample, m, n)
and P the l x d Gaussian sketch of spec v1 (seed `seed`), Omega = P^T (d x l) and
    W = orth(A^T Omega),  then power_iters times:  W = orth(A^T orth(A W)),
    A W = U S V^T (thin SVD, d x l),  result U[:, :rank] and S[:rank].
Omega's scale (1/sqrt(d)) does not change any span; l is capped at min(m, n) because A has rank at most
that. Singular vectors are signed so that each column's entry of largest magnitude (the first on ties) is
positive. The production op (lowrank_ops/pure_torch/range_finder.py) reaches the same subspace with
CholeskyQR2 and the sketch generated inside a GEMM, and says why the sketch starts on A's other side.
"""

import torch

from ..spec import compute_dtype
from .sketch import sketch


def _signed(U: torch.Tensor) -> torch.Tensor:
    """Each column of U times the sign of its entry of largest magnitude (the first such entry on ties)."""
    columns = []
    for u in U.unbind(1):
        peak = max(range(u.shape[0]), key=lambda i: (abs(float(u[i])), -i))
        columns.append(-u if float(u[peak]) < 0 else u)
    return torch.stack(columns, dim=1) if columns else U


def select_rank(S: torch.Tensor, sqnorm: torch.Tensor, energy: float, min_rank: int, max_rank: int) -> int:
    """AdaRankGrad's rule, scanned: the first r in [min_rank, max_rank) whose bound on the residual,
    ||G||_F^2 - sum_{i<=r} S_i^2, is at most (1 - energy) ||G||_F^2 (Python floats, i.e. float64), else
    max_rank."""
    total = float(sqnorm)
    values = [float(s) for s in S]
    for r in range(min_rank, max_rank):
        if total - sum(s * s for s in values[:r]) <= (1.0 - energy) * total:
            return r
    return max_rank


def range_finder(G: torch.Tensor, rank: int, oversample: int = 8, power_iters: int = 1, seed: int = 0,
                 side: str = "left"):
    """(Q, S): Q (d x rank) orthonormal, spanning the estimated dominant left (side "left") or right
    (side "right") singular subspace of G, and S (rank) the estimated singular values, descending.
    Computed in compute_dtype(G.dtype); Omega is materialized."""
    compute = compute_dtype(G.dtype)
    A = G.to(compute) if side == "left" else G.to(compute).mT
    d = A.shape[0]
    l = min(rank + oversample, *G.shape)
    Omega = sketch(l, d, seed, "gaussian", compute, G.device).mT
    W = torch.linalg.qr(A.mT @ Omega).Q
    for _ in range(power_iters):
        Z = torch.linalg.qr(A @ W).Q
        W = torch.linalg.qr(A.mT @ Z).Q
    U, S, _ = torch.linalg.svd(A @ W, full_matrices=False)
    return _signed(U[:, :rank]), S[:rank]


def adaptive_rank(G: torch.Tensor, energy: float, max_rank: int, min_rank: int = 1, oversample: int = 8,
                  power_iters: int = 1, seed: int = 0, side: str = "left"):
    """(r, Q_r, S_r): one range-finder pass at max_rank, then select_rank on its singular values with
    ||G||_F^2 computed from G in float64."""
    Q, S = range_finder(G, max_rank, oversample, power_iters, seed, side)
    sqnorm = G.to(torch.float64).square().sum()
    r = select_rank(S, sqnorm, energy, min_rank, max_rank)
    return r, Q[:, :r].contiguous(), S[:r].clone()
