"""The optimizer layer (lowrank_ops.optim): LowRankAdamW and GaLoreAdamW against independent
transcriptions of their formulas (tolerance rule of docs/DESIGN.md §5), bit-identical resume, per-layer stepping
under gradient accumulation, the tiny-model training run of every kind, and the training-loop features
(refresh robustness, params without grads, tied params, GradScaler, torch.compile). Their plain AdamW
(torch.optim.AdamW identity, fused and foreach) is in test_optim_plain.py."""

import ast
import io
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils._pytree import tree_map

from lowrank_ops import ops, projections
from lowrank_ops.optim import GaLoreAdamW, LowRankAdamW, step_in_backward

from helpers import (
    GAUSSIAN_ENTRY_TOL,
    assert_within_torch_error,
)
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

ALL_KINDS = ("gaussian", "rademacher", "orthogonal", "svd", "two_sided_gaussian", "two_sided_svd")
ONE_SIDED = ("gaussian", "rademacher", "orthogonal", "svd")


# ---------------------------------------------------------------------------------------------------
# LowRankAdamW against a transcription of its formulas (docs/DESIGN.md §3, lowrank_ops.projections docs)


def transcribed_basis(kind, G, shape, rank, seed, dtype):
    """(L, R) of `kind` at a refresh, as docs/DESIGN.md §3 and the duality paper's Table 1 state them, with side
    "auto" (right when m >= n) for one-sided kinds."""
    m, n = shape
    right = m >= n

    def seeded(sketch_kind, r, d, s):
        return ops.sketch(r, d, s, sketch_kind, torch.float32).to(dtype)

    def orthogonal(r, d, s):
        Q, R = torch.linalg.qr(ops.sketch(r, d, s, "gaussian", torch.float32).double().T)
        return (Q * torch.sign(R.diagonal())).T.to(dtype)

    if kind in ("gaussian", "rademacher"):
        P = seeded(kind, rank, n if right else m, seed)
    elif kind == "orthogonal":
        P = orthogonal(rank, n if right else m, seed)
    elif kind == "two_sided_gaussian":
        return seeded("gaussian", rank, m, seed), seeded("gaussian", rank, n, projections.splitmix64(seed))
    else:
        U, _, Vh = torch.linalg.svd(G.to(dtype), full_matrices=False)
        if kind == "two_sided_svd":
            return U[:, :rank].T, Vh[:rank]
        P = Vh[:rank] if right else U[:, :rank].T
    return (None, P) if right else (P, None)


