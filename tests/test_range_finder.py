"""The range_finder family: randomized range finder (Halko-Martinsson-Tropp) and AdaRankGrad's adaptive
rank, on matrices with a known spectrum (G = U diag(s) V^T from random orthogonal factors), against the
truncated SVD, the float64 reference and plain torch; CholeskyQR2 and its detected fallback; every
backend; opcheck, torch.compile and argument errors."""

import math

import pytest
import torch

from lowrank_ops import ops
from lowrank_ops.pure_torch import range_finder as rf
from lowrank_ops.reference import range_finder as reference

from helpers import (
    GAUSSIAN_ENTRY_TOL,
    assert_clear_error,
    assert_compiled_matches_eager,
    assert_within_torch_error,
    backends,
    random_matrix,
    rel_err,
)

SIDES = ("left", "right")
CPU_BACKENDS = backends("range_finder")
GPU_BACKENDS = backends("range_finder", "cuda")
LARGE_SEED = 2**64 - 99


def orthonormal(rows, cols, rng):
    return torch.linalg.qr(torch.randn(rows, cols, dtype=torch.float64, generator=rng)).Q


def known_spectrum(m, n, s, rng):
    """float64 G = U diag(s) V^T with U (m x k), V (n x k) random orthonormal, k = len(s)."""
    s = torch.as_tensor(s, dtype=torch.float64)
    return (orthonormal(m, len(s), rng) * s) @ orthonormal(n, len(s), rng).T


M, N, RANK = 300, 200, 20
K = min(M, N)
SPECTRA = {
    "fast_decay": [0.7**i for i in range(K)],
    "slow_decay": [1 / math.sqrt(i + 1) for i in range(K)],
    "exact_rank": [2.0 ** (-i / 4) for i in range(RANK)],  # rank k = RANK
    "exact_rank_below": [2.0 ** (-i / 4) for i in range(7)],  # rank 7 < RANK
    "rank_deficient": [1 / (i + 1) for i in range(RANK + 4)],  # RANK < rank < l = RANK + 8: Y is singular
    "zero": [0.0],
}


def residual(G64, Q, side):
    """||G - Q Q^T G||_F (left) or ||G - G Q Q^T||_F (right), in float64."""
    Q = Q.double()
    E = G64 - Q @ (Q.T @ G64) if side == "left" else G64 - (G64 @ Q) @ Q.T
    return float(torch.linalg.norm(E))


def svd_basis(G, rank, side):
    """The optimal basis by plain torch: the truncated SVD of G in G's precision."""
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    return U[:, :rank] if side == "left" else Vh[:rank].T


def orthogonality(Q):
    Q = Q.double()
    return float(torch.linalg.norm(Q.T @ Q - torch.eye(Q.shape[1], dtype=torch.float64)))


def householder_bound(Q):
    """d l u: the first-order bound on ||Q^T Q - I|| of Householder QR of a d x l matrix (Higham, Accuracy
    and Stability of Numerical Algorithms, 2nd ed., Thm 19.4, constant dropped)."""
    return Q.shape[0] * Q.shape[1] * torch.finfo(Q.dtype).eps


def assert_orthonormal(Q, plain_Q, what, columns=None):
    """At most twice the loss of orthogonality of plain torch's computation (the float32/float64
    reference: Householder QR, then the SVD rotation) plus a floor, as in the tolerance rule (tests/helpers.py).
    float32 and narrower: 2 l u, the loss that merely rounding an exactly orthonormal d x l matrix to Q's
    dtype can cause (each entry of Q^T Q - I within 2u). float64: plain torch's loss is a few ulps that
    another summation order can exceed 2x (4.0e-15 against 2 x 0.87e-15 + 2 l u under MKL_CBWR), so the floor
    is the deterministic bound of the orthonormalization itself, householder_bound for the d x `columns`
    matrix it orthonormalized (default Q's own columns; the range finder's l = rank + oversample): the
    SVD rotation after it adds no loss to first order (Q^T Q - I = U^T (Q_y^T Q_y - I) U + rounding)."""
    l = Q.shape[1] if columns is None else columns
    unit = torch.finfo(Q.dtype).eps
    floor = Q.shape[0] * l * unit if Q.dtype == torch.float64 else 2 * Q.shape[1] * unit
    bound = 2 * orthogonality(plain_Q) + floor
    assert not torch.isnan(Q).any(), what
    assert orthogonality(Q) <= bound, f"{what}: ||Q^T Q - I||_F {orthogonality(Q):.3e} > {bound:.3e}"


