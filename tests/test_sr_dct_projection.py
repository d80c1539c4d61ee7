"""The "sr_dct" projection kind (issue 18; lowrank_ops/projections/sr_dct.py): what a refresh persists (the
seed only), the basis it hands to the fused step (an "sr_dct" side: the oracle's rows of the refresh seed and
the seed, row blocks included; its dense form the oracle's P), LowRankAdamW(projection="sr_dct") against a
float64 transcription of its formulas on both sides and both weight dtypes, the tiny models' training, a state
of ints and moments only with a bit-identical resume, and the memory estimate (seed-only).

Second part: the fused steps with an "sr_dct" side, on every backend (below)."""

import io
import math

import pytest
import torch

from lowrank_ops import _extension, memory, ops, projections
from lowrank_ops.ops import Projection, SideOperator
from lowrank_ops.optim import LowRankAdamW
from lowrank_ops.projections import sr_dct as sr_dct_kind
from lowrank_ops.reference import lowrank_adam as reference
from lowrank_ops.reference import sr_dct as oracle

from helpers import GAUSSIAN_ENTRY_TOL, assert_clear_error, assert_within_torch_error, backends, random_matrix
from test_dct_projection import check_parity
from test_lowrank_adam import HYPER, LARGE_SEED, Run, opcheck_step, plain_projection
from test_lowrank_adam_multi import check_call
from tiny_models import (
    lowrank_opt,
    make_model,
    quadratic_grad,
    quadratic_problem,
    state_equal,
    train,
    train_mlp,
)

KIND = projections.get("sr_dct")


def test_is_registered_one_sided_seeded_and_block_capable():
    assert "sr_dct" in projections.names()
    assert not KIND.two_sided and not KIND.uses_gradient and not KIND.persists_matrix and KIND.supports_block
    assert KIND.layout((40, 3), 5, "left").left_rank == 5  # rank capped at d, not at min(m, n)
    assert KIND.layout((40, 3), 50, "left").left_rank == 40


@pytest.mark.parametrize("shape,side,block", [((9, 30), "auto", None), ((30, 9), "auto", None),
                                              ((1, 5), "left", None), ((50, 7), "left", (2, 4))])
def test_refresh_persists_the_seed_and_the_basis_is_the_oracle(shape, side, block):
    layout = KIND.layout(shape, 3, side, block)
    state = {}
    assert KIND.refresh(state, torch.empty(0), layout, 2**64 - 3)
    assert state == {"proj_seed": 2**64 - 3}
    ((which, rank, d),) = layout.sides()
    want = oracle.matrix(rank, d, 2**64 - 3, block or (0, 1))
    for moments in (torch.float32, torch.float64, None):
        with_moments = dict(state) if moments is None else dict(state, exp_avg=torch.zeros(2, dtype=moments))
        op = getattr(KIND.projection(with_moments, layout), which)
        # the fused step's "sr_dct" side: the rows and the seed (the kernels draw the signs), no matrix
        assert op.kind == "sr_dct" and op.matrix is None and op.seed == 2**64 - 3 and op.rank == rank
        assert op.indices.tolist() == oracle.rows(rank, d, 2**64 - 3, block or (0, 1))
        for dtype in (torch.float32, torch.float64):  # its dense form, for code that needs P itself
            P = projections.side_matrix(op, d, dtype, "cpu")
            assert P.dtype == dtype and P.shape == (rank, d)
            assert (P.double() - want).abs().max() <= 0.5 * torch.finfo(dtype).eps + 8 * 2.0**-53


def test_memory_estimate_counts_the_seed_only():
    shapes = {"a": (4096, 4096), "b": (11008, 4096), "c": (40000, 256)}
    ours = memory.estimate(shapes, dict(rank=128, projection="sr_dct"))
    seeded = memory.estimate(shapes, dict(rank=128, projection="rademacher"))
    assert ours == seeded and ours.projections == 3 * 8


# ---------------------------------------------------------------------------------------------------------
# LowRankAdamW(projection="sr_dct")
# ---------------------------------------------------------------------------------------------------------


