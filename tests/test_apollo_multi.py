"""The multi-tensor APOLLO step lowrank_apollo_multi_step_ (lowrank_ops/ops/apollo_multi.py): on every backend it runs
lowrank_apollo_step_'s arithmetic for every matrix, so it equals a lowrank_apollo_step_ call per matrix on the same
backend bit for bit (the single op is held to the float64 oracle in tests/test_apollo.py); on the CPU with one
intra-op thread (the `single_thread` fixture says why), and its own result does not depend on the thread count. Matrices of several
groups in one call: shapes, sides, seeded and explicit P, channel and tensor scaling, W float32 / bfloat16 /
float64, per-matrix hyperparameters and step counts, the limiter and bias correction on and off, transposed G.
Also: two threads, opcheck, clear errors naming the matrix, and lowrank_ops.optim.APOLLO's multi-tensor step()
bit-identical to its per-parameter path (its resume tests, tests/test_apollo.py, run the multi-tensor default)."""

import math

import pytest
import torch

from lowrank_ops import backends as lowrank_backends
from lowrank_ops import ops
from lowrank_ops.ops import Projection
from lowrank_ops.optim import APOLLO

from helpers import assert_clear_error, backends

BACKENDS = backends("lowrank_apollo_multi_step_")
STEPS = 3