@pytest.mark.parametrize("spectrum", list(SPECTRA))
@pytest.mark.parametrize("power_iters", [1, 2])
@pytest.mark.parametrize("side", SIDES)
def test_subspace_error_within_1_5x_of_truncated_svd(spectrum, power_iters, side, rng):
    """Issue 5, must-show 1: ||G - Q Q^T G||_F <= 1.5 x the optimal (truncated SVD) error at oversample 8.
    The optimum is what plain torch's truncated SVD achieves in the same precision (equal to
    sqrt(sum_{i>rank} s_i^2) up to its rounding, checked too), so exact-rank cases compare rounding floors."""
    s = SPECTRA[spectrum]
    G64 = known_spectrum(M, N, s, rng)
    G = G64.float()
    Q, S = ops.range_finder(G, RANK, oversample=8, power_iters=power_iters, seed=5, side=side)
    d = M if side == "left" else N
    assert Q.shape == (d, RANK) and S.shape == (RANK,) and Q.dtype == S.dtype == torch.float32
    exact = math.sqrt(sum(x * x for x in sorted(s, reverse=True)[RANK:]))
    optimal = residual(G64, svd_basis(G, RANK, side), side)
    assert optimal == pytest.approx(exact, rel=1e-4, abs=1e-5 * float(torch.linalg.norm(G64)))
    ours = residual(G64, Q, side)
    assert ours <= 1.5 * optimal, f"error {ours:.4e} > 1.5 x optimal {optimal:.4e}"
    Q_plain, _ = reference.range_finder(G, RANK, 8, power_iters, 5, side)
    assert_orthonormal(Q, Q_plain, spectrum, columns=RANK + 8)
    assert (S[:-1] >= S[1:]).all() and (S >= 0).all()


@pytest.mark.parametrize("spectrum", ["fast_decay", "exact_rank_below"])
def test_singular_values_match_the_spectrum(spectrum, rng):
    """The estimates S_i of a well-captured spectrum equal s_i within twice the error of plain torch doing the
    same computation in float32 (the reference range finder: the sketch, the power iterations, B = Q^T G and
    its SVD), plus one float32 unit of s_1; they never exceed the singular values of G (S_i are those of A W
    with W orthonormal: interlacing), up to twice that computation's rounding error. (Plain torch's svdvals
    of G is not the same computation: it rounds no 300-term float32 GEMM, and under MKL_CBWR=COMPATIBLE its
    error was 1.1 ulp of s_1 against the op's 3.5, that of the plain range finder too.)"""
    s = SPECTRA[spectrum]
    G = known_spectrum(M, N, s, rng).float()
    _, S = ops.range_finder(G, RANK, power_iters=2)
    _, S_plain = reference.range_finder(G, RANK, 8, 2, 0, "left")  # the op's defaults: oversample 8, seed 0
    true = torch.zeros(RANK, dtype=torch.float64)
    top = sorted(s, reverse=True)[:RANK]
    true[: len(top)] = torch.tensor(top, dtype=torch.float64)
    plain_err = float((S_plain.double() - true).abs().max())
    unit = torch.finfo(torch.float32).eps * true[0]
    err = float((S.double() - true).abs().max())
    assert err <= 2 * plain_err + unit, f"{err:.3e} vs torch {plain_err:.3e}"
    exact = torch.linalg.svdvals(G.double())[:RANK]  # of the float32 matrix itself
    rounding = float((S_plain.double() - exact).abs().max())
    assert (S.double() <= exact + 2 * rounding + unit).all()