def transcribed(W0, X, Y, steps, dtype, *, side, rank, gap, lr, betas, eps, wd, seed):
    """LowRankAdamW with "sr_dct" (layer 0), transcribed in `dtype`: at refresh k, P is the oracle's matrix of
    derive_seed(seed, 0, k) (rounded to `dtype`); AdamW's formulas on R = P G (left) or G P^T (right)."""
    W, X, Y = W0.to(dtype), X.to(dtype), Y.to(dtype)
    b1, b2 = betas
    d = W.shape[0] if side == "left" else W.shape[1]
    mom = vel = P = None
    for t in range(1, steps + 1):
        G = quadratic_grad(W, X, Y)
        if (t - 1) % gap == 0:
            P = oracle.matrix(rank, d, projections.derive_seed(seed, 0, (t - 1) // gap)).to(dtype)
        R = P @ G if side == "left" else G @ P.T
        mom = (1 - b1) * R if mom is None else b1 * mom + (1 - b1) * R
        vel = (1 - b2) * R * R if vel is None else b2 * vel + (1 - b2) * R * R
        N = (mom / (1 - b1**t)) / (vel.sqrt() / math.sqrt(1 - b2**t) + eps)
        W = W - lr * wd * W - lr * (P.T @ N if side == "left" else N @ P)
    return W


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["W_fp32", "W_bf16"])
def test_lowrank_adamw_follows_its_formulas(side, dtype, rng):
    """8 steps, update_gap 3 (refreshes before steps 1, 4, 7, each with a new seed) against the transcription
    in float64 and in W's dtype (plain torch), under the tolerance rule."""
    W0, X, Y = quadratic_problem((14, 9), rng)
    hyper = dict(side=side, rank=3, gap=3, lr=2e-2, betas=(0.9, 0.95), eps=1e-8, wd=0.1, seed=77)
    W = torch.nn.Parameter(W0.to(dtype))
    opt = LowRankAdamW([dict(params=[W], rank=3, projection="sr_dct", side=side, update_gap=3)], lr=2e-2,
                       betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, seed=77)
    for _ in range(8):
        W.grad = quadratic_grad(W.detach(), X.to(dtype), Y.to(dtype))
        opt.step()
    assert opt.state[W]["step"] == 8 and opt.state[W]["refresh"] == 3
    assert opt.state[W]["proj_seed"] == projections.derive_seed(77, 0, 2)
    ref64 = transcribed(W0, X, Y, 8, torch.float64, **hyper)
    plain = transcribed(W0, X, Y, 8, dtype, **hyper)
    assert_within_torch_error(W.detach(), ref64, plain, f"sr_dct LowRankAdamW {side} {dtype}")


def test_the_rows_are_drawn_once_per_refresh(monkeypatch, rng):
    """The row order (Philox keys and a sort over d) is computed at the first step after each refresh, not at
    every step: 8 steps with update_gap 3 are 3 refreshes, so 3 orders for the one matrix."""
    drawn = []
    real_order = sr_dct_kind.order
    monkeypatch.setattr(sr_dct_kind, "order", lambda *a, **k: drawn.append(a) or real_order(*a, **k))
    sr_dct_kind._step_rows.cache_clear()
    W0, X, Y = quadratic_problem((14, 9), rng)
    W = torch.nn.Parameter(W0)
    opt = LowRankAdamW([dict(params=[W], rank=3, projection="sr_dct", update_gap=3)], lr=2e-2, seed=78)
    for _ in range(8):
        W.grad = quadratic_grad(W.detach(), X, Y)
        opt.step()
    assert len(drawn) == 3, drawn


def test_tiny_model_decreases_the_loss():
    """The tiny MLP of tests/tiny_models.py (rank 8, update_gap 25, 200 steps), both sides and weight dtypes:
    the criterion every other kind meets there (final < half the initial)."""
    for side in ("left", "right"):
        for dtype in (torch.float32, torch.bfloat16):
            initial, final = train_mlp("sr_dct", side, dtype)
            assert final < 0.5 * initial, f"sr_dct {side} {dtype}: loss {initial:.4f} -> {final:.4f}"


@pytest.mark.parametrize("dtype,wd_mode", [(torch.float32, "full"), (torch.bfloat16, "adapter")])
def test_state_dict_holds_ints_and_moments_only_and_resume_is_bit_identical(dtype, wd_mode):
    model = make_model(dtype)
    opt = lowrank_opt(model, "sr_dct", wd_mode=wd_mode)
    train(model, opt, 6)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    lowrank_states = [s for s in saved["opt"]["state"].values() if "layer" in s]
    assert lowrank_states
    for state in lowrank_states:
        tensors = {k for k, v in state.items() if isinstance(v, torch.Tensor)}
        assert tensors == {"exp_avg", "exp_avg_sq"} | ({"delta"} if wd_mode == "adapter" else set())
        assert {k for k in state if k.startswith("proj_")} == {"proj_seed"}
        assert all(isinstance(v, int) for k, v in state.items() if k not in tensors)

    resumed_model = make_model(dtype, seed=5)
    resumed_model.load_state_dict(saved["model"])
    resumed = lowrank_opt(resumed_model, "sr_dct", wd_mode=wd_mode)
    resumed.load_state_dict(saved["opt"])
    train(model, opt, 7, start=6)  # crosses the refresh at step 8
    train(resumed_model, resumed, 7, start=6)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
        if p in opt.state:
            state_equal(opt.state[p], resumed.state[q])


def test_load_state_dict_without_the_seed_is_refused():
    model = make_model()
    opt = lowrank_opt(model, "sr_dct")
    train(model, opt, 2)
    saved = opt.state_dict()
    for state in saved["state"].values():
        state.pop("proj_seed", None)
    with pytest.raises(ValueError, match="lacks 'proj_seed', the basis of projection 'sr_dct'"):
        lowrank_opt(make_model(), "sr_dct").load_state_dict(saved)

# ---------------------------------------------------------------------------------------------------------
# The fused low-rank AdamW steps with an "sr_dct" side (SideOperator kind "sr_dct": the signed DCT-II rows
# P[i, t] = sign_t D[indices[i], t], the signs drawn inside the kernels from the side's seed by the rule of
# lowrank_ops/spec.py SRDCT_*), single-matrix (lowrank_adamw_step_) and multi-tensor (lowrank_adamw_multi_step_),
# on every available backend, against the float64 oracle chain (lowrank_ops/reference/lowrank_adam.py, whose
# "sr_dct" matrix comes from the NumPy sign oracle lowrank_ops/reference/sr_dct.py) under the tolerance rule of
# tests/helpers.py: both sides, float32 and bfloat16 W, float32/bfloat16/float16 G in several layouts, both
# weight-decay modes, odd sizes, d = 1, rank = d, d across the kernels' 64/128-column blocks and Philox's
# 128-column sign groups, seeds with a high key word. A wrong sign of one column moves every entry of the update
# by the column's whole contribution, far outside the rule. Also: opcheck of both ops and clear argument errors
# (the "sr_dct" projection kind handing the fused step this side: the first part of this file).
# ---------------------------------------------------------------------------------------------------------

SINGLE = "lowrank_adamw_step_"
MULTI = "lowrank_adamw_multi_step_"


def side(rank: int, d: int, seed: int, dtype=torch.int16) -> SideOperator:
    """An "sr_dct" side: the seed's own row choice (lowrank_ops.projections.sr_dct.rows) and its signs."""
    return SideOperator("sr_dct", rank, seed=seed, indices=sr_dct_kind.rows(rank, d, seed).to(dtype))


# (shape, side, rank, seed, index dtype, G dtype, G layout, wd_mode)
CASES = [
    ((37, 29), "left", 5, LARGE_SEED, torch.int16, torch.float32, "contiguous", "full"),
    ((23, 41), "right", 6, 7, torch.int32, torch.bfloat16, "transposed", "adapter"),
    ((1, 9), "left", 1, 3, torch.int64, torch.float32, "sliced", "full"),
    ((9, 1), "right", 1, 2**63 + 5, torch.int16, torch.float32, "contiguous", "adapter"),
    ((3, 130), "right", 130, 11, torch.int32, torch.bfloat16, "contiguous", "full"),
    ((131, 70), "left", 7, 12, torch.int16, torch.float16, "sliced", "full"),
    ((200, 17), "left", 9, 13, torch.int16, torch.float32, "transposed", "adapter"),
    ((19, 257), "right", 8, LARGE_SEED - 1, torch.int16, torch.float32, "contiguous", "full"),
]


@pytest.mark.parametrize("backend", backends(SINGLE))
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16], ids=["W_fp32", "W_bf16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0][0]}x{c[0][1]}-{c[1]}-r{c[2]}")
def test_single_step_parity_with_float64_oracle(backend, w_dtype, case, rng):
    shape, which, rank, seed, index_dtype, g_dtype, layout, wd_mode = case
    d = shape[0] if which == "left" else shape[1]
    projection = Projection.one_sided(side(rank, d, seed, index_dtype), which)
    W0 = torch.randn(shape, generator=rng).to(w_dtype)
    grads = [random_matrix(shape, g_dtype, rng, layout) for _ in range(3)]
    check_parity(backend, projection, W0, grads, wd_mode, f"{backend} {case} W {w_dtype}")


