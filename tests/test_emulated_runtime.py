"""The CUDA emulation itself (tests/emulated, docs/DESIGN.md §5): the built-in variables, __shared__ memory and
__syncthreads, the warp exchange of __shfl_xor_sync, CUDA's launch-configuration checks and the exact 16-bit
conversions are right; a broken kernel fails with a clear message, never a hang (a thread that skips a
barrier, lanes that skip a shuffle, an endless loop); the sanitizers are really on (a heap overflow, a
__shared__ overflow and a signed overflow inside a kernel are reported). And every __global__ kernel of
kernels/*.cu has an emulated test that launches it."""

import importlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emulated import harness
from emulated.harness import run, run_failing

pytestmark = pytest.mark.emulated


@pytest.mark.parametrize(
    "block,grid",
    [((256, 1, 1), (3, 1, 1)), ((7, 5, 3), (2, 3, 2)), ((1024, 1, 1), (1, 1, 1)), ((1, 1, 1), (1, 1, 1))],
)
def test_built_in_variables_shared_memory_and_barrier(block, grid):
    """Each thread of each block sees its own threadIdx / blockIdx; a block reverses its thread numbers
    through __shared__ memory across a __syncthreads (threads run in order, so without a working barrier the
    low threads would read slots not yet written)."""
    threads_per_block, blocks = math.prod(block), math.prod(grid)
    n = threads_per_block * blocks
    result = run(
        "selftest_ids",
        outputs={"ids": (torch.int32, (n, 6)), "reversed": (torch.int32, (n,))},
        bx=block[0],
        by=block[1],
        bz=block[2],
        gx=grid[0],
        gy=grid[1],
        gz=grid[2],
    )
    assert [(launch.grid, launch.block) for launch in result.launches] == [(grid, block)]
    z, y, x = np.meshgrid(*(np.arange(d) for d in reversed(block)), indexing="ij")
    bz, by, bx = np.meshgrid(*(np.arange(d) for d in reversed(grid)), indexing="ij")
    want = np.concatenate(
        [
            np.stack(
                [
                    x.ravel(),
                    y.ravel(),
                    z.ravel(),
                    np.full(x.size, b0),
                    np.full(x.size, b1),
                    np.full(x.size, b2),
                ],
                axis=1,
            )
            for b0, b1, b2 in zip(bx.ravel(), by.ravel(), bz.ravel())
        ]
    )
    np.testing.assert_array_equal(result.outputs["ids"].numpy(), want)
    linear = np.arange(n).reshape(blocks, threads_per_block)
    np.testing.assert_array_equal(result.outputs["reversed"].numpy(), linear[:, ::-1].ravel())


