"""kernels/quant.cu executed on the CPU by the CUDA emulation (tests/emulated; docs/DESIGN.md §5): launch_quantize
(one warp per group, absmax by a __shfl_xor_sync reduction) and launch_dequantize with production's grid and
block sizes, against the CPU backend. Both are bit-exact: an INT8 code is rint of one correctly rounded
quotient, an NF4 code compares one rounded product with fixed midpoints, a scale is absmax / 127, and a
decoded element is one product rounded once to the output type (kernels/quant.h), none of which nvcc can
contract. Shapes: size 1, groups shorter and longer than a warp, rows not divisible into groups, odd
element counts (NF4's padded last nibble), an all-zero group, sub-rectangles at odd offsets (NF4 starting
mid-byte), more than one block of columns, padded rows and float32 rows BIG_STRIDE apart (offsets past 2^31
bytes)."""

import pytest
import torch

from lowrank_ops import ops

from emulated.harness import BIG_STRIDE, covers, run

pytestmark = pytest.mark.emulated

FORMAT_CODES = {"int8": 0, "nf4": 1}  # lro::QuantFormat
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (rows, cols, group_size) per format
INT8_CASES = [(1, 1, 1), (3, 70, 32), (5, 300, 128), (7, 513, 256)]
NF4_CASES = [(3, 5, 2), (4, 33, 64), (1, 129, 4), (9, 70, 64)]


def storage_sizes(fmt, rows, cols, g):
    """(code bytes, scales) of the storage layout of kernels/quant.h."""
    if fmt == "int8":
        return rows * cols, rows * -(-cols // g)
    return -(-(rows * cols) // 2), -(-(rows * cols) // g)


def weight(rows, cols, g, dtype, rng):
    """Random W with its first group all zero (scale 0, codes of 0)."""
    w = torch.randn(rows, cols, generator=rng, dtype=torch.float64)
    w.view(-1)[: min(g, cols)] = 0
    return w.to(dtype)


def check_quantize(fmt, rows, cols, g, dtype, rng):
    w = weight(rows, cols, g, dtype, rng)
    n_codes, n_scales = storage_sizes(fmt, rows, cols, g)
    got = run(
        "quantize",
        {"w": w},
        {"codes": (torch.uint8, (n_codes,)), "scales": (torch.float32, (n_scales,))},
        dtype=dtype,
        format=FORMAT_CODES[fmt],
        rows=rows,
        cols=cols,
        group_size=g,
        n_codes=n_codes,
        n_scales=n_scales,
    ).outputs
    want = ops.quantize(w, fmt, g, backend="cpu")
    assert torch.equal(got["codes"], want.codes.reshape(-1).view(torch.uint8)), f"{fmt} codes"
    assert torch.equal(got["scales"], want.scales.reshape(-1)), f"{fmt} scales"


@covers("quantize_int8_kernel")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("rows,cols,g", INT8_CASES)
def test_quantize_int8_bit_exact(rows, cols, g, dtype, rng):
    check_quantize("int8", rows, cols, g, dtype, rng)


@covers("quantize_nf4_kernel")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("rows,cols,g", NF4_CASES)
def test_quantize_nf4_bit_exact(rows, cols, g, dtype, rng):
    check_quantize("nf4", rows, cols, g, dtype, rng)


# (format, rows, cols, group_size, (r0, nr, c0, nc), ld_pad): the whole W, odd sub-rectangles, 2100 columns
# (two blocks of 256 threads x 8 columns along x)
DEQUANT_CASES = [
    ("int8", 1, 1, 1, (0, 1, 0, 1), 0),
    ("int8", 5, 300, 128, (1, 3, 3, 295), 2),
    ("int8", 3, 2100, 256, (0, 3, 0, 2100), 0),
    ("nf4", 3, 5, 2, (0, 3, 0, 5), 1),
    ("nf4", 9, 70, 64, (2, 6, 5, 61), 3),
    ("nf4", 2, 2100, 64, (1, 1, 7, 2093), 0),
]


def quantized(fmt, rows, cols, g, rng):
    return ops.quantize(weight(rows, cols, g, torch.float32, rng), fmt, g, backend="cpu")


def run_dequantize(qw, fmt, window, dtype, ld):
    r0, nr, c0, nc = window
    rows, cols = qw.shape
    return run(
        "dequantize",
        {"codes": qw.codes.reshape(-1).view(torch.uint8), "scales": qw.scales.reshape(-1)},
        {"out": (dtype, (nr, nc))},
        format=FORMAT_CODES[fmt],
        rows=rows,
        cols=cols,
        group_size=qw.group_size,
        n_codes=qw.codes.numel(),
        n_scales=qw.scales.numel(),
        r0=r0,
        nr=nr,
        c0=c0,
        nc=nc,
        dtype=dtype,
        ld=ld,
    ).outputs["out"]


@covers("dequantize_kernel")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("fmt,rows,cols,g,window,ld_pad", DEQUANT_CASES)
def test_dequantize_bit_exact(fmt, rows, cols, g, window, ld_pad, dtype, rng):
    qw = quantized(fmt, rows, cols, g, rng)
    r0, nr, c0, nc = window
    got = run_dequantize(qw, fmt, window, dtype, nc + ld_pad)
    assert torch.equal(got, ops.dequantize(qw, dtype, backend="cpu")[r0 : r0 + nr, c0 : c0 + nc])


@covers("dequantize_kernel")
@pytest.mark.parametrize("fmt", ["int8", "nf4"])
def test_dequantize_rows_past_2_31_bytes(fmt, rng):
    qw = quantized(fmt, 3, 6, 2, rng)
    got = run_dequantize(qw, fmt, (1, 2, 1, 4), torch.float32, BIG_STRIDE)
    assert torch.equal(got, ops.dequantize(qw, torch.float32, backend="cpu")[1:3, 1:5])
