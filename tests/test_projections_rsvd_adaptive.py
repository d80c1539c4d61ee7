"""The "rsvd" and "adaptive" (AdaRankGrad) projection kinds (issue 5, phase 2): bases against the range
finder / float64 SVDs, the moment transform against a hand-written float64 rule, the optimizer hooks
(refresh decision, moment transform, rank-dependent state shapes), resume, robustness, ranks(), and the
rank decay on a task whose gradients become low-rank."""

import io
import math
import warnings

import pytest
import torch

from lowrank_ops import ops, projections
from lowrank_ops.optim import LowRankAdamW
from lowrank_ops.optim._base import lowrank_state, refresh_if_due
from lowrank_ops.projections.adaptive import transform_moments

from tiny_models import batch, lm_loss, make_model, split_groups, state_equal, train, train_mlp


def known_spectrum(m, n, singular_values, rng):
    """G = U diag(s) V^T in float64 with random orthonormal U, V."""
    k = len(singular_values)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=rng, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=rng, dtype=torch.float64))
    return (U * torch.tensor(singular_values, dtype=torch.float64)) @ V.T


def residual(G, P, side):
    """||G - P^T P G|| (left) or ||G - G P^T P|| (right) in float64."""
    G, P = G.double(), P.double()
    return torch.linalg.norm(G - P.T @ (P @ G) if side == "left" else G - (G @ P.T) @ P)


def energy_rank(G, energy):
    """The smallest r with sum_{i>r} sigma_i^2 <= (1 - energy) ||G||^2, from a float64 SVD."""
    s2 = torch.linalg.svdvals(G.double()) ** 2
    tail = s2.sum() - torch.cumsum(s2, 0)
    return int((tail <= (1 - energy) * s2.sum()).nonzero()[0]) + 1


def no_warn(key, message):
    raise AssertionError(f"unexpected warning {key}: {message}")


# ---------------------------------------------------------------------------------------------------
# The kinds on their own


@pytest.mark.parametrize("side,shape", [("left", (37, 21)), ("right", (21, 37)), ("right", (40, 19))])
def test_rsvd_basis_is_the_range_finder_basis(side, shape, rng):
    kind = projections.get("rsvd")
    G = known_spectrum(*shape, [0.8**i for i in range(19)], rng).float()
    layout = kind.layout(shape, 5, side)
    state = {}
    assert projections.refresh(kind, state, G, layout, seed=77, warn=no_warn)
    Q, _ = ops.range_finder(G, 5, seed=77, side=side)
    P = state[f"proj_{side}"]
    assert P.shape == (5, shape[0] if side == "left" else shape[1]) and state["proj_seed"] == 77
    assert torch.equal(P, Q.T.contiguous())
    assert torch.linalg.norm(P.double() @ P.double().T - torch.eye(5, dtype=torch.float64)) < 1e-5
    s = torch.linalg.svdvals(G.double())
    optimal = s[5:].square().sum().sqrt()
    assert residual(G, P, side) <= 1.5 * optimal
    assert kind.projection(state, layout).projected_shape(shape) == layout.projected_shape


def test_rsvd_zero_gradient_falls_back_then_keeps_basis():
    kind = projections.get("rsvd")
    layout = kind.layout((12, 8), 3, "auto")
    events, state = [], {}
    warn = lambda key, message: events.append(message)
    assert projections.refresh(kind, state, torch.zeros(12, 8), layout, seed=42, warn=warn)
    fallback = projections.semi_orthogonal(3, 8, 42, torch.float32)
    assert torch.equal(state["proj_right"], fallback) and "first refresh" in events[0]
    assert projections.refresh(kind, state, torch.zeros(12, 8), layout, seed=43, warn=warn)
    assert torch.equal(state["proj_right"], fallback) and "previous basis is kept" in events[1]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99])
