"""The optimizers under bad input and changed settings (issue 16): load_state_dict refuses a state dict of
another optimizer type, other layout settings or other shapes with a message naming group, key and both
values, and loads nothing then; settings changed mid-run restart or keep the state as the docstrings say
(checked against a fresh optimizer, step for step); sparse gradients are refused before any work; the
opt-in guard skip_nonfinite skips and counts, resumes bit-identically with its counter, and agrees across
FSDP2 ranks."""

import io
import math
import re
import warnings

import pytest
import torch

from lowrank_ops import projections
from lowrank_ops.distributed import run_local
from lowrank_ops.optim import GaLoreAdamW, LowRankAdamW, step_in_backward
from lowrank_ops.optim.nonfinite import finite_flags

from tiny_models import batch, lm_loss, make_model, split_groups, state_equal

SHAPES = ((10, 6), (5, 9))  # right- and left-projected under side "auto"
TIMEOUT = 90


def matrices(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype)) for shape in SHAPES]


def set_grads(params, t):
    """Step t's gradients: fixed random draws, the same for every run."""
    g = torch.Generator().manual_seed(100 + t)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def run(opt, params, steps, start=0):
    for t in range(start, start + steps):
        set_grads(params, t)
        opt.step()


def copies(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def snapshot(opt, p):
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[p].items()}


def saved(opt):
    """opt.state_dict() through torch.save and torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_untouched(opt, params, groups_before):
    """After a refused load: the optimizer's groups and (empty) state are as before, and it still steps."""
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups_before
    assert not opt.state
    run(opt, params, 1)
    assert all(torch.isfinite(p).all() for p in params)


def group_settings(opt):
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


# ---------------------------------------------------------------------------------------------------
# load_state_dict: another optimizer type, other layout settings, other shapes: a clear error, nothing loaded


def test_adamw_state_into_lowrank_adamw_is_refused():
    params = matrices()
    adamw = torch.optim.AdamW(params)
    run(adamw, params, 1)
    for rank in (4, None):
        opt = LowRankAdamW(copies(params), rank=rank)
        before = group_settings(opt)
        with pytest.raises(ValueError) as info:
            opt.load_state_dict(adamw.state_dict())
        message = str(info.value)
        assert message.startswith(
            "lowrank_ops.optim.LowRankAdamW.load_state_dict: param group 0 of the state"
        )
        assert (
            f"'rank' (this optimizer: {rank})" in message
            and "'projection' (this optimizer: 'rademacher')" in message
        )
        assert "saved by another optimizer type" in message and "'amsgrad'" in message
        assert_untouched(opt, opt.param_groups[0]["params"], before)


def test_adamw_and_lowrank_state_into_galore_and_back_are_refused():
    params = matrices()
    adamw = torch.optim.AdamW(params)
    lowrank = LowRankAdamW(copies(params), rank=4)
    run(adamw, params, 1)
    run(lowrank, lowrank.param_groups[0]["params"], 1)
    for other in (adamw, lowrank):
        galore = GaLoreAdamW([dict(params=copies(params), rank=4)])
        before = group_settings(galore)
        with pytest.raises(
            ValueError,
            match=r"GaLoreAdamW.load_state_dict: param group 0 of the state dict lacks "
            r"the keys 'correct_bias' \(this optimizer: True\)",
        ):
            galore.load_state_dict(other.state_dict())
        assert_untouched(galore, galore.param_groups[0]["params"], before)
    galore = GaLoreAdamW([dict(params=copies(params), rank=4)])
    run(galore, galore.param_groups[0]["params"], 1)
    opt = LowRankAdamW(copies(params), rank=4)
    with pytest.raises(ValueError, match="lacks the keys 'seed' \\(this optimizer: 0\\), 'projection'"):
        opt.load_state_dict(galore.state_dict())


