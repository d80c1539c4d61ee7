"""The subsampled randomized DCT P = S C D (issue 18; docs/DESIGN.md §3 "Subsampled randomized DCT"): the
signs and the row order of a seed bit-identical to the oracle (lowrank_ops/reference/sr_dct.py) on every
backend that computes them, the selection uniform over r-subsets (statistically, on fixed seeds), P P^T = I_r
and disjoint row blocks P_i P_j^T = 0, and clear errors."""

import math
from statistics import NormalDist

import pytest
import torch

from lowrank_ops import projections
from lowrank_ops.projections import sr_dct
from lowrank_ops.reference import sr_dct as oracle

from helpers import assert_clear_error, backends

# sizes across the Rademacher word (32) and group (128) edges; seeds at the 32- and 64-bit edges
DIMS = (1, 2, 7, 31, 32, 33, 127, 128, 129, 300, 1000)
SEEDS = (0, 1, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 0x1234_5678_9ABC_DEF0)
EPS32 = torch.finfo(torch.float32).eps
U64 = 2.0**-53


@pytest.mark.parametrize("backend", backends("sketch_fill_"))
@pytest.mark.parametrize("dim", DIMS)
def test_signs_are_the_oracle_bit_for_bit(backend, dim):
    for seed in SEEDS:
        got = sr_dct.signs(dim, seed, torch.float64, backend=backend)
        assert torch.equal(got, oracle.signs(dim, seed)), f"d={dim} seed={seed}"


@pytest.mark.parametrize("backend", backends("philox4x32"))
@pytest.mark.parametrize("dim", DIMS)
def test_order_is_the_oracle_bit_for_bit(backend, dim):
    for seed in SEEDS:
        got = sr_dct.order(dim, seed, backend=backend)
        assert got.dtype == torch.int64 and got.tolist() == oracle.order(dim, seed), f"d={dim} seed={seed}"


def test_rows_are_blocks_of_the_order_in_the_index_dtype():
    dim, rank, count, seed = 50, 7, 6, 99
    full = oracle.order(dim, seed)
    blocks = [sr_dct.rows(rank, dim, seed, (k, count)) for k in range(count)]
    for k, block in enumerate(blocks):
        assert block.dtype == torch.int16 and block.tolist() == full[k * rank : (k + 1) * rank]
    assert sr_dct.rows(rank, dim, seed).tolist() == full[:rank]  # block (0, 1): the first rank
    assert sr_dct.rows(3, 40000, seed).dtype == torch.int32  # d > 32767 (docs/DESIGN.md §3 index dtype rule)


@pytest.mark.parametrize("dim,rank,block", [(1, 1, None), (7, 3, None), (129, 20, (2, 5)), (300, 300, None)])
def test_matrix_is_the_oracle(dim, rank, block):
    seed = 2**63 + 5
    got = sr_dct.matrix(rank, dim, seed, torch.float64, block=block)
    want = oracle.matrix(rank, dim, seed, block or (0, 1))
    # each entry is one cos/sin evaluation (kernels/dct.h) times a scale: a few float64 ulp of an entry <= 1
    assert (got - want).abs().max() <= 8 * U64
    for dtype in (torch.float32, torch.bfloat16):  # rounded once from float64
        assert torch.equal(sr_dct.matrix(rank, dim, seed, dtype, block=block), got.to(dtype))


# ---------------------------------------------------------------------------------------------------------
# Uniformity of the selection over r-subsets
# ---------------------------------------------------------------------------------------------------------

# Every count below is Binomial(N, p) if the selection is uniform. The band is the two-sided normal interval
# whose level makes the probability that ANY of the `tests` counts of one test falls outside it FALSE_ALARM
# (Bonferroni), so a correct implementation fails with probability < 1e-6 per test; the seeds are fixed,
# so the outcome is deterministic anyway. The band is checked for power below (a biased rule fails it).
FALSE_ALARM = 1e-6
TRIALS = 20000


def binomial_band(trials: int, p: float, tests: int) -> tuple[float, float]:
    z = NormalDist().inv_cdf(1 - FALSE_ALARM / (2 * tests))
    half = z * math.sqrt(trials * p * (1 - p))
    return trials * p - half, trials * p + half


def selections(rank: int, dim: int, trials: int) -> torch.Tensor:
    """[trials, rank]: the rows of trials fixed seeds (the per-layer, per-refresh seeds of base seed 2026)."""
    return torch.stack([sr_dct.rows(rank, dim, projections.derive_seed(2026, 0, k)).long() for k in range(trials)])


def test_every_row_is_included_with_probability_r_over_d():
    dim, rank = 37, 5
    counts = torch.bincount(selections(rank, dim, TRIALS).flatten(), minlength=dim)
    lo, hi = binomial_band(TRIALS, rank / dim, dim)
    assert counts.sum() == TRIALS * rank
    outside = [(t, int(c)) for t, c in enumerate(counts) if not lo <= c <= hi]
    assert not outside, f"rows outside [{lo:.0f}, {hi:.0f}]: {outside}"


