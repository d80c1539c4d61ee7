"""The DCT family on every available backend: the basis against scipy.fft.dct(norm="ortho"), scores against
the float64 reference under the tolerance rule, top-k equal to the reference's (well-separated scores and
deliberately constructed exact ties), both CPU methods (GEMM and FFT), determinism, opcheck,
torch.compile and argument errors."""

import functools

import numpy as np
import pytest
import scipy.fft
import torch

from lowrank_ops import backends as lowrank_backends
from lowrank_ops import ops
from lowrank_ops.reference import dct as reference

from helpers import (
    assert_clear_error,
    assert_compiled_matches_eager,
    assert_within_torch_error,
    backends,
    random_matrix,
)

SIDES = ("left", "right")
NORMS = ("l1", "l2")
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
LAYOUTS = ["contiguous", "transposed", "sliced"]
CPU_BACKENDS = backends("dct_scores")
GPU_BACKENDS = backends("dct_scores", "cuda")
CPP_LOADED = lowrank_backends.unavailable_reason("cpu", "dct_scores", torch.device("cpu")) is None


@functools.lru_cache(maxsize=4)
def scipy_basis(d: int) -> np.ndarray:
    """Rows are the basis vectors: column t of dct(I, axis=0) is the transform of e_t, i.e. D[:, t]."""
    return scipy.fft.dct(np.eye(d), norm="ortho", axis=0)


def backend_name(param) -> str:
    return param.values[0] if hasattr(param, "values") else param


def is_triton(backend) -> bool:
    return backend == "triton"


# ---------------------------------------------------------------------------------------------------------
# Basis
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("d", [1, 2, 3, 7, 64, 1000, 4096])
def test_basis_rows_equal_scipy(backend, d, rng):
    """fp32 rows within 1e-6 of scipy's float64 DCT-II matrix. The Triton interpreter is slow, so for
    d >= 1000 it checks 40 rows (first, last and random ones) instead of all."""
    if is_triton(backend) and d >= 1000:
        idx = torch.cat([torch.tensor([0, 1, d - 1]), torch.randint(0, d, (37, ), generator=rng)])
    else:
        idx = torch.arange(d)
    rows = ops.dct_basis(d, idx, backend=backend)
    assert rows.dtype == torch.float32 and rows.shape == (idx.numel(), d)
    err = np.abs(rows.double().numpy() - scipy_basis(d)[idx.numpy()]).max()
    assert err <= 1e-6, f"max |basis - scipy| = {err:.3e}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("d", [5, 4096])
def test_basis_float64_and_16_bit(backend, d, rng):
    """float64 rows are float64-accurate; 16-bit rows (float32 rows, rounded) are within one 16-bit ulp of
    the exact values rounded to 16 bits, plus 1e-7 absolute for the float32 computation (which matters where
    an entry is zero or tiny)."""
    idx = torch.randint(0, d, (9, ), generator=rng)
    exact = torch.from_numpy(scipy_basis(d)[idx.numpy()])
    rows64 = ops.dct_basis(d, idx, torch.float64, backend=backend)
    assert (rows64 - exact).abs().max() <= 1e-14
    for dtype in (torch.bfloat16, torch.float16):
        rows = ops.dct_basis(d, idx, dtype, backend=backend)
        assert rows.dtype == dtype
        torch.testing.assert_close(rows, exact.to(dtype), rtol=torch.finfo(dtype).eps, atol=1e-7)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("index_dtype", [torch.int16, torch.int32, torch.int64])
def test_basis_index_dtypes_order_and_repeats(backend, index_dtype):
    """Rows come out in the order given, repeats allowed; a list works like a tensor."""
    idx = torch.tensor([6, 0, 3, 3, 10], dtype=index_dtype)
    rows = ops.dct_basis(11, idx, backend=backend)
    expected = torch.from_numpy(scipy_basis(11)[[6, 0, 3, 3, 10]])
    assert (rows.double() - expected).abs().max() <= 1e-6
    assert torch.equal(ops.dct_basis(11, [6, 0, 3, 3, 10], backend=backend), rows)
    assert ops.dct_basis(11, torch.zeros(0, dtype=index_dtype), backend=backend).shape == (0, 11)


# ---------------------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------------------


def plain_torch_scores(G, side, norm):
    """The same computation by plain torch in G's precision: the basis materialized in G's dtype, one
    matmul in that dtype, the norms of the result in float32 (float64 for float64)."""
    d = G.shape[0] if side == "left" else G.shape[1]
    D = reference.dct_basis(d, dtype=G.dtype)
    X = (D @ G if side == "left" else G @ D.T).to(reference.score_dtype(G.dtype))
    dim = 1 if side == "left" else 0
    return X.abs().sum(dim) if norm == "l1" else torch.linalg.vector_norm(X, 2, dim=dim)