def transcribed_lowrank_adamw(
    kind, W0, X, Y, steps, *, rank, gap, seed, lr, betas, eps, wd, scale, wd_mode, dtype
):
    W = W0.to(dtype).clone()
    X, Y = X.to(dtype), Y.to(dtype)
    b1, b2 = betas
    L = R = m = v = D = None
    for t in range(1, steps + 1):
        G = quadratic_grad(W, X, Y)
        if (t - 1) % gap == 0:
            L, R = transcribed_basis(
                kind, G, W.shape, rank, projections.derive_seed(seed, 0, (t - 1) // gap), dtype
            )
            D = torch.zeros(
                (rank if L is not None else W.shape[0], rank if R is not None else W.shape[1]), dtype=dtype
            )
        Rg = G
        if L is not None:
            Rg = L @ Rg
        if R is not None:
            Rg = Rg @ R.T
        m = (1 - b1) * Rg if m is None else b1 * m + (1 - b1) * Rg
        v = (1 - b2) * Rg * Rg if v is None else b2 * v + (1 - b2) * Rg * Rg
        N = (m / (1 - b1**t)) / (torch.sqrt(v) / math.sqrt(1 - b2**t) + eps)
        direction = N if wd_mode == "full" else N + wd * D
        U = direction
        if L is not None:
            U = L.T @ U
        if R is not None:
            U = U @ R
        W = W - lr * scale * U - (lr * wd * W if wd_mode == "full" else 0)
        D = D - lr * direction
    return W


@pytest.mark.parametrize(
    "kind,wd_mode", [(k, "full") for k in ALL_KINDS] + [("gaussian", "adapter"), ("svd", "adapter")]
)
@pytest.mark.parametrize("shape", [(14, 9), (9, 14)])
def test_lowrank_adamw_follows_its_formulas(kind, wd_mode, shape, rng):
    W0, X, Y = quadratic_problem(shape, rng)
    hyper = dict(
        rank=3, gap=3, seed=77, lr=2e-2, betas=(0.9, 0.95), eps=1e-8, wd=0.1, scale=0.5, wd_mode=wd_mode
    )
    steps = 8  # refreshes before steps 1, 4, 7
    W = torch.nn.Parameter(W0.float())
    opt = LowRankAdamW(
        [dict(params=[W], rank=3, projection=kind, update_gap=3, scale=0.5, wd_mode=wd_mode)],
        lr=2e-2,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.1,
        seed=77,
    )
    for _ in range(steps):
        W.grad = quadratic_grad(W.detach(), X.float(), Y.float())
        opt.step()
    ref64 = transcribed_lowrank_adamw(kind, W0, X, Y, steps, dtype=torch.float64, **hyper)
    plain32 = transcribed_lowrank_adamw(kind, W0, X, Y, steps, dtype=torch.float32, **hyper)
    entry_tol = GAUSSIAN_ENTRY_TOL if "gaussian" in kind or kind == "orthogonal" else 0.0
    assert_within_torch_error(W.detach(), ref64, plain32, f"{kind} {wd_mode} {shape}", entry_tol=entry_tol)
    assert opt.state[W]["step"] == steps and opt.state[W]["refresh"] == 3


def test_adapter_mode_keeps_the_adapter_view_identity(rng):
    """wd_mode "adapter" (duality paper App. B): between refreshes W = W_refresh + scale L^T delta R."""
    W = torch.nn.Parameter(torch.randn(15, 11, generator=rng, dtype=torch.float64))
    opt = LowRankAdamW(
        [
            dict(
                params=[W],
                rank=4,
                projection="two_sided_gaussian",
                update_gap=5,
                scale=0.7,
                wd_mode="adapter",
            )
        ],
        lr=1e-2,
        weight_decay=0.2,
        seed=3,
    )
    for step in range(9):
        if step % 5 == 0:
            W_refresh = W.detach().clone()
        W.grad = torch.randn(15, 11, generator=rng, dtype=torch.float64)
        opt.step()
        state = opt.state[W]
        seed = state["proj_seed"]
        L = ops.sketch(4, 15, seed, "gaussian", torch.float64)
        R = ops.sketch(4, 11, projections.splitmix64(seed), "gaussian", torch.float64)
        expected = W_refresh + 0.7 * L.T @ state["delta"] @ R
        assert torch.linalg.norm(W.detach() - expected) <= 1e-13 * torch.linalg.norm(W.detach())
    assert state["refresh"] == 2


# ---------------------------------------------------------------------------------------------------
# GaLoreAdamW against galore-torch 1.0's GaLoreAdamW arithmetic, transcribed below (not from lowrank_ops)


def galore_maps(side, A, B):
    """galore-torch's project / project_back for a side, with A = U[:, :r] and B = Vh[:r]."""
    if side == "right":
        return (lambda g: g @ B.T), (lambda x: x @ B)
    if side == "left":
        return (lambda g: A.T @ g), (lambda x: A @ x)
    return (lambda g: A.T @ g @ B.T), (lambda x: A @ x @ B)


def transcribed_galore(
    W0, X, Y, steps, *, rank, gap, proj_type, lr, betas, eps, wd, scale, correct_bias, dtype
):
    """galore-torch 1.0's GaLoreAdamW step for one weight, transcribed from its arithmetic (not lowrank_ops):
    refresh at steps t % gap == 0 (before the increment): fp32 SVD of G, U and Vh cast back to its dtype;
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  u = project_back(m / (sqrt(v) + eps)) scale
    p -= lr sqrt(1 - b2^t) / (1 - b1^t) u  (lr without correct_bias);  then p -= lr wd p if wd > 0."""
    W = W0.to(dtype).clone()
    X, Y = X.to(dtype), Y.to(dtype)
    b1, b2 = betas
    m_, n_ = W.shape
    m = v = None
    for t in range(steps):  # t: galore's state["step"] before the increment
        G = quadratic_grad(W, X, Y)
        if t % gap == 0:
            U, _, Vh = torch.linalg.svd(G.float(), full_matrices=False)  # fp32 SVD, cast back
            A, B = U[:, :rank].to(dtype), Vh[:rank].to(dtype)
        side = {"std": "right" if m_ >= n_ else "left", "reverse_std": "left" if m_ >= n_ else "right"}.get(
            proj_type, proj_type
        )
        project, back = galore_maps(side, A, B)
        g = project(G)
        if m is None:
            m, v = torch.zeros_like(g), torch.zeros_like(g)
        t1 = t + 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = torch.sqrt(v) + eps
        step_size = lr * math.sqrt(1 - b2**t1) / (1 - b1**t1) if correct_bias else lr
        W = W - step_size * (back(m / denom) * scale)
        if wd > 0:
            W = W - lr * wd * W
    return W


@pytest.mark.parametrize("proj_type", ["std", "reverse_std", "left", "right", "full"])
@pytest.mark.parametrize("shape", [(14, 9), (9, 14), (10, 10)])
@pytest.mark.parametrize("correct_bias", [True, False])
def test_galore_adamw_matches_galore_formulas(proj_type, shape, correct_bias, rng):
    W0, X, Y = quadratic_problem(shape, rng)
    hyper = dict(
        rank=4,
        gap=3,
        proj_type=proj_type,
        lr=1e-2,
        betas=(0.9, 0.999),
        eps=1e-6,
        wd=0.05,
        scale=0.25,
        correct_bias=correct_bias,
    )
    W = torch.nn.Parameter(W0.float())
    opt = GaLoreAdamW(
        [dict(params=[W], rank=4, update_proj_gap=3, scale=0.25, proj_type=proj_type)],
        lr=1e-2,
        weight_decay=0.05,
        correct_bias=correct_bias,
    )
    for _ in range(8):
        W.grad = quadratic_grad(W.detach(), X.float(), Y.float())
        opt.step()
    ref64 = transcribed_galore(W0, X, Y, 8, dtype=torch.float64, **hyper)
    plain32 = transcribed_galore(W0, X, Y, 8, dtype=torch.float32, **hyper)
    assert_within_torch_error(W.detach(), ref64, plain32, f"galore {proj_type} {shape}")


def test_galore_state_is_plain_and_resumes(rng):
    model = make_model()
    opt = GaLoreAdamW(
        split_groups(model, rank=3, update_proj_gap=2, proj_type="std"), lr=1e-2, weight_decay=0.01
    )
    train(model, opt, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model = make_model(seed=9)
    resumed_model.load_state_dict(saved["model"])
    resumed = GaLoreAdamW(
        split_groups(resumed_model, rank=3, update_proj_gap=2, proj_type="std"), lr=1e-2, weight_decay=0.01
    )
    resumed.load_state_dict(saved["opt"])
    train(model, opt, 4, start=3)
    train(resumed_model, resumed, 4, start=3)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed_model.parameters()))