def test_zero_gradient_gives_orthonormal_basis_and_min_rank():
    G = torch.zeros(37, 23)
    for side in SIDES:
        Q, S = ops.range_finder(G, 6, side=side)
        assert not torch.isnan(Q).any() and torch.equal(S, torch.zeros(6))
        assert orthogonality(Q) <= householder_bound(Q)
        r, Q_r, S_r = ops.adaptive_rank(G, 0.9, 10, min_rank=3, side=side)
        assert r == 3 and Q_r.shape == ((37 if side == "left" else 23), 3) and not torch.isnan(Q_r).any()
        assert orthogonality(Q_r) <= householder_bound(Q_r) and torch.equal(S_r, torch.zeros(3))


# ----------------------------------------------------------------------------------------------------
# adaptive_rank
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 7, 20])
@pytest.mark.parametrize("side", SIDES)
def test_adaptive_rank_finds_the_exact_rank(k, side, rng):
    """A rank-k matrix (smallest energy share s_k^2 / ||G||^2 >= 0.5 %): energy 1 - 1e-5 must give r = k,
    and min_rank above k wins."""
    G = known_spectrum(257, 131, [2.0 ** (-i / 4) for i in range(k)], rng).float()
    r, Q_r, S_r = ops.adaptive_rank(G, 1 - 1e-5, 30, side=side)
    assert r == k and Q_r.shape[1] == k and S_r.shape == (k,)
    assert ops.adaptive_rank(G, 1 - 1e-5, 30, min_rank=k + 2, side=side)[0] == k + 2


@pytest.mark.parametrize("target", [1, 3, 10, 25])
@pytest.mark.parametrize("side", SIDES)
def test_adaptive_rank_for_a_prescribed_energy(target, side, rng):
    """s_i = 0.9^i: the energy kept by the best rank-r basis is c_r = sum_{i<=r} s_i^2 / sum s_i^2,
    computed here from the chosen s. An energy halfway between c_{target-1} and c_target must give
    r = target; the returned basis must meet the energy and its prefix of target - 1 columns must not
    (both residuals computed from G and Q in float64, not from the op's singular values)."""
    s = torch.tensor([0.9**i for i in range(131)], dtype=torch.float64)
    G64 = known_spectrum(257, 131, s, rng)
    c = torch.cumsum(s.square(), 0) / s.square().sum()
    energy = float((c[target - 2] + c[target - 1]) / 2) if target > 1 else float(c[0] / 2)
    r, Q_r, S_r = ops.adaptive_rank(G64.float(), energy, 40, side=side, seed=11)
    assert r == target
    total = float(G64.square().sum())
    assert residual(G64, Q_r, side) ** 2 <= (1 - energy) * total
    if r > 1:
        assert residual(G64, Q_r[:, : r - 1], side) ** 2 > (1 - energy) * total


@pytest.mark.parametrize("energy", [0.3, 0.6, 0.8])
@pytest.mark.parametrize("power_iters", [0, 1])
def test_adaptive_rank_keeps_the_energy_on_slow_decay(energy, power_iters, rng):
    """s_i = 1/sqrt(i+1), where the tail bound has slack: the returned basis must still keep the energy
    (the guarantee), and r cannot be below the optimal rank r* = min{r : c_r >= energy} of the spectrum."""
    s = torch.tensor([1 / math.sqrt(i + 1) for i in range(131)], dtype=torch.float64)
    G64 = known_spectrum(257, 131, s, rng)
    c = torch.cumsum(s.square(), 0) / s.square().sum()
    r_opt = int((c < energy).sum()) + 1
    r, Q_r, _ = ops.adaptive_rank(G64.float(), energy, 120, power_iters=power_iters, seed=3)
    assert residual(G64, Q_r, "left") ** 2 <= (1 - energy) * float(G64.square().sum())
    assert r_opt <= r < 120


def test_adaptive_rank_caps_at_max_rank(rng):
    G = known_spectrum(120, 90, [1 / math.sqrt(i + 1) for i in range(90)], rng).float()
    r, Q_r, S_r = ops.adaptive_rank(G, 0.99, 12)
    assert r == 12 and Q_r.shape == (120, 12) and S_r.shape == (12,)