def test_adaptive_refresh_keeps_the_energy_with_a_near_minimal_rank(side, energy, rng):
    kind = projections.get("adaptive")
    G = known_spectrum(30, 26, [2.0 * 0.7**i for i in range(20)], rng).float()
    group = dict(rank=12, energy=energy, min_rank=1)
    layout = kind.layout(G.shape, 12, side)
    state = {"step": 5}
    assert projections.refresh(kind, state, G, layout, seed=9, warn=no_warn, group=group)
    r, P = state["proj_rank"], state[f"proj_{side}"]
    expected, Q, _ = ops.adaptive_rank(G, energy, 12, seed=9, side=side)
    assert r == expected and torch.equal(P, Q.T.contiguous())
    assert (state["proj_step"], state["proj_seed"]) == (5, 9)
    assert residual(G, P, side) ** 2 <= (1 - energy) * torch.linalg.norm(G.double()) ** 2
    best = energy_rank(G, energy)
    assert best <= r <= best + 1, (best, r)
    current = kind.current_layout(state, layout, group)
    assert current.sides()[0][:2] == (side, r)


def test_adaptive_rank_bounds_and_zero_gradient():
    kind = projections.get("adaptive")
    G = torch.zeros(9, 7)
    group = dict(rank=4, max_rank=6, min_rank=2)
    layout = kind.layout(G.shape, 4, "auto")
    # before the first refresh the layout is at max_rank (capped at min(m, n))
    assert kind.current_layout({}, layout, group).right_rank == 6
    assert kind.current_layout({}, layout, dict(rank=4, max_rank=50)).right_rank == 7
    state, events = {"step": 0}, []
    projections.refresh(kind, state, G, layout, seed=3, warn=lambda k, m: events.append(k), group=group)
    # zero gradient at the first refresh: the seeded semi-orthogonal fallback, at the layout's rank
    assert events == ["refresh_failed"] and state["proj_rank"] == 4
    assert torch.equal(state["proj_right"], projections.semi_orthogonal(4, 7, 3, torch.float32))


# ---------------------------------------------------------------------------------------------------
# Moment transform


def hand_transform(m, v, P_new, P_old, side):
    """m' = P_new P_old^T m, v' = (P_new P_old^T)^o2 v (left; right: on the column index), written out as
    sums over the basis coordinate, in float64."""
    r_new, r_old = P_new.shape[0], P_old.shape[0]
    T = [
        [sum(float(P_new[i, k]) * float(P_old[j, k]) for k in range(P_new.shape[1])) for j in range(r_old)]
        for i in range(r_new)
    ]
    if side == "right":
        m, v = m.T, v.T
    m2 = torch.zeros(r_new, m.shape[1], dtype=torch.float64)
    v2 = torch.zeros(r_new, m.shape[1], dtype=torch.float64)
    for i in range(r_new):
        for c in range(m.shape[1]):
            m2[i, c] = sum(T[i][j] * float(m[j, c]) for j in range(r_old))
            v2[i, c] = sum(T[i][j] ** 2 * float(v[j, c]) for j in range(r_old))
    return (m2, v2) if side == "left" else (m2.T, v2.T)


def orthonormal_rows(r, d, rng):
    Q, _ = torch.linalg.qr(torch.randn(d, r, generator=rng, dtype=torch.float64))
    return Q.T.contiguous()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("r_old,r_new", [(5, 3), (3, 5), (4, 4)])
def test_moment_transform_matches_the_hand_written_rule(side, r_old, r_new, rng):
    d, other = 11, 6
    P_old, P_new = orthonormal_rows(r_old, d, rng), orthonormal_rows(r_new, d, rng)
    shape = (r_old, other) if side == "left" else (other, r_old)
    m = torch.randn(shape, generator=rng, dtype=torch.float64)
    v = torch.rand(shape, generator=rng, dtype=torch.float64)
    got_m, got_v = transform_moments(m, v, P_new, P_old, side)
    want_m, want_v = hand_transform(m, v, P_new, P_old, side)
    torch.testing.assert_close(got_m, want_m, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got_v, want_v, rtol=1e-12, atol=1e-14)
    assert (got_v >= 0).all()