# ---------------------------------------------------------------------------------------------------
# Resume: save -> torch.load(weights_only=True) -> continue is bit-identical to never stopping


RESUME_CASES = [(k, torch.float32, "full") for k in ALL_KINDS] + [
    ("svd", torch.bfloat16, "full"),
    ("rademacher", torch.bfloat16, "adapter"),
    ("orthogonal", torch.float32, "adapter"),
]


@pytest.mark.parametrize("kind,dtype,wd_mode", RESUME_CASES)
def test_resume_is_bit_identical(kind, dtype, wd_mode):
    model = make_model(dtype)
    opt = lowrank_opt(model, kind, wd_mode=wd_mode)
    train(model, opt, 6)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    matrices = {"orthogonal": 1, "svd": 1, "two_sided_svd": 2}.get(kind, 0)
    for state in saved["opt"]["state"].values():
        if "layer" in state:  # low-rank: fp32 moments; seeded kinds persist ints only
            tensors = {k for k, v in state.items() if isinstance(v, torch.Tensor)}
            bases = {k for k in tensors if k.startswith("proj_")}
            assert len(bases) == matrices
            assert tensors - bases == {"exp_avg", "exp_avg_sq"} | (
                {"delta"} if wd_mode == "adapter" else set()
            )
            assert state["exp_avg"].dtype == torch.float32
            assert all(isinstance(v, int) for k, v in state.items() if k not in tensors)

    resumed_model = make_model(dtype, seed=5)
    resumed_model.load_state_dict(saved["model"])
    resumed = lowrank_opt(resumed_model, kind, wd_mode=wd_mode)
    resumed.load_state_dict(saved["opt"])
    train(model, opt, 7, start=6)  # crosses the refresh at step 8
    train(resumed_model, resumed, 7, start=6)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
        if p in opt.state:
            state_equal(opt.state[p], resumed.state[q])


# ---------------------------------------------------------------------------------------------------
# Per-layer mode (post-accumulate-grad hooks) under gradient accumulation


