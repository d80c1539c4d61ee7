"""The non-projected parameters of LowRankAdamW and GaLoreAdamW (lowrank_ops/optim/plain_adamw.py,
hf_adamw.py): LowRankAdamW without projection is torch.optim.AdamW with the same `fused` / `foreach`
setting bit for bit (weights and state, the `step` tensor's dtype and device included), its default is
torch's fused kernel on the CPU, the arguments are checked as torch checks them, state dicts saved before
the fused default (single-tensor layout, no `fused` key) load and continue as torch's fused AdamW would,
the per-layer mode steps the same; GaLoreAdamW's plain params are galore-torch's AdamW in every
implementation (bit for bit against galore-torch itself: test_galore_torch.py)."""

import copy
import io
import math

import pytest
import torch

from lowrank_ops.optim import GaLoreAdamW, LowRankAdamW, step_in_backward

from helpers import (
    assert_within_torch_error,
)
from tiny_models import batch, lm_loss, make_model, split_groups, state_equal, train

HYPER = dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-7)
# (our keywords, torch.optim.AdamW's keywords that must give the same run): our default is torch's fused
# kernel on the CPU, where torch.optim.AdamW's default is its single-tensor loop
SETTINGS = {
    "default": ({}, {"fused": True}),
    "fused": ({"fused": True}, {"fused": True}),
    "foreach": ({"foreach": True}, {"foreach": True}),
    "single": ({"foreach": False}, {"foreach": False}),
    "fused_false": ({"fused": False}, {"fused": False}),  # torch: foreach stays None -> single-tensor
    "group_keys_both_true": ({"group": {"fused": True, "foreach": True}}, {"fused": True}),  # fused wins
}


