"""The sketch family (spec v1) on every available backend: Random123 known answers, bit-identity of
words and Rademacher values across backends, Gaussian values within a few ulp, projections against the
float64 reference under the tolerance rule, opcheck, gradcheck, torch.compile and argument errors."""

import math

import pytest
import torch
import triton
import triton.language as tl

from lowrank_ops import ops
from lowrank_ops.reference import sketch as reference
from lowrank_ops.reference.philox import philox4x32
from lowrank_ops.triton import sketch as ts

from helpers import (
    GAUSSIAN_ENTRY_TOL,
    assert_clear_error,
    assert_compiled_matches_eager,
    assert_within_torch_error,
    backends,
    random_matrix,
)

KINDS = ("rademacher", "gaussian")
SIDES = ("left", "right")
CPU_BACKENDS = backends("sketch_project")
GPU_BACKENDS = backends("sketch_project", "cuda")
PHILOX_BACKENDS = backends("philox4x32")
LARGE_SEED = 2**64 - 12345  # exercises the high key word and the int64 wrap of the schema

# Random123's published known-answer vectors for Philox4x32 (counter, key = (k0, k1), rounds, output).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), 10, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), 10, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), 10,
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ((0, 0, 0, 0), (0, 0), 7, (0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), 7, (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), 7,
     (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
]


@pytest.mark.parametrize("backend", PHILOX_BACKENDS)
@pytest.mark.parametrize("counter,key,rounds,expected", PHILOX_KAT)
def test_philox_known_answers(backend, counter, key, rounds, expected):
    seed = key[0] | (key[1] << 32)
    out = ops.philox4x32(torch.tensor([counter]), seed, rounds, backend=backend)
    assert out.tolist() == [list(expected)]


@pytest.mark.parametrize("backend", PHILOX_BACKENDS)
def test_philox_words_equal_reference_on_random_counters(backend, rng):
    counters = torch.randint(0, 2**32, (3, 5, 4), generator=rng, dtype=torch.int64)
    seed = int(torch.randint(0, 2**62, (), generator=rng)) * 3
    ref = torch.stack(reference.philox4x32(*counters.unbind(-1), seed), dim=-1)
    assert torch.equal(ops.philox4x32(counters, seed, backend=backend), ref)


SKETCH_SHAPES = [(1, 1), (1, 7), (3, 128), (5, 129), (17, 300), (64, 1000)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("rows,cols", SKETCH_SHAPES)
@pytest.mark.parametrize("seed", [0, 7, LARGE_SEED])
def test_rademacher_sketch_bit_identical(backend, rows, cols, seed):
    ref = reference.sketch(rows, cols, seed, "rademacher")
    out = ops.sketch(rows, cols, seed, "rademacher", backend=backend)
    assert torch.equal(out, ref)
    assert torch.equal(out.abs(), torch.full_like(out, float(torch.tensor(1 / math.sqrt(cols)))))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("rows,cols", SKETCH_SHAPES)
@pytest.mark.parametrize("seed", [3, LARGE_SEED])
def test_gaussian_sketch_within_few_ulp(backend, rows, cols, seed):
    """libm, SLEEF and libdevice round log/cos/sin differently by an ulp or two; each entry is
    rho * cos(theta) / sqrt(d) with rho <= 5.7, so allow 4 ulp of that magnitude."""
    ref = reference.sketch(rows, cols, seed, "gaussian")
    out = ops.sketch(rows, cols, seed, "gaussian", backend=backend)
    scale = 1 / math.sqrt(cols)
    tol = 4 * torch.finfo(torch.float32).eps * scale * torch.clamp(ref.abs() / scale, min=1.0)
    assert ((out - ref).abs() <= tol).all(), f"max diff {(out - ref).abs().max():.3e}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_sketch_output_dtypes(backend, dtype):
    out = ops.sketch(9, 131, 11, "gaussian", dtype=dtype, backend=backend)
    ref = reference.sketch(9, 131, 11, "gaussian", dtype=dtype)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, rtol=4 * torch.finfo(dtype).eps, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_sketch_is_normalized_and_seeded(kind):
    """E[P P^T] = I_r (duality paper, Table 1): each row has unit expected norm and rows are nearly
    orthogonal for large d; a different seed gives a different sketch, the same seed the same one."""
    r, d = 8, 4096
    P = ops.sketch(r, d, 5, kind).double()
    gram = P @ P.T
    assert (gram - torch.eye(r, dtype=torch.float64)).abs().max() < 6 / math.sqrt(d)
    assert torch.equal(ops.sketch(r, d, 5, kind), ops.sketch(r, d, 5, kind))
    assert not torch.equal(ops.sketch(r, d, 5, kind), ops.sketch(r, d, 6, kind))


def entry_tol(kind):
    return GAUSSIAN_ENTRY_TOL if kind == "gaussian" else 0.0


def plain_torch_project(G, seed, rank, kind, side):
    """The same computation by plain torch in G's precision: materialize P in G's dtype, then matmul."""
    d = G.shape[0] if side == "left" else G.shape[1]
    P = reference.sketch(rank, d, seed, kind, dtype=G.dtype)
    return P @ G if side == "left" else G @ P.T


def plain_torch_unproject(R, seed, dim, kind, side):
    rank = R.shape[0] if side == "left" else R.shape[1]
    P = reference.sketch(rank, dim, seed, kind, dtype=R.dtype)
    return P.T @ R if side == "left" else R @ P


PROJECT_CASES = [((1, 1), 1), ((7, 1), 3), ((1, 9), 2), ((129, 33), 5), ((300, 77), 17), ((65, 260), 33)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
LAYOUTS = ["contiguous", "transposed", "sliced"]


def parity_grid(test):
    """Parametrizes a project/unproject parity test over every CPU backend, case, dtype, layout, kind and
    side (applied innermost first, as stacked decorators would be)."""
    for names, values in (("side", SIDES), ("kind", KINDS), ("layout", LAYOUTS), ("dtype", DTYPES),
                          ("shape,rank", PROJECT_CASES), ("backend", CPU_BACKENDS)):
        test = pytest.mark.parametrize(names, values)(test)
    return test


@parity_grid
def test_project_matches_float64_reference(backend, shape, rank, dtype, layout, kind, side, rng):
    G = random_matrix(shape, dtype, rng, layout)
    out = ops.sketch_project(G, 99, rank, kind, side, backend=backend)
    expected_shape = (rank, shape[1]) if side == "left" else (shape[0], rank)
    assert out.shape == expected_shape and out.dtype == dtype
    ref64 = reference.sketch_project(G.double(), 99, rank, kind, side)
    assert_within_torch_error(out, ref64, plain_torch_project(G, 99, rank, kind, side),
                              f"{backend} project {side} {kind} {dtype}", k=shape[0 if side == "left" else 1],
                              entry_tol=entry_tol(kind))


@parity_grid
def test_unproject_matches_float64_reference(backend, shape, rank, dtype, layout, kind, side, rng):
    m, n = shape
    dim = m if side == "left" else n
    R = random_matrix((rank, n) if side == "left" else (m, rank), dtype, rng, layout)
    out = ops.sketch_unproject(R, LARGE_SEED, dim, kind, side, backend=backend)
    assert out.shape == shape and out.dtype == dtype
    ref64 = reference.sketch_unproject(R.double(), LARGE_SEED, dim, kind, side)
    assert_within_torch_error(out, ref64, plain_torch_unproject(R, LARGE_SEED, dim, kind, side),
                              f"{backend} unproject {side} {kind} {dtype}", k=rank, entry_tol=entry_tol(kind))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rademacher_projections_bit_identical(backend, side, dtype, rng):
    """With d = 64 the entries are +-1/8 and G is integer-valued, so every partial sum is exact in
    float32: any summation order gives the same bits, and the results must be equal, not close."""
    d, other, rank = 64, 37, 9
    G = torch.randint(-4, 5, (d, other) if side == "left" else (other, d), generator=rng).to(dtype)
    out = ops.sketch_project(G, LARGE_SEED, rank, "rademacher", side, out_dtype=torch.float32, backend=backend)
    assert torch.equal(out, reference.sketch_project(G.double(), LARGE_SEED, rank, "rademacher", side).float())
    R = torch.randint(-4, 5, (rank, other) if side == "left" else (other, rank), generator=rng).to(dtype)
    back = ops.sketch_unproject(R, LARGE_SEED, d, "rademacher", side, out_dtype=torch.float32, backend=backend)
    assert torch.equal(back, reference.sketch_unproject(R.double(), LARGE_SEED, d, "rademacher", side).float())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_out_dtype(backend, rng):
    G = torch.randn(40, 30, generator=rng).to(torch.bfloat16)
    assert ops.sketch_project(G, 1, 4, out_dtype=torch.float32, backend=backend).dtype == torch.float32
    R = torch.randn(4, 30, generator=rng)
    assert ops.sketch_unproject(R, 1, 40, out_dtype=torch.bfloat16, backend=backend).dtype == torch.bfloat16


@pytest.mark.parametrize("op", [torch.ops.lowrank_ops.sketch_project.default,
                                torch.ops.lowrank_ops.sketch_unproject.default], ids=["project", "unproject"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("side", SIDES)
def test_opcheck_projections(op, backend, side, rng):
    is_project = "unproject" not in str(op)
    for dtype in (torch.float32, torch.bfloat16):
        X = torch.randn(23, 19, generator=rng).to(dtype).requires_grad_(dtype == torch.float32)
        size = 5 if is_project else (23 if side == "left" else 19)
        if not is_project:
            X = torch.randn((5, 19) if side == "left" else (23, 5), generator=rng).to(dtype)
            X.requires_grad_(dtype == torch.float32)
        for kind in KINDS:
            torch.library.opcheck(op, (X, 42, size, kind, side, None, backend))


@pytest.mark.parametrize("backend", backends("sketch_fill_"))
def test_opcheck_fill(backend):
    torch.library.opcheck(torch.ops.lowrank_ops.sketch_fill_.default, (torch.empty(6, 70), 3, "gaussian", backend))


@pytest.mark.parametrize("backend", PHILOX_BACKENDS)
def test_opcheck_philox(backend):
    counters = torch.randint(0, 2**32, (8, 4), dtype=torch.int64)
    torch.library.opcheck(torch.ops.lowrank_ops.philox4x32.default, (counters, -5, 10, backend))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", SIDES)
def test_gradcheck_float64(backend, kind, side, rng):
    G = torch.randn(13, 11, dtype=torch.float64, generator=rng, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ops.sketch_project(x, 8, 4, kind, side, backend=backend), (G,))
    R = torch.randn((4, 11) if side == "left" else (13, 4), dtype=torch.float64, generator=rng,
                    requires_grad=True)
    dim = 13 if side == "left" else 11
    assert torch.autograd.gradcheck(lambda x: ops.sketch_unproject(x, 8, dim, kind, side, backend=backend), (R,))
    assert torch.autograd.gradgradcheck(lambda x: ops.sketch_project(x, 8, 4, kind, side, backend=backend), (G,))


@pytest.mark.parametrize("backend", [p for p in CPU_BACKENDS if p.values[0] != "triton"])
def test_torch_compile_fullgraph_matches_eager(backend, rng):
    def f(G):
        R = ops.sketch_project(G, 5, 6, "gaussian", "right", backend=backend)
        P = ops.sketch(6, 7, 9, "rademacher", backend=backend)
        return ops.sketch_unproject(torch.tanh(R), 5, G.shape[1], "gaussian", "right", backend=backend), P

    G = torch.randn(10, 7, generator=rng)
    assert_compiled_matches_eager(f, G)


@pytest.mark.parametrize("call,message", [
    (lambda: ops.sketch_project(torch.randn(3, 4, 5), 0, 2), "argument 'G' must be a 2-D tensor"),
    (lambda: ops.sketch_project(torch.ones(3, 4, dtype=torch.int32), 0, 2), "argument 'G' must be float32"),
    (lambda: ops.sketch_project(torch.randn(3, 4), 0, 0), "argument 'rank' must be >= 1, got 0"),
    (lambda: ops.sketch_project(torch.randn(3, 4), -1, 2), "argument 'seed' must be an int in [0, 2^64), got -1"),
    (lambda: ops.sketch_project(torch.randn(3, 4), 2**64, 2), "argument 'seed' must be an int in [0, 2^64)"),
    (lambda: ops.sketch_project(torch.randn(3, 4), 0, 2, "uniform"), "argument 'kind' must be 'rademacher' or"),
    (lambda: ops.sketch_project(torch.randn(3, 4), 0, 2, side="up"), "argument 'side' must be 'left' or 'right'"),
    (lambda: ops.sketch_project(torch.randn(0, 4), 0, 2), "argument 'G' must be non-empty along the projected"),
    (lambda: ops.sketch_project(torch.randn(3, 4), 0, 2, backend="gpu"), "argument 'backend' must be one of"),
    (lambda: ops.sketch_unproject(torch.randn(2, 4), 0, 0), "argument 'dim' must be >= 1, got 0"),
    (lambda: ops.sketch_unproject(torch.randn(2), 0, 3), "argument 'R' must be a 2-D tensor"),
    (lambda: ops.sketch(0, 4, 1), "lowrank_ops.sketch: argument 'rows' must be >= 1, got 0"),
    (lambda: ops.sketch(2, 4, 1, dtype=torch.int64), "argument 'dtype' must be float32"),
    (lambda: ops.philox4x32(torch.zeros(3, 3, dtype=torch.int64), 0), "argument 'counters' must be of shape [..., 4]"),
    (lambda: ops.philox4x32(torch.zeros(3, 4), 0), "argument 'counters' must be an int64 tensor"),
    (lambda: ops.philox4x32(torch.full((1, 4), 2**32), 0), "uint32 values in [0, 2^32)"),
    (lambda: ops.philox4x32(torch.zeros(1, 4, dtype=torch.int64), 0, rounds=0), "argument 'rounds' must be in [1, 16]"),
])
def test_bad_arguments_raise_clear_errors(call, message):
    assert_clear_error(call, ValueError, message)


def test_seed_type_error():
    with pytest.raises(TypeError, match="argument 'seed' must be an int"):
        ops.sketch(2, 3, 1.5)


def test_cpu_backend_rejects_bad_input_too():
    """The C++ ops check their arguments themselves, for C++ and torch.ops callers."""
    from lowrank_ops import _extension

    if not _extension.LOADED:
        pytest.skip("compiled extension not loaded")
    with pytest.raises(RuntimeError, match="lowrank_ops.sketch_project: argument 'rank' must be >= 1"):
        torch.ops.lowrank_ops.sketch_project(torch.randn(3, 4), 0, 0, "gaussian", "left")
    with pytest.raises(RuntimeError, match="argument 'kind' must be"):
        torch.ops.lowrank_ops.sketch_unproject(torch.randn(3, 4), 0, 5, "normal", "left")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", SIDES)
def test_gpu_parity_with_cpu(backend, dtype, kind, side, rng):
    """CUDA and Triton on the GPU against the CPU op: Rademacher sketches equal, projections within the
    tolerance rule of the float64 reference."""
    assert torch.equal(ops.sketch(33, 517, LARGE_SEED, "rademacher", device="cuda", backend=backend).cpu(),
                       ops.sketch(33, 517, LARGE_SEED, "rademacher"))
    for layout in LAYOUTS:
        G = random_matrix((517, 301), dtype, rng, layout)
        out = ops.sketch_project(G.cuda(), 3, 64, kind, side, backend=backend).cpu()
        ref64 = reference.sketch_project(G.double(), 3, 64, kind, side)
        assert_within_torch_error(out, ref64, plain_torch_project(G, 3, 64, kind, side), f"{backend} {side}",
                                  k=517 if side == "left" else 301, entry_tol=entry_tol(kind))
        R = ops.sketch_project(G, 3, 64, kind, side)
        dim = 517 if side == "left" else 301
        back = ops.sketch_unproject(R.cuda(), 3, dim, kind, side, backend=backend).cpu()
        ref64 = reference.sketch_unproject(R.double(), 3, dim, kind, side)
        assert_within_torch_error(back, ref64, plain_torch_unproject(R, 3, dim, kind, side), f"{backend} {side}",
                                  k=64, entry_tol=entry_tol(kind))

# ---------------------------------------------------------------------------------------------------------
# The Triton launchers (lowrank_ops.triton.sketch) called directly (tier 2, docs/DESIGN.md §5): raw words,
# fill, K-loop and tile edges. Without a GPU they run in Triton's interpreter on CPU tensors (conftest.py sets
# TRITON_INTERPRET), so shapes are small but odd (sizes 1, non-multiples of every block size, several
# programs and K-steps). RNG words and Rademacher entries bit-identical; Gaussian entries within a few
# float32 ulp; projections within the tolerance rule.
# ---------------------------------------------------------------------------------------------------------

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not ts._INTERPRETED:
    raise RuntimeError("lowrank_ops.triton.sketch was imported before TRITON_INTERPRET=1 was set and there is no "
                       "GPU: its kernels cannot run. Set TRITON_INTERPRET=1 before anything imports it.")

# small, at the 32-bit boundaries, at the 64-bit sign boundary, the largest
SEEDS = (0, 1, 12345, 2**31 - 1, 2**31, 2**32 + 7, 2**63 - 1, 2**63, 2**63 + 12345, 2**64 - 1)


def dtype_id(dtype):
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------------------
# Raw words
# ---------------------------------------------------------------------------------------------------------


@triton.jit
def _randint4x_kernel(offsets_ptr, out_ptr, seed, n, BLOCK: tl.constexpr):
    """out[t, q] = word q of tl.randint4x(seed, offsets[t]): the built-in, independent of the module's
    offset packing."""
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = t < n
    offsets = tl.load(offsets_ptr + t, mask=mask, other=0)
    w0, w1, w2, w3 = tl.randint4x(seed, offsets)
    tl.store(out_ptr + t * 4 + 0, w0.to(tl.int64), mask=mask)
    tl.store(out_ptr + t * 4 + 1, w1.to(tl.int64), mask=mask)
    tl.store(out_ptr + t * 4 + 2, w2.to(tl.int64), mask=mask)
    tl.store(out_ptr + t * 4 + 3, w3.to(tl.int64), mask=mask)


@pytest.mark.parametrize("rows,groups", [(1, 1), (5, 7), (37, 70)])
@pytest.mark.parametrize("seed", SEEDS)
def test_triton_words_equal_reference(rows, groups, seed):
    words = ts.sketch_words(rows, groups, seed, DEVICE).cpu()
    assert words.dtype == torch.int64 and words.shape == (rows, groups, 4)
    assert torch.equal(words, reference.sketch_words(rows, groups, seed))


@pytest.mark.parametrize("seed", (7, 2**40 + 3, 2**64 - 5))
def test_triton_spec_counter_is_randint4x_offset(seed):
    """Spec v1: philox((g, i, 0, 0), seed) == tl.randint4x(seed, (i << 32) | g), rows up to 2^31 - 1."""
    rows, groups = 3, 5
    i = torch.tensor([0, 1, 2**31 - 1]).view(rows, 1)
    g = torch.tensor([0, 1, 127, 128, 2**31 + 9]).view(1, groups)
    offsets = ((i << 32) | g).reshape(-1)
    out = torch.empty(rows * groups, 4, dtype=torch.int64, device=DEVICE)
    _randint4x_kernel[(1, )](offsets.to(DEVICE), out, seed, rows * groups, BLOCK=16)
    zero = torch.zeros((), dtype=torch.int64)
    expected = torch.stack(philox4x32(g, i, zero, zero, seed), dim=-1).reshape(-1, 4)
    assert torch.equal(out.cpu(), expected)


# ---------------------------------------------------------------------------------------------------------
# Fill
# ---------------------------------------------------------------------------------------------------------


def gaussian_tolerance(expected, d, dtype):
    """Entries within 4 float32 ulp of their magnitude, floored at the scale 1/sqrt(d) (a value near 0
    carries the absolute error of cos/sin near a zero), plus one rounding step of a 16-bit output (two
    float32 values a few ulp apart may round to neighbouring 16-bit numbers)."""
    tol = GAUSSIAN_ENTRY_TOL * torch.clamp_min(expected.double().abs(), d**-0.5)
    if dtype in (torch.bfloat16, torch.float16):
        tol = tol + torch.finfo(dtype).eps * expected.double().abs()
    return tol


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("r,d", [(1, 1), (3, 129), (33, 200)])
@pytest.mark.parametrize("seed", (5, 2**63 + 99))
def test_triton_fill(kind, dtype, r, d, seed):
    out = ts.sketch_fill(torch.empty(r, d, dtype=dtype, device=DEVICE), seed, kind).cpu()
    expected = reference.sketch(r, d, seed, kind, dtype)
    if kind == "rademacher":
        assert torch.equal(out, expected)
    else:
        err = (out.double() - expected.double()).abs()
        tol = gaussian_tolerance(expected, d, dtype)
        assert bool((err <= tol).all()), f"max excess {float((err - tol).max()):.3e}"


@pytest.mark.parametrize("kind", KINDS)
def test_triton_fill_strided_out(kind):
    """A transposed and a column-sliced destination are written through their strides, nothing else."""
    r, d, seed = 9, 70, 2**64 - 3
    base = torch.full((d, r), 7.0, device=DEVICE)
    ts.sketch_fill(base.t(), seed, kind)
    wide = torch.full((r, 2 * d), 7.0, device=DEVICE)
    ts.sketch_fill(wide[:, ::2], seed, kind)
    expected = reference.sketch(r, d, seed, kind)
    for got in (base.t().cpu(), wide[:, ::2].cpu()):
        if kind == "rademacher":
            assert torch.equal(got, expected)
        else:
            assert bool(((got - expected).abs() <= gaussian_tolerance(expected, d, torch.float32)).all())
    assert bool((wide[:, 1::2] == 7.0).all())


# ---------------------------------------------------------------------------------------------------------
# Project / unproject
# ---------------------------------------------------------------------------------------------------------


def check_triton_project(G, seed, rank, kind, side, out_dtype=None):
    out = ts.sketch_project(G.to(DEVICE), seed, rank, kind, side, out_dtype).cpu()
    d = G.shape[0] if side == "left" else G.shape[1]
    n_out = (rank, G.shape[1]) if side == "left" else (G.shape[0], rank)
    assert out.shape == n_out and out.dtype == (out_dtype or G.dtype)
    ref64 = reference.sketch_project(G.double(), seed, rank, kind, side)
    baseline = plain_torch_project(G, seed, rank, kind, side).to(out.dtype)
    assert_within_torch_error(out, ref64, baseline, f"project {side} {kind} {G.dtype}", k=d,
                              entry_tol=entry_tol(kind))


def check_triton_unproject(R, seed, dim, kind, side, out_dtype=None):
    out = ts.sketch_unproject(R.to(DEVICE), seed, dim, kind, side, out_dtype).cpu()
    rank = R.shape[0] if side == "left" else R.shape[1]
    assert out.shape == ((dim, R.shape[1]) if side == "left" else (R.shape[0], dim))
    assert out.dtype == (out_dtype or R.dtype)
    ref64 = reference.sketch_unproject(R.double(), seed, dim, kind, side)
    baseline = plain_torch_unproject(R, seed, dim, kind, side).to(out.dtype)
    assert_within_torch_error(out, ref64, baseline, f"unproject {side} {kind} {R.dtype}", k=rank,
                              entry_tol=entry_tol(kind))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_triton_project(kind, side, dtype, rng):
    # d = 150: several K-steps and a ragged last one; rank 21 and the free side 45: ragged output tiles
    shape = (150, 45) if side == "left" else (45, 150)
    check_triton_project(random_matrix(shape, dtype, rng), 2**63 + 5, 21, kind, side)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_triton_unproject(kind, side, dtype, rng):
    # dim = 150 spans two P-column tiles for 16-bit inputs and three for float32/float64; rank 37 > one K-step
    shape = (37, 45) if side == "left" else (45, 37)
    check_triton_unproject(random_matrix(shape, dtype, rng), 31, 150, kind, side)


@pytest.mark.parametrize("layout", ("transposed", "sliced"))
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=dtype_id)
def test_triton_strided_inputs(layout, side, dtype, rng):
    G = random_matrix((70, 33) if side == "left" else (33, 70), dtype, rng, layout)
    check_triton_project(G, 2**31 + 1, 19, "rademacher", side)
    R = random_matrix((19, 33) if side == "left" else (33, 19), dtype, rng, layout)
    check_triton_unproject(R, 2**31 + 1, 70, "gaussian", side)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", SIDES)
def test_triton_degenerate_sizes(kind, side, rng):
    """d = 1, rank = 1, a single row/column of G: every tile is almost all padding."""
    for shape, rank in (((1, 1), 1), ((1, 5), 1), ((5, 1), 3)):
        G = random_matrix(shape if side == "left" else shape[::-1], torch.float32, rng)
        check_triton_project(G, 2**64 - 1, rank, kind, side)
    for rank, other, dim in ((1, 1, 1), (1, 4, 1), (3, 1, 5)):
        R = random_matrix((rank, other) if side == "left" else (other, rank), torch.float32, rng)
        check_triton_unproject(R, 2**64 - 1, dim, kind, side)


@pytest.mark.parametrize("op", ("project", "unproject"))
@pytest.mark.parametrize("side", SIDES)
def test_triton_out_dtype(op, side, rng):
    """bfloat16 inputs with a float32 result: the accumulator is stored without the bfloat16 rounding."""
    if op == "project":
        G = random_matrix((150, 20) if side == "left" else (20, 150), torch.bfloat16, rng)
        check_triton_project(G, 77, 17, "gaussian", side, out_dtype=torch.float32)
    else:
        R = random_matrix((17, 20) if side == "left" else (20, 17), torch.bfloat16, rng)
        check_triton_unproject(R, 77, 150, "gaussian", side, out_dtype=torch.float32)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64), ids=dtype_id)
@pytest.mark.parametrize("side", SIDES)
def test_triton_rademacher_exact(dtype, side, rng):
    """d = 64 makes the scale 1/8 and integer inputs make every product and partial sum exact, so the
    Rademacher projections equal the reference bit for bit whatever the summation order."""
    seed = 2**63 + 2**31
    G = torch.randint(-4, 5, (64, 40) if side == "left" else (40, 64), generator=rng).to(dtype)
    assert torch.equal(ts.sketch_project(G.to(DEVICE), seed, 24, "rademacher", side).cpu(),
                       reference.sketch_project(G, seed, 24, "rademacher", side))
    R = torch.randint(-4, 5, (24, 40) if side == "left" else (40, 24), generator=rng).to(dtype)
    assert torch.equal(ts.sketch_unproject(R.to(DEVICE), seed, 64, "rademacher", side).cpu(),
                       reference.sketch_unproject(R, seed, 64, "rademacher", side))


def test_triton_launcher_errors():
    with pytest.raises(TypeError, match="float32, float64, bfloat16 or float16"):
        ts.sketch_project(torch.ones(4, 4, dtype=torch.int32, device=DEVICE), 0, 2, "rademacher", "left")
    with pytest.raises(ValueError, match="must be a matrix"):
        ts.sketch_fill(torch.empty(2, 3, 4, device=DEVICE), 0, "gaussian")
