"""dct_project / dct_unproject (issue 18 item 2): P G, G P^T, P^T R and R P for P[i, t] = signs[t] D[idx_i, t]
(the sr_dct projection S C D with +-1 signs; the "dct" rows without) on every CPU backend and both CPU
methods (GEMM on generated tiles, FFT), against the float64 oracle (lowrank_ops/reference/dct.py) under the
tolerance rule of docs/DESIGN.md §5; opcheck, gradcheck, compile, thread-count independence and clear errors."""

import pytest
import torch

from lowrank_ops import _extension, ops, projections
from lowrank_ops.projections import sr_dct
from lowrank_ops.reference import dct as reference

from helpers import (
    assert_clear_error,
    assert_compiled_matches_eager,
    assert_within_torch_error,
    backends,
    random_matrix,
)

CPU_BACKENDS = backends("dct_project")
SIDES = ("left", "right")
# "auto" is one of the two; the reference kernel has one way and ignores `method`
METHODS = ("gemm", "fft")

# (shape, rank): d = 1, d = 2, odd and even d (the Nyquist bin d/2), d above a tile of 2^17 / d rows and a
# chunk of 2^16 / d signals, r = d, r > d (repeated rows)
CASES = [((1, 1), 1), ((2, 5), 2), ((7, 3), 4), ((64, 9), 64), ((129, 40), 13), ((300, 301), 37),
         ((1030, 70), 130), ((5, 1), 9)]
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
LAYOUTS = ("contiguous", "transposed", "sliced")