def two_groups(model, **keys):
    """fc1 with weight decay 0.3, the rest with the optimizer's default decay; `keys` in both groups."""
    fc1 = list(model.fc1.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1")]
    return [dict(params=fc1, weight_decay=0.3, **keys), dict(params=rest, **keys)]


def plain_pair(name, dtype, optimizer=LowRankAdamW):
    """(our model, our optimizer, torch's model, torch.optim.AdamW) for setting `name`."""
    ours_keys, ref_keys = SETTINGS[name]
    group_keys = ours_keys.get("group", {})
    ours_keys = {k: v for k, v in ours_keys.items() if k != "group"}
    ours_model, ref_model = make_model(dtype), make_model(dtype)
    ours = optimizer(two_groups(ours_model, **group_keys), **HYPER, **ours_keys)
    ref = torch.optim.AdamW(two_groups(ref_model), **HYPER, **ref_keys)
    return ours_model, ours, ref_model, ref


def assert_same_run(ours_model, ours, ref_model, ref):
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)
        assert (p in ours.state) == (q in ref.state)
        if p in ours.state:
            state_equal(ours.state[p], ref.state[q])
            assert ours.state[p]["step"].device == ref.state[q]["step"].device


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", SETTINGS)
def test_without_rank_matches_torch_adamw_bitwise(name, dtype):
    ours_model, ours, ref_model, ref = plain_pair(name, dtype)
    train(ours_model, ours, 20)
    train(ref_model, ref, 20)
    assert_same_run(ours_model, ours, ref_model, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_default_is_fused_not_single_tensor(dtype):
    """The settings above are distinguishable on this run: the single-tensor loop rounds differently from
    the fused kernel (bf16: per op against once per element), so the default's match is the fused kernel's."""
    ours_model, ours, _, _ = plain_pair("default", dtype)
    single_model, single, _, _ = plain_pair("single", dtype)
    train(ours_model, ours, 20)
    train(single_model, single, 20)
    assert any(not torch.equal(p, q) for p, q in zip(ours_model.parameters(), single_model.parameters()))


def test_non_matrix_params_of_a_rank_group_are_plain_adamw_never_svd(monkeypatch):
    def no_svd(*args, **kwargs):
        raise AssertionError("SVD called on a non-matrix parameter")

    monkeypatch.setattr(torch.linalg, "svd", no_svd)
    ours_model, ref_model = make_model(), make_model()

    def vectors(model):
        return [p for p in model.parameters() if p.dim() != 2]

    ours = LowRankAdamW([dict(params=vectors(ours_model), rank=2, projection="svd", update_gap=1)], lr=1e-2)
    ref = torch.optim.AdamW(vectors(ref_model), lr=1e-2, fused=True)
    train(ours_model, ours, 20)
    train(ref_model, ref, 20)
    assert all(torch.equal(p, q) for p, q in zip(vectors(ours_model), vectors(ref_model)))


@pytest.mark.parametrize("name", ["default", "fused", "single"])
def test_step_layout_under_float64_default_dtype(name):
    """torch's `step` is float32 for fused and of the default dtype's scalar type otherwise (float64 here)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours_model, ours, ref_model, ref = plain_pair(name, torch.float64)
        train(ours_model, ours, 3)
        train(ref_model, ref, 3)
    finally:
        torch.set_default_dtype(previous)
    assert_same_run(ours_model, ours, ref_model, ref)
    expected = torch.float64 if name == "single" else torch.float32
    assert ours.state[ours_model.fc1.weight]["step"].dtype == expected


def test_complex_params_follow_torch():
    """Complex parameters: the default takes torch's own default (the fused kernel has no complex), and
    fused=True raises torch's RuntimeError at the first step, naming the parameter."""
    z0 = torch.randn(5, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    ours_p, ref_p = torch.nn.Parameter(z0.clone()), torch.nn.Parameter(z0.clone())
    ours, ref = LowRankAdamW([ours_p], lr=1e-2), torch.optim.AdamW([ref_p], lr=1e-2)
    for i in range(5):
        g = torch.randn(5, dtype=torch.complex64, generator=torch.Generator().manual_seed(10 + i))
        ours_p.grad, ref_p.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.equal(ours_p, ref_p)
    state_equal(ours.state[ours_p], ref.state[ref_p])
    for optimizer in (LowRankAdamW, GaLoreAdamW, torch.optim.AdamW):
        p = torch.nn.Parameter(z0.clone())
        p.grad = torch.ones_like(p)
        with pytest.raises(RuntimeError, match=r"`fused=True` requires all the params to be floating point"):
            optimizer([p], fused=True).step()
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match=r"LowRankAdamW: param group 0: a parameter of shape \[5\]"):
        LowRankAdamW([p], fused=True).step()


@pytest.mark.parametrize("optimizer", [LowRankAdamW, GaLoreAdamW, torch.optim.AdamW])
def test_fused_and_foreach_together_are_refused_as_by_torch(optimizer):
    with pytest.raises(RuntimeError, match=r"`fused` and `foreach` cannot be `True` together"):
        optimizer([torch.nn.Parameter(torch.zeros(3))], fused=True, foreach=True)
    optimizer([torch.nn.Parameter(torch.zeros(3))], fused=True, foreach=False)  # False is not True
    with pytest.raises(ValueError, match="empty parameter list"):  # torch's check before this one
        optimizer([], fused=True, foreach=True)


def test_implementation_can_change_mid_run():
    """As in torch.optim.AdamW, the keys take effect at the next step; the state carries over."""
    ours_model, ours, ref_model, ref = plain_pair("single", torch.float32)
    train(ours_model, ours, 3)
    train(ref_model, ref, 3)
    for group in ours.param_groups + ref.param_groups:
        group["fused"], group["foreach"] = True, None
    train(ours_model, ours, 3, start=3)
    train(ref_model, ref, 3, start=3)
    assert_same_run(ours_model, ours, ref_model, ref)


# ---------------------------------------------------------------------------------------------------
# Resume, and state dicts saved before the fused default


def roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", ["default", "foreach", "single"])
def test_resume_is_bit_identical(name):
    ours_keys, _ = SETTINGS[name]
    straight_model, resumed_model = make_model(), make_model(seed=3)

    def groups(model):
        return split_groups(model, rank=3, projection="rademacher", update_gap=2)

    straight = LowRankAdamW(groups(straight_model), lr=5e-3, **ours_keys)
    train(straight_model, straight, 3)
    saved = roundtrip({"model": straight_model.state_dict(), "opt": straight.state_dict()})
    resumed_model.load_state_dict(saved["model"])
    resumed = LowRankAdamW(groups(resumed_model), lr=5e-3, **ours_keys)
    resumed.load_state_dict(saved["opt"])
    train(straight_model, straight, 4, start=3)
    train(resumed_model, resumed, 4, start=3)
    assert all(torch.equal(p, q) for p, q in zip(straight_model.parameters(), resumed_model.parameters()))
    for p, q in zip(straight_model.parameters(), resumed_model.parameters()):
        state_equal(straight.state[p], resumed.state[q])


def as_saved_before_fused(state_dict, keys=("fused",)):
    """`state_dict` as the optimizer saved it before the implementation keys `keys` existed."""
    state_dict = copy.deepcopy(state_dict)
    for group in state_dict["param_groups"]:
        for key in keys:
            del group[key]
    return state_dict


def test_state_dict_saved_before_the_fused_default_continues_as_torch_fused():
    """A LowRankAdamW state dict of the single-tensor era (foreach None, no `fused` key, a host `step`)
    loads into today's LowRankAdamW, which then steps with the fused kernel (the key is None): the same
    run as torch.optim.AdamW(fused=True) given the same state. Plain AdamW states have one layout in all
    of torch's implementations, so nothing is converted but the step's home."""
    old_model, new_model, ref_model = make_model(), make_model(seed=5), make_model(seed=6)
    old = LowRankAdamW(two_groups(old_model), **HYPER, foreach=False)
    train(old_model, old, 4)
    saved = old.state_dict()
    for group in saved["param_groups"]:
        group["foreach"] = None  # the old default
    saved = roundtrip(as_saved_before_fused(saved))
    new_model.load_state_dict(old_model.state_dict())
    ref_model.load_state_dict(old_model.state_dict())
    new = LowRankAdamW(two_groups(new_model), **HYPER)
    new.load_state_dict(saved)
    assert all(group["fused"] is None and group["foreach"] is None for group in new.param_groups)
    ref = torch.optim.AdamW(two_groups(ref_model), **HYPER, fused=True)
    ref_saved = copy.deepcopy(old.state_dict())
    for group in ref_saved["param_groups"]:
        group.update(fused=True, foreach=None, amsgrad=False, maximize=False, capturable=False)
        group.update(differentiable=False, decoupled_weight_decay=True)
    ref.load_state_dict(ref_saved)
    train(new_model, new, 5, start=4)
    train(ref_model, ref, 5, start=4)
    assert_same_run(new_model, new, ref_model, ref)


def test_galore_state_dict_saved_before_the_keys_resumes_bit_identically():
    """A GaLoreAdamW state dict without `foreach` and `fused` (saved before they existed; the plain state is
    the same: an int step and two moments) loads and continues exactly as the run that never stopped."""
    straight_model, resumed_model = make_model(), make_model(seed=4)

    def groups(model):
        return split_groups(model, rank=3, update_proj_gap=2, proj_type="std")

    straight = GaLoreAdamW(groups(straight_model), lr=1e-2, weight_decay=0.01)
    train(straight_model, straight, 3)
    saved = roundtrip(as_saved_before_fused(straight.state_dict(), ("foreach", "fused")))
    resumed_model.load_state_dict(straight_model.state_dict())
    resumed = GaLoreAdamW(groups(resumed_model), lr=1e-2, weight_decay=0.01)
    resumed.load_state_dict(saved)
    assert isinstance(resumed.state[resumed_model.norm.weight]["step"], int)
    train(straight_model, straight, 4, start=3)
    train(resumed_model, resumed, 4, start=3)
    assert all(torch.equal(p, q) for p, q in zip(straight_model.parameters(), resumed_model.parameters()))


# ---------------------------------------------------------------------------------------------------
# The per-layer mode steps one parameter at a time: the same kernels, the same run


@pytest.mark.parametrize("name", ["default", "foreach"])
def test_per_layer_matches_torch_adamw(name):
    ours_keys, ref_keys = SETTINGS[name]
    ours_model, ref_model = make_model(), make_model()
    ours = LowRankAdamW(ours_model.parameters(), **HYPER, **ours_keys)
    ref = torch.optim.AdamW(ref_model.parameters(), **HYPER, **ref_keys)
    stepper = step_in_backward(ours_model, ours)
    for i in range(6):
        lm_loss(ours_model, batch(i)).backward()
        ref.zero_grad(set_to_none=True)
        lm_loss(ref_model, batch(i)).backward()
        ref.step()
    stepper.remove()
    assert_same_run(ours_model, ours, ref_model, ref)


# ---------------------------------------------------------------------------------------------------
# GaLoreAdamW: galore-torch's AdamW (hf_adamw.py) in every implementation


def transcribed_hf_adamw(b0, grads, lr, wd, correct_bias):
    """galore-torch's AdamW (HF transformers') in float64, from its formulas."""
    b = b0.double()
    mom = vel = torch.zeros_like(b)
    for t, g in enumerate(grads, start=1):
        mom, vel = 0.9 * mom + 0.1 * g.double(), 0.999 * vel + 0.001 * g.double() ** 2
        size = lr * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) if correct_bias else lr
        b = b - size * mom / (vel.sqrt() + 1e-6)
        b = b - lr * wd * b
    return b