@pytest.mark.parametrize("optimizer", ["lowrank", "galore"])
def test_per_layer_equals_regular_step_under_accumulation(optimizer):
    # the per-layer mode steps one matrix at a time through lowrank_adamw_step_: bit-identical to step() on
    # the same op (multi_tensor=False); step()'s multi-tensor call is held to the tolerance rule instead
    # (test_multi_tensor_trajectories_agree_with_the_per_matrix_path)
    def make(model):
        if optimizer == "galore":
            return GaLoreAdamW(
                split_groups(model, all_matrices=True, rank=3, update_proj_gap=2), lr=1e-2, weight_decay=0.01,
                multi_tensor=False,
            )
        return LowRankAdamW(
            split_groups(model, all_matrices=True, rank=3, projection="svd", update_gap=2), lr=1e-2, seed=4,
            multi_tensor=False,
        )

    accumulation, steps = 3, 4
    regular_model, layer_model = make_model(tied=True), make_model(tied=True)
    regular, per_layer = make(regular_model), make(layer_model)
    stepper = step_in_backward(layer_model, per_layer, accumulation_steps=accumulation)
    norms = []
    for i in range(steps):
        regular.zero_grad(set_to_none=True)
        for k in range(accumulation):
            (lm_loss(regular_model, batch(i * accumulation + k)) / accumulation).backward()
        norms.append(
            torch.linalg.vector_norm(
                torch.stack(
                    [
                        torch.linalg.vector_norm(p.grad)
                        for p in regular_model.parameters()
                        if p.grad is not None
                    ]
                )
            )
        )
        regular.step()
        for k in range(accumulation):
            (lm_loss(layer_model, batch(i * accumulation + k)) / accumulation).backward()
        assert stepper.steps == i + 1
        logged = stepper.grad_norm()
        assert float(logged) > 0 and abs(float(logged) - float(norms[-1])) <= 1e-5 * float(norms[-1])
    for p, q in zip(regular_model.parameters(), layer_model.parameters()):
        assert torch.equal(p, q)
        assert q.grad is None  # freed by the hooks
        if p in regular.state:
            state_equal(regular.state[p], per_layer.state[q])
    assert per_layer.state[layer_model.fc1.weight]["step"] == steps  # one count per optimizer step (#62)
    stepper.remove()


def test_per_layer_flush_and_errors():
    model = make_model()
    opt = LowRankAdamW(split_groups(model, rank=2), lr=1e-2)
    stepper = step_in_backward(model, opt, accumulation_steps=4)
    lm_loss(model, batch(0)).backward()
    before = model.fc1.weight.detach().clone()
    stepper.flush()  # a short last window: step what was accumulated
    assert not torch.equal(before, model.fc1.weight) and model.fc1.weight.grad is None
    assert opt.state[model.fc1.weight]["step"] == 1
    with pytest.raises(ValueError, match="accumulation_steps' must be an int >= 1"):
        step_in_backward(model, opt, accumulation_steps=0)
    with pytest.raises(TypeError, match="must have a step_param"):
        step_in_backward(model, torch.optim.AdamW(model.parameters()))
    with pytest.raises(RuntimeError, match="track_grad_norm=True"):
        step_in_backward(model, opt, track_grad_norm=False).grad_norm()


# ---------------------------------------------------------------------------------------------------
# Tiny-model training: every kind, both sides, fp32 and bf16 weights, 200 steps


TINY_CASES = [(k, s) for k in ONE_SIDED for s in ("left", "right")] + [(k, "auto") for k in ALL_KINDS[4:]]


def test_tiny_model_every_kind_decreases_the_loss():
    rows = [("adamw (no projection)", "-")] + TINY_CASES
    results = {}
    for kind, side in rows:
        for dtype in (torch.float32, torch.bfloat16):
            results[kind, side, dtype] = train_mlp(None if side == "-" else kind, side, dtype)
    for (kind, side, dtype), (initial, final) in results.items():
        assert final < 0.5 * initial, f"{kind} {side} {dtype}: loss {initial:.4f} -> {final:.4f}"


# ---------------------------------------------------------------------------------------------------
# Training-loop features


