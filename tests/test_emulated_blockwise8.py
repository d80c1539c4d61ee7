"""kernels/blockwise8.cu executed on the CPU by the CUDA emulation (tests/emulated; docs/DESIGN.md §5):
launch_q8_adam_moments (one warp per block of a row, the absmax by a NaN-propagating __shfl_xor_sync
reduction, the update computed twice) with production's grid and block sizes, against the CPU epilogue
(_C.cpu.blockwise8_adam_moments_, csrc/cpu/adam_epilogues8.h). Both run kernels/blockwise8.h's and
kernels/adam.h's functions on the same inputs in the same order, and the emulation compiles them as host
code like the CPU backend, so codes, absmax, direction and delta are compared bit for bit. (On a GPU nvcc may
contract the moment update into fused multiply-adds: the gpu tests of the fused step hold it to the tolerance
rule instead.) Shapes: size 1, blocks shorter and longer than a warp, rows not divisible into blocks, a block
of one element, more blocks than the grid's warps of one launch. And the CUDA step's moment pass as its driver
hook calls the launcher, against the CPU kernel's whole 8-bit step on an exactly representable projection."""

import pytest
import torch

from lowrank_ops import _extension
from lowrank_ops.projections import moments

from emulated.harness import covers, run

pytestmark = pytest.mark.emulated

HYPER = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1, "step": 3}
CASES = [(1, 1, 256), (3, 70, 32), (5, 300, 256), (7, 513, 256), (4, 9, 1), (2, 41, 7)]


def _state(rows, cols, block, rng):
    """A non-trivial 8-bit state (production encoding of wide-range moments)."""
    state = {}
    moments.init(state, (rows, cols), torch.zeros(1), block)
    m = torch.randn(rows, cols, generator=rng) * torch.pow(10.0, -3 * torch.rand(rows, cols, generator=rng))
    moments.write_into(state, m, m * m * (1 + torch.rand(rows, cols, generator=rng)))
    return state


def _cpu():
    cpu = _extension.compiled("cpu")
    if cpu is None or not hasattr(cpu, "blockwise8_adam_moments_") or not hasattr(cpu, "lowrank_adamw_step8_"):
        pytest.skip("lowrank_ops._C is not built (with blockwise8_adam_moments_ and lowrank_adamw_step8_)")
    return cpu


def _emulated_q8_adam_moments(r, state, delta, block):
    """launch_q8_adam_moments in the emulation on r [rows, cols] and the 8-bit state (and delta): its outputs
    r_out, qm_out, am_out, qv_out, av_out (delta_out)."""
    rows, cols = r.shape
    inputs = {"r": r, "qm": state["exp_avg"], "am": state["exp_avg_absmax"], "qv": state["exp_avg_sq"],
              "av": state["exp_avg_sq_absmax"]} | ({"delta": delta} if delta is not None else {})
    absmax_shape = tuple(state["exp_avg_absmax"].shape)
    outputs = {"r_out": (r.dtype, (rows, cols)), "qm_out": (torch.uint8, (rows, cols)),
               "qv_out": (torch.uint8, (rows, cols)), "am_out": (torch.float32, absmax_shape),
               "av_out": (torch.float32, absmax_shape)} | ({"delta_out": (r.dtype, (rows, cols))} if delta is not None
                                                          else {})
    return run("q8_adam_moments", inputs, outputs, dtype=r.dtype, rows=rows, cols=cols, block=block,
               **HYPER).outputs


@covers("q8_adam_moments_kernel")
@pytest.mark.parametrize("adapter", [False, True], ids=["full", "adapter"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("rows,cols,block", CASES)
def test_q8_adam_moments_bit_exact(rows, cols, block, dtype, adapter, rng):
    cpu = _cpu()
    state = _state(rows, cols, block, rng)
    r = torch.randn(rows, cols, generator=rng, dtype=dtype)
    delta = torch.randn(rows, cols, generator=rng, dtype=dtype) * 1e-3 if adapter else None
    got = _emulated_q8_adam_moments(r, state, delta, block)
    want = {"r": r.clone(), "qm": state["exp_avg"].clone(), "am": state["exp_avg_absmax"].clone(),
            "qv": state["exp_avg_sq"].clone(), "av": state["exp_avg_sq_absmax"].clone(),
            "delta": None if delta is None else delta.clone()}
    cpu.blockwise8_adam_moments_(want["r"], want["qm"], want["am"], want["qv"], want["av"], want["delta"], block,
                                 HYPER["lr"], HYPER["beta1"], HYPER["beta2"], HYPER["eps"], HYPER["weight_decay"],
                                 HYPER["step"], adapter)
    for name in ("r", "qm", "am", "qv", "av") + (("delta",) if adapter else ()):
        assert torch.equal(got[f"{name}_out"], want[name]), name


@covers("q8_adam_moments_kernel")
@pytest.mark.parametrize("adapter", [False, True], ids=["full", "adapter"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_cuda_step_moments_match_the_cpu_step(side, adapter, rng):
    """The CUDA step's 8-bit moment pass as its driver hook runs it (csrc/cuda/lowrank_adam.cpp moments8: one
    launch_q8_adam_moments over the projected gradient [rows, cols] with the state's codes and absmax in place)
    against the C++ CPU kernel's whole step (_C.cpu.lowrank_adamw_step8_) on the same matrix: codes, absmax and
    delta bit for bit. The projection is exact in float32 in any order (a side of entries in {-1, 0, 1}, an
    integer gradient), so both see the same projected gradient; blocks of 7 do not divide the rows."""
    cpu = _cpu()
    shape, rank, block = (23, 40), 9, 7
    P = torch.randint(-1, 2, (rank, shape[0] if side == "left" else shape[1]), generator=rng).float()
    G = torch.randint(-8, 9, shape, generator=rng).float()
    R = P @ G if side == "left" else G @ P.T
    state = _state(*R.shape, block, rng)
    delta = torch.randn(R.shape, generator=rng) * 1e-3 if adapter else None
    got = _emulated_q8_adam_moments(R, state, delta, block)
    want = {k: v.clone() for k, v in state.items() if torch.is_tensor(v)}
    want_delta = None if delta is None else delta.clone()
    sides = (("matrix", 0, rank, P), ("none", 0, 0, None))
    left, right = sides if side == "left" else sides[::-1]
    cpu.lowrank_adamw_step8_(torch.randn(shape, generator=rng), G, want["exp_avg"], want["exp_avg_sq"], want_delta,
                             *left, *right, HYPER["lr"], HYPER["beta1"], HYPER["beta2"], HYPER["eps"],
                             HYPER["weight_decay"], HYPER["step"], 1.0, "adapter" if adapter else "full",
                             want["exp_avg_absmax"], want["exp_avg_sq_absmax"], block)
    for name, key in (("qm", "exp_avg"), ("am", "exp_avg_absmax"), ("qv", "exp_avg_sq"), ("av", "exp_avg_sq_absmax")):
        assert torch.equal(got[f"{name}_out"], want[key]), key
    if adapter:
        assert torch.equal(got["delta_out"], want_delta), "delta"