def test_select_rank_against_a_direct_scan():
    """The closed-form selection (production) against a plain loop over r (float64) and the oracle's."""
    gen = torch.Generator().manual_seed(4)
    for _ in range(50):
        S = torch.sort(torch.rand(15, generator=gen, dtype=torch.float64), descending=True).values
        sqnorm = S.square().sum() + torch.rand((), generator=gen, dtype=torch.float64)
        energy = float(torch.rand((), generator=gen)) * 0.98 + 0.01
        min_rank = int(torch.randint(1, 6, (), generator=gen))
        expected = next((r for r in range(min_rank, 16) if sqnorm - S[:r].square().sum() <= (1 - energy) * sqnorm),
                        15)
        assert int(rf.select_rank(S, sqnorm, energy, min_rank, 15)) == expected
        assert reference.select_rank(S, sqnorm, energy, min_rank, 15) == expected


# ----------------------------------------------------------------------------------------------------
# CholeskyQR2 and its fallback
# ----------------------------------------------------------------------------------------------------


def plain_cholesky_qr2(Y):
    """CholeskyQR2 without any check: what the fallback protects against."""
    for _ in range(2):
        R = torch.linalg.cholesky_ex(Y.mT @ Y).L.mT
        Y = torch.linalg.solve_triangular(R, Y, upper=True, left=False)
    return Y


