"""The range_finder family: a basis of a gradient's dominant singular subspace without a full SVD, and
AdaRankGrad's adaptive rank (Halko, Martinsson & Tropp, SIAM Review 2011, Alg. 4.4 + 5.1; AdaRankGrad,
Algorithms 1-2).

  range_finder(G, rank)           -> (Q, S): Q (d x rank) orthonormal, S (rank) estimated singular values
  adaptive_rank(G, energy, max_r) -> (r, Q_r, S_r): the smallest r keeping a fraction `energy` of ||G||_F^2

A = G (side "left", d = m) or A = G^T (side "right", d = n); l = rank + oversample (capped, see
reference.range_finder.sketch_size). The computation, in compute_dtype(G.dtype) (float32; float64 for float64):
  1. Y = A Omega with Omega = P^T, P the l x other Gaussian sketch of spec v1, generated inside the GEMM by
     the sketch ops (never materialized): for side "left" A Omega = G P^T is sketch_project(G, side="right");
     for side "right" A Omega = G^T P^T = (P G)^T is sketch_project(G, side="left"), transposed.
  2. Q = orth(Y), then power_iters times Q = orth(A orth(A^T Q)), orth = cholesky_qr2 below.
  3. B = Q^T A (l x other); its SVD B = U S V^T rotates Q, and Q U[:, :rank] is kept.
The sketch GEMM has CPU/CUDA/Triton kernels (`backend` is passed to sketch_project); the power-iteration
GEMMs, Gram matrices, Cholesky and triangular solves are single BLAS/cuBLAS/LAPACK calls through torch,
each over O(d l) or O(d l^2) data: per call the Python overhead is microseconds against milliseconds of
BLAS work, so no C++ wrapper would pay.
"""

import operator

import torch

from . import _backend, _checks
from .sketch import sketch_project
from ..reference import range_finder as reference
from ..reference.sketch import compute_dtype

SIDES = ("left", "right")

# CholeskyQR2 is accepted when the first pass leaves ||Q1^T Q1 - I||_F <= this (see cholesky_qr2).
ORTHOGONALITY_LIMIT = 0.5


def _nonnegative_int(op: str, arg: str, value) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"lowrank_ops.{op}: argument '{arg}' must be an int, got {type(value).__name__}") from None
    if value < 0:
        raise _checks.error(op, arg, ">= 0", value)
    return value


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


