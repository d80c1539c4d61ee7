"""kernels/lowrank_adam.cu executed on the CPU by the CUDA emulation (tests/emulated; docs/DESIGN.md §5): each
launcher with production's grid and block sizes. The sketch and DCT windows against the CPU backend's
operators (Rademacher bit-exact, Gaussian and DCT entries within their few-ulp bounds, as in
test_emulated_sketch.py and test_emulated_dct.py), the signed DCT window of an "sr_dct" side bit-exact against
the unsigned one times the sign oracle (lowrank_ops/reference/sr_dct.py); the moment and weight-update epilogues, which no CPU op
exposes on their own, within the tolerance rule (tests/helpers.py) against the float64 formulas of
kernels/adam.h, plain torch being the same formulas in float32 (torch.optim.AdamW's order). Shapes: size 1,
non-multiples of the 256-thread blocks and the 8-column runs, rank > 32, windows at odd offsets, padded,
transposed and BIG_STRIDE-strided (offsets past 2^31 bytes) matrices."""

import math

import pytest
import torch

from lowrank_ops import ops
from lowrank_ops.reference import sr_dct as sr_dct_oracle

from emulated.harness import BIG_STRIDE, KIND_CODES, SEED, assert_entries_close, covers, run
from helpers import assert_within_torch_error

pytestmark = pytest.mark.emulated

COMPUTE_DTYPES = [torch.float32, torch.float64]

# (rank, dim, k0, width, ld)
WINDOW_CASES = [
    (1, 1, 0, 1, 1),
    (40, 300, 37, 129, 130),
    (33, 1000, 0, 1000, 1000),
    (3, 50, 5, 7, BIG_STRIDE),
]