def test_moment_transform_properties(rng):
    P = orthonormal_rows(4, 9, rng)
    m = torch.randn(4, 3, generator=rng, dtype=torch.float64)
    v = torch.rand(4, 3, generator=rng, dtype=torch.float64)
    # same basis: unchanged; permuted and sign-flipped basis: the moments permuted (v exactly)
    same_m, same_v = transform_moments(m, v, P, P, "left")
    torch.testing.assert_close(same_m, m, rtol=0, atol=1e-14)
    torch.testing.assert_close(same_v, v, rtol=0, atol=1e-14)
    perm, signs = torch.tensor([2, 0, 3, 1]), torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    new_m, new_v = transform_moments(m, v, P[perm] * signs[:, None], P, "left")
    torch.testing.assert_close(new_m, m[perm] * signs[:, None], rtol=0, atol=1e-14)
    torch.testing.assert_close(new_v, v[perm], rtol=0, atol=1e-14)
    # a rotation within the same subspace keeps sum(v) (the columns of T o T sum to 1)
    R, _ = torch.linalg.qr(torch.randn(4, 4, generator=rng, dtype=torch.float64))
    _, rot_v = transform_moments(m, v, R @ P, P, "left")
    torch.testing.assert_close(rot_v.sum(0), v.sum(0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_refresh_if_due_transforms_the_moments_into_the_new_basis(side, rng):
    """The optimizer hook: at a due refresh the moments are carried over by the rule, changing shape with
    the rank; in between, nothing changes."""
    kind = projections.get("adaptive")
    shape = (24, 18)
    group = dict(rank=10, energy=0.9, converge_tol=0.0, min_gap=1, max_gap=3)
    layout = kind.layout(shape, 10, side)
    W = torch.zeros(shape, dtype=torch.float64)
    state = {}
    lowrank_state(state, 0, kind.current_layout(state, layout, group).projected_shape, W, with_delta=False)
    G1 = known_spectrum(*shape, [1.0] * 8, rng)  # energy 0.9 of 8 equal values: rank 8
    assert refresh_if_due(state, kind, G1, layout, 200, 5, no_warn, group)
    r1 = state["proj_rank"]
    assert r1 == 8 and state["exp_avg"].shape == kind.current_layout(state, layout, group).projected_shape
    assert not state["exp_avg"].any() and state["refresh"] == 1
    state["exp_avg"] = torch.randn(state["exp_avg"].shape, generator=rng, dtype=torch.float64)
    state["exp_avg_sq"] = torch.rand(state["exp_avg"].shape, generator=rng, dtype=torch.float64)
    state["step"] = 2  # converge_tol 0: only max_gap = 3 refreshes
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    assert refresh_if_due(state, kind, G1, layout, 200, 5, no_warn, group)
    before["proj_anchor"] = before["exp_avg"]  # not converged (tol 0): only the window restarts at m
    state_equal(state, before)
    state["step"] = 3
    G2 = known_spectrum(*shape, [1.0, 0.5, 0.05], rng)  # energy 0.9 needs rank 2
    assert refresh_if_due(state, kind, G2, layout, 200, 5, no_warn, group)
    assert state["proj_rank"] == 2 and state["refresh"] == 2 and state["proj_step"] == 3
    P_old, P_new = before[f"proj_{side}"], state[f"proj_{side}"]
    want_m, want_v = hand_transform(before["exp_avg"], before["exp_avg_sq"], P_new, P_old, side)
    torch.testing.assert_close(state["exp_avg"], want_m, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state["exp_avg_sq"], want_v, rtol=1e-10, atol=1e-12)
    assert torch.equal(state["proj_anchor"], state["exp_avg"])


def test_convergence_window_decides_the_refresh():
    """due(): at multiples of min_gap since the last refresh, refresh when ||m - anchor|| < tol ||G||;
    otherwise the window restarts at m; always at max_gap."""
    kind = projections.get("adaptive")
    group = dict(rank=2, converge_tol=0.1, min_gap=4, max_gap=10)
    layout = kind.layout((6, 5), 2, "right")
    G = torch.ones(6, 5)  # ||G|| = sqrt(30)
    anchor = torch.zeros(6, 2)
    state = dict(step=0, proj_rank=2, proj_step=0, exp_avg=anchor + 1.0, proj_anchor=anchor)
    for step in (1, 2, 3, 5):  # not a window boundary
        state["step"] = step
        assert not kind.due(state, G, layout, 200, group)
    assert torch.equal(state["proj_anchor"], torch.zeros(6, 2))
    state["step"] = 4  # change sqrt(12) > 0.1 sqrt(30): not converged, the window restarts
    assert not kind.due(state, G, layout, 200, group)
    assert torch.equal(state["proj_anchor"], torch.ones(6, 2))
    state["exp_avg"] = torch.full((6, 2), 1.1)  # change sqrt(12) 0.1 = 0.35 < 0.1 sqrt(30) = 0.55
    state["step"] = 8
    assert kind.due(state, G, layout, 200, group)
    assert torch.equal(state["proj_anchor"], torch.ones(6, 2))  # untouched when due
    state["exp_avg"] = torch.full((6, 2), 9.0)
    state["step"] = 10
    assert kind.due(state, G, layout, 200, group)  # max_gap
    group["max_gap"] = None  # None: the optimizer's update_gap
    assert not kind.due(state, G, layout, 11, group) and kind.due(state, G, layout, 10, group)


# ---------------------------------------------------------------------------------------------------
# In LowRankAdamW


@pytest.mark.parametrize("kind", ["rsvd", "adaptive"])
def test_tiny_mlp_trains(kind):
    for side in ("left", "right"):
        for dtype in (torch.float32, torch.bfloat16):
            initial, final = train_mlp(kind, side, dtype)
            assert final < 0.5 * initial, (kind, side, dtype, initial, final)


def resume_opt(model, kind):
    groups = split_groups(model, rank=3, projection=kind, update_gap=4)
    extra = dict(energy=0.6, min_gap=2, max_gap=4, converge_tol=0.5) if kind == "adaptive" else {}
    return LowRankAdamW(groups, lr=5e-3, weight_decay=0.05, seed=11, **extra)


@pytest.mark.parametrize(
    "kind,dtype", [("rsvd", torch.float32), ("adaptive", torch.float32), ("adaptive", torch.bfloat16)]
)
def test_resume_is_bit_identical_and_weights_only(kind, dtype):
    model = make_model(dtype)
    opt = resume_opt(model, kind)
    seen = set()
    for i in range(6):
        train(model, opt, 1, start=i)
        seen |= set(opt.ranks().values())
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    for state in saved["opt"]["state"].values():
        if "layer" in state:
            tensors = {k for k, v in state.items() if isinstance(v, torch.Tensor)}
            expected = {"exp_avg", "exp_avg_sq", "proj_left" if "proj_left" in state else "proj_right"}
            assert tensors == expected | ({"proj_anchor"} if kind == "adaptive" else set())
            assert all(isinstance(v, int) for k, v in state.items() if k not in tensors)
    resumed_model = make_model(dtype, seed=5)
    resumed_model.load_state_dict(saved["model"])
    resumed = resume_opt(resumed_model, kind)
    resumed.load_state_dict(saved["opt"])
    assert resumed.ranks() == opt.ranks()
    for i in range(6, 14):
        train(model, opt, 1, start=i)
        train(resumed_model, resumed, 1, start=i)
        seen |= set(opt.ranks().values())
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
        if p in opt.state:
            state_equal(opt.state[p], resumed.state[q])
    if kind == "adaptive":
        assert len(seen) > 1, seen  # the run crossed rank changes
        assert opt.state[model.fc1.weight]["refresh"] >= 3


@pytest.mark.parametrize("kind", ["rsvd", "adaptive"])
def test_nan_gradient_at_refresh_keeps_the_basis_and_skips(kind):
    model = make_model()
    opt = LowRankAdamW(
        split_groups(model, rank=3, projection=kind, update_gap=2),
        lr=1e-2,
        **(dict(min_gap=1, max_gap=2) if kind == "adaptive" else {}),
    )
    train(model, opt, 2)
    p = model.fc1.weight
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for bad in (math.nan, math.inf):
            before = p.detach().clone()
            state_before = {
                k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[p].items()
            }
            opt.zero_grad()
            lm_loss(model, batch(50)).backward()
            p.grad[0, 0] = bad
            opt.step()  # step 2: a refresh step of both kinds (max_gap 2 / update_gap 2)
            assert torch.equal(p, before)
            state_equal(opt.state[p], state_before)
    assert len([w for w in caught if "NaN/Inf" in str(w.message)]) == 1
    train(model, opt, 4, start=3)
    assert all(torch.isfinite(q).all() for q in model.parameters())
    assert opt.state[p]["refresh"] >= 3


def test_adapter_mode_restarts_delta_in_the_new_shape():
    model = make_model()
    opt = LowRankAdamW(
        split_groups(model, rank=4, projection="adaptive", wd_mode="adapter"),
        lr=1e-2,
        energy=0.5,
        min_gap=1,
        max_gap=2,
    )
    for i in range(7):
        train(model, opt, 1, start=i)
        for state in opt.state.values():
            if "layer" in state:
                assert state["delta"].shape == state["exp_avg"].shape == state["exp_avg_sq"].shape
    assert all(torch.isfinite(q).all() for q in model.parameters())


def test_ranks_by_name_index_and_two_sided():
    model = make_model()
    matrices = [p for p in model.parameters() if p.dim() == 2]
    groups = [
        dict(params=matrices, rank=3, projection="adaptive", max_rank=5),
        dict(params=[p for p in model.parameters() if p.dim() != 2]),
    ]
    opt = LowRankAdamW(groups, lr=1e-2)
    # before the first step: max_rank, capped at min(m, n) (the unused 4 x 4 layer: 4)
    assert opt.ranks() == {i: min(5, *p.shape) for i, p in enumerate(matrices)}
    named_opt = LowRankAdamW(
        [
            dict(params=[("fc1.weight", model.fc1.weight)], rank=3, projection="svd"),
            dict(params=[("out.weight", model.out.weight)], rank=(2, 3), projection="two_sided_svd"),
        ]
    )
    assert named_opt.ranks() == {"fc1.weight": 3, "out.weight": (2, 3)}
    train(model, opt, 1)
    assert opt.ranks() == {
        i: opt.state[p]["proj_rank"] if p in opt.state else min(5, *p.shape) for i, p in enumerate(matrices)
    }
    assert model.unused.weight not in opt.state


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(energy=1.0), "'energy' must be a number in \\(0, 1\\)"),
        (dict(energy="high"), "'energy' must be a number in \\(0, 1\\)"),
        (dict(max_rank=0), "'max_rank' must be None or an int >= 1"),
        (dict(min_rank=3), "'min_rank' must be an int in \\[1, max_rank = 2\\] \\(the group rank\\)"),
        (dict(max_rank=4, min_rank=5), "'min_rank' must be an int in \\[1, max_rank = 4\\], got 5"),
        (dict(converge_tol=-0.1), "'converge_tol' must be a number >= 0"),
        (dict(min_gap=0), "'min_gap' must be an int >= 1"),
        (dict(min_gap=5, max_gap=3), "'max_gap' must be None or an int >= min_gap = 5, got 3"),
    ],
)
def test_bad_adaptive_settings_raise_clear_errors(options, match):
    W = torch.nn.Parameter(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="^lowrank_ops.optim.LowRankAdamW: param group 0: " + match):
        LowRankAdamW([dict(params=[W], rank=2, projection="adaptive", **options)])
    with pytest.raises(ValueError, match=match):  # as constructor keywords too
        LowRankAdamW([W], rank=2, projection="adaptive", **options)


