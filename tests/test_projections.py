"""Projection kinds (lowrank_ops.projections): seed derivation, layouts, what each kind computes and
persists, the semi-orthogonal and SVD bases against independent computations, robust refresh, registry."""

import math

import pytest
import torch

from lowrank_ops import ops, projections
from lowrank_ops.projections import base

ALL_KINDS = ("gaussian", "rademacher", "orthogonal", "svd", "two_sided_gaussian", "two_sided_svd")
SEEDED = ("gaussian", "rademacher", "two_sided_gaussian")


class Warnings:
    """Records refresh warnings as (key, message)."""

    def __init__(self):
        self.events = []

    def __call__(self, key, message):
        self.events.append((key, message))


def test_registry_holds_the_table_1_kinds():
    # Table 1's kinds; later issues add more ("dct", "rsvd", "adaptive"), tested in their own files.
    assert set(projections.names()) >= set(ALL_KINDS)
    with pytest.raises(ValueError, match="unknown projection 'lora'.*registered kinds"):
        projections.get("lora")
    with pytest.raises(ValueError, match="already registered"):
        projections.register(projections.get("svd"))


def test_splitmix64_known_outputs():
    # The first three outputs of the splitmix64 generator seeded with 0 (state advanced by the golden gamma).
    gamma = 0x9E3779B97F4A7C15
    outs = [projections.splitmix64((k * gamma) % 2**64) for k in range(3)]
    assert outs == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_derive_seed_formula_and_no_collisions():
    s = projections.splitmix64
    assert projections.derive_seed(7, 3, 2) == s(s(s(7) ^ 3) ^ 2)
    seeds = {
        projections.derive_seed(b, layer, k)
        for b in (0, 1, 2**64 - 1)
        for layer in range(40)
        for k in range(40)
    }
    assert len(seeds) == 3 * 40 * 40 and all(0 <= x < 2**64 for x in seeds)
    with pytest.raises(ValueError, match="'layer_index' must be an int in \\[0, 2\\^64\\)"):
        projections.derive_seed(0, -1, 0)


@pytest.mark.parametrize(
    "shape,side,expected",
    [
        ((20, 12), "auto", (0, 5)),
        ((12, 20), "auto", (5, 0)),
        ((9, 9), "auto", (0, 5)),
        ((20, 12), "left", (5, 0)),
        ((20, 12), "right", (0, 5)),
        ((3, 40), "auto", (3, 0)),
    ],
)
def test_one_sided_layout(shape, side, expected):
    layout = projections.get("gaussian").layout(shape, 5, side)
    assert (layout.left_rank, layout.right_rank) == expected
    m, n = shape
    assert layout.projected_shape == (expected[0] or m, expected[1] or n)


def test_svd_rank_is_capped_at_min_dim_and_two_sided_ranks():
    assert projections.get("svd").layout((40, 3), 5, "left").left_rank == 3  # U has min(m, n) columns
    assert projections.get("orthogonal").layout((40, 3), 5, "left").left_rank == 5
    two = projections.get("two_sided_gaussian")
    assert two.layout((30, 20), 4).projected_shape == (4, 4)
    assert two.layout((30, 20), (6, 25)).projected_shape == (6, 20)


@pytest.mark.parametrize(
    "rank,side,match",
    [
        (0, "auto", "'rank' must be an int >= 1"),
        (2.0, "auto", "'rank' must be an int"),
        (True, "auto", "'rank' must be an int"),
        (3, "up", "'side' must be one of"),
    ],
)
def test_check_settings_errors(rank, side, match):
    with pytest.raises(ValueError, match=match):
        projections.get("svd").check_settings(rank, side, "where")


def test_two_sided_kinds_refuse_a_side():
    with pytest.raises(ValueError, match="projects both sides; 'side' must be 'auto'"):
        projections.get("two_sided_svd").check_settings(3, "left", "where")
    with pytest.raises(ValueError, match="pair"):
        projections.get("two_sided_gaussian").check_settings((1, 2, 3), "auto", "where")