@pytest.fixture
def single_thread():
    """One intra-op thread, whatever LOWRANK_OPS_TEST_THREADS says: the single op's CPU kernel splits P G's rows over
    threads, one BLAS GEMM per row block, whose summation order depends on the block's size, while the multi-tensor
    kernel runs each matrix whole on one thread. On one thread both are the same arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


MATRICES = [  # (shape, side, kind, rank, scale_type, W dtype, G dtype, limiter, correct_bias)
    ((37, 23), "left", "gaussian", 5, "channel", torch.float32, torch.float32, True, True),
    ((37, 23), "right", "rademacher", 4, "channel", torch.bfloat16, torch.bfloat16, True, True),
    ((19, 131), "left", "matrix", 3, "tensor", torch.float32, torch.float16, False, True),
    ((37, 23), "left", "gaussian", 5, "channel", torch.float32, torch.float32, True, False),
    ((1, 17), "right", "rademacher", 4, "channel", torch.float32, torch.float32, True, True),
    ((29, 1), "left", "matrix", 2, "tensor", torch.float64, torch.float64, True, True),
]


def make_problem(rng):
    """Per matrix: W, the projection, the moments and limiter norm, and its hyperparameters."""
    problem = []
    for i, (shape, side, kind, rank, scale_type, w_dtype, _, limiter, correct_bias) in enumerate(MATRICES):
        d = shape[0] if side == "left" else shape[1]
        if kind == "matrix":
            projection = Projection.from_matrix(torch.randn(rank, d, generator=rng, dtype=w_dtype), side)
        else:
            projection = Projection.seeded(kind, 1000 + 7 * i, rank, side)
        state_dtype = torch.float64 if w_dtype == torch.float64 else torch.float32
        projected = projection.projected_shape(shape)
        state = [torch.zeros(projected, dtype=state_dtype), torch.zeros(projected, dtype=state_dtype),
                 torch.zeros((), dtype=state_dtype)]
        hyper = dict(lr=1e-2 * (1 + i), beta1=0.9, beta2=0.99 - 0.001 * i, eps=1e-6, weight_decay=0.1 * (i % 2),
                     scale=1.0 + i, scale_type=scale_type, limiter=limiter, correct_bias=correct_bias,
                     proj_scale=math.sqrt(d / rank))
        problem.append((torch.randn(shape, generator=rng).to(w_dtype), projection, state, hyper))
    return problem


def gradient(i, t, rng):
    shape, g_dtype = MATRICES[i][0], MATRICES[i][6]
    G = torch.randn(shape, generator=rng) * (1 + t)
    return (G.T.contiguous().T if i % 2 else G).to(g_dtype)  # odd matrices: a transposed G


def on_device(problem, device):
    """The problem with its tensors (W, an explicit P, the state) on `device`."""
    moved = []
    for W, projection, state, hyper in problem:
        side, op = ("left", projection.left) if projection.left is not None else ("right", projection.right)
        if op.kind == "matrix":
            projection = Projection.from_matrix(op.matrix.to(device), side)
        moved.append((W.to(device), projection, [s.to(device) for s in state], hyper))
    return moved


def check_multi_equals_single(backend, rng, device):
    problem = on_device(make_problem(rng), device)
    ours = [(W.clone(), [s.clone() for s in state]) for W, _, state, _ in problem]
    theirs = [(W.clone(), [s.clone() for s in state]) for W, _, state, _ in problem]
    first_step = [1, 1, 4, 2, 1, 3]  # per-matrix step counts (a parameter added later, a skipped step)
    for t in range(STEPS):
        G = [gradient(i, t, rng).to(device) for i in range(len(problem))]
        hyper = {key: [h[key] for *_, h in problem] for key in problem[0][3]}
        ops.lowrank_apollo_multi_step_([W for W, _ in ours], G, *([s[k] for _, s in ours] for k in range(3)),
                                       [p for _, p, _, _ in problem], step=[s + t for s in first_step],
                                       backend=backend, **hyper)
        for i, ((W, state), (_, projection, _, h)) in enumerate(zip(theirs, problem)):
            ops.lowrank_apollo_step_(W, G[i], *state, projection, step=first_step[i] + t, backend=backend, **h)
    for i, ((W, state), (W_single, state_single)) in enumerate(zip(ours, theirs)):
        assert torch.equal(W, W_single), f"matrix {i}: W"
        for name, a, b in zip(("exp_avg", "exp_avg_sq", "limiter_norm"), state, state_single):
            assert torch.equal(a, b), f"matrix {i}: {name}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_step_equals_the_single_op_bit_for_bit(backend, rng, single_thread):
    check_multi_equals_single(backend, rng, "cpu")


@pytest.mark.parametrize("backend", backends("lowrank_apollo_multi_step_", "cuda"))
def test_gpu_multi_step_equals_the_single_op_bit_for_bit(backend, rng):
    check_multi_equals_single(backend, rng, "cuda")


def test_two_threads_give_the_same_bits(rng):
    """The CPU kernel schedules whole matrices over threads, each run whole on one: the result does not depend on
    how many threads there are."""
    if "cpu" not in lowrank_backends.implemented("lowrank_apollo_multi_step_"):
        pytest.skip("the compiled extension is not built")
    problem = make_problem(rng)
    G = [gradient(i, 0, rng) for i in range(len(problem))]
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            W = [w.clone() for w, *_ in problem]
            states = [[s.clone() for s in state] for _, _, state, _ in problem]
            hyper = {key: [h[key] for *_, h in problem] for key in problem[0][3]}
            ops.lowrank_apollo_multi_step_(W, G, *([s[k] for s in states] for k in range(3)),
                                           [p for _, p, _, _ in problem], step=1, backend="cpu", **hyper)
            results.append((W, states))
    finally:
        torch.set_num_threads(threads)
    (W1, states1), (W2, states2) = results
    for i in range(len(problem)):
        assert torch.equal(W1[i], W2[i]), f"matrix {i}: W"
        assert all(torch.equal(a, b) for a, b in zip(states1[i], states2[i])), f"matrix {i}: state"


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, rng):
    W = [torch.randn(21, 13, generator=rng), torch.randn(13, 21, generator=rng).to(torch.bfloat16)]
    G = [torch.randn(21, 13, generator=rng), torch.randn(13, 21, generator=rng).to(torch.bfloat16)]
    m = [torch.rand(3, 13, generator=rng), torch.rand(13, 4, generator=rng)]
    v = [torch.rand(t.shape, generator=rng) for t in m]
    norm = [torch.tensor(0.5), torch.tensor(2.0)]
    P = torch.randn(4, 21, generator=rng)
    args = (W, G, m, v, norm, ["left", "right"], ["gaussian", "matrix"], [2**63 - 5, 0], [3, 4], [None, P],
            [2.0, 1.0], [1e-3, 2e-3], [0.9] * 2, [0.999, 0.99], [1e-6] * 2, [0.0, 0.1], [2, 1], [1.0, 4.0],
            ["channel", "tensor"], [True, False], [True, True], backend)
    torch.library.opcheck(torch.ops.lowrank_ops.lowrank_apollo_multi_step_.default, args)


def test_clear_errors_name_the_matrix(rng):
    problem = make_problem(rng)[:2]
    W = [w for w, *_ in problem]
    G = [torch.randn(w.shape) for w in W]
    m, v, norm = ([state[k] for _, _, state, _ in problem] for k in range(3))
    projections = [p for _, p, _, _ in problem]
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0, step=1)
    assert_clear_error(lambda: ops.lowrank_apollo_multi_step_(W, [G[0], G[1].T], m, v, norm, projections, **kw),
                       ValueError, "lowrank_ops.lowrank_apollo_multi_step_: matrix 1: argument 'G' must be")
    assert_clear_error(lambda: ops.lowrank_apollo_multi_step_(W, G[:1], m, v, norm, projections, **kw), ValueError,
                       "lowrank_ops.lowrank_apollo_multi_step_: argument 'G' must be one entry per matrix (2, as 'W')")
    assert_clear_error(lambda: ops.lowrank_apollo_multi_step_(W, G, m, v, norm, projections, **{**kw, "lr": [1e-3]}),
                       ValueError, "argument 'lr' must be a number or a sequence of 2 (one per matrix)")
    assert_clear_error(lambda: ops.lowrank_apollo_multi_step_(W, G, m, v, norm, projections,
                                                               **{**kw, "scale_type": ["channel", "row"]}),
                       ValueError, "lowrank_ops.lowrank_apollo_multi_step_: matrix 1: argument 'scale_type'")
    assert_clear_error(lambda: ops.lowrank_apollo_multi_step_(tuple(W)[0], G, m, v, norm, projections, **kw),
                       TypeError, "argument 'W' must be a list of one entry per matrix")
    ops.lowrank_apollo_multi_step_([], [], [], [], [], [], **kw)  # nothing to do


# ---------------------------------------------------------------------------------------------------------
# lowrank_ops.optim.APOLLO: step() through the multi-tensor op
# ---------------------------------------------------------------------------------------------------------


def apollo_model(rng):
    torch.manual_seed(int(torch.randint(0, 2**31, (), generator=rng)))
    return torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.GELU(), torch.nn.Linear(40, 12))


def apollo_groups(model):
    matrices = [p for p in model.parameters() if p.dim() == 2]
    others = [p for p in model.parameters() if p.dim() != 2]
    return [{"params": matrices[:1], "rank": 4, "update_proj_gap": 3, "scale": 4.0},
            {"params": matrices[1:], "rank": 1, "scale_type": "tensor", "proj": "svd", "update_proj_gap": 2,
             "proj_type": "left"},
            {"params": others}]


def train(model, opt, rng, steps):
    for _ in range(steps):
        x = torch.randn(8, 24, generator=rng)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("backend", BACKENDS)
def test_apollo_multi_tensor_step_is_bit_identical_to_the_per_parameter_path(backend, rng, single_thread):
    seed = int(torch.randint(0, 2**31, (), generator=rng))
    runs = []
    for multi in (True, False):
        model = apollo_model(torch.Generator().manual_seed(seed))
        opt = APOLLO(apollo_groups(model), lr=1e-2, weight_decay=0.05, backend=backend, multi_tensor=multi)
        train(model, opt, torch.Generator().manual_seed(seed + 1), 5)
        runs.append((model, opt))
    (ours, ours_opt), (theirs, theirs_opt) = runs
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    for pa, pb in zip(ours.parameters(), theirs.parameters()):
        for key, value in ours_opt.state[pa].items():
            other = theirs_opt.state[pb][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key



def test_cpp_op_checks_every_matrix_before_stepping_any():
    """The C++ multi-tensor kernel checks its own lists (C++ callers skip the Python layer's checks): one entry per
    matrix, each matrix by the single kernel's checks with the matrix named, and nothing written on an error."""
    if "cpu" not in lowrank_backends.implemented("lowrank_apollo_multi_step_"):
        pytest.skip("the compiled extension is not built")
    from lowrank_ops import _C

    def lists(count, **override):
        one = dict(W=torch.ones(7, 5), G=torch.ones(7, 5), exp_avg=torch.zeros(3, 5), exp_avg_sq=torch.zeros(3, 5),
                   limiter_norm=torch.zeros(()), side="left", kind="gaussian", seed=1, rank=3, matrix=None,
                   proj_scale=1.0, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0, step=1, scale=1.0,
                   scale_type="channel", limiter=True, correct_bias=True)
        out = {name: [value.clone() if isinstance(value, torch.Tensor) else value for _ in range(count)]
               for name, value in one.items()}
        for name, (index, value) in override.items():
            out[name][index] = value
        return out

    args = lists(2, step=(1, 0))
    with pytest.raises(RuntimeError) as info:
        _C.cpu.lowrank_apollo_multi_step_(*args.values())
    assert "lowrank_ops.lowrank_apollo_multi_step_: matrix 1: argument 'step' must be >= 1, got 0" in str(info.value)
    assert all(torch.equal(W, torch.ones(7, 5)) for W in args["W"])  # matrix 0 was not stepped
    args = lists(2)
    args["lr"] = [1e-3]
    with pytest.raises(RuntimeError, match="argument 'lr' must have one entry per matrix \\(2, as 'W'\\), got 1"):
        _C.cpu.lowrank_apollo_multi_step_(*args.values())
    args = lists(2)
    _C.cpu.lowrank_apollo_multi_step_(*args.values())
    assert not any(torch.equal(W, torch.ones(7, 5)) for W in args["W"])
