"""kernels/blockwise8.cu executed on the CPU by the CUDA emulation (tests/emulated; docs/DESIGN.md §5):
launch_q8_adam_moments (one warp per block of a row, the absmax by a NaN-propagating __shfl_xor_sync
reduction, the update computed twice) with production's grid and block sizes, against the CPU epilogue
(_C.cpu.blockwise8_adam_moments_, csrc/cpu/adam_epilogues8.h). Both run kernels/blockwise8.h's and
kernels/adam.h's functions on the same inputs in the same order, and the emulation compiles them as host
code like the CPU backend, so codes, absmax, direction and delta are compared bit for bit. (On a GPU nvcc may
contract the moment update into fused multiply-adds: the gpu tests of the fused step hold it to the tolerance
rule instead.) Shapes: size 1, blocks shorter and longer than a warp, rows not divisible into blocks, a block
of one element, more blocks than the grid's warps of one launch."""

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


@covers("q8_adam_moments_kernel")
@pytest.mark.parametrize("adapter", [False, True], ids=["full", "adapter"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("rows,cols,block", CASES)
def test_q8_adam_moments_bit_exact(rows, cols, block, dtype, adapter, rng):
    cpu = _extension.compiled("cpu")
    if cpu is None or not hasattr(cpu, "blockwise8_adam_moments_"):
        pytest.skip("lowrank_ops._C is not built (with blockwise8_adam_moments_)")
    state = _state(rows, cols, block, rng)
    r = torch.randn(rows, cols, generator=rng, dtype=dtype)
    delta = torch.randn(rows, cols, generator=rng, dtype=dtype) * 1e-3 if adapter else None
    inputs = {"r": r, "qm": state["exp_avg"], "am": state["exp_avg_absmax"], "qv": state["exp_avg_sq"],
              "av": state["exp_avg_sq_absmax"]} | ({"delta": delta} if adapter else {})
    absmax_shape = tuple(state["exp_avg_absmax"].shape)
    outputs = {"r_out": (dtype, (rows, cols)), "qm_out": (torch.uint8, (rows, cols)),
               "qv_out": (torch.uint8, (rows, cols)), "am_out": (torch.float32, absmax_shape),
               "av_out": (torch.float32, absmax_shape)} | ({"delta_out": (dtype, (rows, cols))} if adapter else {})
    got = run("q8_adam_moments", inputs, outputs, dtype=dtype, rows=rows, cols=cols, block=block,
              **HYPER).outputs
    want = {"r": r.clone(), "qm": state["exp_avg"].clone(), "am": state["exp_avg_absmax"].clone(),
            "qv": state["exp_avg_sq"].clone(), "av": state["exp_avg_sq_absmax"].clone(),
            "delta": None if delta is None else delta.clone()}
    cpu.blockwise8_adam_moments_(want["r"], want["qm"], want["am"], want["qv"], want["av"], want["delta"], block,
                                 HYPER["lr"], HYPER["beta1"], HYPER["beta2"], HYPER["eps"], HYPER["weight_decay"],
                                 HYPER["step"], adapter)
    for name in ("r", "qm", "am", "qv", "av") + (("delta",) if adapter else ()):
        assert torch.equal(got[f"{name}_out"], want[name]), name