def test_shfl_xor_sync_exchanges_within_each_warp():
    out = run(
        "selftest_shuffle", outputs={"out": (torch.float32, (256, 5)), "max_out": (torch.float32, (256,))}
    )
    lane = torch.arange(256)
    value = (1000 * (lane // 32) + lane % 32).float()
    for k in range(5):
        partner = (lane // 32) * 32 + ((lane % 32) ^ (1 << k))
        assert torch.equal(out.outputs["out"][:, k], value[partner])
    assert torch.equal(out.outputs["max_out"], (1000 * (lane // 32) + 31).float())


@pytest.mark.parametrize(
    "block,grid,ok",
    [
        ((1024, 1, 1), (1, 1, 1), True),
        ((1025, 1, 1), (1, 1, 1), False),  # more than 1024 threads
        ((32, 32, 2), (1, 1, 1), False),
        ((1, 1, 65), (1, 1, 1), False),  # blockDim.z <= 64
        ((1, 1, 1), (1, 65536, 1), False),  # gridDim.y <= 65535
        ((1, 1, 1), (0, 1, 1), False),
        ((1, 1, 1), (5, 3, 2), True),
    ],
)
def test_launch_configuration_checks(block, grid, ok):
    """CUDA's limits: a bad configuration launches nothing and cudaGetLastError says
    cudaErrorInvalidConfiguration (9)."""
    result = run(
        "selftest_launch",
        outputs={"count": (torch.int32, (1,))},
        expect_status=0 if ok else 9,
        bx=block[0],
        by=block[1],
        bz=block[2],
        gx=grid[0],
        gy=grid[1],
        gz=grid[2],
    )
    if ok:
        assert int(result.outputs["count"]) == math.prod(grid)


def _bf16_bits(f: np.ndarray) -> np.ndarray:
    return torch.from_numpy(f).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def test_16_bit_conversions_are_exact_ieee():
    """float32 -> float16 / bfloat16 round to nearest even (against NumPy's float16 and torch's bfloat16
    casts, both exact), at every 16-bit value, every midpoint between neighbours and one float32 ulp either
    side of it, subnormals, overflow thresholds and random bit patterns; float16 / bfloat16 -> float32 is
    exact for all 65536 patterns. NaN becomes CUDA's canonical 0x7fff."""
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    h = halves.view(np.float16).astype(np.float32)
    b = (halves.astype(np.uint32) << 16).view(np.float32)
    finite_h, finite_b = h[np.isfinite(h)], b[np.isfinite(b)]
    mids = [
        ((np.sort(v)[1:].astype(np.float64) + np.sort(v)[:-1]) / 2).astype(np.float32)
        for v in (finite_h, finite_b)
    ]
    rng = np.random.default_rng(3)
    candidates = np.concatenate(
        [
            h,
            b,
            *mids,
            *(np.nextafter(m, np.float32(np.inf)) for m in mids),
            *(np.nextafter(m, np.float32(-np.inf)) for m in mids),
            np.float32(
                [
                    65504,
                    65519.996,
                    65520,
                    65536,
                    2**-24,
                    2**-25,
                    2**-26,
                    3 * 2**-26,
                    1e-45,
                    -0.0,
                    np.inf,
                    -np.inf,
                    3.4028235e38,
                ]
            ),
            rng.integers(0, 2**32, 200_000, dtype=np.uint32).view(np.float32),
        ]
    )
    floats = np.concatenate([candidates[~np.isnan(candidates)], np.float32([np.nan])])
    n = floats.size
    pad = n - 65536  # the 16-bit inputs are all patterns, padded with zeros to n
    halves_in = np.concatenate([halves, np.zeros(pad, np.uint16)])
    out = run(
        "selftest_convert",
        {
            "floats": torch.from_numpy(floats),
            "halves": torch.from_numpy(halves_in.view(np.int16)),
            "bfloat16s": torch.from_numpy(halves_in.view(np.int16)),
        },
        {
            "to_half": (torch.int16, (n,)),
            "to_bfloat16": (torch.int16, (n,)),
            "from_half": (torch.float32, (n,)),
            "from_bfloat16": (torch.float32, (n,)),
        },
        n=n,
    ).outputs
    to_half = out["to_half"].numpy().view(np.uint16)
    to_bf16 = out["to_bfloat16"].numpy().view(np.uint16)
    with np.errstate(over="ignore"):
        want_half = floats[:-1].astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(to_half[:-1], want_half)
    np.testing.assert_array_equal(to_bf16[:-1], _bf16_bits(floats[:-1]))
    assert to_half[-1] == 0x7FFF and to_bf16[-1] == 0x7FFF
    np.testing.assert_array_equal(out["from_half"].numpy()[:65536].view(np.uint32), h.view(np.uint32))
    np.testing.assert_array_equal(out["from_bfloat16"].numpy()[:65536].view(np.uint32), b.view(np.uint32))


# ---------------------------------------------------------------------------------------------------------
# Broken kernels fail clearly (drivers/selftest.cpp, enum Defect)
# ---------------------------------------------------------------------------------------------------------


def test_thread_returning_before_a_barrier_is_a_deadlock_error():
    message = run_failing("selftest_broken", defect=0, n=256)
    assert f"exit status {harness.EXIT_KERNEL_ERROR}" in message
    assert "deadlock: __syncthreads() at" in message and "thread (5, 0, 0) returned" in message


def test_threads_at_different_barriers_is_a_deadlock_error():
    message = run_failing("selftest_broken", defect=1, n=256)
    assert "is not reached by every thread of the block" in message
    assert "thread (1, 0, 0) is waiting at __syncthreads() at" in message


def test_lane_missing_from_a_shuffle_is_a_deadlock_error():
    message = run_failing("selftest_broken", defect=2, n=256)
    assert "__shfl_xor_sync() at" in message and "not reached by every lane of warp 0" in message
    assert "thread (3, 0, 0) returned" in message


def test_endless_kernel_times_out_instead_of_hanging():
    message = run_failing("selftest_broken", defect=3, n=4, timeout=2)
    assert "timed out after 2 s in" in message and "broken_kernel" in message


def test_address_sanitizer_sees_device_arrays():
    message = run_failing("selftest_broken", defect=4, n=10)
    assert "AddressSanitizer: heap-buffer-overflow" in message and "broken_kernel" in message


def test_shared_memory_overflow_is_reported():
    message = run_failing("selftest_broken", defect=5, n=256)
    assert "index 256 out of bounds for type 'int [256]'" in message or "global-buffer-overflow" in message


def test_undefined_behaviour_sanitizer_is_on():
    message = run_failing("selftest_broken", defect=6, n=10)
    assert "runtime error: signed integer overflow" in message


# ---------------------------------------------------------------------------------------------------------
# Every __global__ kernel has an emulated test
# ---------------------------------------------------------------------------------------------------------


def emulated_coverage() -> dict[str, list[str]]:
    """harness.COVERAGE with every tests/test_emulated_*.py module imported (each registers its tests)."""
    for path in sorted(Path(__file__).parent.glob("test_emulated_*.py")):
        importlib.import_module(path.stem)
    return harness.COVERAGE


GLOBAL_KERNELS = harness.global_kernels()  # parsed from kernels/*.cu: one test below per kernel


def test_the_kernel_sources_were_parsed():
    assert len(GLOBAL_KERNELS) >= 11, f"expected the kernels of kernels/*.cu, parsed {sorted(GLOBAL_KERNELS)}"


@pytest.mark.parametrize("kernel", sorted(GLOBAL_KERNELS))
def test_every_global_kernel_has_an_emulated_test(kernel):
    """Each __global__ function of kernels/*.cu (one test per kernel, so `-v` lists them) is claimed by a test
    of a tests/test_emulated_*.py module through harness.covers, which also fails that test if it never
    launches the kernel."""
    claimed = emulated_coverage().get(kernel)
    assert claimed, f"__global__ {kernel} ({GLOBAL_KERNELS[kernel]}) has no emulated test (harness.covers)"


def test_no_emulated_test_claims_a_kernel_that_is_gone():
    stale = sorted(set(emulated_coverage()) - set(GLOBAL_KERNELS))
    assert not stale, f"emulated tests claim kernels that kernels/*.cu no longer has: {stale}"