LAYOUT_MISMATCHES = [
    # (this optimizer's group keys, the saved optimizer's, the key named, expected, got)
    (dict(rank=4), dict(rank=8), "rank", 4, 8),
    (dict(rank=4, projection="svd"), dict(rank=4), "projection", "svd", "rademacher"),
    (dict(rank=4, side="left"), dict(rank=4, side="right"), "side", "left", "right"),
    (dict(rank=4, wd_mode="adapter"), dict(rank=4), "wd_mode", "adapter", "full"),
    (
        dict(rank=(2, 3), projection="two_sided_gaussian"),
        dict(rank=(3, 2), projection="two_sided_gaussian"),
        "rank",
        (2, 3),
        (3, 2),
    ),
    (
        dict(rank=2, projection="orthogonal", block=(0, 2)),
        dict(rank=2, projection="orthogonal", block=(1, 2)),
        "block",
        (0, 2),
        (1, 2),
    ),
    (dict(rank=None), dict(rank=4), "rank", None, 4),
    (dict(rank=4), dict(rank=None), "rank", 4, None),
]


@pytest.mark.parametrize("own,other,key,expected,got", LAYOUT_MISMATCHES)
def test_lowrank_state_of_other_layout_settings_is_refused(own, other, key, expected, got):
    params = matrices()
    source = LowRankAdamW([dict(params=params, **other)])
    run(source, params, 2)
    opt = LowRankAdamW([dict(params=copies(params), **own)])
    before = group_settings(opt)
    with pytest.raises(ValueError) as info:
        opt.load_state_dict(saved(source))
    assert str(info.value).startswith(
        f"lowrank_ops.optim.LowRankAdamW.load_state_dict: param group 0: '{key}': expected {expected!r} "
        f"(this optimizer), got {got!r} (the state dict)"
    )
    assert_untouched(opt, opt.param_groups[0]["params"], before)


@pytest.mark.parametrize(
    "own,other,key,expected,got",
    [
        (dict(rank=4), dict(rank=8), "rank", 4, 8),
        (dict(rank=4, proj_type="left"), dict(rank=4), "proj_type", "left", "std"),
        (dict(), dict(rank=4), "rank", None, 4),
    ],
)
def test_galore_state_of_other_layout_settings_is_refused(own, other, key, expected, got):
    params = matrices()
    source = GaLoreAdamW([dict(params=params, **other)])
    run(source, params, 2)
    opt = GaLoreAdamW([dict(params=copies(params), **own)])
    with pytest.raises(
        ValueError,
        match=f"param group 0: '{key}': expected {expected!r} \\(this optimizer\\), "
        f"got {got!r} \\(the state dict\\)",
    ):
        opt.load_state_dict(saved(source))
    assert not opt.state


def test_hyperparameters_come_from_the_state_dict_and_stay_changeable():
    """As torch.optim: a state dict's lr, betas, eps, weight_decay, scale, update_gap and seed replace this
    optimizer's (so resuming is exact whatever the new optimizer was built with), and may be set after the
    load: the resumed run equals the uninterrupted one with the same change."""
    keys = dict(rank=3, projection="gaussian", update_gap=3, seed=5, scale=0.5)
    params = matrices()
    straight = LowRankAdamW(params, lr=1e-2, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1, **keys)
    run(straight, params, 4)
    state = saved(straight)
    resumed_params = copies(params)
    resumed = LowRankAdamW(
        resumed_params,
        lr=1.0,
        betas=(0.5, 0.5),
        eps=1.0,
        weight_decay=0.0,
        rank=3,
        projection="gaussian",
        update_gap=7,
        seed=9,
        scale=3.0,
    )
    resumed.load_state_dict(state)
    assert group_settings(resumed) == group_settings(straight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # plain hyperparameters change silently, as in torch.optim
        for opt in (straight, resumed):
            opt.param_groups[0].update(lr=3e-3, betas=(0.9, 0.9), eps=1e-6, weight_decay=0.2, update_gap=2)
        run(straight, params, 5, start=4)
        run(resumed, resumed_params, 5, start=4)
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)
        state_equal(straight.state[p], resumed.state[q])