def galore_plain_run(b0, grads, dtype, lr, wd, correct_bias, **keys):
    b = torch.nn.Parameter(b0.to(dtype))
    opt = GaLoreAdamW([b], lr=lr, weight_decay=wd, correct_bias=correct_bias, **keys)
    for g in grads:
        b.grad = g.to(dtype)
        opt.step()
    return b.detach(), opt


@pytest.mark.parametrize("correct_bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["default", "fused", "foreach", "single"])
def test_galore_adamw_plain_groups_are_hf_adamw(name, dtype, correct_bias, rng):
    """Against the float64 transcription, within the tolerance rule (docs/DESIGN.md §5), the single-tensor loop
    (galore-torch's ops: test_galore_torch.py) as plain torch's error; foreach is that loop bit for bit in
    float32."""
    b0 = torch.randn(37, generator=rng).to(dtype)
    grads = [torch.randn(37, generator=rng).to(dtype) for _ in range(10)]
    hyper = dict(lr=1e-2, wd=0.1, correct_bias=correct_bias)
    ours, opt = galore_plain_run(b0, grads, dtype, **hyper, **SETTINGS[name][0])
    single, _ = galore_plain_run(b0, grads, dtype, **hyper, foreach=False)
    assert isinstance(opt.state[opt.param_groups[0]["params"][0]]["step"], int)
    if name == "foreach" and dtype == torch.float32:  # bf16: foreach rounds the scalar factors to bf16
        assert torch.equal(ours, single)
    assert_within_torch_error(ours, transcribed_hf_adamw(b0, grads, **hyper), single, f"{name} {dtype}")