def dense(projection, layout, dtype=torch.float64):
    """(L, R) of a Projection as dense float64 matrices (None for identity), built independently of the
    kinds: seeded sides from the public sketch op, matrix sides as given."""
    m, n = layout.shape
    out = []
    for op, d in ((projection.left, m), (projection.right, n)):
        if op is None:
            out.append(None)
        elif op.kind == "matrix":
            out.append(op.matrix.to(dtype))
        else:
            out.append(ops.sketch(op.rank, d, op.seed, op.kind, torch.float32).to(dtype))
    return out


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("shape", [(23, 9), (9, 23)])
def test_refresh_gives_the_layout_and_persists_ints_or_matrices(kind, shape, rng):
    k = projections.get(kind)
    layout = k.layout(shape, 4, "auto")
    G = torch.randn(shape, generator=rng)
    state = {}
    assert projections.refresh(k, state, G, layout, seed=1234, warn=Warnings())
    proj = k.projection(state, layout)
    assert proj.projected_shape(shape) == layout.projected_shape
    if kind in SEEDED:
        assert state == {"proj_seed": 1234}
        sides = [op for op in (proj.left, proj.right) if op is not None]
        expected = [1234] if len(sides) == 1 else [1234, projections.splitmix64(1234)]
        assert [op.seed for op in sides] == expected
    else:
        assert {key for key, v in state.items() if isinstance(v, torch.Tensor)} == {
            f"proj_{side}" for side, _, _ in layout.sides()
        }
        assert k.persisted_bytes(layout, torch.float32) == sum(
            v.numel() * 4 for v in state.values() if isinstance(v, torch.Tensor)
        )


def test_orthogonal_is_the_sign_fixed_qr_of_the_gaussian_sketch():
    k = projections.get("orthogonal")
    layout = k.layout((50, 30), 7, "right")
    state = {}
    k.refresh(state, torch.randn(50, 30), layout, seed=99)
    P = state["proj_right"].double()
    S = ops.sketch(7, 30, 99, "gaussian", torch.float32).double()
    eye = torch.eye(7, dtype=torch.float64)
    assert torch.linalg.norm(P @ P.T - eye) < 20 * torch.finfo(torch.float32).eps
    # S^T = Q R with Q = P^T: R = P S^T must be upper triangular with a positive diagonal, and P must
    # span the rows of S.
    R = P @ S.T
    assert bool((R.diagonal() > 0).all())
    assert torch.linalg.norm(torch.tril(R, -1)) < 1e-5 * torch.linalg.norm(R)
    assert torch.linalg.norm(S - (P @ S.T).T @ P) < 1e-5 * torch.linalg.norm(S)
    other = {}
    k.refresh(other, torch.randn(50, 30), layout, seed=100)
    assert not torch.equal(other["proj_right"], state["proj_right"])