def test_state_dicts_without_the_guard_keys_load_and_the_guard_stays_this_optimizers():
    params = matrices()
    source = LowRankAdamW(params, rank=3)
    run(source, params, 2)
    state = saved(source)
    for group in state["param_groups"]:  # as saved before the guard existed
        del group["skip_nonfinite"], group["skipped_steps"]
    opt = LowRankAdamW(copies(params), rank=3, skip_nonfinite=True)
    opt.load_state_dict(state)
    assert opt.param_groups[0]["skip_nonfinite"] is True and opt.skipped_steps() == 0


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("lr", -1.0, "invalid 'lr'"),
        ("update_gap", 0, "'update_gap' must be an int >= 1"),
        ("skipped_steps", -1, "'skipped_steps' must be an int >= 0"),
        ("skipped_steps", True, "'skipped_steps' must be an int >= 0"),
    ],
)
def test_bad_hyperparameters_of_a_state_dict_are_refused(key, value, match):
    params = matrices()
    source = LowRankAdamW(params, rank=3)
    run(source, params, 1)
    state = saved(source)
    state["param_groups"][0][key] = value
    opt = LowRankAdamW(copies(params), rank=3)
    with pytest.raises(
        ValueError, match=f"LowRankAdamW.load_state_dict: param group 0 of the state dict: {match}"
    ):
        opt.load_state_dict(state)
    assert not opt.state


def test_state_of_another_model_is_refused_naming_the_parameter():
    source_params = [torch.nn.Parameter(torch.randn(12, 6)), torch.nn.Parameter(torch.randn(7))]
    source = LowRankAdamW(source_params, rank=3)
    run(source, source_params, 1)
    params = [torch.nn.Parameter(torch.randn(10, 6)), torch.nn.Parameter(torch.randn(7))]
    opt = LowRankAdamW([("fc.weight", params[0]), ("fc.bias", params[1])], rank=3)
    with pytest.raises(
        ValueError,
        match=r"param group 0, parameter 'fc.weight' \(index 0\) of shape \[10, 6\]: the "
        r"state's 'exp_avg' has shape \[12, 3\], expected \[10, 3\] \(the projected shape\)",
    ):
        opt.load_state_dict(source.state_dict())
    source_params = [torch.nn.Parameter(torch.randn(10, 6)), torch.nn.Parameter(torch.randn(5))]
    source = LowRankAdamW(source_params, rank=3)
    run(source, source_params, 1)
    with pytest.raises(
        ValueError,
        match=r"parameter 'fc.bias' \(index 1\) of shape \[7\]: the state's 'exp_avg' "
        r"has shape \[5\], expected \[7\] \(the parameter's shape\)",
    ):
        opt.load_state_dict(source.state_dict())
    assert not opt.state
    vector = LowRankAdamW([torch.nn.Parameter(torch.randn(6)), params[1]], rank=3)
    with pytest.raises(
        ValueError, match=r"parameter 0 of shape \[6\]: the state dict holds a low-rank state for it"
    ):
        vector.load_state_dict(source.state_dict())


@pytest.mark.parametrize(
    "projection,remove,match",
    [
        ("rademacher", "layer", r"lacks \['layer'\]"),  # e.g. galore-torch's state: no layer/refresh
        ("svd", "proj_right", "lacks 'proj_right', the basis of projection 'svd'"),
        ("dct", "proj_right", "lacks 'proj_right', the basis of projection 'dct'"),
    ],
)
def test_incomplete_lowrank_state_is_refused(projection, remove, match):
    params = [torch.nn.Parameter(torch.randn(10, 6))]
    source = LowRankAdamW(params, rank=3, projection=projection)
    run(source, params, 1)
    state = saved(source)
    del state["state"][0][remove]
    opt = LowRankAdamW(copies(params), rank=3, projection=projection)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(state)
    state = saved(source)
    state["state"][0]["exp_avg_sq"] = state["state"][0]["exp_avg_sq"][:, :2]
    with pytest.raises(ValueError, match=r"'exp_avg_sq' has shape \[10, 2\], expected \[10, 3\]"):
        opt.load_state_dict(state)
    if projection == "dct":
        state = saved(source)
        state["state"][0]["proj_right"] = state["state"][0]["proj_right"].float()
        with pytest.raises(
            ValueError, match="the state's basis does not fit projection 'dct': .*int16/int32/int64"
        ):
            opt.load_state_dict(state)
    assert not opt.state