@pytest.mark.parametrize("backend", [p for p in backends(SINGLE) if p.values[0] != "triton"])
def test_two_sided_and_float64_weights(backend, rng):
    """An "sr_dct" side next to another kind, and a float64 W (float64 math; Triton's interpreter has none)."""
    shape = (31, 26)
    for W0, projection in [
        (torch.randn(shape, generator=rng), Projection(side(4, 31, 21), SideOperator("rademacher", 5, seed=4))),
        (torch.randn(shape, generator=rng), Projection(SideOperator("gaussian", 3, seed=5), side(6, 26, 22))),
        (torch.randn(shape, generator=rng, dtype=torch.float64), Projection(None, side(7, 26, LARGE_SEED))),
    ]:
        grads = [random_matrix(shape, torch.float32, rng, "transposed") for _ in range(2)]
        adapter = W0.dtype == torch.float64
        state = torch.float64 if W0.dtype == torch.float64 else torch.float32
        r = projection.projected_shape(shape)
        ours, theirs = Run(W0.clone(), r, state, adapter), Run(W0.clone(), r, state, adapter)
        exact = Run(W0.double(), r, torch.float64, adapter)
        mode = "adapter" if adapter else "full"
        for t, G in enumerate(grads, start=1):
            ours.step(ops.lowrank_adamw_step_, G, projection, t, mode, backend=backend)
            theirs.step(reference.lowrank_adamw_step_, G.to(W0.dtype), projection, t, mode)
            exact.step(reference.lowrank_adamw_step_, G.double(), projection, t, mode)
        tol = GAUSSIAN_ENTRY_TOL if projection.left is not None and projection.left.kind == "gaussian" else 0.0
        W0_64 = W0.double()
        assert_within_torch_error(ours.W.double() - W0_64, exact.W - W0_64, theirs.W.double() - W0_64,
                                  f"{backend} {projection} W - W0", k=max(shape), entry_tol=tol)
        assert_within_torch_error(ours.m, exact.m, theirs.m, f"{backend} exp_avg", k=max(shape), entry_tol=tol)