def test_nan_gradient_at_refresh_skips_the_step_and_warns_once():
    model = make_model()
    opt = LowRankAdamW(split_groups(model, rank=3, projection="svd", update_gap=2), lr=1e-2)
    train(model, opt, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for bad in (math.nan, math.inf):
            before = model.fc1.weight.detach().clone()
            state_before = {
                k: v.clone() if isinstance(v, torch.Tensor) else v
                for k, v in opt.state[model.fc1.weight].items()
            }
            opt.zero_grad()
            lm_loss(model, batch(50)).backward()
            model.fc1.weight.grad[0, 0] = bad
            opt.step()  # step 2 % 2 == 0: a refresh step
            assert torch.equal(model.fc1.weight, before)
            state_equal(opt.state[model.fc1.weight], state_before)
    assert len([w for w in caught if "NaN/Inf" in str(w.message)]) == 1
    train(model, opt, 4, start=3)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_zero_gradient_at_first_svd_refresh_uses_seeded_fallback_and_warns_once():
    W = torch.nn.Parameter(torch.randn(10, 7))
    V = torch.nn.Parameter(torch.randn(8, 5))
    opt = LowRankAdamW([dict(params=[W, V], rank=2, projection="svd", update_gap=1)], lr=1e-2, seed=21)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        W.grad, V.grad = torch.zeros(10, 7), torch.zeros(8, 5)
        opt.step()
        opt.step()
    assert len([w for w in caught if "refresh" in str(w.message)]) == 1
    # first refresh (index 0): the seeded fallback; second: zero again, the fallback basis is kept
    expected = projections.semi_orthogonal(2, 7, projections.derive_seed(21, 0, 0), torch.float32)
    assert torch.equal(opt.state[W]["proj_right"], expected) and opt.state[W]["refresh"] == 2
    assert torch.isfinite(W).all() and torch.isfinite(V).all()


def test_params_without_grads_are_left_alone():
    model = make_model()
    opt = LowRankAdamW(split_groups(model, rank=3), lr=1e-2)
    unused = [model.unused.weight.detach().clone(), model.unused.bias.detach().clone()]
    train(model, opt, 3)
    assert torch.equal(model.unused.weight, unused[0]) and torch.equal(model.unused.bias, unused[1])
    assert model.unused.weight not in opt.state and model.unused.bias not in opt.state


def test_tied_weight_is_stepped_once_with_the_summed_gradient():
    model = make_model(tied=True)
    opt = LowRankAdamW(split_groups(model, all_matrices=True, rank=3, projection="orthogonal"), lr=1e-2)
    names = [n for n, _ in model.named_parameters()]
    assert "out.weight" not in names  # one Parameter, one state
    train(model, opt, 3)
    assert opt.state[model.emb.weight]["step"] == 3 and model.out.weight is model.emb.weight


def test_grad_scaler_with_bf16_autocast_matches_the_unscaled_run():
    """A power-of-two loss scale is exact: scaled-then-unscaled grads equal the plain ones, so the run must
    be bit-identical to the one without a scaler; an inf gradient makes the scaler skip the step."""

    def run(use_scaler, inf_at=None):
        model = make_model()
        opt = LowRankAdamW(split_groups(model, rank=3, projection="rademacher", update_gap=3), lr=1e-2)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if use_scaler else None
        for i in range(6):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = lm_loss(model, batch(i))
            if scaler is None:
                loss.backward()
                opt.step()
                continue
            scaler.scale(loss).backward()
            if i == inf_at:
                model.fc2.weight.grad[0, 0] = math.inf
            scaler.unscale_(opt)
            scaler.step(opt)
            scaler.update()
        return model, opt, scaler

    plain, _, _ = run(False)
    scaled, _, _ = run(True)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), scaled.parameters()))
    skipped, opt, scaler = run(True, inf_at=5)
    assert scaler.get_scale() == 2.0**7
    assert opt.state[skipped.fc2.weight]["step"] == 5


def test_torch_compile_of_the_model():
    """The optimizer trains a torch.compile'd model; per-layer hooks fire under it and give exactly the
    regular step's result on the same compiled graph (one model, reset in between: one compilation)."""
    torch._dynamo.reset()
    model = make_model()
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    compiled = torch.compile(model)

    def run(per_layer):
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(initial[name])
        # per matrix in both modes (the per-layer mode's op), for a bit-for-bit comparison
        opt = LowRankAdamW(split_groups(model, rank=3, projection="gaussian", update_gap=2), lr=1e-2,
                           multi_tensor=False)
        stepper = step_in_backward(model, opt) if per_layer else None
        losses = []
        for _ in range(5):
            opt.zero_grad(set_to_none=True)
            loss = lm_loss(compiled, batch(0))
            losses.append(loss.item())
            loss.backward()
            if stepper is None:
                opt.step()
        if stepper is not None:
            stepper.remove()
        return losses, {name: p.detach().clone() for name, p in model.named_parameters()}

    regular_losses, regular = run(per_layer=False)
    layer_losses, layer = run(per_layer=True)
    assert regular_losses[-1] < regular_losses[0]
    assert layer_losses == regular_losses
    assert all(torch.equal(regular[name], layer[name]) for name in regular)