# ---------------------------------------------------------------------------------------------------
# Settings changed mid-run


RESTARTS = [
    # (group keys before, the key changed, its new value): the state restarts at the next step
    (dict(rank=4), "projection", "svd"),
    (dict(rank=4), "rank", 2),
    (dict(rank=4, side="right"), "side", "left"),
    (dict(rank=2, projection="orthogonal", block=(0, 2)), "block", (1, 2)),
    (dict(rank=3, projection="svd"), "projection", "two_sided_svd"),
    (dict(rank=None), "rank", 3),
    (dict(rank=3), "rank", None),
]


@pytest.mark.parametrize("keys,key,value", RESTARTS)
def test_layout_change_mid_run_restarts_the_state_like_a_fresh_optimizer(keys, key, value):
    params = matrices()
    opt = LowRankAdamW([dict(params=params, **keys)], lr=1e-2, seed=3)
    run(opt, params, 3)
    fresh_params = copies(params)
    fresh = LowRankAdamW([dict(params=fresh_params, **{**keys, key: value})], lr=1e-2, seed=3)
    opt.param_groups[0][key] = value
    expected = (
        f"param group 0: '{key}' from .* to {re.escape(repr(value))} after its state was built; the state "
    )
    with pytest.warns(
        RuntimeWarning, match=expected + r"of its 2 low-rank parameter\(s\) restarts"
    ) as caught:
        run(opt, params, 4, start=3)
    assert len([w for w in caught if "restarts" in str(w.message)]) == 1
    run(fresh, fresh_params, 4, start=3)
    for p, q in zip(params, fresh_params):
        assert torch.equal(p, q)
        state_equal(opt.state[p], fresh.state[q])


@pytest.mark.parametrize(
    "keys,key,value",
    [
        (dict(rank=4), "proj_type", "left"),
        (dict(rank=4), "rank", 2),
        (dict(), "rank", 3),
        (dict(rank=3), "rank", None),
    ],
)
def test_galore_layout_change_mid_run_restarts_the_state_like_a_fresh_optimizer(keys, key, value):
    params = matrices()
    opt = GaLoreAdamW([dict(params=params, update_proj_gap=2, **keys)], lr=1e-2)
    run(opt, params, 3)
    fresh_keys = {**keys, key: value} if value is not None else {}
    fresh_params = copies(params)
    fresh = GaLoreAdamW([dict(params=fresh_params, update_proj_gap=2, **fresh_keys)], lr=1e-2)
    if value is None:
        del opt.param_groups[0][key]
    else:
        opt.param_groups[0][key] = value
    with pytest.warns(RuntimeWarning, match="restarts"):
        run(opt, params, 4, start=3)
    run(fresh, fresh_params, 4, start=3)
    for p, q in zip(params, fresh_params):
        assert torch.equal(p, q)
        state_equal(opt.state[p], fresh.state[q])


def test_bad_setting_mid_run_raises_before_any_work():
    params = matrices()
    opt = LowRankAdamW(params, rank=4)
    run(opt, params, 1)
    before = [p.detach().clone() for p in params]
    for key, value, match in (
        ("rank", 0, "'rank' must be an int >= 1"),
        ("projection", "nope", "unknown projection 'nope'"),
        ("block", (0, 2), "'block' needs a projection with row blocks"),
    ):
        opt.param_groups[0][key] = value
        with pytest.raises(ValueError, match=f"^lowrank_ops.optim.LowRankAdamW: param group 0: {match}"):
            run(opt, params, 1)
        assert all(torch.equal(p, b) for p, b in zip(params, before))
        opt.param_groups[0][key] = dict(rank=4, projection="rademacher", block=None)[key]
    run(opt, params, 1)  # back to the built settings: no restart
    assert opt.state[params[0]]["step"] == 2


