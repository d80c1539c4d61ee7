"""The "dct" projection (issue 4, phase 2): the fused low-rank AdamW step with DCT-II basis rows regenerated
from an index vector (SideOperator kind "dct") on every backend against the float64 reference chain run on
an explicit DCT matrix built here from the definition; opcheck; clear errors; the projection kind
(lowrank_ops.projections.dct: dct_topk selection, int16/int32 indices, zero/NaN gradients, persisted bytes);
and LowRankAdamW(projection="dct"): its formulas, the tiny model's training, a state_dict of indices and
ints only, and a bit-identical resume."""

import io
import math
import warnings

import pytest
import torch

from lowrank_ops import _extension, memory, ops, projections
from lowrank_ops.ops import Projection, SideOperator
from lowrank_ops.optim import LowRankAdamW
from lowrank_ops.projections import dct as dct_kind
from lowrank_ops.reference import dct as dct_reference
from lowrank_ops.reference import lowrank_adam as reference

from helpers import (
    GAUSSIAN_ENTRY_TOL,
    assert_clear_error,
    assert_within_torch_error,
    backends,
    random_matrix,
)
from test_lowrank_adam import HYPER, Run, assert_compiled_step_matches_eager, peak_cpu_bytes, plain_projection
from tiny_models import (
    batch,
    lm_loss,
    lowrank_opt,
    make_model,
    quadratic_grad,
    quadratic_problem,
    split_groups,
    state_equal,
    train,
    train_mlp,
)

CPU_BACKENDS = backends("lowrank_adamw_step_")
GPU_BACKENDS = backends("lowrank_adamw_step_", "cuda")


def explicit_dct(d: int, indices) -> torch.Tensor:
    """D[indices, :] of the orthonormal DCT-II basis in float64, from the definition (docs/DESIGN.md §3):
    D[k, t] = c_k cos(pi k (2t + 1) / (2d)), c_0 = sqrt(1/d), c_k = sqrt(2/d). The angle is formed from the
    exact integer k (2t + 1) mod 4d (float64 holds it exactly for the sizes tested here)."""
    k = torch.as_tensor(indices).to(torch.int64)[:, None]
    t = torch.arange(d, dtype=torch.int64)[None, :]
    angle = ((k * (2 * t + 1)) % (4 * d)).to(torch.float64) * (math.pi / (2 * d))
    c = torch.where(k == 0, math.sqrt(1.0 / d), math.sqrt(2.0 / d))
    return c * torch.cos(angle)


def random_indices(rank, d, dtype, rng):
    return torch.sort(torch.randperm(d, generator=rng)[:rank]).values.to(dtype)


def as_matrices(projection: Projection, shape) -> Projection:
    """The projection with every "dct" side replaced by its explicit float64 matrix (other sides kept)."""
    def convert(op, d):
        if op is None or op.kind != "dct":
            return op
        return SideOperator("matrix", op.rank, matrix=explicit_dct(d, op.indices))

    return Projection(convert(projection.left, shape[0]), convert(projection.right, shape[1]))


