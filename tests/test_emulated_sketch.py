"""kernels/sketch.cu executed on the CPU by the CUDA emulation (tests/emulated; docs/DESIGN.md §5): each
launcher with the grid and block sizes production computes, on the CPU backend's inputs. Philox words and
Rademacher entries bit-exact against the CPU backend, Gaussian entries within spec v1's few float32 ulp, the
fused GEMM within the tolerance rule (tests/helpers.py) against the float64 reference. Shapes: size 1,
non-multiples of the 256-thread blocks, the 32 x 64 fill tiles and the 64 x 64 x 32 GEMM tiles, rank > 32,
transposed and sliced inputs, and strides that put offsets past 2^31 bytes."""

import pytest
import torch

from lowrank_ops import ops

from emulated.harness import BIG_STRIDE, KIND_CODES, SEED, assert_entries_close, covers, run
from helpers import GAUSSIAN_ENTRY_TOL, assert_within_torch_error

pytestmark = pytest.mark.emulated


@covers("philox4x32_kernel")
@pytest.mark.parametrize("n,rounds", [(1, 10), (257, 7), (1000, 16), (5, 1)])
def test_philox_words_bit_exact(n, rounds, rng):
    counters = torch.randint(0, 2**32, (n, 4), generator=rng, dtype=torch.int64)
    counters[0] = torch.tensor([0, 2**32 - 1, 0, 2**32 - 1])
    got = run(
        "philox", {"counters": counters}, {"words": (torch.int64, (n, 4))}, n=n, seed=SEED, rounds=rounds
    )
    assert torch.equal(got.outputs["words"], ops.philox4x32(counters, SEED, rounds, backend="cpu"))


# (rows, cols, ld, dtype): size 1, tiles of 32 x 64 not divisible, rank > 32, padded rows, and float32 rows
# BIG_STRIDE apart (offsets past 2^31 bytes)
FILL_CASES = [
    (rows, cols, ld, dtype)
    for rows, cols, ld in [(1, 1, 1), (33, 65, 65), (40, 130, 133), (70, 129, 129)]
    for dtype in (torch.float32, torch.float64)
] + [(3, 5, BIG_STRIDE, torch.float32)]


def check_sketch_entries(got, want, kind, cols, what):
    """Rademacher bit-exact; Gaussian within 4 float32 ulp of max(|entry|, 1/sqrt(d)) (spec v1: libm and
    libdevice round log/cos/sin differently by an ulp or two; near a zero of cos the error is absolute)."""
    if kind == "rademacher":
        assert torch.equal(got, want), what
    else:
        assert_entries_close(got, want, 4, what, floor=cols**-0.5)


@covers("sketch_fill_kernel")
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("rows,cols,ld,dtype", FILL_CASES)
def test_sketch_fill_matches_cpu_backend(kind, rows, cols, ld, dtype):
    got = run(
        "sketch_fill",
        outputs={"out": (dtype, (rows, cols))},
        dtype=dtype,
        rows=rows,
        cols=cols,
        ld=ld,
        kind=KIND_CODES[kind],
        seed=SEED,
    ).outputs["out"]
    want = ops.sketch(rows, cols, SEED, kind, dtype, backend="cpu")
    check_sketch_entries(got, want, kind, cols, f"sketch_fill {kind} {dtype} {rows}x{cols} ld {ld}")


# ---------------------------------------------------------------------------------------------------------
# Fused GEMM
# ---------------------------------------------------------------------------------------------------------

PRODUCTS = {  # lro::SketchProduct -> (direction, side)
    0: ("project", "left"),
    1: ("project", "right"),
    2: ("unproject", "left"),
    3: ("unproject", "right"),
}


def layout_strides(shape, layout):
    """(stride_row, stride_col) of a [rows, cols] matrix in a layout (the driver places the values)."""
    rows, cols = shape
    return {
        "contiguous": (cols, 1),
        "transposed": (1, rows),
        "sliced": (2 * (3 * cols + 1), 3),
        "big": (BIG_STRIDE, 1),
    }[layout]