def test_wd_mode_change_keeps_the_moments():
    params = matrices()
    opt = LowRankAdamW(params, rank=3, update_gap=10, weight_decay=0.1)
    run(opt, params, 2)
    moments = snapshot(opt, params[0])
    opt.param_groups[0]["wd_mode"] = "adapter"
    with pytest.warns(RuntimeWarning, match="'wd_mode' from 'full' to 'adapter' .* next step, moments kept"):
        opt.state_dict()  # applies pending changes, so that the saved state matches the saved settings
    assert torch.equal(opt.state[params[0]]["delta"], torch.zeros(10, 3))
    state_equal({k: v for k, v in opt.state[params[0]].items() if k != "delta"}, moments)
    run(opt, params, 2, start=2)
    assert opt.state[params[0]]["step"] == 4 and opt.state[params[0]]["delta"].abs().sum() > 0
    opt.param_groups[0]["wd_mode"] = "full"
    run(opt, params, 1, start=4)
    assert "delta" not in opt.state[params[0]] and opt.state[params[0]]["step"] == 5


def test_seed_change_takes_effect_at_the_next_refresh():
    params = matrices()
    opt = LowRankAdamW(params, rank=3, update_gap=3, seed=1)
    run(opt, params, 2)
    first = opt.state[params[0]]["proj_seed"]
    opt.param_groups[0]["seed"] = 2
    with pytest.warns(
        RuntimeWarning,
        match="'seed' from 1 to 2 .* the current bases are kept; it takes effect at the next refresh",
    ):
        run(opt, params, 1, start=2)
    assert opt.state[params[0]]["proj_seed"] == first == projections.derive_seed(1, 0, 0)
    run(opt, params, 1, start=3)  # step 3 % 3 == 0: the refresh, with the new seed
    assert opt.state[params[0]]["proj_seed"] == projections.derive_seed(2, 0, 1)


def test_changes_before_any_state_and_equal_values_are_silent():
    params = matrices()
    opt = LowRankAdamW(params, rank=2, projection="orthogonal", block=(0, 2))
    opt.param_groups[0].update(rank=3, projection="svd", block=None)  # no state yet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(opt, params, 2)
        opt.param_groups[0]["rank"] = 3  # the same value
        run(opt, params, 1, start=2)
    assert opt.state[params[0]]["step"] == 3 and opt.state[params[0]]["exp_avg"].shape == (10, 3)


def test_state_dict_after_a_change_loads_into_an_optimizer_with_the_new_settings():
    params = matrices()
    opt = LowRankAdamW(params, rank=4)
    run(opt, params, 2)
    opt.param_groups[0]["rank"] = 2
    with pytest.warns(RuntimeWarning, match="restarts"):
        state = saved(opt)
    resumed = LowRankAdamW(copies(params), rank=2)
    resumed.load_state_dict(state)
    run(resumed, resumed.param_groups[0]["params"], 1)
    assert resumed.state[resumed.param_groups[0]["params"][0]]["exp_avg"].shape == (10, 2)


def test_per_layer_mode_applies_the_change():
    model = make_model()
    opt = LowRankAdamW(split_groups(model, rank=3, projection="rademacher", update_gap=4), lr=1e-2)
    stepper = step_in_backward(model, opt)
    for i in range(2):
        lm_loss(model, batch(i)).backward()
    opt.param_groups[0]["projection"] = "svd"
    with pytest.warns(RuntimeWarning, match="restarts"):
        lm_loss(model, batch(2)).backward()
    stepper.remove()
    assert opt.state[model.fc1.weight]["step"] == 1 and "proj_right" in opt.state[model.fc1.weight]