@pytest.mark.parametrize("backend", backends(SINGLE, "cuda"))
@pytest.mark.parametrize("which", ["left", "right"])
@pytest.mark.parametrize("w_dtype,g_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_gpu_parity(backend, which, w_dtype, g_dtype, rng):
    """CUDA and Triton on the GPU against the float64 oracle chain (CPU), on a shape that spans several tiles of
    every kernel and several 128-column sign groups, with transposed G."""
    shape = (517, 301)
    op = side(40, shape[0] if which == "left" else shape[1], LARGE_SEED)
    projection = Projection.one_sided(op, which)
    on_gpu = Projection.one_sided(SideOperator("sr_dct", op.rank, seed=op.seed, indices=op.indices.cuda()), which)
    W0 = torch.randn(shape, generator=rng).to(w_dtype)
    r = projection.projected_shape(shape)
    W, m, v = W0.cuda(), torch.zeros(r, device="cuda"), torch.zeros(r, device="cuda")
    theirs, exact = Run(W0.clone(), r, torch.float32, False), Run(W0.double(), r, torch.float64, False)
    for t in range(1, 4):
        G = random_matrix(shape, g_dtype, rng, "transposed")
        ops.lowrank_adamw_step_(W, G.cuda(), m, v, on_gpu, step=t, **HYPER, backend=backend)
        theirs.step(reference.lowrank_adamw_step_, G, plain_projection(projection, backend, g_dtype, shape), t, "full")
        exact.step(reference.lowrank_adamw_step_, G.double(), projection, t, "full")
    W0_64 = W0.double()
    assert_within_torch_error(W.cpu().double() - W0_64, exact.W - W0_64, theirs.W.double() - W0_64,
                              f"{backend} {which} W", k=max(shape))
    assert_within_torch_error(m.cpu(), exact.m, theirs.m, f"{backend} {which} exp_avg", k=max(shape))


def multi_call():
    """(shape, projection) of one multi-tensor call: groups of one shape and rank with different seeds (and so
    different rows and signs), both sides, sizes across the sign groups, next to a "dct" side."""
    return [
        ((37, 29), Projection(None, side(5, 29, LARGE_SEED))),
        ((37, 29), Projection(None, side(5, 29, 12))),
        ((23, 41), Projection(side(6, 23, 11), None)),
        ((23, 41), Projection(side(6, 23, LARGE_SEED - 3), None)),
        ((130, 17), Projection(side(130, 130, 14, torch.int32), None)),
        ((9, 1), Projection(None, side(1, 1, 15))),
        ((19, 70), Projection(SideOperator("dct", 7, indices=torch.arange(7, dtype=torch.int16)), None)),
        ((31, 26), Projection(side(4, 31, 16), SideOperator("rademacher", 5, seed=17))),
    ]


@pytest.mark.parametrize("backend", backends(MULTI))
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16], ids=["W_fp32", "W_bf16"])
def test_multi_step_parity_with_single_op_and_float64_oracle(backend, w_dtype, rng):
    """Every matrix against the float64 oracle with plain torch and with lowrank_adamw_step_ (same backend) as the
    yardsticks, and bit-identical to lowrank_adamw_step_ where the multi-tensor op runs its arithmetic (the
    reference and Triton backends always, the CPU for the two-sided matrix; tests/test_lowrank_adam_multi.py)."""
    cases = [(shape, projection, projection.left is not None and projection.right is not None)
             for shape, projection in multi_call()]
    check_call(backend, cases, [torch.randn(c[0], generator=rng).to(w_dtype) for c in cases], rng)