# (shape, layout): odd sizes, size 1, and sizes across the Triton block edges (64 / 128).
SCORE_CASES = [((1, 1), "contiguous"), ((1, 9), "sliced"), ((7, 1), "transposed"), ((33, 65), "sliced"),
               ((70, 45), "transposed"), ((130, 3), "contiguous")]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape,layout", SCORE_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("side", SIDES)
def test_scores_match_float64_reference(backend, shape, layout, dtype, side, rng):
    norm = NORMS[(shape[0] + shape[1]) % 2]  # both norms over the cases, without doubling the (slow) grid
    G = random_matrix(shape, dtype, rng, layout)
    d = shape[0] if side == "left" else shape[1]
    out = ops.dct_scores(G, side, norm, backend=backend)
    assert out.shape == (d, ) and out.dtype == reference.score_dtype(dtype)
    ref64 = reference.dct_scores(G.double(), side, norm)
    # the longest chain of sums: the d terms of an entry of D G, then the norm's sum over the other dimension
    assert_within_torch_error(out, ref64, plain_torch_scores(G, side, norm), f"{backend} {side} {norm} {dtype}",
                              k=shape[0] + shape[1])


@pytest.mark.skipif(not CPP_LOADED, reason="compiled extension with the dct ops not loaded")
@pytest.mark.parametrize("method", ["gemm", "fft"])
@pytest.mark.parametrize("d,other", [(1, 4), (2, 3), (3, 1), (17, 9), (64, 5), (65, 33), (129, 7), (300, 41)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", NORMS)
def test_cpu_methods_match_reference(method, d, other, dtype, norm, rng):
    """Both CPU methods compute in float64 and round once: their float32 scores are within one float32 ulp
    of the float64 reference's (float64 scores: within the float64 bound of the tolerance rule)."""
    for side, shape, layout in (("left", (d, other), "sliced"), ("right", (other, d), "transposed")):
        G = random_matrix(shape, dtype, rng, layout)
        out = torch.ops.lowrank_ops.dct_scores(G, side, norm, method)
        ref = reference.dct_scores(G, side, norm)
        if dtype == torch.float64:
            assert_within_torch_error(out, ref, ref, f"{method} {side}", k=d + other)  # D G's sums, the norm's
        else:
            torch.testing.assert_close(out, ref, rtol=torch.finfo(torch.float32).eps, atol=0)  # 1 ulp


@pytest.mark.skipif(not CPP_LOADED, reason="compiled extension with the dct ops not loaded")
@pytest.mark.parametrize("d", [3, 300])
def test_cpu_auto_is_one_of_the_methods_and_thread_count_independent(d, rng):
    G = torch.randn(d, 77, generator=rng)
    auto = torch.ops.lowrank_ops.dct_scores(G, "left", "l1", "auto")
    chosen = [m for m in ("gemm", "fft") if torch.equal(auto, torch.ops.lowrank_ops.dct_scores(G, "left", "l1", m))]
    assert chosen, "auto matches neither method bit for bit"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = torch.ops.lowrank_ops.dct_scores(G, "left", "l1", "auto")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, auto)


# ---------------------------------------------------------------------------------------------------------
# Top-k
# ---------------------------------------------------------------------------------------------------------


def planted(d, other, side, dtype, rng):
    """G whose scores are well separated: G = D^T S (left) or S^T D (right) where row k of S has norm
    w_k, the w_k a random permutation of 1.07^j (7% apart; every backend's error is well below that)."""
    weights = 1.07 ** torch.randperm(d, generator=rng).double()
    S = torch.randn(d, other, generator=rng, dtype=torch.float64)
    S = S / S.abs().sum(1, keepdim=True) * weights[:, None]
    D = reference.dct_basis(d)
    G = D.T @ S if side == "left" else S.T @ D
    return G.to(dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("d,other,rank", [(1, 3, 1), (40, 17, 7), (131, 6, 131), (97, 70, 33)])
def test_topk_equals_reference_on_separated_scores(backend, dtype, side, d, other, rank, rng):
    G = planted(d, other, side, dtype, rng)
    norm = NORMS[d % 2]
    idx = ops.dct_topk(G, rank, side, norm, backend=backend)
    assert idx.dtype == torch.int32 and idx.shape == (rank, )
    expected = reference.dct_topk(G, rank, side, norm)
    assert torch.equal(idx, expected), f"{idx.tolist()} != {expected.tolist()}"
    assert torch.equal(idx, torch.sort(idx).values)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("side", SIDES)
def test_topk_all_zero_gradient_ties_to_lowest_indices(backend, dtype, side):
    """G = 0: every score is exactly 0 on every backend; the tie rule picks 0 .. rank-1."""
    G = torch.zeros((37, 5) if side == "left" else (5, 37), dtype=dtype)
    assert torch.equal(ops.dct_scores(G, side, backend=backend), torch.zeros(37, dtype=reference.score_dtype(dtype)))
    assert torch.equal(ops.dct_topk(G, 6, side, backend=backend), torch.arange(6, dtype=torch.int32))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("norm", NORMS)
def test_topk_exact_ties(backend, dtype, side, norm, rng):
    """Exact ties by construction. N = 129 is odd; G is zero except at the middle sample t = 64, so
    (D G)[k, :] = D[k, 64] G[64, :] with D[k, 64] = c_k cos(pi k / 2): exactly +-sqrt(2/N) for every even
    k >= 2 (64 tied scores), 0 for odd k, sqrt(1/N) for k = 0. Every backend evaluates D[k, 64] as one
    rounding of c_k times an exact +-1 (t = 64 also starts a K-tile of the Triton GEMM, where the angle-
    addition factors are exactly 1 and 0), so the 64 scores are equal floats and the tie rule picks the
    lowest even indices, [2, 4, 6] for rank 3. (CPU: float64 scores ~1e-16 apart, rounded once to
    float32, hence equal; float64 G keeps those differences, so float64 is not part of this test.)"""
    N, other = 129, 6
    g = torch.randn(other, generator=rng) + 2.0
    G = torch.zeros(N, other, dtype=dtype)
    G[64] = g.to(dtype)
    if side == "right":
        G = G.t().contiguous()
    ref = reference.dct_topk(G, 3, side, norm)
    assert ref.tolist() == [2, 4, 6]
    assert torch.equal(ops.dct_topk(G, 3, side, norm, backend=backend), ref)
    if backend == "cpu":  # the default is the FFT path at N = 129; the GEMM path must tie the same way
        assert torch.equal(torch.ops.lowrank_ops.dct_topk(G, 3, side, norm, "gemm"), ref)
    if backend == "reference":  # the order below the tied block: k = 0, then the zero scores of odd k
        assert reference.dct_topk(G, 65, side, norm).tolist() == [0] + list(range(2, 129, 2))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_d_equal_one(backend, rng):
    """d = 1: the basis is [[1]], the single score is the norm of G's only row (left) / column (right)."""
    G = torch.randn(1, 6, generator=rng)
    assert torch.equal(ops.dct_basis(1, [0], backend=backend), torch.ones(1, 1))
    torch.testing.assert_close(ops.dct_scores(G, "left", "l1", backend=backend), G.abs().sum(1))
    torch.testing.assert_close(ops.dct_scores(G.t(), "right", "l2", backend=backend), G.norm(dim=1))
    assert ops.dct_topk(G, 1, "left", backend=backend).tolist() == [0]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_repeated_calls_are_bit_identical(backend, rng):
    G = torch.randn(150, 11, generator=rng)
    assert torch.equal(ops.dct_scores(G, "left", backend=backend), ops.dct_scores(G, "left", backend=backend))
    assert torch.equal(ops.dct_topk(G, 20, "left", backend=backend), ops.dct_topk(G, 20, "left", backend=backend))


# ---------------------------------------------------------------------------------------------------------
# opcheck, torch.compile
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("side", SIDES)
def test_opcheck(backend, side, rng):
    lib = torch.ops.lowrank_ops
    for dtype in (torch.float32, torch.bfloat16):
        G = torch.randn(23, 19, generator=rng).to(dtype)
        torch.library.opcheck(lib.dct_scores.default, (G, side, "l2", "auto", backend))
        torch.library.opcheck(lib.dct_topk.default, (G, 5, side, "l1", "auto", backend))
    torch.library.opcheck(lib.dct_basis.default, (torch.tensor([3, 0, 7], dtype=torch.int32), 9, torch.float32, backend))


@pytest.mark.parametrize("backend", [p for p in CPU_BACKENDS if backend_name(p) != "triton"])
def test_torch_compile_fullgraph_matches_eager(backend, rng):
    def f(G):
        idx = ops.dct_topk(G, 4, "right", backend=backend)
        P = ops.dct_basis(G.shape[1], idx, backend=backend)
        return G @ P.T, ops.dct_scores(G, "left", "l2", backend=backend)

    G = torch.randn(10, 13, generator=rng)
    assert_compiled_matches_eager(f, G)


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call,message", [
    (lambda: ops.dct_topk(torch.randn(7, 5), 9, "left"),
     ("lowrank_ops.dct_topk: argument 'rank' must be <= 7 (the projected dimension d of G, side 'left', "
      "shape [7, 5]), got 9")),
    (lambda: ops.dct_topk(torch.randn(7, 5), 6, "right"), "argument 'rank' must be <= 5"),
    (lambda: ops.dct_topk(torch.randn(7, 5), 0, "left"), "argument 'rank' must be >= 1, got 0"),
    (lambda: ops.dct_scores(torch.randn(3, 4, 5), "left"), "argument 'G' must be a 2-D tensor"),
    (lambda: ops.dct_scores(torch.ones(3, 4, dtype=torch.int32), "left"), "argument 'G' must be float32"),
    (lambda: ops.dct_scores(torch.randn(3, 4), "up"), "argument 'side' must be 'left' or 'right'"),
    (lambda: ops.dct_scores(torch.randn(3, 4), "left", "l3"), "argument 'norm' must be 'l1' or 'l2'"),
    (lambda: ops.dct_scores(torch.randn(0, 4), "left"), "argument 'G' must be non-empty along the projected"),
    (lambda: ops.dct_scores(torch.randn(3, 4), "left", backend="gpu"), "argument 'backend' must be one of"),
    (lambda: ops.dct_basis(0, [0]), "lowrank_ops.dct_basis: argument 'dim' must be >= 1, got 0"),
    (lambda: ops.dct_basis(5, [0, 5]), "argument 'indices' must be values in [0, 5), got values in [0, 5]"),
    (lambda: ops.dct_basis(5, [-1]), "argument 'indices' must be values in [0, 5), got values in [-1, -1]"),
    (lambda: ops.dct_basis(5, torch.tensor([1.0])), "argument 'indices' must be an int16, int32 or int64 tensor"),
    (lambda: ops.dct_basis(5, torch.zeros(2, 2, dtype=torch.int64)), "argument 'indices' must be a 1-D tensor"),
    (lambda: ops.dct_basis(5, [1], dtype=torch.int32), "argument 'dtype' must be float32"),
])
def test_bad_arguments_raise_clear_errors(call, message):
    assert_clear_error(call, ValueError, message)