def check_parity(backend, projection, W0, grads, wd_mode, what, entry_tol=0.0):
    """The op vs plain torch (the reference chain in the op's precisions: float32 products with the explicit
    matrix rounded to float32, or to G's dtype where Triton rounds it so) vs the float64 reference chain on
    the explicit float64 matrix, over len(grads) steps with the state carried. Sides of other kinds are
    passed to the reference chains as they are (`entry_tol`: GAUSSIAN_ENTRY_TOL for a Gaussian side)."""
    shape = projection.projected_shape(W0.shape)
    adapter = wd_mode == "adapter"
    explicit = as_matrices(projection, W0.shape)
    plain32 = Projection(*(None if op is None else SideOperator("matrix", op.rank, matrix=op.matrix.float())
                           if op.kind == "matrix" else op for op in (explicit.left, explicit.right)))
    ours = Run(W0.clone(), shape, torch.float32, adapter)
    theirs = Run(W0.clone(), shape, torch.float32, adapter)
    exact = Run(W0.double(), shape, torch.float64, adapter)
    for t, G in enumerate(grads, start=1):
        ours.step(ops.lowrank_adamw_step_, G, projection, t, wd_mode, backend=backend)
        theirs.step(reference.lowrank_adamw_step_, G, plain_projection(plain32, backend, G.dtype, W0.shape), t,
                    wd_mode)
        exact.step(reference.lowrank_adamw_step_, G.double(), explicit, t, wd_mode)
    k = max(W0.shape)
    W0_64 = W0.double()
    assert ours.W.dtype == W0.dtype
    assert_within_torch_error(ours.W.double() - W0_64, exact.W - W0_64, theirs.W.double() - W0_64, f"{what} W - W0",
                              k=k, entry_tol=entry_tol)
    assert_within_torch_error(ours.m, exact.m, theirs.m, f"{what} exp_avg", k=k, entry_tol=entry_tol)
    assert_within_torch_error(ours.v, exact.v, theirs.v, f"{what} exp_avg_sq", k=k, entry_tol=entry_tol)
    if adapter:
        assert_within_torch_error(ours.delta, exact.delta, theirs.delta, f"{what} delta", k=k, entry_tol=entry_tol)


# ---------------------------------------------------------------------------------------------------------
# The fused op with a "dct" side
# ---------------------------------------------------------------------------------------------------------

# (shape, side, rank, index dtype, G dtype, G layout, wd_mode): odd sizes, d = 1, rank = d, d across the
# Triton block edges (64 / 128) and the CPU's 128-column blocks, every index dtype, both G layouts.
OP_CASES = [
    ((37, 29), "left", 5, torch.int16, torch.float32, "contiguous", "full"),
    ((23, 41), "right", 6, torch.int32, torch.bfloat16, "transposed", "adapter"),
    ((1, 9), "left", 1, torch.int64, torch.float32, "sliced", "full"),
    ((9, 1), "right", 1, torch.int16, torch.float32, "contiguous", "adapter"),
    ((3, 130), "left", 3, torch.int32, torch.bfloat16, "contiguous", "full"),
    ((131, 70), "right", 7, torch.int16, torch.float16, "sliced", "full"),
    ((200, 17), "left", 9, torch.int16, torch.float32, "transposed", "adapter"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16], ids=["W_fp32", "W_bf16"])