@covers("sketch_window_kernel")
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("dtype", COMPUTE_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("rank,dim,k0,width,ld", WINDOW_CASES)
def test_sketch_window_matches_cpu_sketch(rank, dim, k0, width, ld, dtype, kind):
    if ld == BIG_STRIDE and dtype == torch.float64:
        ld = BIG_STRIDE // 2  # the same byte offsets
    got = run(
        "sketch_window",
        outputs={"out": (dtype, (rank, width))},
        dtype=dtype,
        kind=KIND_CODES[kind],
        seed=SEED,
        rank=rank,
        dim=dim,
        k0=k0,
        width=width,
        ld=ld,
    ).outputs["out"]
    want = ops.sketch(rank, dim, SEED, kind, dtype, backend="cpu")[:, k0 : k0 + width]
    what = f"sketch window {kind} {dtype} {rank}x{dim}[{k0}:{k0 + width}]"
    if kind == "rademacher":
        assert torch.equal(got, want), what
    else:
        assert_entries_close(got, want, 4, what, floor=dim**-0.5)


@covers("dct_window_kernel")
@pytest.mark.parametrize("dtype", COMPUTE_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("rank,dim,k0,width,ld", WINDOW_CASES)
def test_dct_window_matches_cpu_basis(rank, dim, k0, width, ld, dtype, rng):
    if ld == BIG_STRIDE and dtype == torch.float64:
        ld = BIG_STRIDE // 2
    indices = torch.randint(0, dim, (rank,), generator=rng)
    indices[-1] = dim - 1
    got = run(
        "dct_window",
        {"indices": indices},
        {"out": (dtype, (rank, width))},
        dtype=dtype,
        rank=rank,
        dim=dim,
        k0=k0,
        width=width,
        ld=ld,
    ).outputs["out"]
    want = ops.dct_basis(dim, indices, dtype, backend="cpu")[:, k0 : k0 + width]
    assert_entries_close(got, want, 4, f"dct window {dtype} {rank}x{dim}[{k0}:{k0 + width}]")


@covers("dct_window_kernel")
@pytest.mark.parametrize("dtype", COMPUTE_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("rank,dim,k0,width,ld", WINDOW_CASES)
def test_signed_dct_window_is_the_dct_window_times_the_sr_dct_signs(rank, dim, k0, width, ld, dtype, rng):
    """With a seed the window is the "sr_dct" side's: every entry the unsigned entry with the sign of its column
    (a negation: bit-exact), the signs the oracle's for that seed, across the 128-column Philox groups."""
    if ld == BIG_STRIDE and dtype == torch.float64:
        ld = BIG_STRIDE // 2
    indices = torch.randint(0, dim, (rank,), generator=rng)
    window = dict(dtype=dtype, rank=rank, dim=dim, k0=k0, width=width, ld=ld)
    plain = run("dct_window", {"indices": indices}, {"out": (dtype, (rank, width))}, **window).outputs["out"]
    signed = run("dct_window", {"indices": indices}, {"out": (dtype, (rank, width))}, seed=SEED, **window).outputs["out"]
    signs = sr_dct_oracle.signs(dim, SEED)[k0 : k0 + width].to(dtype)
    assert torch.equal(signed, plain * signs), f"signed dct window {dtype} {rank}x{dim}[{k0}:{k0 + width}]"


# ---------------------------------------------------------------------------------------------------------
# Epilogues
# ---------------------------------------------------------------------------------------------------------

HYPER = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1, "step": 3, "scale": 0.25}


def moments_formula(r, m, v, delta, h):
    """kernels/adam.h's moments (and adapter direction) with torch ops in the inputs' dtype:
    (direction, m, v, delta)."""
    m1 = m.lerp(r, 1 - h["beta1"])
    v1 = v.mul(h["beta2"]).addcmul(r, r, value=1 - h["beta2"])
    bias1, bias2 = 1 - h["beta1"] ** h["step"], 1 - h["beta2"] ** h["step"]
    n = (m1 / bias1) / (v1.sqrt() / math.sqrt(bias2) + h["eps"])
    if delta is None:
        return n, m1, v1, None
    direction = n + h["weight_decay"] * delta
    return direction, m1, v1, delta - h["lr"] * direction


@covers("adam_moments_kernel")
@pytest.mark.parametrize("adapter", [False, True], ids=["full", "adapter"])
@pytest.mark.parametrize("dtype", COMPUTE_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("n", [1, 257, 1000])
def test_adam_moments_within_tolerance(n, dtype, adapter, rng):
    r, m, delta = (torch.randn(n, generator=rng).to(dtype) for _ in range(3))
    v = torch.rand(n, generator=rng).to(dtype) * 1e-2
    inputs = {"r": r, "m": m, "v": v} | ({"delta": delta} if adapter else {})
    names = ["r_out", "m_out", "v_out"] + (["delta_out"] if adapter else [])
    got = run(
        "adam_moments",
        inputs,
        {name: (dtype, (n,)) for name in names},
        dtype=dtype,
        n=n,
        adapter=adapter,
        **HYPER,
    ).outputs
    ref64 = moments_formula(r.double(), m.double(), v.double(), delta.double() if adapter else None, HYPER)
    plain = moments_formula(r, m, v, delta if adapter else None, HYPER)
    for name, want, torch_out in zip(names, ref64, plain):
        assert_within_torch_error(got[name], want, torch_out, f"adam moments {name} {dtype} n={n}")


# (rows, cols, layout)
UPDATE_CASES = [(1, 1, "contiguous"), (37, 70, "contiguous"), (300, 9, "transposed"), (2, 3, "big")]


def update_strides(rows, cols, layout):
    return {"contiguous": (cols, 1), "transposed": (1, rows), "big": (BIG_STRIDE, 1)}[layout]


@covers("weight_update_kernel")
@pytest.mark.parametrize("adapter", [False, True], ids=["full", "adapter"])
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float64], ids=lambda d: str(d).removeprefix("torch.")
)
@pytest.mark.parametrize("rows,cols,layout", UPDATE_CASES)
def test_weight_update_within_tolerance(rows, cols, layout, dtype, adapter, rng):
    if layout == "big" and dtype != torch.float32:
        layout = "contiguous"  # one dtype suffices for offsets past 2^31 bytes
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    w = torch.randn(rows, cols, generator=rng).to(dtype)
    u = torch.randn(rows, cols, generator=rng).to(compute)
    s0, s1 = update_strides(rows, cols, layout)
    got = run(
        "weight_update",
        {"w": w, "u": u},
        {"w_out": (dtype, (rows, cols))},
        dtype=dtype,
        rows=rows,
        cols=cols,
        s0=s0,
        s1=s1,
        adapter=adapter,
        **HYPER,
    ).outputs["w_out"]
    multiplier = 1.0 if adapter else 1 - HYPER["lr"] * HYPER["weight_decay"]
    update_scale = HYPER["lr"] * HYPER["scale"]
    ref64 = w.double() * multiplier - update_scale * u.double()
    plain = (w.to(compute) * multiplier - update_scale * u).to(dtype)
    assert_within_torch_error(got, ref64, plain, f"weight update {dtype} {layout} {rows}x{cols}")
