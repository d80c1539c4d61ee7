"""Reference of the range_finder family: Halko, Martinsson & Tropp's randomized range finder with
subspace (power) iteration (SIAM Review 2011, Algorithm 4.4 on A^T, then the SVD of Algorithm 5.1), and
AdaRankGrad's rank choice (the smallest rank keeping a fraction `energy` of ||G||_F^2), written with
Householder QR, a materialized sketch and a full SVD of the small factor.

Notation. A is the matrix whose dominant column space is sought: A = G for side "left" (d = m) and
A = G^T for side "right" (d = n); `other` is A's other dimension. With l = sketch_size(rank, oversample,
m, n) and P the l x d Gaussian sketch of spec v1 (seed `seed`), Omega = P^T (d x l) and
    W = orth(A^T Omega),  then power_iters times:  W = orth(A^T orth(A W)),
    A W = U S V^T (thin SVD, d x l),  result U[:, :rank] and S[:rank].
Omega's scale (1/sqrt(d)) does not change any span. See lowrank_ops/ops/range_finder.py for why the sketch
starts on A's other side.
"""

import torch

from .sketch import compute_dtype, sketch


def sketch_size(rank: int, oversample: int, m: int, n: int) -> int:
    """l = rank + oversample, capped at min(m, n): A has rank <= min(m, n), and Q (d x l) and the power
    iteration's other-side basis (other x l) must both have orthonormal columns. rank <= min(m, n)."""
    return min(rank + oversample, m, n)


def fix_signs(U: torch.Tensor) -> torch.Tensor:
    """Singular vectors are defined up to sign: flip each column so that its entry of largest magnitude is
    positive (the first such entry on ties), which makes results comparable column by column."""
    idx = U.abs().argmax(dim=0, keepdim=True)
    signs = torch.where(U.gather(0, idx) < 0, -1.0, 1.0).to(U.dtype)
    return U * signs


def select_rank(S: torch.Tensor, sqnorm: torch.Tensor, energy: float, min_rank: int, max_rank: int):
    """The smallest r in [min_rank, max_rank] with t_r = ||G||_F^2 - sum_{i<=r} S_i^2 <= (1 - energy) ||G||_F^2
    (t_r bounds the residual of the rank-r basis from above, see ops.adaptive_rank), or max_rank when none
    qualifies. S: the max_rank estimated singular values, descending; sqnorm: ||G||_F^2. Computed in
    float64. Returns a 0-dim int64 tensor."""
    kept = torch.cumsum(S.to(torch.float64).square(), dim=0)  # kept[r - 1] = sum_{i<=r} S_i^2
    total = sqnorm.to(torch.float64)
    ok = total - kept <= (1.0 - energy) * total
    ok[: min_rank - 1] = False
    ok[max_rank - 1] = True
    return torch.argmax(ok.to(torch.int8)) + 1  # the first True


def range_finder(G: torch.Tensor, rank: int, oversample: int = 8, power_iters: int = 1, seed: int = 0,
                 side: str = "left"):
    """(Q, S): Q (d x rank) orthonormal, spanning the estimated dominant left (side "left") or right
    (side "right") singular subspace of G, and S (rank) the estimated singular values, descending.
    Computed in compute_dtype(G.dtype); Omega is materialized."""
    compute = compute_dtype(G.dtype)
    A = G.to(compute) if side == "left" else G.to(compute).mT
    d = A.shape[0]
    l = sketch_size(rank, oversample, *G.shape)
    Omega = sketch(l, d, seed, "gaussian", compute, G.device).mT
    W = torch.linalg.qr(A.mT @ Omega).Q
    for _ in range(power_iters):
        Z = torch.linalg.qr(A @ W).Q
        W = torch.linalg.qr(A.mT @ Z).Q
    U, S, _ = torch.linalg.svd(A @ W, full_matrices=False)
    return fix_signs(U[:, :rank]), S[:rank]


def adaptive_rank(G: torch.Tensor, energy: float, max_rank: int, min_rank: int = 1, oversample: int = 8,
                  power_iters: int = 1, seed: int = 0, side: str = "left"):
    """(r, Q_r, S_r): one range-finder pass at max_rank, then select_rank on its singular values with
    ||G||_F^2 computed from G in float64."""
    Q, S = range_finder(G, max_rank, oversample, power_iters, seed, side)
    sqnorm = G.to(torch.float64).square().sum()
    r = int(select_rank(S, sqnorm, energy, min_rank, max_rank))
    return r, Q[:, :r].contiguous(), S[:r].clone()