# ---------------------------------------------------------------------------------------------------
# Sparse gradients: refused before any work


def test_sparse_gradient_is_refused_before_any_work():
    dense = torch.nn.Parameter(torch.randn(4, 4))
    emb = torch.nn.Embedding(10, 6, sparse=True)
    bias = torch.nn.Parameter(torch.randn(6))
    for make in (
        lambda groups: LowRankAdamW(groups, rank=3),
        lambda groups: GaLoreAdamW([dict(g, rank=3) if i == 1 else g for i, g in enumerate(groups)]),
    ):
        opt = make(
            [dict(params=[("dense", dense)]), dict(params=[("emb.weight", emb.weight), ("bias", bias)])]
        )
        dense.grad = torch.randn(4, 4)
        bias.grad = torch.randn(6)
        emb(torch.tensor([1, 2])).sum().backward()
        assert emb.weight.grad.is_sparse
        before = dense.detach().clone()
        name = type(opt).__name__
        with pytest.raises(
            RuntimeError,
            match=rf"^lowrank_ops.optim.{name}: param group 1, parameter 'emb.weight' "
            r"\(index 0\) of shape \[10, 6\]: sparse gradients are not supported",
        ):
            opt.step()
        assert torch.equal(dense, before) and not opt.state
        with pytest.raises(RuntimeError, match="sparse gradients are not supported"):
            opt.step_param(emb.weight)
        emb.weight.grad = None
        bias.grad = bias.grad.to_sparse()
        with pytest.raises(
            RuntimeError, match=r"param group 1, parameter 'bias' \(index 1\) of shape \[6\]: sparse"
        ):
            opt.step()
        bias.grad = None


# ---------------------------------------------------------------------------------------------------
# Non-finite gradients


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_finite_flags_is_exact(dtype):
    """max |g| finds one NaN/Inf at any position (vectorized body, tail, non-contiguous views) and never
    reports finite values as non-finite, whatever their size (a sum or 2-norm overflows on these)."""
    big = torch.finfo(dtype).max
    g = torch.full((1031,), big, dtype=dtype)
    assert finite_flags([g, -g, g.reshape(1, -1), torch.empty(0, 3, dtype=dtype)]) == [True] * 4
    assert not torch.isfinite(g.sum()) and not torch.isfinite(torch.linalg.vector_norm(g))
    for bad in (math.nan, math.inf, -math.inf):
        for position in (0, 1, 7, 8, 15, 16, 515, 1023, 1030):
            x = torch.randn(1031, dtype=torch.float64).to(dtype)
            x[position] = bad
            assert finite_flags([x]) == [False], (bad, position)
        m = torch.randn(33, 17, dtype=torch.float64).to(dtype)
        m[32, 16] = bad
        assert finite_flags([m.T, m[::2], m[1::2], m]) == [False, False, True, False]
    mixed = torch.tensor([math.inf, -math.inf], dtype=dtype)
    assert finite_flags([mixed, torch.ones(3, dtype=dtype)]) == [False, True]


def test_finite_flags_float64_beyond_float32_range_is_finite():
    assert finite_flags([torch.tensor([1e300, -1e300], dtype=torch.float64), torch.ones(2)]) == [True, True]


def nan_at(params, t, index, value=math.nan):
    set_grads(params, t)
    params[index].grad[1, 2] = value


