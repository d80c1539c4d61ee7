"""kernels/apollo.cu executed on the CPU by the CUDA emulation (tests/emulated; docs/DESIGN.md §5), with
production's grid and block sizes. The device part of the APOLLO step (csrc/cuda/apollo.cpp after the
projection: the channel norms of G, the moments with the channel norms of N and R, the scales and the limiter,
the weight update) runs for several steps against the float64 oracle lowrank_ops/reference/apollo.py (an
explicit P, R = c P G handed to the driver rounded to the compute type), within the tolerance rule
(tests/helpers.py) against the pure-torch step in the same precisions. Shapes: size 1, more channels than a
block's 256 threads and than 32-channel groups, projected lengths past 256 lanes; both channel layouts (unit
channel stride: 32 channels a block, else one), transposed and BIG_STRIDE-strided W (offsets past 2^31
bytes), every G dtype; float64 W with float32 and float64 states."""

import math

import pytest
import torch

from lowrank_ops.ops import Projection
from lowrank_ops.pure_torch import apollo as plain_torch
from lowrank_ops.reference import apollo as reference

from emulated.harness import BIG_STRIDE, covers, run
from helpers import assert_within_torch_error

pytestmark = pytest.mark.emulated

HYPER = dict(lr=3e-2, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=0.1, scale=2.0)
STEPS = 3

CASES = [  # (shape, side, rank, scale_type, W dtype, G dtype, state dtype, W layout, G layout)
    ((37, 23), "left", 5, "channel", torch.float32, torch.float32, torch.float32, "contiguous", "contiguous"),
    ((37, 23), "right", 4, "channel", torch.bfloat16, torch.bfloat16, torch.float32, "contiguous", "contiguous"),
    ((19, 131), "left", 3, "tensor", torch.float32, torch.float16, torch.float32, "transposed", "transposed"),
    ((130, 9), "right", 1, "tensor", torch.bfloat16, torch.float32, torch.float32, "contiguous", "contiguous"),
    ((1, 17), "right", 4, "channel", torch.float32, torch.float32, torch.float32, "contiguous", "contiguous"),
    ((29, 1), "left", 2, "channel", torch.float32, torch.float64, torch.float32, "contiguous", "contiguous"),
    ((300, 70), "left", 300, "channel", torch.float32, torch.float32, torch.float32, "contiguous", "transposed"),
    ((600, 40), "right", 3, "channel", torch.float64, torch.bfloat16, torch.float32, "contiguous", "contiguous"),
    ((45, 7), "left", 6, "channel", torch.float64, torch.float64, torch.float64, "transposed", "contiguous"),
    ((2, 3), "right", 2, "tensor", torch.float32, torch.float32, torch.float32, "big", "contiguous"),
]


def strides(shape, layout):
    rows, cols = shape
    return {"contiguous": (cols, 1), "transposed": (1, rows), "big": (BIG_STRIDE, 1)}[layout]


def g_view(G, layout):
    """G with the given memory layout (the values unchanged)."""
    return G.T.contiguous().T if layout == "transposed" else G


def emulated_step(W, G, m, v, norm, P, side, t, scale_type, g_layout, w_layout):
    """One step of the device part with R = c P G formed in float64 and rounded to the compute type; in
    place on W, m, v and norm. The moments go to the device in the compute type (csrc/cuda/apollo.cpp's
    working copies) and are rounded back to the state dtype."""
    compute = torch.float64 if W.dtype == torch.float64 else torch.float32
    proj_scale = math.sqrt(P.shape[1] / P.shape[0])
    R64 = proj_scale * (P.double() @ G.double() if side == "left" else G.double() @ P.double().T)
    g = g_view(G, g_layout)
    ws0, ws1 = strides(W.shape, w_layout)
    gs0, gs1 = g.stride()
    out = run(
        "apollo_step",
        {"w": W, "g": G, "r": R64.to(compute), "m": m.to(compute), "v": v.to(compute), "norm": norm.reshape(1)},
        {"w_out": (W.dtype, W.shape), "m_out": (compute, m.shape), "v_out": (compute, v.shape),
         "norm_out": (norm.dtype, (1,))},
        wdtype=W.dtype, gdtype=G.dtype, ndtype=norm.dtype, rows=W.shape[0], cols=W.shape[1], rank=P.shape[0],
        left=int(side == "left"), ws0=ws0, ws1=ws1, gs0=gs0, gs1=gs1, step=t, channel=int(scale_type == "channel"),
        limiter=1, correct_bias=1, **HYPER,
    ).outputs
    W.copy_(out["w_out"])
    m.copy_(out["m_out"])
    v.copy_(out["v_out"])
    norm.copy_(out["norm_out"].reshape(()))