@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: f"{c[0][0]}x{c[0][1]}-{c[1]}-r{c[2]}")
def test_fused_step_parity_with_float64_explicit_dct(backend, w_dtype, case, rng):
    shape, side, rank, index_dtype, g_dtype, layout, wd_mode = case
    d = shape[0] if side == "left" else shape[1]
    projection = Projection.from_dct_indices(random_indices(rank, d, index_dtype, rng), side)
    W0 = torch.randn(shape, generator=rng).to(w_dtype)
    grads = [random_matrix(shape, g_dtype, rng, layout) for _ in range(3)]
    check_parity(backend, projection, W0, grads, wd_mode, f"{backend} {case} W {w_dtype}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("other", ["dct", "gaussian", "matrix"])
def test_two_sided_with_a_dct_side(backend, other, rng):
    """The op's sides are independent: a dct left side with a dct, seeded or explicit right side."""
    shape = (45, 38)
    right = {"dct": SideOperator("dct", 5, indices=random_indices(5, shape[1], torch.int32, rng)),
             "gaussian": SideOperator("gaussian", 4, seed=9),
             "matrix": SideOperator("matrix", 6, matrix=torch.randn(6, shape[1], generator=rng) / 6)}[other]
    projection = Projection(SideOperator("dct", 7, indices=random_indices(7, shape[0], torch.int16, rng)), right)
    W0 = torch.randn(shape, generator=rng)
    grads = [torch.randn(shape, generator=rng) for _ in range(2)]
    check_parity(backend, projection, W0, grads, "full", f"{backend} dct x {other}",
                 entry_tol=GAUSSIAN_ENTRY_TOL if other == "gaussian" else 0.0)


@pytest.mark.parametrize("backend", [p for p in CPU_BACKENDS if p.values[0] != "triton"])
def test_float64_weights(backend, rng):
    shape = (31, 26)
    projection = Projection.from_dct_indices(random_indices(4, 26, torch.int16, rng), "right")
    W0 = torch.randn(shape, generator=rng, dtype=torch.float64)
    check_parity(backend, projection, W0, [torch.randn(shape, generator=rng) for _ in range(2)], "adapter",
                 f"{backend} W float64")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_index_dtype_does_not_change_the_result(backend, rng):
    shape = (33, 20)
    idx = random_indices(6, 33, torch.int64, rng)
    W0, G = torch.randn(shape, generator=rng), torch.randn(shape, generator=rng)
    results = []
    for dtype in (torch.int16, torch.int32, torch.int64):
        W, m, v = W0.clone(), torch.zeros(6, 20), torch.zeros(6, 20)
        ops.lowrank_adamw_step_(W, G, m, v, Projection.from_dct_indices(idx.to(dtype), "left"), step=1, **HYPER,
                                backend=backend)
        results.append((W, m, v))
    for W, m, v in results[1:]:
        assert torch.equal(W, results[0][0]) and torch.equal(m, results[0][1]) and torch.equal(v, results[0][2])


@pytest.mark.parametrize("backend", [p for p in CPU_BACKENDS if p.values[0] == "cpu"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_no_r_by_d_or_m_by_n_temporary(backend, side, rng):
    """P is generated a tile at a time: the step holds less than P itself (64 x 4096 in float32) and well
    under an m x n buffer (the reference chain, which materializes P and U = P^T N, holds more than one)."""
    shape = (4096, 160) if side == "left" else (160, 4096)
    d = 4096
    projection = Projection.from_dct_indices(random_indices(64, d, torch.int16, rng), side)
    W, G = torch.randn(shape, generator=rng), torch.randn(shape, generator=rng)
    r = projection.projected_shape(shape)
    m, v = torch.zeros(r), torch.zeros(r)
    step = (lambda: ops.lowrank_adamw_step_(W, G, m, v, projection, step=1, **HYPER, backend=backend))
    step()
    held = peak_cpu_bytes(step)
    assert held < W.nbytes / 4
    assert held < 64 * d * 4
    assert peak_cpu_bytes(lambda: reference.lowrank_adamw_step_(W, G, m, v, projection, step=1, **HYPER)) >= W.nbytes


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend, rng):
    shape = (21, 13)
    for w_dtype, left, right, wd_mode in [
        (torch.float32, ("dct", 0, 3, random_indices(3, 21, torch.int16, rng)), ("none", 0, 0, None), "full"),
        (torch.bfloat16, ("none", 0, 0, None), ("dct", 0, 4, random_indices(4, 13, torch.int32, rng)), "adapter"),
        (torch.float32, ("dct", 0, 2, random_indices(2, 21, torch.int32, rng)), ("rademacher", 5, 3, None), "full"),
    ]:
        r = (left[2] if left[0] != "none" else shape[0], right[2] if right[0] != "none" else shape[1])
        W = torch.randn(shape, generator=rng).to(w_dtype)
        G = torch.randn(shape, generator=rng).to(torch.bfloat16)
        m, v, delta = torch.zeros(r), torch.rand(r, generator=rng), torch.randn(r, generator=rng)
        torch.library.opcheck(torch.ops.lowrank_ops.lowrank_adamw_step_.default,
                              (W, G, m, v, delta, *left, *right, 1e-3, 0.9, 0.999, 1e-8, 0.01, 2, 1.0, wd_mode),
                              {"backend": backend})


def test_torch_compile_fullgraph_matches_eager(rng):
    projection = Projection.from_dct_indices(random_indices(3, 10, torch.int16, rng), "left")

    def step(W, G, m, v):
        ops.lowrank_adamw_step_(W, G, m, v, projection, step=2, **HYPER)
        return W.sum()

    W, G = torch.randn(10, 7, generator=rng), torch.randn(10, 7, generator=rng)
    m, v = torch.rand(3, 7, generator=rng), torch.rand(3, 7, generator=rng)
    assert_compiled_step_matches_eager(step, W, G, m, v)


def _call(projection, shape=(6, 5), backend=None):
    r = projection.projected_shape(shape)
    ops.lowrank_adamw_step_(torch.randn(shape), torch.randn(shape), torch.zeros(r), torch.zeros(r), projection,
                            lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1, backend=backend)


@pytest.mark.parametrize("call,error,message", [
    (lambda: SideOperator("dct", 2), ValueError, "kind 'dct' needs `indices`, a 1-D int16/int32/int64 tensor"),
    (lambda: SideOperator("dct", 2, indices=torch.tensor([0.0, 1.0])), ValueError, "kind 'dct' needs `indices`"),
    (lambda: SideOperator("dct", 3, indices=torch.tensor([0, 1])), ValueError, "indices has 2 entries, rank is 3"),
    (lambda: SideOperator("gaussian", 2, indices=torch.tensor([0, 1])), ValueError, "kind 'gaussian' takes no indices"),
    (lambda: _call(Projection.from_dct_indices(torch.tensor([0, 6], dtype=torch.int16), "left")), ValueError,
     "argument 'projection.left.indices' must be values in [0, 6) (basis rows of the projected dimension), got "
     "values in [0, 6]"),
    (lambda: _call(Projection.from_dct_indices(torch.tensor([-1, 2]), "right")), ValueError,
     "argument 'projection.right.indices' must be values in [0, 5)"),
])
def test_bad_arguments_raise_clear_errors(call, error, message):
    assert_clear_error(call, error, message)


@pytest.mark.skipif(not _extension.LOADED, reason="compiled extension not loaded")
@pytest.mark.parametrize("left_matrix,message", [
    (None, "argument 'left_matrix' must be the index vector for kinds \"dct\" and \"sr_dct\", got None"),
    (torch.tensor([0, 5]), "argument 'left_matrix' must hold values in [0, 5) (basis rows of the projected "
                           "dimension), got values in [0, 5]"),
    (torch.tensor([0, 1, 2]), "argument 'left_matrix' of kind \"dct\" must be a 1-D int16, int32 or int64 index "
                              "vector of length 2 (the rank), got Long of shape [3]"),
    (torch.tensor([0.0, 1.0]), "argument 'left_matrix' of kind \"dct\" must be a 1-D int16, int32 or int64 index "
                               "vector of length 2 (the rank), got Float of shape [2]"),
])
def test_cpp_op_rejects_bad_indices(left_matrix, message):
    """The C++ op checks a dct side itself, for C++ and torch.ops callers."""
    with pytest.raises(RuntimeError) as info:
        torch.ops.lowrank_ops.lowrank_adamw_step_(
            torch.randn(5, 4), torch.randn(5, 4), torch.zeros(2, 4), torch.zeros(2, 4), None, "dct", 0, 2, left_matrix,
            "none", 0, 0, None, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, 1.0, "full")
    assert f"lowrank_ops.lowrank_adamw_step_: {message}" in str(info.value), str(info.value)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("w_dtype,g_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                             (torch.float64, torch.float32)])
@pytest.mark.parametrize("wd_mode", ["full", "adapter"])
def test_gpu_parity(backend, side, w_dtype, g_dtype, wd_mode, rng):
    """CUDA and Triton on the GPU against the float64 explicit-matrix reference (CPU), on a shape that spans
    several tiles of every kernel, with transposed G."""
    shape = (517, 301)
    d = shape[0] if side == "left" else shape[1]
    idx = random_indices(40, d, torch.int16, rng)
    projection = Projection.from_dct_indices(idx, side)
    cuda_projection = Projection.from_dct_indices(idx.cuda(), side)
    W0 = torch.randn(shape, generator=rng).to(w_dtype)
    grads = [random_matrix(shape, g_dtype, rng, "transposed") for _ in range(3)]
    adapter = wd_mode == "adapter"
    r = projection.projected_shape(shape)
    explicit = as_matrices(projection, shape)
    plain32 = Projection.from_matrix(explicit_dct(d, idx).float(), side)
    W, m, v = W0.cuda(), torch.zeros(r, device="cuda"), torch.zeros(r, device="cuda")
    delta = torch.zeros(r, device="cuda") if adapter else None
    theirs = Run(W0.clone(), r, torch.float32, adapter)
    exact = Run(W0.double(), r, torch.float64, adapter)
    for t, G in enumerate(grads, start=1):
        ops.lowrank_adamw_step_(W, G.cuda(), m, v, cuda_projection, step=t, wd_mode=wd_mode, delta=delta, **HYPER,
                                backend=backend)
        theirs.step(reference.lowrank_adamw_step_, G, plain_projection(plain32, backend, g_dtype, shape), t, wd_mode)
        exact.step(reference.lowrank_adamw_step_, G.double(), explicit, t, wd_mode)
    W0_64 = W0.double()
    assert_within_torch_error(W.cpu().double() - W0_64, exact.W - W0_64, theirs.W.double() - W0_64,
                              f"{backend} {side} W", k=max(shape))
    assert_within_torch_error(m.cpu(), exact.m, theirs.m, f"{backend} {side} exp_avg", k=max(shape))


# ---------------------------------------------------------------------------------------------------------
# The projection kind
# ---------------------------------------------------------------------------------------------------------


class Warnings:
    def __init__(self):
        self.events = []

    def __call__(self, key, message):
        self.events.append((key, message))


@pytest.mark.parametrize("shape,side", [((23, 9), "auto"), ((9, 23), "auto"), ((40, 31), "left"),
                                        ((2, 40000), "auto")])
def test_refresh_persists_the_topk_indices_only(shape, side, rng):
    kind = projections.get("dct")
    layout = kind.layout(shape, 4, side)
    (proj_side, rank, d), = layout.sides()
    G = torch.randn(shape, generator=rng)
    state = {}
    assert projections.refresh(kind, state, G, layout, seed=1234, warn=Warnings())
    assert set(state) == {f"proj_{proj_side}", "proj_seed"} and state["proj_seed"] == 1234
    idx = state[f"proj_{proj_side}"]
    assert idx.dtype == (torch.int16 if d <= 32767 else torch.int32) and idx.shape == (rank, )
    assert torch.equal(idx.long(), dct_reference.dct_topk(G, rank, proj_side).long())  # the float64 reference
    assert kind.persisted_bytes(layout, torch.float32) == idx.numel() * idx.element_size()
    projection = kind.projection(state, layout)
    op = projection.left or projection.right
    assert op.kind == "dct" and op.indices is idx
    assert projection.projected_shape(shape) == layout.projected_shape


def test_refresh_picks_the_planted_basis_rows(rng):
    """G built from basis rows {3, 17, 40} on its right side: those are the rows selected."""
    d = 64
    rows = [3, 17, 40]
    G = torch.randn(50, 3, generator=rng, dtype=torch.float64) @ explicit_dct(d, rows)
    kind = projections.get("dct")
    layout = kind.layout(tuple(G.shape), 3, "right")
    state = {}
    kind.refresh(state, G.float(), layout, seed=0)
    assert state["proj_right"].tolist() == rows


def test_index_dtype_boundary():
    assert dct_kind.index_dtype(32767) == torch.int16 and dct_kind.index_dtype(32768) == torch.int32


def test_zero_gradient_at_first_refresh_uses_seeded_rows_then_keeps_them():
    kind = projections.get("dct")
    layout = kind.layout((12, 8), 3, "auto")
    warn, state = Warnings(), {}
    assert projections.refresh(kind, state, torch.zeros(12, 8), layout, seed=42, warn=warn)
    fallback = state["proj_right"]
    assert fallback.dtype == torch.int16 and fallback.shape == (3, )
    assert len(set(fallback.tolist())) == 3 and fallback.tolist() == sorted(fallback.tolist())
    assert all(0 <= i < 8 for i in fallback.tolist())
    assert torch.equal(fallback, dct_kind.seeded_indices(3, 8, 42))
    assert not torch.equal(dct_kind.seeded_indices(3, 1000, 42), dct_kind.seeded_indices(3, 1000, 43))
    assert [key for key, _ in warn.events] == ["refresh_failed"] and "first refresh" in warn.events[0][1]
    assert projections.refresh(kind, state, torch.zeros(12, 8), layout, seed=43, warn=warn)
    assert torch.equal(state["proj_right"], fallback) and "previous basis is kept" in warn.events[1][1]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_gradient_keeps_the_indices_and_asks_to_skip(bad, rng):
    kind = projections.get("dct")
    layout = kind.layout((10, 6), 2, "auto")
    state, warn = {}, Warnings()
    projections.refresh(kind, state, torch.randn(10, 6, generator=rng), layout, seed=1, warn=warn)
    before = {key: v.clone() if isinstance(v, torch.Tensor) else v for key, v in state.items()}
    G = torch.randn(10, 6, generator=rng)
    G[3, 2] = bad
    assert not projections.refresh(kind, state, G, layout, seed=2, warn=warn)
    assert [key for key, _ in warn.events] == ["nonfinite"]
    assert torch.equal(state["proj_right"], before["proj_right"]) and state["proj_seed"] == before["proj_seed"]


def test_memory_estimate_counts_the_index_bytes():
    shapes = {"a": (4096, 4096), "b": (11008, 4096), "c": (40000, 256)}
    rank = 128
    dct = memory.estimate(shapes, dict(rank=rank, projection="dct"))
    seeded = memory.estimate(shapes, dict(rank=rank, projection="rademacher"))
    # side "auto" projects the smaller dimension: d = 4096, 4096, 256 -> all int16 (2 bytes per index)
    assert dct.projections == 3 * rank * 2
    assert dct.projections - seeded.projections == 3 * (rank * 2 - 8)
    left = memory.estimate({"w": (40000, 50000)}, dict(rank=rank, projection="dct"))
    assert left.projections == rank * 4  # d = 40000 > 32767: int32
    assert dct.optimizer_state == seeded.optimizer_state


# ---------------------------------------------------------------------------------------------------------
# LowRankAdamW(projection="dct")
# ---------------------------------------------------------------------------------------------------------


def transcribed_dct_adamw(W0, X, Y, steps, dtype, *, rank, gap, lr, betas, eps, wd, scale):
    """LowRankAdamW with the "dct" kind (side right), transcribed in `dtype`: at each refresh the rows are
    the float64 reference's top-k of the current gradient (docs/DESIGN.md §3), P built from the definition."""
    W, X, Y = W0.to(dtype), X.to(dtype), Y.to(dtype)
    b1, b2 = betas
    mom = vel = P = None
    chosen = []
    for t in range(1, steps + 1):
        G = (W @ X - Y) @ X.T / X.shape[1]
        if (t - 1) % gap == 0:
            idx = dct_reference.dct_topk(G, rank, "right")
            chosen.append(idx)
            P = explicit_dct(W.shape[1], idx).to(dtype)
        R = G @ P.T
        mom = (1 - b1) * R if mom is None else b1 * mom + (1 - b1) * R
        vel = (1 - b2) * R * R if vel is None else b2 * vel + (1 - b2) * R * R
        N = (mom / (1 - b1**t)) / (vel.sqrt() / math.sqrt(1 - b2**t) + eps)
        W = W - lr * wd * W - lr * scale * N @ P
    return W, chosen


def test_lowrank_adamw_follows_its_formulas(rng):
    """8 steps with update_gap 3 (refreshes before steps 1, 4, 7) against the transcription in float64 and
    in float32 (plain torch) under the tolerance rule; the indices are the transcription's."""
    W0, X, Y = quadratic_problem((14, 9), rng)
    hyper = dict(rank=3, gap=3, lr=2e-2, betas=(0.9, 0.95), eps=1e-8, wd=0.1, scale=0.5)
    W = torch.nn.Parameter(W0.float())
    opt = LowRankAdamW([dict(params=[W], rank=3, projection="dct", update_gap=3, scale=0.5)], lr=2e-2,
                       betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, seed=77)
    chosen = []
    for t in range(8):
        W.grad = quadratic_grad(W.detach(), X.float(), Y.float())
        opt.step()
        if t % 3 == 0:
            chosen.append(opt.state[W]["proj_right"].clone())
    ref64, chosen64 = transcribed_dct_adamw(W0, X, Y, 8, torch.float64, **hyper)
    plain32, _ = transcribed_dct_adamw(W0, X, Y, 8, torch.float32, **hyper)
    assert [c.tolist() for c in chosen] == [c.tolist() for c in chosen64]
    assert_within_torch_error(W.detach(), ref64, plain32, "dct LowRankAdamW")
    assert opt.state[W]["step"] == 8 and opt.state[W]["refresh"] == 3


def test_tiny_model_decreases_the_loss():
    """The tiny MLP of tests/tiny_models.py (32-64-16, rank 8, update_gap 25, 200 steps) with "dct" on both
    sides and both weight dtypes: the same criterion as every other kind there (final < half the initial)."""
    for side in ("left", "right"):
        for dtype in (torch.float32, torch.bfloat16):
            initial, final = train_mlp("dct", side, dtype)
            assert final < 0.5 * initial, f"dct {side} {dtype}: loss {initial:.4f} -> {final:.4f}"


@pytest.mark.parametrize("dtype,wd_mode", [(torch.float32, "full"), (torch.bfloat16, "adapter")])
def test_state_dict_holds_indices_and_resume_is_bit_identical(dtype, wd_mode):
    model = make_model(dtype)
    opt = lowrank_opt(model, "dct", wd_mode=wd_mode)
    train(model, opt, 6)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    lowrank_states = [s for s in saved["opt"]["state"].values() if "layer" in s]
    assert lowrank_states
    for state in lowrank_states:
        tensors = {k for k, v in state.items() if isinstance(v, torch.Tensor)}
        bases = {k for k in tensors if k.startswith("proj_")}
        assert len(bases) == 1 and tensors - bases == {"exp_avg", "exp_avg_sq"} | (
            {"delta"} if wd_mode == "adapter" else set())
        idx = state[bases.pop()]
        assert idx.dtype == torch.int16 and idx.dim() == 1 and idx.shape[0] == 3
        assert all(isinstance(v, int) for k, v in state.items() if k not in tensors)

    resumed_model = make_model(dtype, seed=5)
    resumed_model.load_state_dict(saved["model"])
    resumed = lowrank_opt(resumed_model, "dct", wd_mode=wd_mode)
    resumed.load_state_dict(saved["opt"])
    train(model, opt, 7, start=6)  # crosses the refresh at step 8
    train(resumed_model, resumed, 7, start=6)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
        if p in opt.state:
            state_equal(opt.state[p], resumed.state[q])


def test_nan_gradient_at_refresh_skips_the_step_and_warns_once():
    model = make_model()
    opt = LowRankAdamW(split_groups(model, rank=3, projection="dct", update_gap=2), lr=1e-2)
    train(model, opt, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = model.fc1.weight.detach().clone()
        opt.zero_grad()
        lm_loss(model, batch(50)).backward()
        model.fc1.weight.grad[0, 0] = math.nan
        opt.step()  # step 2 % 2 == 0: a refresh step
        assert torch.equal(model.fc1.weight, before)
    assert len([w for w in caught if "NaN/Inf" in str(w.message)]) == 1
    train(model, opt, 3, start=3)
    assert all(torch.isfinite(p).all() for p in model.parameters())