def indices_for(d, r, rng):
    """r rows of [0, d): distinct when r <= d, with 0, d // 2 and d - 1 among them (the DC, Nyquist and last
    bins of the FFT path); repeated rows when r > d."""
    if r > d:
        return torch.randint(0, d, (r,), generator=rng)
    chosen = torch.randperm(d, generator=rng)[:r]
    special = torch.tensor(sorted({0, d // 2, d - 1}))[:r]
    rest = chosen[~torch.isin(chosen, special)][: r - len(special)]
    return torch.cat([special, rest])[torch.randperm(r, generator=rng)]


def plain_torch(which, X, idx, dim, side, signs):
    """The same computation by plain torch in X's precision: P materialized in X's dtype, then a matmul."""
    P = reference.dct_basis(dim, idx) * (1 if signs is None else signs.double()[None, :])
    P = P.to(X.dtype)
    if which == "project":
        return P @ X if side == "left" else X @ P.T
    return P.T @ X if side == "left" else X @ P


def check(which, backend, method, shape, rank, dtype, layout, side, with_signs, rng):
    m, n = shape
    d = m if side == "left" else n
    idx = indices_for(d, rank, rng).to(torch.int16 if d < 2**15 else torch.int32)
    signs = torch.where(torch.rand(d, generator=rng) < 0.5, -1.0, 1.0) if with_signs else None
    if which == "project":
        X = random_matrix(shape, dtype, rng, layout)
        out = ops.dct_project(X, idx, side, signs, method=method, backend=backend)
        ref64 = reference.dct_project(X.double(), idx, side, signs)
        expected, k = ((rank, n) if side == "left" else (m, rank)), d
    else:
        X = random_matrix((rank, n) if side == "left" else (m, rank), dtype, rng, layout)
        out = ops.dct_unproject(X, idx, d, side, signs, method=method, backend=backend)
        ref64 = reference.dct_unproject(X.double(), idx, d, side, signs)
        expected, k = shape, rank
    assert out.shape == expected and out.dtype == dtype
    assert_within_torch_error(out, ref64, plain_torch(which, X, idx, d, side, signs),
                              f"{backend}/{method} {which} {side} {dtype} {layout} {shape} r={rank}", k=k)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("which", ("project", "unproject"))
@pytest.mark.parametrize("shape,rank", CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("side", SIDES)
def test_matches_float64_reference_fp32_every_layout(backend, method, which, shape, rank, side, rng):
    for layout in LAYOUTS:
        for with_signs in (False, True):
            check(which, backend, method, shape, rank, torch.float32, layout, side, with_signs, rng)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("which", ("project", "unproject"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("side", SIDES)
def test_matches_float64_reference_other_dtypes(backend, method, which, dtype, side, rng):
    for (shape, rank), layout in zip(CASES, LAYOUTS * 3):
        check(which, backend, method, shape, rank, dtype, layout, side, True, rng)


def test_methods_and_auto_agree_on_an_sr_dct_projection(rng):
    """P = S C D of an sr_dct seed through the public ops (rows and signs of projections.sr_dct): the GEMM
    and FFT ways and "auto" against the materialized P (float64) under the tolerance rule."""
    if not _extension.LOADED:
        pytest.skip("the compiled CPU kernels are not built")
    d, other, rank, seed = 512, 96, 48, projections.derive_seed(3, 1, 4)
    idx, signs = sr_dct.rows(rank, d, seed), sr_dct.signs(d, seed, torch.float32)
    P64 = sr_dct.matrix(rank, d, seed, torch.float64)
    G = torch.randn(d, other, generator=rng)
    R = torch.randn(rank, other, generator=rng)
    for method in ("gemm", "fft", "auto"):
        assert_within_torch_error(ops.dct_project(G, idx, "left", signs, method=method), P64 @ G.double(),
                                  P64.float() @ G, f"project {method}", k=d)
        assert_within_torch_error(ops.dct_unproject(R, idx, d, "left", signs, method=method),
                                  P64.T @ R.double(), P64.float().T @ R, f"unproject {method}", k=rank)


def test_auto_takes_the_fft_from_the_measured_rank_on(rng):
    """csrc/cpu/dct_transform.cpp's rule: the FFT from r = 96 when the signals are rows (side right of a
    contiguous G), from r = 160 when they are columns (side left); "auto" gives the bits of the way it
    picks (and not those of the other, which rounds differently)."""
    if not _extension.LOADED:
        pytest.skip("the compiled CPU kernels are not built")
    d = 256
    for side, threshold in (("right", 96), ("left", 160)):
        for r, picked, other in ((threshold - 1, "gemm", "fft"), (threshold, "fft", "gemm")):
            idx = indices_for(d, r, rng)
            G = torch.randn((40, d) if side == "right" else (d, 40), generator=rng)
            auto = ops.dct_project(G, idx, side, method="auto")
            assert torch.equal(auto, ops.dct_project(G, idx, side, method=picked)), (side, r)
            assert not torch.equal(auto, ops.dct_project(G, idx, side, method=other)), (side, r)


@pytest.mark.parametrize("which", ("project", "unproject"))
def test_fft_path_does_not_depend_on_the_thread_count(which, rng):
    """The FFT path runs chunks of signals in parallel, each writing its own outputs: bit-identical with 1
    and 2 threads (the GEMM path's BLAS may sum in another order with more threads)."""
    if not _extension.LOADED:
        pytest.skip("the compiled CPU kernels are not built")
    d, other, rank = 256, 2000, 40  # 2^16 / 256 = 256 signals per chunk: 8 chunks
    idx = indices_for(d, rank, rng)
    X = torch.randn((d, other) if which == "project" else (rank, other), generator=rng)
    run = (lambda: ops.dct_project(X, idx, "left", method="fft", backend="cpu")) if which == "project" else (
        lambda: ops.dct_unproject(X, idx, d, "left", method="fft", backend="cpu"))
    one = run()
    torch.set_num_threads(2)  # the autouse one_thread fixture (conftest.py) restores the count
    assert torch.equal(run(), one)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", ("gemm", "fft"))
@pytest.mark.parametrize("side", SIDES)
def test_opcheck(backend, method, side, rng):
    lib = torch.ops.lowrank_ops
    idx = torch.tensor([4, 0, 9, 5], dtype=torch.int32)
    signs = torch.where(torch.rand(10, generator=rng) < 0.5, -1.0, 1.0)
    for dtype in (torch.float32, torch.bfloat16):
        G = torch.randn((10, 7) if side == "left" else (7, 10), generator=rng).to(dtype)
        R = torch.randn((4, 7) if side == "left" else (7, 4), generator=rng).to(dtype)
        G.requires_grad_(dtype == torch.float32)
        R.requires_grad_(dtype == torch.float32)
        torch.library.opcheck(lib.dct_project.default, (G, idx, side, signs, None, method, backend))
        torch.library.opcheck(lib.dct_unproject.default, (R, idx, 10, side, None, torch.float64, method, backend))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", ("gemm", "fft"))
@pytest.mark.parametrize("side", SIDES)
def test_gradcheck_float64(backend, method, side, rng):
    idx = torch.tensor([3, 0, 6, 1, 3])  # a repeated row
    signs = torch.tensor([1.0, -1, -1, 1, 1, -1, 1], dtype=torch.float64)
    G = torch.randn((7, 5) if side == "left" else (5, 7), dtype=torch.float64, generator=rng, requires_grad=True)
    R = torch.randn((5, 4) if side == "left" else (4, 5), dtype=torch.float64, generator=rng, requires_grad=True)

    def project(x):
        return ops.dct_project(x, idx, side, signs, method=method, backend=backend)

    def unproject(x):
        return ops.dct_unproject(x, idx, 7, side, signs, method=method, backend=backend)

    assert torch.autograd.gradcheck(project, (G,)) and torch.autograd.gradcheck(unproject, (R,))
    assert torch.autograd.gradgradcheck(project, (G,))


def test_torch_compile_fullgraph_matches_eager(rng):
    idx = torch.tensor([2, 7, 0], dtype=torch.int16)
    signs = torch.where(torch.rand(9, generator=rng) < 0.5, -1.0, 1.0)

    def f(G):
        R = ops.dct_project(G, idx, "right", signs, method="fft")
        return ops.dct_unproject(torch.tanh(R), idx, 9, "right", signs)

    assert_compiled_matches_eager(f, torch.randn(6, 9, generator=rng))


@pytest.mark.parametrize("call,message", [
    (lambda: ops.dct_project(torch.randn(3, 4, 5), torch.tensor([0]), "left"), "argument 'G' must be a 2-D tensor"),
    (lambda: ops.dct_project(torch.randn(3, 4), torch.tensor([0.0]), "left"),
     "argument 'indices' must be an int16, int32 or int64 tensor"),
    (lambda: ops.dct_project(torch.randn(3, 4), torch.tensor([], dtype=torch.int64), "left"),
     "argument 'indices' must be a non-empty 1-D tensor"),
    (lambda: ops.dct_project(torch.randn(3, 4), torch.tensor([3]), "left"),
     "values in [0, 3) (the projected dimension of G, side 'left'), got values in [3, 3]"),
    (lambda: ops.dct_project(torch.randn(3, 4), torch.tensor([0]), "up"), "argument 'side' must be 'left' or 'right'"),
    (lambda: ops.dct_project(torch.randn(3, 4), torch.tensor([0]), "left", torch.ones(4)),
     "argument 'signs' must be None or a 1-D float tensor of length d = 3"),
    (lambda: ops.dct_project(torch.randn(3, 4), torch.tensor([0]), "left", method="dft"),
     "argument 'method' must be 'auto' or 'gemm' or 'fft'"),
    (lambda: ops.dct_unproject(torch.randn(2, 4), torch.tensor([0]), 3, "left"),
     "argument 'R' must be a matrix with 1 rows, one per entry of 'indices' (side 'left')"),
    (lambda: ops.dct_unproject(torch.randn(1, 4), torch.tensor([0]), 0, "left"), "argument 'dim' must be >= 1"),
    (lambda: ops.dct_project(torch.randn(1, 4), torch.tensor([1]), "left"),
     "argument 'indices' must be values in [0, 1) (the projected dimension of G, side 'left'), got values in [1, 1]"),
    (lambda: ops.dct_unproject(torch.randn(1, 4), torch.tensor([4]), 3, "left"),
     "argument 'indices' must be values in [0, 3) (dim, side 'left')"),
    (lambda: ops.dct_unproject(torch.randn(1, 4, device="meta"), torch.tensor([0]), 3, "left"),
     "argument 'indices' must be on R's device meta, got cpu"),
    (lambda: ops.dct_project(torch.randn(3, 4), torch.tensor([0]).to_sparse(), "left"),
     "argument 'indices' must be a dense (strided) tensor"),
    (lambda: ops.dct_project(torch.randn(3, 4), torch.tensor([0]), "left", torch.ones(3).to_sparse()),
     "argument 'signs' must be a dense (strided) tensor"),
    (lambda: ops.dct_unproject(torch.randn(1, 4), torch.tensor([0]), 3, "left", out_dtype=torch.int32),
     "argument 'out_dtype' must be float32"),
])
def test_bad_arguments_raise_clear_errors(call, message):
    assert_clear_error(call, ValueError, message)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("bad", (float("nan"), float("inf")))
def test_nonfinite_input_spoils_only_its_column_or_row(backend, method, side, bad, rng):
    """The documented NaN/Inf behaviour (lowrank_ops/ops/dct.py): a NaN/Inf at (i, j) of G or R makes the
    result's column j (left) or row i (right) non-finite and leaves every other entry finite."""
    idx = torch.tensor([0, 2, 3])
    G, R = torch.randn(6, 7, generator=rng), torch.randn(*((3, 7) if side == "left" else (6, 3)), generator=rng)
    G[4, 5] = bad
    R[2 if side == "left" else 4, 2 if side == "left" else 1] = bad
    for out, (i, j) in ((ops.dct_project(G, idx, side, method=method, backend=backend), (4, 5)),
                        (ops.dct_unproject(R, idx, 6 if side == "left" else 7, side, method=method, backend=backend),
                         (2, 2) if side == "left" else (4, 1))):
        expected = torch.ones_like(out, dtype=torch.bool)
        if side == "left":
            expected[:, j] = False
        else:
            expected[i, :] = False
        assert torch.equal(torch.isfinite(out), expected), (backend, method, side, bad)


def test_cpu_kernels_reject_bad_input_too():
    """The C++ ops check their arguments themselves, for C++ and torch.ops callers."""
    if not _extension.LOADED:
        pytest.skip("compiled extension not loaded")
    lib = torch.ops.lowrank_ops
    with pytest.raises(RuntimeError, match="lowrank_ops.dct_project: argument 'indices' must hold values in"):
        lib.dct_project(torch.randn(3, 4), torch.tensor([5]), "left")
    with pytest.raises(RuntimeError, match="lowrank_ops.dct_unproject: argument 'R' must have 2"):
        lib.dct_unproject(torch.randn(3, 4), torch.tensor([0, 1]), 5, "left")
    with pytest.raises(RuntimeError, match="argument 'signs' must be a 1-D tensor of length d = 3"):
        lib.dct_project(torch.randn(3, 4), torch.tensor([0]), "left", torch.ones(2))
    with pytest.raises(RuntimeError, match="argument 'method' must be"):
        lib.dct_project(torch.randn(3, 4), torch.tensor([0]), "left", None, None, "dft")