@pytest.mark.parametrize("optimizer", ["lowrank", "galore"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_skip_nonfinite_skips_that_matrix_and_counts(optimizer, value):
    params = matrices()
    if optimizer == "lowrank":
        opt = LowRankAdamW(params, rank=3, projection="svd", update_gap=5, skip_nonfinite=True)
    else:
        opt = GaLoreAdamW([dict(params=params, rank=3, update_proj_gap=5)], skip_nonfinite=True)
    run(opt, params, 2)
    before, state = [p.detach().clone() for p in params], snapshot(opt, params[0])
    nan_at(params, 2, 0, value)
    with pytest.warns(
        RuntimeWarning,
        match=r"param group 0, parameter 0 of shape \[10, 6\]: its gradient has "
        "NaN/Inf; its step is skipped",
    ):
        opt.step()  # between refreshes
    assert torch.equal(params[0], before[0]) and not torch.equal(params[1], before[1])
    state_equal(opt.state[params[0]], state)
    assert opt.state[params[1]]["step"] == 3 and opt.skipped_steps() == 1
    nan_at(params, 3, 0, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once
        opt.step()
    assert opt.skipped_steps() == 2 and opt.param_groups[0]["skipped_steps"] == 2
    run(opt, params, 6, start=4)  # crosses the refresh at step 5
    assert all(torch.isfinite(p).all() for p in params)
    assert opt.state[params[0]]["step"] == 8 and opt.state[params[1]]["step"] == 10


def test_skip_nonfinite_first_step_creates_no_state_and_covers_plain_params():
    W, b = torch.nn.Parameter(torch.randn(10, 6)), torch.nn.Parameter(torch.randn(6))
    opt = LowRankAdamW([dict(params=[W], rank=3), dict(params=[b])], skip_nonfinite=True)
    W.grad, b.grad = torch.full((10, 6), math.nan), torch.full((6,), math.inf)
    with pytest.warns(RuntimeWarning, match="skipped"):
        opt.step()
    assert not opt.state and opt.skipped_steps() == 2
    assert [g["skipped_steps"] for g in opt.param_groups] == [1, 1]
    W.grad, b.grad = torch.randn(10, 6), torch.randn(6)
    opt.step()
    assert opt.state[W]["step"] == 1 and int(opt.state[b]["step"]) == 1


def test_skip_nonfinite_is_a_group_key():
    params = matrices()
    opt = LowRankAdamW(
        [dict(params=params[:1]), dict(params=params[1:], skip_nonfinite=False)], rank=3, skip_nonfinite=True
    )
    run(opt, params, 1)
    set_grads(params, 1)  # between refreshes: without the guard, the NaN reaches W
    params[0].grad[0, 0] = params[1].grad[0, 0] = math.nan
    with pytest.warns(RuntimeWarning, match="param group 0, parameter 0"):
        opt.step()
    assert torch.isfinite(params[0]).all() and not torch.isfinite(params[1]).all()
    assert [g["skipped_steps"] for g in opt.param_groups] == [1, 0]


@pytest.mark.parametrize("side", ["right", "left"])
def test_without_the_guard_nan_between_refreshes_reaches_rows_or_columns_of_w(side):
    """What the README says: as torch.optim.AdamW, a NaN between refreshes goes into the weights (through
    the projection: its row for side "right", its column for "left") and stays there."""
    params = matrices()
    opt = LowRankAdamW(params, rank=3, side=side, update_gap=10)
    run(opt, params, 2)
    nan_at(params, 2, 0)
    opt.step()
    bad = ~torch.isfinite(params[0])
    expected = torch.zeros(10, 6, dtype=torch.bool)
    if side == "right":
        expected[1, :] = True
    else:
        expected[:, 2] = True
    assert torch.equal(bad, expected)
    run(opt, params, 2, start=3)
    assert torch.equal(~torch.isfinite(params[0]), expected)


@pytest.mark.parametrize("kind", ["rademacher", "svd", "two_sided_gaussian"])
def test_skip_nonfinite_resume_is_bit_identical_with_the_counter(kind):
    def make(model):
        groups = split_groups(model, rank=3, projection=kind, update_gap=4)
        return LowRankAdamW(groups, lr=5e-3, weight_decay=0.05, seed=11, skip_nonfinite=True)

    def steps(model, opt, start, stop):
        for i in range(start, stop):
            opt.zero_grad(set_to_none=True)
            lm_loss(model, batch(i)).backward()
            if i in (2, 6):
                model.fc1.weight.grad[3, 1] = math.nan
            if i == 4:
                model.norm.bias.grad[0] = math.inf
            opt.step()

    model = make_model()
    opt = make(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        steps(model, opt, 0, 5)
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
        buffer.seek(0)
        checkpoint = torch.load(buffer, weights_only=True)
        assert [g["skipped_steps"] for g in checkpoint["opt"]["param_groups"]] == [1, 1]
        resumed_model = make_model(seed=4)
        resumed_model.load_state_dict(checkpoint["model"])
        resumed = make(resumed_model)
        resumed.load_state_dict(checkpoint["opt"])
        steps(model, opt, 5, 10)
        steps(resumed_model, resumed, 5, 10)
    assert opt.skipped_steps() == resumed.skipped_steps() == 3
    assert opt.state[model.fc1.weight]["step"] == 8
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
        if p in opt.state:
            state_equal(opt.state[p], resumed.state[q])


def test_skip_nonfinite_in_the_per_layer_mode():
    model = make_model()
    opt = LowRankAdamW(split_groups(model, rank=3), lr=1e-2, skip_nonfinite=True)
    stepper = step_in_backward(model, opt)
    handle = model.fc2.weight.register_hook(lambda g: torch.full_like(g, math.inf))
    before = model.fc2.weight.detach().clone()
    with pytest.warns(RuntimeWarning, match="skipped"):
        lm_loss(model, batch(0)).backward()
    handle.remove()
    stepper.remove()
    assert torch.equal(model.fc2.weight, before) and model.fc2.weight not in opt.state
    assert opt.state[model.fc1.weight]["step"] == 1 and opt.skipped_steps() == 1


# ---------------------------------------------------------------------------------------------------
# FSDP2: every rank takes the same decision on a gradient whose NaN is in one rank's shard


class Net(torch.nn.Module):
    """fc1.weight [12, 8] (side right: stepped shard-locally under Shard(0)); fc2.weight [4, 12] (side left:
    the all-reduce path under Shard(0), where a rank that skipped alone would leave the others waiting)."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 12)
        self.fc2 = torch.nn.Linear(12, 4)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def _fsdp_skip_rank(rank, world):
    from torch.distributed.fsdp import fully_shard

    import lowrank_ops.distributed  # noqa: F401  (registers the DTensor step)

    torch.manual_seed(0)
    model = Net()
    fully_shard(model)
    opt = LowRankAdamW(model.parameters(), lr=1e-2, rank=2, update_gap=5, skip_nonfinite=True)
    out = []
    for t in range(4):
        g = torch.Generator().manual_seed(t)
        x, y = torch.randn(4, 8, generator=g), torch.randn(4, 4, generator=g)
        torch.nn.functional.mse_loss(model(x), y).backward()
        if t in (1, 2) and rank == t - 1:  # a NaN in one rank's shard only: fc1 at t=1 (rank 0), fc2 at t=2
            local = (model.fc1 if t == 1 else model.fc2).weight.grad.to_local()
            local[0, 0] = math.nan
        before = [p.full_tensor().clone() for p in model.parameters()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            opt.step()
        opt.zero_grad()
        after = [p.full_tensor().clone() for p in model.parameters()]
        out.append([torch.equal(a, b) for a, b in zip(before, after)])
    return out, opt.skipped_steps(), [opt.state[p]["step"] for p in (model.fc1.weight, model.fc2.weight)]


def test_skip_nonfinite_agrees_across_fsdp2_ranks():
    results = run_local(_fsdp_skip_rank, 2, timeout=TIMEOUT)
    assert results[0] == results[1]
    unchanged, skipped, steps = results[0]
    # parameters: fc1.weight, fc1.bias, fc2.weight, fc2.bias
    assert unchanged == [[False] * 4, [True, False, False, False], [False, False, True, False], [False] * 4]
    assert skipped == 2 and steps == [3, 3]