class State:
    def __init__(self, W, projected, dtype):
        self.W, self.norm = W, torch.zeros((), dtype=dtype)
        self.m, self.v = torch.zeros(projected, dtype=dtype), torch.zeros(projected, dtype=dtype)


@covers("apollo_sq_norms_kernel", "apollo_moments_kernel", "apollo_scales_kernel", "apollo_weight_update_kernel")
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0][0]}x{c[0][1]}-{c[1]}-r{c[2]}-{c[3]}-{c[4]}-{c[5]}-{c[7]}")
def test_apollo_step_matches_float64_oracle(case, rng):
    shape, side, rank, scale_type, w_dtype, g_dtype, state_dtype, w_layout, g_layout = case
    d = shape[0] if side == "left" else shape[1]
    P = torch.randn(rank, d, generator=rng)
    projection = Projection.from_matrix(P, side)
    projected = projection.projected_shape(shape)
    W0 = torch.randn(shape, generator=rng).to(w_dtype)
    ours, theirs = State(W0.clone(), projected, state_dtype), State(W0.clone(), projected, state_dtype)
    exact = State(W0.double(), projected, torch.float64)
    kw = dict(scale_type=scale_type, proj_scale=math.sqrt(d / rank))
    for t in range(1, STEPS + 1):
        G = (torch.randn(shape, generator=rng) * (1 + t)).to(g_dtype)  # a growing norm: the limiter acts
        emulated_step(ours.W, G, ours.m, ours.v, ours.norm, P, side, t, scale_type, g_layout, w_layout)
        plain_torch.lowrank_apollo_step_(theirs.W, G, theirs.m, theirs.v, theirs.norm, side, "matrix", 0, rank, P,
                                         kw["proj_scale"], HYPER["lr"], HYPER["beta1"], HYPER["beta2"], HYPER["eps"],
                                         HYPER["weight_decay"], t, HYPER["scale"], scale_type, True, True)
        reference.lowrank_apollo_step_(exact.W, G.double(), exact.m, exact.v, exact.norm, projection, step=t,
                                       **HYPER, **kw)
    what = f"emulated apollo step {case}"
    W0_64, k = W0.double(), max(shape) + rank
    assert_within_torch_error(ours.W.double() - W0_64, exact.W - W0_64, theirs.W.double() - W0_64, f"{what} W - W0",
                              k=k)
    assert_within_torch_error(ours.m, exact.m, theirs.m, f"{what} exp_avg", k=k)
    assert_within_torch_error(ours.v, exact.v, theirs.v, f"{what} exp_avg_sq", k=k)
    assert_within_torch_error(ours.norm, exact.norm, theirs.norm, f"{what} limiter_norm", k=k)


@covers("apollo_sq_norms_kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("channels,length,layout", [(1, 1, "rows"), (70, 300, "columns"), (33, 513, "rows"),
                                                    (3, 5, "big")])
def test_sq_norms_are_exact_sums(channels, length, layout, dtype, rng):
    """The squared channel norms in double: every input element squares exactly in double, so the result is
    the float64 sum up to its own rounding (k additions)."""
    x = torch.randn(channels, length, generator=rng).to(dtype)
    cs, ks = {"rows": (length, 1), "columns": (1, channels), "big": (BIG_STRIDE, 1)}[layout]
    got = run("apollo_sq_norms", {"x": x}, {"out": (torch.float64, (channels,))}, dtype=dtype, channels=channels,
              len=length, cs=cs, ks=ks).outputs["out"]
    want = x.double().square().sum(1)
    u = torch.finfo(torch.float64).eps
    torch.testing.assert_close(got, want, rtol=2 * length * u, atol=0)