@pytest.mark.skipif(not CPP_LOADED, reason="compiled extension with the dct ops not loaded")
def test_cpu_backend_rejects_bad_input_too():
    """The C++ ops check their arguments themselves, for C++ and torch.ops callers."""
    lib = torch.ops.lowrank_ops
    with pytest.raises(RuntimeError, match=r"lowrank_ops.dct_topk: argument 'rank' must be <= 7 \(the projected "
                       r"dimension d of G, side left, shape \[7, 5\]\), got 9"):
        lib.dct_topk(torch.randn(7, 5), 9, "left")
    with pytest.raises(RuntimeError, match="argument 'method' must be \"auto\", \"gemm\" or \"fft\""):
        lib.dct_scores(torch.randn(7, 5), "left", "l1", "svd")
    with pytest.raises(RuntimeError, match="argument 'norm' must be \"l1\" or \"l2\""):
        lib.dct_scores(torch.randn(7, 5), "left", "max")
    with pytest.raises(RuntimeError, match=r"argument 'indices' must hold values in \[0, 4\), got values in \[0, 4\]"):
        lib.dct_basis(torch.tensor([0, 4]), 4, torch.float32)


# ---------------------------------------------------------------------------------------------------------
# GPU (skipped without one; never faked)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("side", SIDES)
def test_gpu_parity(backend, dtype, side, rng):
    """CUDA and Triton on the GPU: basis against scipy, scores under the tolerance rule, top-k equal to the
    reference on separated scores and on exact ties."""
    d = 1000
    rows = ops.dct_basis(d, torch.arange(d, device="cuda"), backend=backend).cpu()
    assert np.abs(rows.double().numpy() - scipy_basis(d)).max() <= 1e-6
    for layout in LAYOUTS:
        G = random_matrix((517, 301), dtype, rng, layout)
        for norm in NORMS:
            out = ops.dct_scores(G.cuda(), side, norm, backend=backend).cpu()
            assert_within_torch_error(out, reference.dct_scores(G.double(), side, norm),
                                      plain_torch_scores(G, side, norm), f"{backend} {side} {norm} {dtype}",
                                      k=517 + 301)
    G = planted(300, 70, side, dtype, rng)
    assert torch.equal(ops.dct_topk(G.cuda(), 64, side, backend=backend).cpu(), reference.dct_topk(G, 64, side))
    if dtype != torch.float64:
        G = torch.zeros(129, 6, dtype=dtype)
        G[64] = 3.0
        G = G if side == "left" else G.t().contiguous()
        assert ops.dct_topk(G.cuda(), 3, side, backend=backend).cpu().tolist() == [2, 4, 6]