def test_every_subset_and_every_position_is_equally_likely():
    """d = 6, r = 2: each of the 15 subsets with probability 1/15 (uniform over r-subsets, more than the
    inclusion marginals), and each row at each position of P with probability 1/d (the order is uniform,
    which DiLoCo's row blocks rely on)."""
    dim, rank = 6, 2
    chosen = selections(rank, dim, TRIALS)
    subsets = {}
    for a, b in chosen.sort(dim=1).values.tolist():
        subsets[a, b] = subsets.get((a, b), 0) + 1
    lo, hi = binomial_band(TRIALS, 1 / math.comb(dim, rank), math.comb(dim, rank))
    assert len(subsets) == math.comb(dim, rank)
    assert all(lo <= c <= hi for c in subsets.values()), f"subset counts {subsets} outside [{lo:.0f}, {hi:.0f}]"
    lo, hi = binomial_band(TRIALS, 1 / dim, dim * rank)
    for position in range(rank):
        counts = torch.bincount(chosen[:, position], minlength=dim)
        assert all(lo <= c <= hi for c in counts), f"position {position}: {counts.tolist()}"


def test_the_band_rejects_a_biased_selection():
    """Power: the same band, at the same d, r and number of seeds, rejects the rule with 5-bit keys instead
    of 64-bit ones: ties are frequent, and going to the lower index they favour the low rows by ~12%."""
    dim, rank = 37, 5
    keys = torch.randint(0, 2**5, (TRIALS, dim), generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(torch.sort(keys, dim=1, stable=True).indices[:, :rank].flatten(), minlength=dim)
    lo, hi = binomial_band(TRIALS, rank / dim, dim)
    assert any(not lo <= c <= hi for c in counts), counts.tolist()


# ---------------------------------------------------------------------------------------------------------
# Semi-orthogonality
# ---------------------------------------------------------------------------------------------------------


def ranks_up_to(dim):
    return sorted({1, max(1, dim // 3), dim})


@pytest.mark.parametrize("dim", (1, 7, 64, 1000, 4096))
def test_rows_are_orthonormal_to_float32_rounding(dim):
    """P P^T = I_r: exactly S S^T in exact arithmetic. For P rounded once to float32 (relative error
    u = eps/2 per entry) |(P P^T - I)_ij| <= (2u + u^2) sum_t |p_it p_jt| <= (2u + u^2) ||p_i|| ||p_j||
    ~ eps32 (Cauchy-Schwarz), evaluated in float64 here; the float64 P is within Higham's gamma_d of I
    plus a few ulp of its entries. Above r = 512 the rows of P P^T are checked for 512 evenly spaced i
    (first and last included) against every j: a float64 r x r product of r = 4096 takes ~10 s here."""
    seed = projections.derive_seed(11, dim, 0)
    gamma = dim * U64 / (1 - dim * U64)
    for rank in ranks_up_to(dim):
        P64 = sr_dct.matrix(rank, dim, seed, torch.float64)
        P32 = P64.float().double()  # what matrix(..., torch.float32) returns (test_matrix_is_the_oracle)
        i = torch.linspace(0, rank - 1, min(rank, 512)).round().long().unique()
        eye = torch.eye(rank, dtype=torch.float64)[i]
        err64 = float((P64[i] @ P64.T - eye).abs().max())
        err32 = float((P32[i] @ P32.T - eye).abs().max())
        assert err64 <= gamma + 16 * U64, f"d={dim} r={rank}: float64 {err64:.3e}"
        assert err32 <= (EPS32 + EPS32**2 / 4) * (1 + 2 * gamma) + gamma + 16 * U64, f"d={dim} r={rank}: {err32:.3e}"


@pytest.mark.parametrize("dim,rank,count", [(7, 3, 2), (64, 8, 8), (1000, 100, 4)])
def test_row_blocks_are_mutually_orthogonal(dim, rank, count):
    """P_i P_j^T = S_i C D D C^T S_j^T = S_i S_j^T = 0 for disjoint row blocks of one seed."""
    seed = 424242
    blocks = [sr_dct.matrix(rank, dim, seed, torch.float64, block=(k, count)) for k in range(count)]
    full = sr_dct.matrix(rank * count, dim, seed, torch.float64)
    assert torch.equal(torch.cat(blocks), full)  # the blocks are the rows of one K r-row P
    gamma = dim * U64 / (1 - dim * U64)
    for i in range(count):
        for j in range(i + 1, count):
            assert float((blocks[i] @ blocks[j].T).abs().max()) <= gamma + 16 * U64


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: sr_dct.rows(5, 4, 0), "'rank' x blocks (5 x 1) must be in [1, dim=4]"),
        (lambda: sr_dct.rows(3, 10, 0, (0, 4)), "'rank' x blocks (3 x 4) must be in [1, dim=10]"),
        (lambda: sr_dct.rows(2, 10, 0, (4, 4)), "block index 4 in [0, 4)"),
        (lambda: sr_dct.matrix(0, 10, 0), "'rank' x blocks (0 x 1)"),
        (lambda: sr_dct.order(5, -1), "argument 'seed' must be an int in [0, 2^64)"),
        (lambda: sr_dct.signs(0, 1), "argument 'cols' must be >= 1"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    assert_clear_error(call, ValueError, message)