def test_bf16_weights_keep_fp32_moments_through_load():
    model = make_model(torch.bfloat16)
    opt = lowrank_opt(model, "gaussian")
    train(model, opt, 2)
    fresh = lowrank_opt(model, "gaussian")
    fresh.load_state_dict(opt.state_dict())
    assert fresh.state[model.fc1.weight]["exp_avg"].dtype == torch.float32
    assert fresh.state[model.fc1.bias]["exp_avg"].dtype == torch.bfloat16  # plain AdamW: torch's policy


@pytest.mark.parametrize(
    "group,match",
    [
        (dict(rank=2, projection="no_such_kind"), "unknown projection 'no_such_kind'"),
        (dict(rank=0), "'rank' must be an int >= 1"),
        (dict(rank=2, side="top"), "'side' must be one of"),
        (dict(rank=2, wd_mode="decay"), "'wd_mode' must be one of"),
        (dict(rank=2, update_gap=0), "'update_gap' must be an int >= 1"),
        (
            dict(rank=2, projection="two_sided_svd", side="left"),
            "projection 'two_sided_svd' projects both sides; 'side' must be 'auto'",
        ),
        (dict(seed=-1), "'seed' must be an int in \\[0, 2\\^64\\)"),
        (dict(lr=-1.0), "invalid 'lr'"),
    ],
)
def test_bad_group_settings_raise_clear_errors(group, match):
    with pytest.raises(ValueError, match="^lowrank_ops.optim.LowRankAdamW: param group 0: " + match):
        LowRankAdamW([dict(params=[torch.nn.Parameter(torch.zeros(3, 3))], **group)])


def test_galore_bad_proj_type():
    with pytest.raises(ValueError, match="GaLoreAdamW: param group 0: 'proj_type' must be one of"):
        GaLoreAdamW([dict(params=[torch.nn.Parameter(torch.zeros(3, 3))], rank=2, proj_type="middle")])


# ---------------------------------------------------------------------------------------------------
# The per-parameter stepping interface (register_param_step, LowRankParamStep) and the layering rule


class TaggedParameter(torch.nn.Parameter):
    """A parameter subclass on plain storage, stepped by the function registered for it below."""


class DispatchingTensor(torch.Tensor):
    """A wrapper subclass that dispatches its own ops (as DTensor does): the fused kernels cannot read it."""

    @staticmethod
    def __new__(cls, inner):
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype, device=inner.device)

    def __init__(self, inner):
        self.inner = inner

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        def unwrap(t):
            return t.inner if isinstance(t, DispatchingTensor) else t

        args, kwargs = tree_map(unwrap, (args, kwargs or {}))
        return tree_map(lambda t: cls(t) if isinstance(t, torch.Tensor) else t, func(*args, **kwargs))


TAGGED_STEPS = []  # the LowRankParamStep of every call of the registered function


def tagged_step(step):
    """The step, spelled out with the public calls on plain tensors that share the parameter's storage (what
    a wrapper does with its local shards)."""
    TAGGED_STEPS.append(step)
    W, G = step.param.detach(), step.param.grad
    if not step.state:
        step.init_state(step.current_layout.projected_shape, like=W)
    if step.advance(G):
        step.fused_step(W, G, {k: v for k, v in step.state.items()}, step.projection())


@pytest.mark.parametrize(
    "kind,wd_mode", [("rademacher", "adapter"), ("orthogonal", "full"), ("svd", "full"), ("adaptive", "full")]
)
def test_registered_param_step_takes_over_and_the_public_calls_reproduce_the_step(kind, wd_mode, rng):
    from lowrank_ops.optim import LowRankParamStep, register_param_step

    register_param_step(TaggedParameter, tagged_step)
    W0, X, Y = quadratic_problem((12, 7), rng)
    tagged = TaggedParameter(W0.float())
    plain = torch.nn.Parameter(W0.float())
    bias = TaggedParameter(torch.zeros(3))  # plain AdamW (not a matrix): never handed to the step function
    keys = dict(lr=1e-2, weight_decay=0.1, rank=3, projection=kind, update_gap=2, seed=4, wd_mode=wd_mode)
    ours = LowRankAdamW([bias, tagged], **keys)
    # a registered step runs lowrank_adamw_step_ per parameter: bit-identical to the per-matrix path
    theirs = LowRankAdamW([torch.nn.Parameter(torch.zeros(3)), plain], multi_tensor=False, **keys)
    TAGGED_STEPS.clear()
    for _ in range(5):
        for p in (tagged, plain):
            p.grad = quadratic_grad(p.detach(), X.float(), Y.float())
        bias.grad = torch.ones(3)
        ours.step()
        theirs.step()
        assert torch.equal(tagged, plain)
        state_equal(ours.state[tagged], theirs.state[plain])
    assert len(TAGGED_STEPS) == 5 and all(isinstance(s, LowRankParamStep) for s in TAGGED_STEPS)
    step = TAGGED_STEPS[0]
    assert step.param is tagged and step.group is ours.param_groups[0] and step.state is ours.state[tagged]
    assert step.layer == 1 == ours.layer_index(tagged)
    assert step.layout == projections.get(kind).layout((12, 7), 3, "auto")
    assert all(s.param is tagged for s in TAGGED_STEPS)