def run_gemm(product, kind, x, size, layout):
    """The emulated launch_sketch_gemm on x laid out as `layout`: (result, the op's arguments)."""
    direction, side = PRODUCTS[product]
    if direction == "project":  # P is size x d, d = x's extent on the side
        rank, dim = size, x.shape[0 if side == "left" else 1]
    else:  # P is r x size, r = x's extent on the side
        rank, dim = x.shape[0 if side == "left" else 1], size
    out_shape = (
        (rank if direction == "project" else dim, x.shape[1])
        if side == "left"
        else (x.shape[0], rank if direction == "project" else dim)
    )
    stride_row, stride_col = layout_strides(x.shape, layout)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    result = run(
        "sketch_gemm",
        {"x": x},
        {"out": (compute, out_shape)},
        product=product,
        kind=KIND_CODES[kind],
        seed=SEED,
        rank=rank,
        dim=dim,
        dtype=x.dtype,
        rows=x.shape[0],
        cols=x.shape[1],
        stride_row=stride_row,
        stride_col=stride_col,
        out_rows=out_shape[0],
        out_cols=out_shape[1],
    )
    return result.outputs["out"], direction, side


def check_gemm(out, x, size, kind, direction, side, what):
    """Within the tolerance rule against the float64 reference; plain torch is the reference backend in x's
    precision (P in x's compute dtype, one matmul)."""
    fn = ops.sketch_project if direction == "project" else ops.sketch_unproject
    ref64 = fn(x.double(), SEED, size, kind, side, backend="reference")
    plain = fn(x, SEED, size, kind, side, backend="reference")
    assert out.shape == ref64.shape
    inner = x.shape[0] if side == "left" else x.shape[1]
    assert_within_torch_error(
        out, ref64, plain, what, k=inner, entry_tol=GAUSSIAN_ENTRY_TOL if kind == "gaussian" else 0.0
    )


# (product, x shape, size): the size is the rank of a projection, the dim of an unprojection. The tiles of the
# result (64 x 64) and of K (32) never divide evenly; ranks 40, 33 and 37 exceed 32.
GEMM_CASES = [(0, (130, 67), 40), (1, (70, 129), 33), (2, (40, 3), 130), (3, (65, 37), 100)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "transposed", "sliced"]


@covers("sketch_gemm_kernel")
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("product,shape,size", GEMM_CASES)
def test_sketch_gemm_within_tolerance(product, shape, size, dtype, kind, rng):
    """Every kernel instance (product x input dtype x kind); the layouts rotate over the cases."""
    layout = LAYOUTS[
        (GEMM_CASES.index((product, shape, size)) + DTYPES.index(dtype) + (kind == "gaussian")) % 3
    ]
    x = torch.randn(shape, generator=rng).to(dtype)
    out, direction, side = run_gemm(product, kind, x, size, layout)
    check_gemm(out, x, size, kind, direction, side, f"{direction} {side} {kind} {dtype} {layout} {shape}")


@covers("sketch_gemm_kernel")
@pytest.mark.parametrize("product", sorted(PRODUCTS))
def test_sketch_gemm_size_one(product):
    x = torch.full((1, 1), 0.75)
    out, direction, side = run_gemm(product, "gaussian", x, 1, "contiguous")
    check_gemm(out, x, 1, "gaussian", direction, side, f"{direction} {side} 1 x 1")


@covers("sketch_gemm_kernel")
@pytest.mark.parametrize("product,shape,size", [(1, (2, 3), 5), (3, (2, 4), 3)])
def test_sketch_gemm_rows_past_2_31_bytes(product, shape, size, rng):
    """Rows of X BIG_STRIDE float32 elements apart: the second row starts past byte 2^31."""
    x = torch.randn(shape, generator=rng)
    out, direction, side = run_gemm(product, "rademacher", x, size, "big")
    check_gemm(out, x, size, "rademacher", direction, side, f"{direction} {side} big stride")


def test_sketch_gemm_rejects_a_mismatched_inner_dimension():
    """The launcher's own check: x's extent along the sketched side must be the sketch's dim (status
    cudaErrorInvalidValue = 1, nothing launched)."""
    result = run(
        "sketch_gemm",
        {"x": torch.zeros(4, 3)},
        {"out": (torch.float32, (2, 3))},
        expect_status=1,
        product=0,
        kind=0,
        seed=1,
        rank=2,
        dim=5,
        dtype=torch.float32,
        rows=4,
        cols=3,
        stride_row=3,
        stride_col=1,
        out_rows=2,
        out_cols=3,
    )
    assert result.launches == []