def test_unknown_keyword_and_options_of_other_kinds():
    W = torch.nn.Parameter(torch.zeros(4, 3))
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['enrgy'\\].*'energy'"):
        LowRankAdamW([W], rank=2, projection="adaptive", enrgy=0.5)
    # the keys are inert for other kinds and plain groups; those groups behave as before
    opt = LowRankAdamW([dict(params=[W], rank=2, projection="rademacher"), dict(params=[])], energy=0.5)
    W.grad = torch.ones(4, 3)
    opt.step()
    assert opt.state[W]["exp_avg"].shape == (4, 2)


# ---------------------------------------------------------------------------------------------------
# Rank decay ("show it")


def low_rank_regression(steps=200, energy=0.9, seed=0):
    """min_W ||X W^T - Y||^2 / N with Y = X A^T, A (48 x 32) of rank 12 with singular values 8 ... 1,
    whitened X (X^T X / N = I, so the gradient is 2 (W - A)), W from 0, lr decaying linearly to 0. The
    projected Adam fits the largest directions of A first, so the gradient's energy concentrates on the
    directions not yet fitted and its energy rank falls: "adaptive" (max rank 12) should follow it. Returns
    the loss and (step, chosen rank, float64 energy rank of that step's gradient) at every refresh."""
    g = torch.Generator().manual_seed(seed)
    A = known_spectrum(48, 32, torch.linspace(8.0, 1.0, 12).tolist(), g)
    X, _ = torch.linalg.qr(torch.randn(256, 32, generator=g, dtype=torch.float64))
    X, Y = (X * 16).float(), (X * 16 @ A.T).float()
    W = torch.nn.Parameter(torch.zeros(48, 32))
    opt = LowRankAdamW(
        [dict(params=[("W", W)], rank=12, projection="adaptive")],
        lr=0.05,
        weight_decay=0.0,
        energy=energy,
        min_gap=10,
        max_gap=100,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / steps)
    losses, refreshes = [], []
    for t in range(steps):
        loss = (X @ W.T - Y).square().sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
        if opt.state[W]["proj_step"] == t:
            refreshes.append((t, opt.ranks()["W"], energy_rank(W.grad, energy)))
    return losses, refreshes