@pytest.mark.parametrize("dtype,cond", [(torch.float32, 1e6), (torch.float64, 1e12)])
def test_cholesky_qr2_falls_back_on_ill_conditioned_input(dtype, cond, rng):
    """kappa(Y) = cond (far beyond u^-1/2): unchecked CholeskyQR2 loses orthogonality or breaks down; the
    op detects it, falls back to Householder QR and returns an orthonormal basis of span(Y)."""
    Y = known_spectrum(400, 30, torch.logspace(0, -math.log10(cond), 30, dtype=torch.float64), rng).to(dtype)
    unchecked = plain_cholesky_qr2(Y)
    assert not orthogonality(unchecked) <= rf.ORTHOGONALITY_LIMIT  # (NaN counts as a failure too)
    Q, R, fell_back = rf.cholesky_qr2(Y)
    assert fell_back
    H, HR = torch.linalg.qr(Y)
    assert torch.equal(Q, H) and torch.equal(R, HR)  # the fallback is plain Householder QR
    assert orthogonality(Q) <= householder_bound(Q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cholesky_qr2_keeps_the_fast_path_on_well_conditioned_input(dtype, rng):
    Y = known_spectrum(400, 30, torch.linspace(1, 0.1, 30, dtype=torch.float64), rng).to(dtype)
    Q, R, fell_back = rf.cholesky_qr2(Y)
    assert not fell_back
    assert torch.equal(R, R.triu())
    (H, HR), H64 = torch.linalg.qr(Y), torch.linalg.qr(Y.double()).Q
    assert_orthonormal(Q, H, "CholeskyQR2")
    # the longest sums: the Gram matrix Y^T Y over Y's 400 rows (CholeskyQR), and Q R over 30 columns
    assert_within_torch_error(Q @ Q.mT, H64 @ H64.mT, H @ H.mT, "span", k=Y.shape[0])
    assert_within_torch_error(Q @ R, Y.double(), H @ HR, "Q R = Y", k=Y.shape[1])


def test_float64_floor_admits_the_span_error_measured_on_an_epyc_cpu():
    """Issue 16, reproduction 8: on an AMD EPYC CPU the float64 span check above measured a relative error of
    1.392e-15 where plain torch's was 0, above the former floor sqrt(30) u = 1.216e-15 (k was Q R's 30
    columns, not the Gram matrix's 400 rows, and sqrt(k) is no bound). The floor is now gamma_400(eps),
    which holds for every summation order (tests/helpers.py)."""
    eps = torch.finfo(torch.float64).eps
    assert math.sqrt(30) * eps < 1.392e-15 <= 400 * eps / (1 - 400 * eps)
    ref = torch.ones(100, dtype=torch.float64)
    out = ref.clone()
    out[0] += 10 * 1.392e-15  # ||out - ref|| / ||ref|| = 1.392e-15, up to the rounding of the sum
    assert rel_err(out, ref) >= 1.392e-15
    assert_within_torch_error(out, ref, ref, "the EPYC span error", k=400)
    with pytest.raises(AssertionError, match="relative error"):  # a floor below the error fails the check
        assert_within_torch_error(out, ref, ref, "the EPYC span error", k=5)  # gamma_5(eps) = 1.11e-15


@pytest.mark.parametrize("Y", [torch.zeros(9, 4), torch.ones(9, 4), torch.eye(9, 4)[:, [0, 1, 1, 2]]],
                         ids=["zero", "rank1", "repeated_column"])
def test_cholesky_qr2_singular_input(Y):
    Q, R, fell_back = rf.cholesky_qr2(Y)
    assert fell_back and not torch.isnan(Q).any()
    assert torch.equal(Q, torch.linalg.qr(Y).Q)
    assert orthogonality(Q) <= householder_bound(Q)


def op_backends():
    """The backends the custom op takes here."""
    return [p.values[0] for p in CPU_BACKENDS if not p.marks[0].args[0]]


def op_backend():
    return op_backends()[0]


def test_range_finder_reports_fallbacks(rng):
    """The op's fourth output counts fallbacks: the fast-decay sketch is ill-conditioned (kappa(Y) ~ 1e4-1e5
    in float32, 0.7^27), the slow-decay one is not."""
    for spectrum, expect_fallback in [("fast_decay", True), ("slow_decay", False), ("rank_deficient", True)]:
        G = known_spectrum(M, N, SPECTRA[spectrum], rng).float()
        Q, S, sqnorm, fallbacks = torch.ops.lowrank_ops.range_finder(G, RANK, 8, 1, 0, "left", op_backend())
        assert (int(fallbacks) > 0) == expect_fallback, spectrum
        assert 0 <= int(fallbacks) <= 4  # 2 power_iters + 2 orthonormalizations
        assert float(sqnorm) == pytest.approx(float(G.double().square().sum()), rel=1e-6)


# ----------------------------------------------------------------------------------------------------
# Every backend against the float64 reference
# ----------------------------------------------------------------------------------------------------

PARITY_CASES = [((67, 45), 5, 2), ((45, 67), 5, 1), ((129, 33), 9, 1), ((1, 1), 1, 1), ((1, 9), 1, 0),
                ((9, 1), 1, 1), ((40, 12), 12, 1)]
# Every layout in float32, every dtype in some layout (the sketch GEMM's own layout x dtype grid is in
# test_sketch.py; here the layout only reaches the sketch op and torch's matmuls).
DTYPE_LAYOUTS = [(torch.float32, "contiguous"), (torch.float32, "transposed"), (torch.float32, "sliced"),
                 (torch.float64, "contiguous"), (torch.bfloat16, "sliced"), (torch.float16, "transposed")]


def decaying(shape, dtype, rng, layout):
    """A random matrix in `layout` whose singular values decay as 0.6^i, so that every rank has a gap."""
    G = random_matrix(shape, torch.float64, rng, layout)
    m, n = shape
    k = min(m, n)
    G.copy_(known_spectrum(m, n, [0.6**i for i in range(k)], rng))
    return G.to(dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape,rank,power_iters", PARITY_CASES)
@pytest.mark.parametrize("dtype,layout", DTYPE_LAYOUTS, ids=lambda x: str(x).replace("torch.", ""))
@pytest.mark.parametrize("side", SIDES)
def test_range_finder_matches_float64_reference(backend, shape, rank, power_iters, dtype, layout, side, rng):
    """Projector Q Q^T and singular values against the float64 reference, under the tolerance rule: plain
    torch is the reference algorithm run in the op's compute precision."""
    if backend == "triton" and (dtype, layout) not in DTYPE_LAYOUTS[:2]:
        pytest.skip("interpreter time: triton runs float32 contiguous/transposed here (its dtypes and "
                    "layouts are tested by test_sketch.py)")
    G = decaying(shape, dtype, rng, layout)
    Q, S = ops.range_finder(G, rank, power_iters=power_iters, seed=LARGE_SEED, side=side, backend=backend)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    d = shape[0] if side == "left" else shape[1]
    assert Q.shape == (d, rank) and S.shape == (rank,) and Q.dtype == S.dtype == compute
    Q64, S64 = reference.range_finder(G.double(), rank, 8, power_iters, LARGE_SEED, side)
    Qp, Sp = reference.range_finder(G.to(compute), rank, 8, power_iters, LARGE_SEED, side)
    what = f"{backend} {shape} {dtype} {layout} {side}"
    # Spec v1 lets backends' Gaussian entries differ by a few float32 ulp, in float64 too (the Box-Muller
    # arithmetic is float32): that perturbation of Omega is part of the bound.
    tol = GAUSSIAN_ENTRY_TOL
    assert_within_torch_error(Q @ Q.mT, Q64 @ Q64.mT, Qp @ Qp.mT, what + " QQ^T", k=max(shape), entry_tol=tol)
    assert_within_torch_error(S, S64, Sp, what + " S", k=max(shape), entry_tol=tol)
    assert_orthonormal(Q, Qp, what, columns=min(rank + 8, *shape))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_adaptive_rank_backends_agree(backend, rng):
    G = decaying((70, 50), torch.float32, rng, "contiguous")
    energy = 0.99  # 0.6^i: c_r = 1 - 0.36^r, so r = 5 (0.36^4 = 1.7 %, 0.36^5 = 0.6 %)
    r, Q, S = ops.adaptive_rank(G, energy, 12, backend=backend)
    r64, Q64, S64 = reference.adaptive_rank(G.double(), energy, 12)
    _, Qp, Sp = reference.adaptive_rank(G, energy, 12)
    assert r == r64 == 5 and Q.shape == (70, 5)
    assert_within_torch_error(Q @ Q.mT, Q64 @ Q64.mT, Qp @ Qp.mT, f"{backend} Q_r", k=70,
                              entry_tol=GAUSSIAN_ENTRY_TOL)
    assert_within_torch_error(S, S64, Sp, f"{backend} S_r", k=70, entry_tol=GAUSSIAN_ENTRY_TOL)


def test_seed_determinism_and_dependence(rng):
    G = decaying((60, 40), torch.float32, rng, "contiguous")
    a = ops.range_finder(G, 4, seed=LARGE_SEED, power_iters=0)
    b = ops.range_finder(G, 4, seed=LARGE_SEED, power_iters=0)
    c = ops.range_finder(G, 4, seed=7, power_iters=0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


# ----------------------------------------------------------------------------------------------------
# Custom op checks, torch.compile, errors
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", op_backends())
@pytest.mark.parametrize("side", SIDES)
def test_opcheck(backend, side, rng):
    for dtype in (torch.float32, torch.bfloat16):
        G = torch.randn(23, 19, generator=rng).to(dtype)
        torch.library.opcheck(torch.ops.lowrank_ops.range_finder.default, (G, 4, 3, 1, 42, side, backend))


def test_torch_compile_fullgraph_matches_eager(rng):
    def f(G):
        Q, S = ops.range_finder(G, 3, power_iters=1, seed=9, side="right")
        return Q * S, torch.tanh(Q)

    G = torch.randn(17, 11, generator=rng)
    assert_compiled_matches_eager(f, G)


def with_entry(value):
    G = torch.randn(20, 10)
    G[3, 4] = value
    return G


@pytest.mark.parametrize("call,message", [
    (lambda: ops.range_finder(with_entry(float("nan")), 3), "argument 'G' must be finite, got a tensor with 1 NaN"),
    (lambda: ops.range_finder(with_entry(float("inf")), 3, backend="reference"), "argument 'G' must be finite"),
    (lambda: ops.adaptive_rank(with_entry(-float("inf")), 0.9, 3), "argument 'G' must be finite"),
    (lambda: ops.range_finder(torch.full((20, 10), 1e20), 3), "squared Frobenius norm representable in torch.float32"),
    (lambda: ops.range_finder(torch.randn(3, 4, 5), 2), "argument 'G' must be a 2-D tensor"),
    (lambda: ops.range_finder(torch.ones(3, 4, dtype=torch.int32), 2), "argument 'G' must be float32"),
    (lambda: ops.range_finder(torch.randn(0, 4), 1), "argument 'G' must be non-empty"),
    (lambda: ops.range_finder(torch.randn(30, 4), 0), "argument 'rank' must be >= 1, got 0"),
    (lambda: ops.range_finder(torch.randn(30, 4), 5), "argument 'rank' must be <= min(m, n) = 4"),
    (lambda: ops.range_finder(torch.randn(30, 4), 2, oversample=-1), "argument 'oversample' must be >= 0"),
    (lambda: ops.range_finder(torch.randn(30, 4), 2, power_iters=-2), "argument 'power_iters' must be >= 0"),
    (lambda: ops.range_finder(torch.randn(30, 4), 2, seed=-1), "argument 'seed' must be an int in [0, 2^64)"),
    (lambda: ops.range_finder(torch.randn(30, 4), 2, side="up"), "argument 'side' must be 'left' or 'right'"),
    (lambda: ops.range_finder(torch.randn(30, 4), 2, backend="gpu"), "lowrank_ops.range_finder: argument 'backend'"),
    (lambda: ops.adaptive_rank(torch.randn(30, 4), 1.0, 3), "argument 'energy' must be a number in (0, 1)"),
    (lambda: ops.adaptive_rank(torch.randn(30, 4), 0.0, 3), "argument 'energy' must be a number in (0, 1)"),
    (lambda: ops.adaptive_rank(torch.randn(30, 4), 0.9, 5), "argument 'max_rank' must be <= min(m, n) = 4"),
    (lambda: ops.adaptive_rank(torch.randn(30, 4), 0.9, 3, min_rank=4), "argument 'min_rank' must be <= max_rank"),
    (lambda: ops.adaptive_rank(torch.randn(30, 4), 0.9, 3, min_rank=0), "argument 'min_rank' must be >= 1"),
])
def test_bad_arguments_raise_clear_errors(call, message):
    assert_clear_error(call, ValueError, message)


def test_energy_of_a_wrong_type_is_a_type_error():
    assert_clear_error(lambda: ops.adaptive_rank(torch.randn(30, 4), "0.9", 3), TypeError,
                       "argument 'energy' must be a number in (0, 1), got str")


def test_the_op_itself_rejects_non_finite_input():
    """torch.ops callers get the same error (the check is inside the op, not only in the wrapper)."""
    backend = op_backend()
    with pytest.raises(ValueError, match="lowrank_ops.range_finder: argument 'G' must be finite"):
        torch.ops.lowrank_ops.range_finder(with_entry(float("nan")), 3, 8, 1, 0, "left", backend)


def test_unavailable_backend_names_this_op():
    if torch.cuda.is_available():
        pytest.skip("cuda is available")
    with pytest.raises(RuntimeError, match="lowrank_ops.range_finder: backend 'cuda' is not available"):
        ops.range_finder(torch.randn(8, 8), 2, backend="cuda")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("side", SIDES)
def test_gpu_parity_with_reference(backend, dtype, side, rng):
    """CUDA and Triton sketch GEMMs on the GPU: projector and singular values against the float64
    reference, under the tolerance rule; subspace error within 1.5x of the truncated SVD."""
    G = decaying((517, 301), dtype, rng, "contiguous")
    Q, S = ops.range_finder(G.cuda(), 24, power_iters=1, seed=3, side=side, backend=backend)
    Q, S = Q.cpu(), S.cpu()
    Q64, S64 = reference.range_finder(G.double(), 24, 8, 1, 3, side)
    Qp, Sp = reference.range_finder(G.float(), 24, 8, 1, 3, side)
    assert_within_torch_error(Q @ Q.mT, Q64 @ Q64.mT, Qp @ Qp.mT, f"{backend} QQ^T", k=517,
                              entry_tol=GAUSSIAN_ENTRY_TOL)
    assert_within_torch_error(S, S64, Sp, f"{backend} S", k=517, entry_tol=GAUSSIAN_ENTRY_TOL)
    G64 = G.double()
    assert residual(G64, Q, side) <= 1.5 * residual(G64, svd_basis(G.float(), 24, side), side)
