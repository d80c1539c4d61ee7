"""The range_finder family: a basis of a gradient's dominant singular subspace without a full SVD, and
AdaRankGrad's adaptive rank (Halko, Martinsson & Tropp, SIAM Review 2011, Alg. 4.4 + 5.1; AdaRankGrad,
Algorithms 1-2).

  range_finder(G, rank)           -> (Q, S): Q (d x rank) orthonormal, S (rank) estimated singular values
  adaptive_rank(G, energy, max_r) -> (r, Q_r, S_r): the smallest r keeping a fraction `energy` of ||G||_F^2

Both run the op lowrank_ops::range_finder, whose computation lowrank_ops/pure_torch/range_finder.py
describes: one Gaussian sketch GEMM of spec v1 (the op lowrank_ops::sketch_project, on the `backend` given:
"cpu", "cuda", "triton" or "reference"; never materialized on the compiled ones), power iterations with
CholeskyQR2 and a small SVD, in compute_dtype(G.dtype) (float32; float64 for float64 G).
"""

import torch

from .. import _checks, backends
from ..pure_torch.range_finder import select_rank
from ..spec import SIDES


def _check_common(op, G, rank_arg, rank, oversample, power_iters, seed, side, backend):
    """Validates the arguments shared by both public functions; returns (rank, oversample, power_iters, seed64,
    backend) as the op takes them."""
    _checks.float_matrix(op, "G", G)
    if G.numel() == 0:
        raise _checks.error(op, "G", "non-empty", f"shape {list(G.shape)}")
    rank = _checks.positive_int(op, rank_arg, rank)
    _checks.choice(op, "side", side, SIDES)
    if rank > min(G.shape):
        raise _checks.error(op, rank_arg, f"<= min(m, n) = {min(G.shape)} (G has shape {list(G.shape)})", rank)
    oversample = _checks.int_at_least(op, "oversample", oversample, 0)
    power_iters = _checks.int_at_least(op, "power_iters", power_iters, 0)
    seed64 = _checks.seed_to_int64(op, seed)
    backend = backends.check(op, backend, G.device, "range_finder")
    _checks.finite(op, "G", G)  # last: one pass over G
    return rank, oversample, power_iters, seed64, backend


def range_finder(G: torch.Tensor, rank: int, *, oversample: int = 8, power_iters: int = 1, seed: int = 0,
                 side: str = "left", backend=None):
    """(Q, S): Q (d x rank) with orthonormal columns spanning the estimated dominant left (side "left",
    d = G.shape[0]) or right (side "right", d = G.shape[1]) singular subspace of G, and S (rank) the
    estimated singular values, descending (S_i <= sigma_i(G)); 1 <= rank <= min(m, n). Both in float32
    (float64 for float64 G; a bfloat16/float16 G is converted to a float32 copy first). The projection of
    docs/DESIGN.md §3 is P = Q^T.

    The sketch uses `oversample` extra columns and `seed` (spec v1 Gaussian); `power_iters` subspace
    iterations sharpen it for slowly decaying spectra. The result is a deterministic function of
    (G, rank, oversample, power_iters, seed, side) up to rounding. `backend` picks the sketch GEMM's
    backend ("cpu", "cuda", "triton", or "reference": pure torch, the sketch materialized).
    Not differentiable (the subspace is a selection, not a smooth function of G): G is detached.
    Raises ValueError for NaN/Inf in G."""
    op = "range_finder"
    rank, oversample, power_iters, seed64, backend = _check_common(op, G, "rank", rank, oversample, power_iters,
                                                                   seed, side, backend)
    Q, S, _, _ = torch.ops.lowrank_ops.range_finder(G.detach(), rank, oversample, power_iters, seed64, side, backend)
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
    max_rank, oversample, power_iters, seed64, backend = _check_common(op, G, "max_rank", max_rank, oversample,
                                                                       power_iters, seed, side, backend)
    energy = _checks.real(op, "energy", energy, "in (0, 1)", lambda e: 0 < e < 1)
    min_rank = _checks.positive_int(op, "min_rank", min_rank)
    if min_rank > max_rank:
        raise _checks.error(op, "min_rank", f"<= max_rank = {max_rank}", min_rank)
    if G.device.type == "meta":
        raise _checks.error(op, "G", "a tensor with values (the rank returned depends on them)", "a meta tensor")
    Q, S, sqnorm, _ = torch.ops.lowrank_ops.range_finder(G.detach(), max_rank, oversample, power_iters, seed64,
                                                         side, backend)
    r = int(select_rank(S, sqnorm, energy, min_rank, max_rank))
    return r, Q[:, :r].contiguous(), S[:r].clone()
