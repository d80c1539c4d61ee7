"""Tier 2 (docs/DESIGN.md §5): the Triton sketch kernels against the spec-v1 reference.

Without a GPU the kernels run in Triton's interpreter on CPU tensors, so shapes are small but odd (sizes 1,
non-multiples of every block size, several programs and K-steps). On a GPU the same tests run on CUDA.
RNG words and Rademacher entries must be bit-identical; Gaussian entries within a few float32 ulp;
projections within the tolerance rule of §5 (tests/helpers.py)."""

import os

import torch

if not torch.cuda.is_available():  # before triton and the kernels are imported (tests/conftest.py does too)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import triton
import triton.language as tl
from helpers import GAUSSIAN_ENTRY_TOL, assert_within_torch_error, random_matrix

from lowrank_ops.reference import sketch as ref
from lowrank_ops.reference.philox import philox4x32
from lowrank_ops.triton import sketch as ts

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not ts._INTERPRETED:
    raise RuntimeError("lowrank_ops.triton.sketch was imported before TRITON_INTERPRET=1 was set and there is no "
                       "GPU: its kernels cannot run. Set TRITON_INTERPRET=1 before anything imports it.")

KINDS = ("rademacher", "gaussian")
SIDES = ("left", "right")
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
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
def test_words_equal_reference(rows, groups, seed):
    words = ts.sketch_words(rows, groups, seed, DEVICE).cpu()
    assert words.dtype == torch.int64 and words.shape == (rows, groups, 4)
    assert torch.equal(words, ref.sketch_words(rows, groups, seed))


@pytest.mark.parametrize("seed", (7, 2**40 + 3, 2**64 - 5))
def test_spec_counter_is_randint4x_offset(seed):
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
def test_fill(kind, dtype, r, d, seed):
    out = ts.sketch_fill(torch.empty(r, d, dtype=dtype, device=DEVICE), seed, kind).cpu()
    expected = ref.sketch(r, d, seed, kind, dtype)
    if kind == "rademacher":
        assert torch.equal(out, expected)
    else:
        err = (out.double() - expected.double()).abs()
        tol = gaussian_tolerance(expected, d, dtype)
        assert bool((err <= tol).all()), f"max excess {float((err - tol).max()):.3e}"


@pytest.mark.parametrize("kind", KINDS)
def test_fill_strided_out(kind):
    """A transposed and a column-sliced destination are written through their strides, nothing else."""
    r, d, seed = 9, 70, 2**64 - 3
    base = torch.full((d, r), 7.0, device=DEVICE)
    ts.sketch_fill(base.t(), seed, kind)
    wide = torch.full((r, 2 * d), 7.0, device=DEVICE)
    ts.sketch_fill(wide[:, ::2], seed, kind)
    expected = ref.sketch(r, d, seed, kind)
    for got in (base.t().cpu(), wide[:, ::2].cpu()):
        if kind == "rademacher":
            assert torch.equal(got, expected)
        else:
            assert bool(((got - expected).abs() <= gaussian_tolerance(expected, d, torch.float32)).all())
    assert bool((wide[:, 1::2] == 7.0).all())


# ---------------------------------------------------------------------------------------------------------
# Project / unproject
# ---------------------------------------------------------------------------------------------------------


def torch_project(G, seed, rank, kind, side):
    """Plain torch in G's precision: P materialized in G's dtype, then a matmul."""
    d = G.shape[0] if side == "left" else G.shape[1]
    P = ref.sketch(rank, d, seed, kind, G.dtype)
    return P @ G if side == "left" else G @ P.T


def torch_unproject(R, seed, dim, kind, side):
    rank = R.shape[0] if side == "left" else R.shape[1]
    P = ref.sketch(rank, dim, seed, kind, R.dtype)
    return P.T @ R if side == "left" else R @ P


def check_project(G, seed, rank, kind, side, out_dtype=None):
    out = ts.sketch_project(G.to(DEVICE), seed, rank, kind, side, out_dtype).cpu()
    d = G.shape[0] if side == "left" else G.shape[1]
    n_out = (rank, G.shape[1]) if side == "left" else (G.shape[0], rank)
    assert out.shape == n_out and out.dtype == (out_dtype or G.dtype)
    ref64 = ref.sketch_project(G.double(), seed, rank, kind, side)
    baseline = torch_project(G, seed, rank, kind, side).to(out.dtype)
    assert_within_torch_error(out, ref64, baseline, f"project {side} {kind} {G.dtype}", k=d,
                              entry_tol=GAUSSIAN_ENTRY_TOL if kind == "gaussian" else 0.0)