def cholesky_qr2(Y: torch.Tensor):
    """(Q, fell_back): Q with orthonormal columns and span(Q) = span(Y), for Y (d x l, d >= l).

    CholeskyQR2 (Fukaya, Nakatsukasa, Yanagisawa & Yamamoto 2014): Y^T Y = R1^T R1 (Cholesky), Q1 = Y R1^-1,
    then the same once more on Q1; two Gram GEMMs, two small Cholesky factorizations and two triangular
    solves, all BLAS-3, instead of Householder QR's panel factorizations (measured 5x faster at 4096 x 520).

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
    L, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        return torch.linalg.qr(Y).Q, True
    Q1 = torch.linalg.solve_triangular(L.mT, Y, upper=True, left=False)  # Y R1^-1, R1 = L^T
    gram = Q1.mT @ Q1
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    loss = torch.linalg.matrix_norm(gram - eye)
    L, info = torch.linalg.cholesky_ex(gram)
    if not bool((loss <= ORTHOGONALITY_LIMIT) & (info == 0)):  # NaN loss compares False: falls back too
        return torch.linalg.qr(Y).Q, True
    return torch.linalg.solve_triangular(L.mT, Q1, upper=True, left=False), False


def _small_svd(B: torch.Tensor):
    """(U, S) of B (l x k, l small): left singular vectors and singular values, descending.

    float32: the eigendecomposition of B B^T formed in float64. Products of float32 numbers are exact in
    float64, so the Gram matrix and its eigenvalues s_i^2 are accurate to ~1e-16 s_1^2, and the s_i to at
    least float32 SVD accuracy; torch.linalg.svd of the wide l x k matrix itself took 1.9-2.4 s at
    520 x 11008 on the benchmark CPU against ~0.7 s for this route. float64 has no wider type to form the
    Gram matrix in (it would square the condition number), so it takes the SVD of B."""
    if B.dtype == torch.float64:
        U, S, _ = torch.linalg.svd(B, full_matrices=False)
        return U, S
    B64 = B.to(torch.float64)
    lam, U = torch.linalg.eigh(B64 @ B64.mT)  # ascending
    S = lam.flip(0).clamp_min(0).sqrt()
    return U.flip(1).to(B.dtype), S.to(B.dtype)


def _range_finder(G, rank, oversample, power_iters, seed, side, backend):
    """The computation of the module docstring; returns (Q, S, ||G||_F^2, number of fallbacks)."""
    op = "range_finder"
    compute = compute_dtype(G.dtype)
    A = G.to(compute)
    sqnorm = squared_norm(op, A)
    if side == "right":
        A = A.mT
    l = reference.sketch_size(rank, oversample, *G.shape)
    if side == "left":
        Y = sketch_project(G, seed % 2**64, l, "gaussian", "right", out_dtype=compute, backend=backend)
    else:
        Y = sketch_project(G, seed % 2**64, l, "gaussian", "left", out_dtype=compute, backend=backend).mT
    Q, fell_back = cholesky_qr2(Y)
    fallbacks = int(fell_back)
    for _ in range(power_iters):
        Z, fell_back = cholesky_qr2(A.mT @ Q)
        fallbacks += fell_back
        Q, fell_back = cholesky_qr2(A @ Z)
        fallbacks += fell_back
    U, S = _small_svd(Q.mT @ A)
    Q = Q @ reference.fix_signs(U[:, :rank])
    return Q, S[:rank].clone(), sqnorm, torch.tensor(fallbacks, dtype=torch.int64, device=G.device)


@torch.library.custom_op("lowrank_ops::range_finder", mutates_args=())
def _range_finder_op(G: torch.Tensor, rank: int, oversample: int, power_iters: int, seed: int, side: str,
                     backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q, S, sqnorm, fallbacks): range_finder's basis and singular values, ||G||_F^2 (float64, 0-dim) and
    how many of the 2 * power_iters + 1 orthonormalizations fell back from CholeskyQR2 to Householder QR
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
    _nonnegative_int(op, "oversample", oversample)
    _nonnegative_int(op, "power_iters", power_iters)
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
    estimated singular values, descending (S_i <= sigma_i(G)); 1 <= rank <= min(m, n). Both in float32 (float64 for float64 G;
    bfloat16/float16 G is computed in float32). The projection of DESIGN.md §3 is P = Q^T.

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
    """(r, Q_r, S_r): the smallest rank r in [min_rank, max_rank] whose basis keeps a fraction `energy` of
    G's energy, ||G - Q_r Q_r^T G||_F^2 <= (1 - energy) ||G||_F^2 (AdaRankGrad's information fraction;
    side "right": ||G - G Q_r Q_r^T||_F^2), or max_rank when no r <= max_rank does; Q_r (d x r) and S_r (r)
    as range_finder's; 1 <= min_rank <= max_rank <= min(m, n). A zero G gives r = min_rank and an
    orthonormal Q_r.

    How r is found: one range_finder pass at rank max_rank gives Q (d x max_rank) and S. Its prefixes
    Q_r = Q[:, :r] are the candidate bases, and for them the residual is known in closed form:
    ||G - Q_r Q_r^T G||_F^2 = ||G||_F^2 - sum_{i<=r} S_i^2, because Q_r^T G = U_r^T B and the rows of U_r^T B
    have norms S_1..S_r (B = Q'^T G before the rotation, see the module docstring). With ||G||_F^2
    computed from G itself, one cumulative sum over S gives every candidate's residual, and the first r
    under the threshold is the answer: O(max_rank) work after the pass, the exact residual of the returned
    basis rather than an estimate. AdaRankGrad's binary search over r instead evaluates a residual (a
    range-finder or GEMM pass over G) per probe, O(log max_rank) passes for the same answer, since the
    residual is monotone in r for nested bases. Rounding: ||G||^2 - sum S_i^2 cancels to an absolute
    error ~ u ||G||^2, so energies within ~1e-6 of 1 (float32) are not resolved; energy must be in (0, 1).

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
