"""kernels/dct.cu executed on the CPU by the CUDA emulation (tests/emulated; docs/DESIGN.md §5): launch_dct_rows
with production's grid and block sizes against the CPU backend's basis rows (ops.dct_basis), in every output
dtype. Each entry is c_k cos(pi p / (2N)) with p reduced exactly (kernels/dct.h), so it carries the error of
one cos/sin evaluation: within 4 ulp of the compute type (CUDA's cosf/sinf are within 2 ulp, libm's within
1), plus one rounding of a 16-bit output. Shapes: size 1, non-multiples of the 32 x 64 tiles, explicit
indices (repeats, the last row) and consecutive rows from first_row, padded rows, a large dimension, and
float32 rows BIG_STRIDE apart (offsets past 2^31 bytes)."""

import pytest
import torch

from lowrank_ops import ops

from emulated.harness import BIG_STRIDE, assert_entries_close, covers, run

pytestmark = pytest.mark.emulated

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (rows, dim, ld, first_row): first_row None means explicit random indices
CASES = [(1, 1, 1, 0), (33, 65, 67, None), (70, 130, 130, 60), (5, 4096, 4099, None)]


def run_rows(rows, dim, ld, dtype, indices=None, first_row=0):
    inputs = {"indices": indices} if indices is not None else {}
    return run(
        "dct_rows",
        inputs,
        {"out": (dtype, (rows, dim))},
        dtype=dtype,
        rows=rows,
        dim=dim,
        ld=ld,
        first_row=first_row,
    ).outputs["out"]


@covers("dct_rows_kernel")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("rows,dim,ld,first_row", CASES)
def test_dct_rows_match_cpu_backend(rows, dim, ld, first_row, dtype, rng):
    if first_row is None:
        indices = torch.randint(0, dim, (rows,), generator=rng)
        indices[-1] = dim - 1
        indices[0] = indices[-1]  # a repeat
        got = run_rows(rows, dim, ld, dtype, indices=indices)
    else:
        indices = torch.arange(first_row, first_row + rows)
        got = run_rows(rows, dim, ld, dtype, first_row=first_row)
    want = ops.dct_basis(dim, indices, dtype, backend="cpu")
    assert_entries_close(got, want, 4, f"dct rows {dtype} {rows}x{dim} ld {ld}")


@covers("dct_rows_kernel")
def test_dct_rows_past_2_31_bytes():
    indices = torch.tensor([4, 0, 2])
    got = run_rows(3, 5, BIG_STRIDE, torch.float32, indices=indices)
    assert_entries_close(got, ops.dct_basis(5, indices, torch.float32, backend="cpu"), 4, "dct rows, big ld")