def test_register_param_step_errors():
    from lowrank_ops.optim import register_param_step

    for bad in (torch.Tensor, torch.nn.Parameter, int, "DTensor"):
        with pytest.raises(TypeError, match="'tensor_type' must be a subclass of torch.Tensor"):
            register_param_step(bad, tagged_step)
    with pytest.raises(TypeError, match="'step_fn' must be callable"):
        register_param_step(TaggedParameter, None)


def test_dispatching_subclass_without_a_registered_step_is_a_clear_error():
    p = DispatchingTensor(torch.randn(6, 5))
    p.grad = DispatchingTensor(torch.randn(6, 5))
    opt = LowRankAdamW([p], rank=2)
    with pytest.raises(TypeError, match=r"\[6, 5\] is a DispatchingTensor, a tensor subclass that dispatches"):
        opt.step()
    assert not opt.state[p]  # nothing was initialized


def test_layer_index_and_is_lowrank():
    a, b, bias, c = (torch.nn.Parameter(torch.randn(s)) for s in ((4, 5), (3, 3), (5,), (6, 2)))
    opt = LowRankAdamW([dict(params=[a, bias], rank=2), dict(params=[b, c])])
    assert [opt.layer_index(p) for p in (a, bias, b, c)] == [0, 1, 2, 3]
    assert [opt.is_lowrank(p) for p in (a, bias, b, c)] == [True, False, False, False]
    stranger = torch.nn.Parameter(torch.randn(2, 2))
    for method in ("layer_index", "is_lowrank", "step_param"):
        with pytest.raises(ValueError, match=rf"LowRankAdamW\.{method}: the parameter of shape \[2, 2\] is not"):
            getattr(opt, method)(stranger)


OPTIM = Path(__file__).resolve().parents[1] / "lowrank_ops" / "optim"


def test_optim_imports_nothing_from_distributed():
    """No import of lowrank_ops.distributed anywhere in lowrank_ops/optim (lazy ones included), and none at
    run time: a LowRankAdamW step in a fresh interpreter leaves it unimported."""
    found = []
    for path in sorted(OPTIM.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):  # resolved against the package lowrank_ops.optim
                package = ["lowrank_ops", "optim"][: 2 - node.level + 1] if node.level else []
                module = ".".join(package + ([node.module] if node.module else []))
                targets = [f"{module}.{a.name}" for a in node.names] + [module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            if any(t.split(".")[:2] == ["lowrank_ops", "distributed"] for t in targets):
                found.append(f"{path.name}:{node.lineno}")
    assert not found, found
    code = (
        "import sys, torch\n"
        "from lowrank_ops.optim import LowRankAdamW\n"
        "p = torch.nn.Parameter(torch.randn(6, 4)); p.grad = torch.randn(6, 4)\n"
        "LowRankAdamW([p], rank=2).step()\n"
        "print(sorted(m for m in sys.modules if m.startswith('lowrank_ops.distributed')))\n"
    )
    root = str(OPTIM.parents[1])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------------------------------
# The multi-tensor path (step() with multi_tensor=True, the default) against the per-matrix path


MULTI_GROUPS = [  # (shape, projection, rank, wd_mode) per param group: several kinds, shapes and sides
    ((12, 7), "rademacher", 3, "full"),
    ((7, 12), "gaussian", 2, "adapter"),
    ((9, 9), "two_sided_gaussian", (3, 2), "full"),
    ((12, 7), "orthogonal", 3, "full"),
]


def multi_tensor_run(multi_tensor, dtype, backend, gradients, steps):
    """LowRankAdamW over MULTI_GROUPS' parameters (dtype) for `steps` steps on fixed gradients (a refresh at
    step 3): the parameters after each step."""
    params = [torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(i)).to(dtype))
              for i, (shape, *_) in enumerate(MULTI_GROUPS)]
    groups = [dict(params=[p], projection=kind, rank=rank, wd_mode=mode, lr=0.01 * (i + 1), update_gap=3)
              for i, (p, (_, kind, rank, mode)) in enumerate(zip(params, MULTI_GROUPS))]
    opt = LowRankAdamW(groups, weight_decay=0.1, seed=7, backend=backend, multi_tensor=multi_tensor)
    trajectory = []
    for t in range(steps):
        for p, G in zip(params, gradients[t]):
            p.grad = G.to(dtype)
        opt.step()
        trajectory.append([p.detach().clone() for p in params])
    return trajectory


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["cpu", "reference", "triton"])
def test_multi_tensor_trajectories_agree_with_the_per_matrix_path(backend, dtype, rng):
    """Must-show 2 of issue 15: the multi-tensor step's trajectory against the per-matrix one and the float64
    run (the tolerance rule, tests/helpers.py, with the per-matrix path in plain torch's role); bit-identical
    where both run the same kernels: the reference backend loops over lowrank_adamw_step_'s kernel, and the
    Triton grouped kernels run its device functions with its block sizes (interpreter here)."""
    from lowrank_ops import backends

    why = backends.unavailable_reason(backend, "lowrank_adamw_multi_step_", torch.device("cpu"))
    if why is not None:
        pytest.skip(why)
    steps = 5
    gradients = [[torch.randn(shape, generator=rng) for shape, *_ in MULTI_GROUPS] for _ in range(steps)]
    multi = multi_tensor_run(True, dtype, backend, gradients, steps)
    single = multi_tensor_run(False, dtype, backend, gradients, steps)
    exact = multi_tensor_run(False, torch.float64, backend, gradients, steps) if backend == "cpu" else None
    start = [torch.randn(shape, generator=torch.Generator().manual_seed(i)).to(dtype).double()
             for i, (shape, *_) in enumerate(MULTI_GROUPS)]
    for t in range(steps):
        for i, (shape, kind, *_) in enumerate(MULTI_GROUPS):
            if backend != "cpu":
                assert torch.equal(multi[t][i], single[t][i]), (t, kind)
                continue
            tol = GAUSSIAN_ENTRY_TOL if "gaussian" in kind else 0.0
            assert_within_torch_error(multi[t][i].double() - start[i], exact[t][i] - start[i],
                                      single[t][i].double() - start[i], f"step {t + 1} {kind} {dtype}",
                                      k=max(shape), entry_tol=tol)


