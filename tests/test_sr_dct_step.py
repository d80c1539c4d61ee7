"""The fused low-rank AdamW steps with an "sr_dct" side (SideOperator kind "sr_dct": the signed DCT-II rows
P[i, t] = sign_t D[indices[i], t], the signs drawn inside the kernels from the side's seed by the rule of
lowrank_ops/spec.py SRDCT_*), single-matrix (lowrank_adamw_step_) and multi-tensor (lowrank_adamw_multi_step_),
on every available backend, against the float64 oracle chain (lowrank_ops/reference/lowrank_adam.py, whose
"sr_dct" matrix comes from the NumPy sign oracle lowrank_ops/reference/sr_dct.py) under the tolerance rule of
tests/helpers.py: both sides, float32 and bfloat16 W, float32/bfloat16/float16 G in several layouts, both
weight-decay modes, odd sizes, d = 1, rank = d, d across the kernels' 64/128-column blocks and Philox's
128-column sign groups, seeds with a high key word. A wrong sign of one column moves every entry of the update
by the column's whole contribution, far outside the rule. Also: opcheck of both ops and clear argument errors
(the "sr_dct" projection kind handing the fused step this side: tests/test_sr_dct_projection.py)."""

import pytest
import torch
from helpers import GAUSSIAN_ENTRY_TOL, assert_clear_error, assert_within_torch_error, backends, random_matrix
from test_dct_projection import check_parity
from test_lowrank_adam import HYPER, LARGE_SEED, Run, opcheck_step, plain_projection
from test_lowrank_adam_multi import check_call

from lowrank_ops import _extension, ops
from lowrank_ops.ops import Projection, SideOperator
from lowrank_ops.projections import sr_dct as sr_dct_kind
from lowrank_ops.reference import lowrank_adam as reference

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
                           [2] * n, [1.0] * n, ["full"] * n, backend))


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