def _schema_side(op: SideOperator):
    return ("sr_dct", op.seed - 2**64 if op.seed >= 2**63 else op.seed, op.rank, op.indices)


@pytest.mark.parametrize("backend", backends(SINGLE))
def test_opcheck_single(backend, rng):
    opcheck_step(backend, (21, 13), [
        (torch.float32, _schema_side(side(3, 21, LARGE_SEED)), ("none", 0, 0, None), "full"),
        (torch.bfloat16, ("none", 0, 0, None), _schema_side(side(4, 13, 5, torch.int32)), "adapter"),
    ], rng)


@pytest.mark.parametrize("backend", backends(MULTI))
def test_opcheck_multi(backend, rng):
    shapes = [(21, 13), (21, 13), (9, 30)]
    sides = [_schema_side(side(3, 13, 1)), _schema_side(side(3, 13, LARGE_SEED)), _schema_side(side(4, 9, 2))]
    lefts = [("none", 0, 0, None), ("none", 0, 0, None), sides[2]]
    rights = [sides[0], sides[1], ("none", 0, 0, None)]
    rs = [(21, 3), (21, 3), (4, 30)]
    W = [torch.randn(s, generator=rng) for s in shapes]
    G = [torch.randn(s, generator=rng) for s in shapes]
    m = [torch.zeros(r) for r in rs]
    v = [torch.rand(r, generator=rng) for r in rs]
    columns = [list(c) for c in zip(*lefts)] + [list(c) for c in zip(*rights)]
    n = len(shapes)
    torch.library.opcheck(torch.ops.lowrank_ops.lowrank_adamw_multi_step_.default,
                          (W, G, m, v, [], *columns, [1e-3] * n, [0.9] * n, [0.999] * n, [1e-8] * n, [0.01] * n,
                           [2] * n, [1.0] * n, ["full"] * n), {"backend": backend})


