"""The range_finder op in torch ops: Halko, Martinsson & Tropp's randomized range finder with subspace
(power) iteration (SIAM Review 2011, Algorithm 4.4 run on A^T followed by Algorithm 5.1) and the rank rule of
AdaRankGrad. It is one implementation for every device: its one large GEMM with the sketch runs through the
op lowrank_ops::sketch_project (the backend it is given picks that op's kernel), the rest are single
BLAS/cuBLAS/LAPACK calls through torch, each over O(d l) or O(d l^2) data (per call the Python overhead is
microseconds against milliseconds of BLAS work, so no compiled wrapper would pay).

A = G (side "left", d = m) or A = G^T (side "right", d = n), A is d x other; l = sketch_size(rank,
oversample, m, n). The computation, in compute_dtype(G.dtype) (float32; float64 for float64 G):
  1. Y = A^T Omega with Omega = P^T, P the l x d Gaussian sketch of spec v1, generated inside the GEMM by the
     sketch op (never materialized): for side "left" A^T Omega = G^T P^T = (P G)^T is
     sketch_project(G, side="left"), transposed; for side "right" A^T Omega = G P^T is
     sketch_project(G, side="right").
  2. W = orth(Y) (other x l), then power_iters times W = orth(A^T orth(A W)); orth = cholesky_qr2 below.
  3. C = A W (d x l) = Q R (cholesky_qr2), R = U_R S V_R^T (the small SVD: B = W^T A^T = C^T is the
     "Q^T G" of Algorithm 5.1 for A^T, and its right singular vectors Q U_R are A's left ones); the result
     is Q U_R[:, :rank] and S[:rank].
Why the sketch starts on the other side: the last pass over G, C = A W, is then also the last half-step of
the power iteration, so span(C) = span((A A^T)^(q+1) Omega) for q = power_iters, where sketching A itself
and rotating by the SVD of Q^T A reaches (A A^T)^q A Omega with the same 2q + 2 passes over G. This is
what torch.svd_lowrank gets on wide matrices (it transposes them). Measured with bench/bench_range_finder.py
--quick (G 1024 x 2752, rank 32, q = 1, mean of 3 sketches): 1.021 x the optimal error before, 1.009 x now.
"""

import contextlib

import torch

from .. import _checks
from ..spec import compute_dtype

# CholeskyQR2 is accepted when the first pass leaves ||Q1^T Q1 - I||_F <= this (see cholesky_qr2).
ORTHOGONALITY_LIMIT = 0.5


