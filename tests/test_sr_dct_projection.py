"""The "sr_dct" projection kind (issue 18; lowrank_ops/projections/sr_dct.py): what a refresh persists (the
seed only), the basis it hands to the fused step (an "sr_dct" side: the oracle's rows of the refresh seed and
the seed, row blocks included; its dense form the oracle's P), LowRankAdamW(projection="sr_dct") against a
float64 transcription of its formulas on both sides and both weight dtypes, the tiny models' training, a state
of ints and moments only with a bit-identical resume, and the memory estimate (seed-only). The fused steps with
an "sr_dct" side, on every backend: tests/test_sr_dct_step.py."""

import io
import math

import pytest
import torch

from lowrank_ops import memory, projections
from lowrank_ops.optim import LowRankAdamW
from lowrank_ops.reference import sr_dct as oracle

from helpers import assert_within_torch_error
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
