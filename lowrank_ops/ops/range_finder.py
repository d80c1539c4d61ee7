"""The range_finder family: a basis of a gradient's dominant singular subspace without a full SVD, and
AdaRankGrad's adaptive rank (Halko, Martinsson & Tropp, SIAM Review 2011, Alg. 4.4 + 5.1; AdaRankGrad,
Algorithms 1-2).

  range_finder(G, rank)           -> (Q, S): Q (d x rank) orthonormal, S (rank) estimated singular values
  adaptive_rank(G, energy, max_r) -> (r, Q_r, S_r): the smallest r keeping a fraction `energy` of ||G||_F^2

A = G (side "left", d = m) or A = G^T (side "right", d = n), A is d x other; l = rank + oversample (capped,
see reference.range_finder.sketch_size). The computation, in compute_dtype(G.dtype) (float32; float64 for
float64 G), is Halko et al.'s Algorithm 4.4 run on A^T followed by Algorithm 5.1:
  1. Y = A^T Omega with Omega = P^T, P the l x d Gaussian sketch of spec v1, generated inside the GEMM by the
     sketch ops (never materialized): for side "left" A^T Omega = G^T P^T = (P G)^T is
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

The sketch GEMM has CPU/CUDA/Triton kernels (`backend` is passed to sketch_project); the power-iteration
GEMMs, Gram matrices, Cholesky factorizations, triangular solves and the small SVD are single
BLAS/cuBLAS/LAPACK calls through torch, each over O(d l) or O(d l^2) data: per call the Python overhead is
microseconds against milliseconds of BLAS work, so no C++ wrapper would pay.
"""

import contextlib

import torch

from . import _backend, _checks
from .sketch import sketch_project
from ..reference import range_finder as reference
from ..reference.sketch import compute_dtype

SIDES = ("left", "right")

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


def _range_finder(G, rank, oversample, power_iters, seed, side, backend):
    """The computation of the module docstring; returns (Q, S, ||G||_F^2, number of fallbacks)."""
    compute = compute_dtype(G.dtype)
    A = G.to(compute)
    sqnorm = squared_norm("range_finder", A)
    if side == "right":
        A = A.mT
    l = reference.sketch_size(rank, oversample, *G.shape)
    if side == "left":
        Y = sketch_project(G, seed % 2**64, l, "gaussian", "left", out_dtype=compute, backend=backend).mT
    else:
        Y = sketch_project(G, seed % 2**64, l, "gaussian", "right", out_dtype=compute, backend=backend)
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
        U = reference.fix_signs(U[:, :rank])
        S = S[:rank].clone()
    return Q @ U, S, sqnorm, torch.tensor(fallbacks, dtype=torch.int64, device=G.device)