def squared_norm(op: str, A: torch.Tensor) -> torch.Tensor:
    """||A||_F^2 as a float64 0-dim tensor, raising a clear error for NaN/Inf entries.

    Row norms along A's unit-stride dimension (one fast pass; each a short sum in A's precision), then the
    sum of their squares in float64: relative error ~1e-8 for float32, where one float32 norm over all of
    a 4096 x 11008 matrix was measured 0.8 % off. A non-finite result is either a NaN/Inf entry or a finite
    matrix whose squared norm overflows A's dtype; both are refused, with different messages."""
    dim = 1 if A.stride(1) <= A.stride(0) else 0
    sq = torch.linalg.vector_norm(A, dim=dim).to(torch.float64).square().sum()
    if not bool(torch.isfinite(sq)):
        bad = int((~torch.isfinite(A)).sum())
        if bad:
            raise _checks.error(op, "G", "finite", f"a tensor with {bad} NaN/Inf entries")
        raise _checks.error(op, "G", f"of squared Frobenius norm representable in {A.dtype}",
                            "a matrix whose squared norm overflows")
    return sq


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """Runs the l x l work (Cholesky, the small SVD and the elementwise steps around them) of CPU tensors on
    one thread; the GEMMs and triangular solves over d x l and other x l matrices keep all threads.

    That work is O(l^3) in many small LAPACK/BLAS-2/elementwise steps, each an OpenMP fork/join. On the
    benchmark CPU (2 cores shared with other jobs) a float64 eigh of 520 x 520 took 0.3-21 s with 2 threads
    and 0.09-0.12 s with 1, and a 520 x 520 matrix_norm 60 ms: each join waits for a thread the OS has
    descheduled. torch.set_num_threads costs ~1 us; it is process-wide for MKL, so torch work on other
    Python threads also runs on one thread for these few milliseconds."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cholesky_qr2(Y: torch.Tensor):
    """(Q, R, fell_back): Y = Q R with Q (d x l) orthonormal and R (l x l) upper triangular, for d >= l.

    CholeskyQR2 (Fukaya, Nakatsukasa, Yanagisawa & Yamamoto 2014): Y^T Y = R1^T R1 (Cholesky), Q1 = Y R1^-1,
    then the same once more on Q1 (Q1 = Q R2) and R = R2 R1; two Gram GEMMs, two small Cholesky
    factorizations and two triangular solves, all BLAS-3, instead of Householder QR's panel factorizations
    (measured 5x faster at 4096 x 520 with 2 threads, more on a loaded machine).

    When it fails: one pass leaves ||Q1^T Q1 - I|| ~ u kappa(Y)^2 (u the unit roundoff), so the method breaks
    down once kappa(Y) approaches u^{-1/2} (kappa(Y^T Y) approaching 1/u): the Cholesky factorization
    fails, or succeeds on a rounded Gram matrix and returns a Q1 far from orthonormal. Detection, not a
    guess: (a) torch.linalg.cholesky_ex reports a failure (info != 0), or (b) the first pass's measured loss
    of orthogonality ||Q1^T Q1 - I||_F exceeds ORTHOGONALITY_LIMIT = 1/2. (b) costs nothing: Q1^T Q1 is the
    Gram matrix of the second pass. It is the condition under which the second pass is safe: with
    ||Q1^T Q1 - I||_2 <= 1/2 the singular values of Q1 lie in [sqrt(1/2), sqrt(3/2)], kappa(Q1) <= sqrt(3),
    and the second pass restores orthogonality to O(u) (Yamamoto et al. 2015). An a-priori estimate of
    kappa(Y^T Y) would need an extra eigenvalue or condition-number computation and still be a proxy for
    what (b) measures. On failure Y is factored by Householder QR (torch.linalg.qr), which is orthonormal to
    O(u) for any Y, rank-deficient and zero included."""
    gram = Y.mT @ Y
    with _one_cpu_thread(Y.device):
        L1, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        return (*torch.linalg.qr(Y), True)
    Q1 = torch.linalg.solve_triangular(L1.mT, Y, upper=True, left=False)  # Y R1^-1, R1 = L1^T
    gram = Q1.mT @ Q1
    with _one_cpu_thread(Y.device):
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        loss = torch.linalg.matrix_norm(gram - eye)
        L2, info = torch.linalg.cholesky_ex(gram)
        ok = bool((loss <= ORTHOGONALITY_LIMIT) & (info == 0))  # a NaN loss compares False: falls back too
        if ok:
            R = L2.mT @ L1.mT
    if not ok:
        return (*torch.linalg.qr(Y), True)
    return torch.linalg.solve_triangular(L2.mT, Q1, upper=True, left=False), R, False


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
    """AdaRankGrad's rank rule: the smallest r in [min_rank, max_rank] with
    t_r = ||G||_F^2 - sum_{i<=r} S_i^2 <= (1 - energy) ||G||_F^2 (t_r bounds the residual of the rank-r basis
    from above, see lowrank_ops.ops.adaptive_rank), or max_rank when none qualifies. S: the max_rank
    estimated singular values, descending; sqnorm: ||G||_F^2. One cumulative sum in float64 gives every
    t_r. Returns a 0-dim int64 tensor."""
    kept = torch.cumsum(S.to(torch.float64).square(), dim=0)  # kept[r - 1] = sum_{i<=r} S_i^2
    total = sqnorm.to(torch.float64)
    ok = total - kept <= (1.0 - energy) * total
    ok[: min_rank - 1] = False
    ok[max_rank - 1] = True
    return torch.argmax(ok.to(torch.int8)) + 1  # the first True


def range_finder(G: torch.Tensor, rank: int, oversample: int, power_iters: int, seed: int, side: str,
                 backend: str | None = None):
    """The op lowrank_ops::range_finder: (Q, S, ||G||_F^2, fallbacks), the computation of the module
    docstring. `seed`: the schema's int64; `backend`: the sketch op's backend (None: its default).
    fallbacks counts how many of the 2 * power_iters + 2 orthonormalizations fell back from CholeskyQR2
    to Householder QR (int64, 0-dim). Raises ValueError for NaN/Inf in G."""
    compute = compute_dtype(G.dtype)
    A = G.to(compute)
    sqnorm = squared_norm("range_finder", A)
    if side == "right":
        A = A.mT
    l = sketch_size(rank, oversample, *G.shape)
    Y = torch.ops.lowrank_ops.sketch_project(G, seed, l, "gaussian", side, compute, backend)
    if side == "left":
        Y = Y.mT
    W, _, fell_back = cholesky_qr2(Y)
    fallbacks = int(fell_back)
    for _ in range(power_iters):
        Z, _, fell_back = cholesky_qr2(A @ W)
        fallbacks += fell_back
        W, _, fell_back = cholesky_qr2(A.mT @ Z)
        fallbacks += fell_back
    Q, R, fell_back = cholesky_qr2(A @ W)
    fallbacks += fell_back
    with _one_cpu_thread(G.device):
        U, S, _ = torch.linalg.svd(R)
        U = fix_signs(U[:, :rank])
        S = S[:rank].clone()
    return Q @ U, S, sqnorm, torch.tensor(fallbacks, dtype=torch.int64, device=G.device)