@pytest.mark.parametrize("kind,side", [("svd", "left"), ("svd", "right"), ("two_sided_svd", "auto")])
def test_svd_basis_spans_the_top_singular_subspace(kind, side, rng):
    # G with a clear spectral gap after the 4th singular value.
    U, _ = torch.linalg.qr(torch.randn(30, 30, generator=rng, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(20, 20, generator=rng, dtype=torch.float64))
    s = torch.tensor([9.0, 7.0, 5.0, 4.0] + [0.1] * 16, dtype=torch.float64)
    G64 = U[:, :20] @ torch.diag(s) @ V.T
    k = projections.get(kind)
    layout = k.layout((30, 20), 4, side)
    state = {}
    assert projections.refresh(k, state, G64.float(), layout, seed=5, warn=Warnings())
    L, R = dense(k.projection(state, layout), layout)
    for P, basis in ((L, U[:, :4]), (R, V[:, :4])):
        if P is not None:  # the orthogonal projector onto the span must match the true one
            assert torch.linalg.norm(P.T @ P - basis @ basis.T) < 1e-5


def test_svd_refresh_of_zero_gradient_falls_back_then_keeps_basis():
    k = projections.get("svd")
    layout = k.layout((12, 8), 3, "auto")
    warn, state = Warnings(), {}
    assert projections.refresh(k, state, torch.zeros(12, 8), layout, seed=42, warn=warn)
    fallback = projections.semi_orthogonal(3, 8, 42, torch.float32)
    assert torch.equal(state["proj_right"], fallback)
    assert [key for key, _ in warn.events] == ["refresh_failed"] and "first refresh" in warn.events[0][1]
    assert projections.refresh(k, state, torch.zeros(12, 8), layout, seed=43, warn=warn)
    assert torch.equal(state["proj_right"], fallback) and "previous basis is kept" in warn.events[1][1]


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_gradient_at_refresh_keeps_basis_and_asks_to_skip(kind, bad, rng):
    k = projections.get(kind)
    layout = k.layout((10, 6), 2, "auto")
    state, warn = {}, Warnings()
    G = torch.randn(10, 6, generator=rng)
    projections.refresh(k, state, G, layout, seed=1, warn=warn)
    before = {key: v.clone() if isinstance(v, torch.Tensor) else v for key, v in state.items()}
    G[3, 2] = bad
    assert not projections.refresh(k, state, G, layout, seed=2, warn=warn)
    assert [key for key, _ in warn.events] == ["nonfinite"]
    assert state.keys() == before.keys()
    assert all(
        torch.equal(v, before[key]) if isinstance(v, torch.Tensor) else v == before[key]
        for key, v in state.items()
    )


def test_failing_svd_keeps_previous_basis(monkeypatch, rng):
    k = projections.get("svd")
    layout = k.layout((10, 6), 2, "auto")
    state, warn = {}, Warnings()
    projections.refresh(k, state, torch.randn(10, 6, generator=rng), layout, seed=1, warn=warn)
    kept = state["proj_right"].clone()

    def failing_svd(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", failing_svd)
    assert projections.refresh(k, state, torch.randn(10, 6, generator=rng), layout, seed=2, warn=warn)
    assert torch.equal(state["proj_right"], kept)
    assert "ill-conditioned" in warn.events[0][1]


def test_svd_with_nonfinite_vectors_is_rejected(monkeypatch, rng):
    real_svd = torch.linalg.svd

    def nan_svd(A, full_matrices=True):
        U, S, Vh = real_svd(A, full_matrices=full_matrices)
        return U, S, torch.full_like(Vh, math.nan)

    monkeypatch.setattr(torch.linalg, "svd", nan_svd)
    assert projections.top_singular_vectors(torch.randn(6, 4, generator=rng), 0, 2) is None


def test_ill_conditioned_gradient_gives_a_finite_orthonormal_basis():
    # singular values from 1 down to 1e-30 (a numerically rank-1 matrix in fp32)
    U, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(25, 25, dtype=torch.float64))
    G = (U[:, :25] @ torch.diag(torch.logspace(0, -30, 25, dtype=torch.float64)) @ V.T).float()
    basis = projections.top_singular_vectors(G, 0, 6)
    P = basis["right"].double()
    assert torch.linalg.norm(P @ P.T - torch.eye(6, dtype=torch.float64)) < 1e-5


def test_a_new_kind_is_one_registered_class(monkeypatch):
    """The extension point later issues use ("dct", "rsvd", "adaptive"): subclass, register, and the
    optimizer takes it by name."""
    from lowrank_ops.optim import LowRankAdamW

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    class FirstCoordinates(base.ProjectionKind):
        name = "first_coordinates"
        persists_matrix = True

        def refresh(self, state, G, layout, seed):
            for side, rank, d in layout.sides():
                state[f"proj_{side}"] = torch.eye(d, dtype=G.dtype)[:rank]
            state["proj_seed"] = seed
            return True

        def projection(self, state, layout):
            return base.matrix_projection(state, layout)

    projections.register(FirstCoordinates())
    W = torch.nn.Parameter(torch.randn(9, 5))
    before = W.detach().clone()
    opt = LowRankAdamW(
        [{"params": [W], "rank": 2, "projection": "first_coordinates"}], lr=0.1, weight_decay=0.0
    )
    W.grad = torch.randn(9, 5)
    opt.step()
    changed = (W.detach() != before).any(dim=0)
    assert changed.tolist() == [True, True, False, False, False]  # only the 2 projected input columns move