@pytest.mark.parametrize("optimizer", ["lowrank", "galore"])
def test_multi_tensor_path_resumes_bit_identically(optimizer):
    """save -> load -> continue through the multi-tensor step equals never stopping, bit for bit."""
    def make(model):
        if optimizer == "galore":
            return GaLoreAdamW(split_groups(model, all_matrices=True, rank=3, update_proj_gap=4), lr=1e-2)
        return LowRankAdamW(split_groups(model, all_matrices=True, rank=3, projection="gaussian", update_gap=4),
                            lr=1e-2, seed=3)

    model = make_model()
    opt = make(model)
    assert opt._multi_tensor
    train(model, opt, 5)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model = make_model(seed=5)
    resumed_model.load_state_dict(saved["model"])
    resumed = make(resumed_model)
    resumed.load_state_dict(saved["opt"])
    train(model, opt, 5, start=5)
    train(resumed_model, resumed, 5, start=5)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
        if p in opt.state:
            state_equal(opt.state[p], resumed.state[q])


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_galore_multi_tensor_path_is_the_per_matrix_path(backend, rng):
    """GaLoreAdamW's multi-tensor step (per-matrix folded eps and scale) equals its per-matrix step bit for bit
    where both run the same kernels."""
    from lowrank_ops import backends

    why = backends.unavailable_reason(backend, "lowrank_adamw_multi_step_", torch.device("cpu"))
    if why is not None:
        pytest.skip(why)
    shapes = [((12, 7), "std"), ((7, 12), "reverse_std"), ((9, 8), "full")]
    gradients = [[torch.randn(shape, generator=rng) for shape, _ in shapes] for _ in range(4)]

    def run(multi_tensor):
        params = [torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(i)))
                  for i, (shape, _) in enumerate(shapes)]
        groups = [dict(params=[p], rank=3, update_proj_gap=2, proj_type=proj, scale=0.25, lr=0.01 * (i + 1))
                  for i, (p, (_, proj)) in enumerate(zip(params, shapes))]
        opt = GaLoreAdamW(groups, weight_decay=0.05, correct_bias=False, backend=backend, multi_tensor=multi_tensor)
        for G in gradients:
            for p, g in zip(params, G):
                p.grad = g.clone()
            opt.step()
        return params

    for a, b in zip(run(True), run(False)):
        assert torch.equal(a, b)