@torch.library.custom_op("lowrank_ops::range_finder", mutates_args=())
def _range_finder_op(G: torch.Tensor, rank: int, oversample: int, power_iters: int, seed: int, side: str,
                     backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q, S, sqnorm, fallbacks): range_finder's basis and singular values, ||G||_F^2 (float64, 0-dim) and
    how many of the 2 * power_iters + 2 orthonormalizations fell back from CholeskyQR2 to Householder QR
    (int64, 0-dim). `backend` runs the sketch GEMM ("cpu", "cuda" or "triton")."""
    return _range_finder(G, rank, oversample, power_iters, seed, side, backend)


@_range_finder_op.register_fake
def _range_finder_fake(G, rank, oversample, power_iters, seed, side, backend):
    compute = compute_dtype(G.dtype)
    d = G.shape[0] if side == "left" else G.shape[1]
    return (G.new_empty((d, rank), dtype=compute), G.new_empty((rank,), dtype=compute),
            G.new_empty((), dtype=torch.float64), G.new_empty((), dtype=torch.int64))


def _check_common(op, G, rank_arg, rank, oversample, power_iters, seed, side, backend):
    """Validates the arguments shared by both public functions; returns (rank, seed64, chosen backend)."""
    _checks.float_matrix(op, "G", G)
    if G.numel() == 0:
        raise _checks.error(op, "G", "non-empty", f"shape {list(G.shape)}")
    rank = _checks.positive_int(op, rank_arg, rank)
    _checks.choice(op, "side", side, SIDES)
    if rank > min(G.shape):
        raise _checks.error(op, rank_arg, f"<= min(m, n) = {min(G.shape)} (G has shape {list(G.shape)})", rank)
    _checks.int_at_least(op, "oversample", oversample, 0)
    _checks.int_at_least(op, "power_iters", power_iters, 0)
    seed64 = _checks.seed_to_int64(op, seed)
    if backend is not None:  # checked here so that the error names this op, not the sketch op it runs on
        if backend not in _backend.BACKENDS:
            raise _checks.error(op, "backend", f"one of {_backend.BACKENDS} or None", repr(backend))
        reason = _backend.unavailable_reason(backend, "sketch_project", G.device)
        if reason is not None:
            raise RuntimeError(f"lowrank_ops.{op}: backend '{backend}' is not available: {reason}")
    return rank, seed64, _backend.resolve("sketch_project", backend, G.device)


def range_finder(G: torch.Tensor, rank: int, *, oversample: int = 8, power_iters: int = 1, seed: int = 0,
                 side: str = "left", backend=None):
    """(Q, S): Q (d x rank) with orthonormal columns spanning the estimated dominant left (side "left",
    d = G.shape[0]) or right (side "right", d = G.shape[1]) singular subspace of G, and S (rank) the
    estimated singular values, descending (S_i <= sigma_i(G)); 1 <= rank <= min(m, n). Both in float32
    (float64 for float64 G; a bfloat16/float16 G is converted to a float32 copy first). The projection of
    DESIGN.md §3 is P = Q^T.

    The sketch uses `oversample` extra columns and `seed` (spec v1 Gaussian); `power_iters` subspace
    iterations sharpen it for slowly decaying spectra. The result is a deterministic function of
    (G, rank, oversample, power_iters, seed, side) up to rounding. `backend` picks the sketch GEMM's
    backend ("cpu", "cuda", "triton") or the whole computation's pure-torch reference ("reference").
    Not differentiable (the subspace is a selection, not a smooth function of G): G is detached.
    Raises ValueError for NaN/Inf in G."""
    op = "range_finder"
    rank, seed64, chosen = _check_common(op, G, "rank", rank, oversample, power_iters, seed, side, backend)
    G = G.detach()
    if chosen == "reference":
        squared_norm(op, G.to(compute_dtype(G.dtype)))
        return reference.range_finder(G, rank, oversample, power_iters, seed, side)
    Q, S, _, _ = torch.ops.lowrank_ops.range_finder(G, rank, oversample, power_iters, seed64, side, chosen)
    return Q, S


def adaptive_rank(G: torch.Tensor, energy: float, max_rank: int, *, min_rank: int = 1, oversample: int = 8,
                  power_iters: int = 1, seed: int = 0, side: str = "left", backend=None):
    """(r, Q_r, S_r): a rank r in [min_rank, max_rank] whose basis Q_r keeps a fraction `energy` of G's
    energy, ||G - Q_r Q_r^T G||_F^2 <= (1 - energy) ||G||_F^2 (AdaRankGrad's information fraction; side
    "right": ||G - G Q_r Q_r^T||_F^2) -- the smallest r for which the bound t_r below shows it -- or
    max_rank when no r <= max_rank does; Q_r (d x r) and S_r (r) as range_finder's;
    1 <= min_rank <= max_rank <= min(m, n). A zero G gives r = min_rank and an orthonormal Q_r.

    How r is found: one range_finder pass at rank max_rank gives Q (d x max_rank) and S; its prefixes
    Q_r = Q[:, :r] are the candidate bases. With W the other-side basis of the last power step and
    A W = C (module docstring), Q_r^T A W = U_R[:, :r]^T R has row norms S_1..S_r, and
    ||Q_r^T A||_F^2 >= ||Q_r^T A W||_F^2, so
        ||G - Q_r Q_r^T G||_F^2 = ||G||_F^2 - ||Q_r^T A||_F^2 <= ||G||_F^2 - sum_{i<=r} S_i^2  =: t_r,
    with equality when G's row space (column space for side "right") lies in span(W), e.g. rank(G) <= l.
    With ||G||_F^2 computed from G itself, one cumulative sum over S gives every t_r, and r is the first
    with t_r <= (1 - energy) ||G||_F^2: O(max_rank) work after the pass, and the returned basis is
    guaranteed to keep the energy. The slack t_r - residual is the part of Q_r's energy outside span(W),
    which the power iteration makes small; it can make r exceed the smallest feasible rank when the
    spectrum is nearly flat around r. AdaRankGrad's binary search over r instead evaluates a residual (a
    range-finder or GEMM pass over G) per probe, O(log max_rank) passes where this needs none.
    Rounding: ||G||^2 - sum S_i^2 cancels to an absolute error ~ u ||G||^2, so energies within ~1e-6 of 1
    (float32) are not resolved; energy must be in (0, 1).

    Returns r as a Python int (a device sync on CUDA): Q_r's shape depends on it."""
    op = "adaptive_rank"
    max_rank, seed64, chosen = _check_common(op, G, "max_rank", max_rank, oversample, power_iters, seed, side,
                                             backend)
    if not isinstance(energy, (int, float)) or not 0 < energy < 1:
        raise _checks.error(op, "energy", "a number in (0, 1)", repr(energy))
    min_rank = _checks.positive_int(op, "min_rank", min_rank)
    if min_rank > max_rank:
        raise _checks.error(op, "min_rank", f"<= max_rank = {max_rank}", min_rank)
    G = G.detach()
    if chosen == "reference":
        squared_norm(op, G.to(compute_dtype(G.dtype)))
        return reference.adaptive_rank(G, energy, max_rank, min_rank, oversample, power_iters, seed, side)
    Q, S, sqnorm, _ = torch.ops.lowrank_ops.range_finder(G, max_rank, oversample, power_iters, seed64, side,
                                                         chosen)
    r = int(reference.select_rank(S, sqnorm, energy, min_rank, max_rank))
    return r, Q[:, :r].contiguous(), S[:r].clone()