def test_adaptive_rank_decays_on_a_task_whose_gradients_become_low_rank(capsys):
    losses, refreshes = low_rank_regression()
    with capsys.disabled():
        print("\nAdaptive rank on a rank-12 regression (energy 0.9, max_rank 12, min_gap 10, max_gap 100):")
        print("  step  chosen rank  float64 energy rank of G    loss")
        for t, r, best in refreshes:
            print(f"  {t:>4}  {r:>11}  {best:>24}  {losses[t]:>8.3f}")
        print(f"  final loss {losses[-1]:.4f} (from {losses[0]:.1f})")
    chosen = [r for _, r, _ in refreshes]
    assert all(best <= r <= best + 1 for _, r, best in refreshes), refreshes  # the energy is kept
    assert chosen[0] >= 6 and chosen[-1] <= 3 and chosen == sorted(chosen, reverse=True), refreshes
    assert any(t % 100 for t, _, _ in refreshes[1:]), refreshes  # some refreshes by convergence, not max_gap
    assert losses[-1] < 0.05 * losses[0]


# ---------------------------------------------------------------------------------------------------
# Memory estimate


def test_memory_estimate_counts_what_the_optimizer_holds(rng):
    """estimate() of "rsvd" equals "svd"'s; of "adaptive", the state at max_rank (moments, the window copy
    proj_anchor, the basis) equals the bytes the optimizer holds when the ranks reach max_rank."""
    from lowrank_ops import memory

    shapes = [(40, 24), (24, 40), (30, 30)]
    svd = memory.estimate(shapes, {"rank": 6, "projection": "svd"}, dtype=torch.float32)
    assert memory.estimate(shapes, {"rank": 6, "projection": "rsvd"}, dtype=torch.float32) == svd
    config = {"rank": 4, "max_rank": 6, "projection": "adaptive"}
    est = memory.estimate(shapes, config, dtype=torch.float32)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    opt = LowRankAdamW(params, rank=4, max_rank=6, projection="adaptive", energy=0.999)
    for p in params:
        p.grad = torch.randn(p.shape, generator=rng)  # flat spectrum: 99.9 % of the energy needs max_rank
    opt.step()
    assert set(opt.ranks().values()) == {6}
    held = {"state": 0, "basis": 0}
    for p in params:
        for key, v in opt.state[p].items():
            if isinstance(v, torch.Tensor):
                held["basis" if key in ("proj_left", "proj_right") else "state"] += (
                    v.numel() * v.element_size()
                )
    assert (est.optimizer_state, est.projections) == (held["state"], held["basis"])
    with pytest.raises(ValueError, match="'max_rank' applies to projections of variable rank"):
        memory.estimate(shapes, {"rank": 4, "max_rank": 6, "projection": "svd"})