def _call(projection, shape=(6, 5)):
    r = projection.projected_shape(shape)
    ops.lowrank_adamw_step_(torch.randn(shape), torch.randn(shape), torch.zeros(r), torch.zeros(r), projection,
                            lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)


@pytest.mark.parametrize("call,error,message", [
    (lambda: SideOperator("sr_dct", 2, seed=1), ValueError, "kind 'sr_dct' needs `indices`, a 1-D int16/int32/int64"),
    (lambda: SideOperator("sr_dct", 3, seed=1, indices=torch.tensor([0, 1])), ValueError,
     "indices has 2 entries, rank is 3"),
    (lambda: SideOperator("sr_dct", 2, matrix=torch.zeros(2, 5)), ValueError, "kind 'sr_dct' takes no matrix"),
    (lambda: _call(Projection(SideOperator("sr_dct", 2, seed=1, indices=torch.tensor([0, 6], dtype=torch.int16)))),
     ValueError, "lowrank_ops.lowrank_adamw_step_: argument 'projection.left.indices' must be values in [0, 6) "
                 "(basis rows of the projected dimension), got values in [0, 6]"),
    (lambda: _call(Projection(None, SideOperator("sr_dct", 2, seed=2**64, indices=torch.tensor([0, 1])))),
     ValueError, "lowrank_ops.lowrank_adamw_step_: argument 'projection.right.seed' must be an int in [0, 2^64), "
                 "got 18446744073709551616"),
    (lambda: _call(Projection(None, SideOperator("sr_dct", 2, seed=-1, indices=torch.tensor([0, 1])))),
     ValueError, "argument 'projection.right.seed' must be an int in [0, 2^64), got -1"),
    (lambda: _call(Projection(None, SideOperator("sr_dct", 2, seed=1.5, indices=torch.tensor([0, 1])))),
     TypeError, "argument 'projection.right.seed' must be an int in [0, 2^64), got float"),
])
def test_bad_arguments_raise_clear_errors(call, error, message):
    assert_clear_error(call, error, message)


@pytest.mark.skipif(not _extension.LOADED, reason="compiled extension not loaded")
@pytest.mark.parametrize("left_matrix,message", [
    (None, "argument 'left_matrix' must be the index vector for kinds \"dct\" and \"sr_dct\", got None"),
    (torch.tensor([0, 5]), "argument 'left_matrix' must hold values in [0, 5) (basis rows of the projected "
                           "dimension), got values in [0, 5]"),
    (torch.tensor([0.0, 1.0]), "argument 'left_matrix' of kind \"sr_dct\" must be a 1-D int16, int32 or int64 "
                               "index vector of length 2 (the rank), got Float of shape [2]"),
])
def test_cpp_op_rejects_bad_indices(left_matrix, message):
    """The C++ op checks an sr_dct side itself, for C++ and torch.ops callers."""
    with pytest.raises(RuntimeError) as info:
        torch.ops.lowrank_ops.lowrank_adamw_step_(
            torch.randn(5, 4), torch.randn(5, 4), torch.zeros(2, 4), torch.zeros(2, 4), None, "sr_dct", 7, 2,
            left_matrix, "none", 0, 0, None, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, 1.0, "full")
    assert f"lowrank_ops.lowrank_adamw_step_: {message}" in str(info.value), str(info.value)