def check_unproject(R, seed, dim, kind, side, out_dtype=None):
    out = ts.sketch_unproject(R.to(DEVICE), seed, dim, kind, side, out_dtype).cpu()
    rank = R.shape[0] if side == "left" else R.shape[1]
    assert out.shape == ((dim, R.shape[1]) if side == "left" else (R.shape[0], dim))
    assert out.dtype == (out_dtype or R.dtype)
    ref64 = ref.sketch_unproject(R.double(), seed, dim, kind, side)
    baseline = torch_unproject(R, seed, dim, kind, side).to(out.dtype)
    assert_within_torch_error(out, ref64, baseline, f"unproject {side} {kind} {R.dtype}", k=rank,
                              entry_tol=GAUSSIAN_ENTRY_TOL if kind == "gaussian" else 0.0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_project(kind, side, dtype, rng):
    # d = 150: several K-steps and a ragged last one; rank 21 and the free side 45: ragged output tiles
    shape = (150, 45) if side == "left" else (45, 150)
    check_project(random_matrix(shape, dtype, rng), 2**63 + 5, 21, kind, side)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_unproject(kind, side, dtype, rng):
    # dim = 150 spans two P-column tiles for 16-bit inputs and three for float32/float64; rank 37 > one K-step
    shape = (37, 45) if side == "left" else (45, 37)
    check_unproject(random_matrix(shape, dtype, rng), 31, 150, kind, side)


@pytest.mark.parametrize("layout", ("transposed", "sliced"))
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=dtype_id)
def test_strided_inputs(layout, side, dtype, rng):
    G = random_matrix((70, 33) if side == "left" else (33, 70), dtype, rng, layout)
    check_project(G, 2**31 + 1, 19, "rademacher", side)
    R = random_matrix((19, 33) if side == "left" else (33, 19), dtype, rng, layout)
    check_unproject(R, 2**31 + 1, 70, "gaussian", side)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", SIDES)
def test_degenerate_sizes(kind, side, rng):
    """d = 1, rank = 1, a single row/column of G: every tile is almost all padding."""
    for shape, rank in (((1, 1), 1), ((1, 5), 1), ((5, 1), 3)):
        G = random_matrix(shape if side == "left" else shape[::-1], torch.float32, rng)
        check_project(G, 2**64 - 1, rank, kind, side)
    for rank, other, dim in ((1, 1, 1), (1, 4, 1), (3, 1, 5)):
        R = random_matrix((rank, other) if side == "left" else (other, rank), torch.float32, rng)
        check_unproject(R, 2**64 - 1, dim, kind, side)


@pytest.mark.parametrize("op", ("project", "unproject"))
@pytest.mark.parametrize("side", SIDES)
def test_out_dtype(op, side, rng):
    """bfloat16 inputs with a float32 result: the accumulator is stored without the bfloat16 rounding."""
    if op == "project":
        G = random_matrix((150, 20) if side == "left" else (20, 150), torch.bfloat16, rng)
        check_project(G, 77, 17, "gaussian", side, out_dtype=torch.float32)
    else:
        R = random_matrix((17, 20) if side == "left" else (20, 17), torch.bfloat16, rng)
        check_unproject(R, 77, 150, "gaussian", side, out_dtype=torch.float32)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64), ids=dtype_id)
@pytest.mark.parametrize("side", SIDES)
def test_rademacher_exact(dtype, side, rng):
    """d = 64 makes the scale 1/8 and integer inputs make every product and partial sum exact, so the
    Rademacher projections equal the reference bit for bit whatever the summation order."""
    seed = 2**63 + 2**31
    G = torch.randint(-4, 5, (64, 40) if side == "left" else (40, 64), generator=rng).to(dtype)
    assert torch.equal(ts.sketch_project(G.to(DEVICE), seed, 24, "rademacher", side).cpu(),
                       ref.sketch_project(G, seed, 24, "rademacher", side))
    R = torch.randint(-4, 5, (24, 40) if side == "left" else (40, 24), generator=rng).to(dtype)
    assert torch.equal(ts.sketch_unproject(R.to(DEVICE), seed, 64, "rademacher", side).cpu(),
                       ref.sketch_unproject(R, seed, 64, "rademacher", side))


def test_launcher_errors():
    with pytest.raises(TypeError, match="float32, float64, bfloat16 or float16"):
        ts.sketch_project(torch.ones(4, 4, dtype=torch.int32, device=DEVICE), 0, 2, "rademacher", "left")
    with pytest.raises(ValueError, match="must be a matrix"):
        ts.sketch_fill(torch.empty(2, 3, 4, device=DEVICE), 0, "gaussian")
