"""The multi-tensor fused low-rank AdamW step (lowrank_ops.ops.lowrank_adamw_multi_step_, issue 15) on every
available backend. One call holds every projection kind (Rademacher, Gaussian, explicit matrix, DCT rows, each
one-sided, i.e. the identity on the other side, and two-sided seeded, explicit and mixed), several shapes
(odd sizes, size 1, rank > d), groups of several matrices of one shape and kind, float32 and bfloat16 W in one
call, float32/bfloat16/float16 G in every layout, both weight-decay modes, and per-matrix hyperparameters and
step counts; three steps carry the state.

Each matrix is checked against the float64 oracle (lowrank_ops/reference/lowrank_adam.py) under the tolerance
rule of tests/helpers.py twice: with plain torch (the reference chain in the op's precisions) as the yardstick,
and with lowrank_adamw_step_ on the same backend as the yardstick (parity with the single-matrix op). Where the
multi-tensor op runs the very arithmetic of the single-matrix op the results must be bit-identical:
  reference  always: its kernel is a loop over lowrank_adamw_step_'s pure-torch kernel;
  triton     always: the grouped kernels run lowrank_adamw_step_'s device functions (_operator_gemm, the
             epilogues) with its block sizes, so every problem has the same K-loop order and roundings;
  cpu        the matrices it hands to lowrank_adamw_step_'s kernel (two-sided projections, moments that are
             not contiguous; on one thread, as the tests run). Its blocked path sums the GEMMs in BLAS's order
             over all of d and updates W inside the GEMM (C = beta C + alpha A B), so those matrices are held to
             the tolerance rule only (csrc/cpu/lowrank_adam_multi.cpp says why they differ).
Also: float64 W; non-contiguous W and states; opcheck; a torch.compile'd (fullgraph, aot_eager) training step;
two threads (matrices scheduled over threads and one run alone); no m x n temporary; clear errors."""

import pytest
import torch

from lowrank_ops import _extension, ops
from lowrank_ops.ops import Projection, SideOperator
from lowrank_ops.reference import lowrank_adam as reference

from helpers import (
    GAUSSIAN_ENTRY_TOL,
    assert_clear_error,
    assert_within_torch_error,
    backends,
    random_matrix,
)
from test_lowrank_adam import LARGE_SEED, peak_cpu_bytes, plain_projection

OP = "lowrank_adamw_multi_step_"
CPU_BACKENDS = backends(OP)
STEPS = 3
BETAS = dict(beta1=0.9, beta2=0.999, eps=1e-8)


def seeded(kind, rank, seed):
    return SideOperator(kind, rank, seed=seed)


def matrix(rank, d, rng):
    return SideOperator("matrix", rank, matrix=torch.randn(rank, d, generator=rng) / d**0.5)


def dct(rank, d, rng, dtype=torch.int16):
    return SideOperator("dct", rank, indices=torch.sort(torch.randperm(d, generator=rng)[:rank]).values.to(dtype))


def mixed_call(rng):
    """(shape, projection, cpu_runs_single_kernel) of the matrices of one call. Groups: three 37 x 29 Rademacher
    matrices (the third gets the other W dtype in the test, so it forms its own group), two Gaussian ones."""
    return [
        ((37, 29), Projection(None, seeded("rademacher", 5, LARGE_SEED)), False),
        ((37, 29), Projection(None, seeded("rademacher", 5, 12)), False),
        ((37, 29), Projection(None, seeded("rademacher", 5, 13)), False),
        ((23, 41), Projection(seeded("gaussian", 6, 11), None), False),
        ((23, 41), Projection(seeded("gaussian", 6, LARGE_SEED - 1), None), False),
        ((70, 19), Projection(None, matrix(4, 19, rng)), False),
        ((19, 70), Projection(matrix(5, 19, rng), None), False),
        ((19, 70), Projection(dct(7, 19, rng), None), False),
        ((70, 19), Projection(None, dct(3, 19, rng, torch.int32)), False),
        ((31, 26), Projection(seeded("gaussian", 5, 14), seeded("rademacher", 4, 15)), True),
        ((31, 26), Projection(matrix(4, 31, rng), dct(6, 26, rng)), True),
        ((1, 9), Projection(seeded("rademacher", 3, 16), None), False),
        ((129, 2), Projection(None, seeded("gaussian", 1, 17)), False),
        ((130, 3), Projection(None, seeded("rademacher", 2, 18)), False),
    ]


G_CONFIGS = [(torch.float32, "contiguous"), (torch.bfloat16, "transposed"), (torch.float16, "sliced"),
             (torch.float32, "transposed")]


def hyper(i):
    """Matrix i's hyperparameters: every one differs between matrices (one call serves several groups)."""
    return dict(lr=0.05 / (1 + i % 3), weight_decay=0.1 * (i % 2), scale=0.7 + 0.1 * (i % 4),
                wd_mode="adapter" if i % 3 == 1 else "full", **BETAS)


class State:
    """W, the moments and (adapter mode) delta of every matrix of a call, and each matrix's step count."""

    def __init__(self, Ws, projections, modes, first_steps, state_dtype=torch.float32):
        self.W = [W.clone() for W in Ws]
        shapes = [p.projected_shape(W.shape) for p, W in zip(projections, Ws)]
        self.m = [torch.zeros(s, dtype=state_dtype) for s in shapes]
        self.v = [torch.zeros(s, dtype=state_dtype) for s in shapes]
        self.delta = [torch.zeros(s, dtype=state_dtype) if mode == "adapter" else None for s, mode in zip(shapes, modes)]
        self.step = list(first_steps)

    def multi_step(self, Gs, projections, hypers, backend):
        ops.lowrank_adamw_multi_step_(
            self.W, Gs, self.m, self.v, projections, step=self.step, delta=self.delta, backend=backend,
            **{k: [h[k] for h in hypers] for k in hypers[0]})
        self.step = [t + 1 for t in self.step]

    def single_steps(self, fn, Gs, projections, hypers, **kw):
        for i, (G, p, h) in enumerate(zip(Gs, projections, hypers)):
            fn(self.W[i], G, self.m[i], self.v[i], p, step=self.step[i], delta=self.delta[i], **h, **kw)
        self.step = [t + 1 for t in self.step]


def assert_matrix_parity(i, ours, exact, yardstick, W0, what, tol):
    k = max(W0.shape)
    W0_64 = W0.double()
    assert ours.W[i].dtype == W0.dtype
    assert_within_torch_error(ours.W[i].double() - W0_64, exact.W[i] - W0_64, yardstick.W[i].double() - W0_64,
                              f"{what} W - W0", k=k, entry_tol=tol)
    for name in ("m", "v", "delta"):
        got = getattr(ours, name)[i]
        if got is not None:
            assert_within_torch_error(got, getattr(exact, name)[i], getattr(yardstick, name)[i], f"{what} {name}",
                                      k=k, entry_tol=tol)


def has_gaussian(projection) -> bool:
    return any(op is not None and op.kind == "gaussian" for op in (projection.left, projection.right))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16], ids=["W_fp32", "W_bf16"])
def test_parity_with_single_op_and_float64_reference(backend, w_dtype, rng):
    """Every matrix of a mixed call against the float64 oracle, with plain torch and with lowrank_adamw_step_
    (same backend) as the yardsticks of the tolerance rule; bit-identical to lowrank_adamw_step_ where both run
    the same arithmetic (module docstring)."""
    other_dtype = torch.bfloat16 if w_dtype == torch.float32 else torch.float32
    cases = mixed_call(rng)
    Ws = [torch.randn(c[0], generator=rng).to(other_dtype if i == 2 else w_dtype) for i, c in enumerate(cases)]
    check_call(backend, cases, Ws, rng)


def check_call(backend, cases, Ws, rng):
    """One multi-tensor call of `cases` ((shape, projection, cpu_runs_single_kernel) per matrix) on W0 = `Ws`, over
    STEPS steps with per-matrix hyperparameters, step counts and G dtypes and layouts: each matrix against the
    float64 oracle with plain torch and with lowrank_adamw_step_ (same backend) as the yardsticks, and
    bit-identical to lowrank_adamw_step_ where both run the same arithmetic (module docstring)."""
    shapes = [c[0] for c in cases]
    projections = [c[1] for c in cases]
    hypers = [hyper(i) for i in range(len(cases))]
    modes = [h["wd_mode"] for h in hypers]
    first_steps = [1 + i % 3 for i in range(len(cases))]
    G_steps = [[random_matrix(s, G_CONFIGS[(i + t) % len(G_CONFIGS)][0], rng, G_CONFIGS[(i + t) % len(G_CONFIGS)][1])
                for i, s in enumerate(shapes)] for t in range(STEPS)]
    ours, single, plain = (State(Ws, projections, modes, first_steps) for _ in range(3))
    exact = State([W.double() for W in Ws], projections, modes, first_steps, torch.float64)
    for Gs in G_steps:
        ours.multi_step(Gs, projections, hypers, backend)
        single.single_steps(ops.lowrank_adamw_step_, Gs, projections, hypers, backend=backend)
        plain.single_steps(reference.lowrank_adamw_step_, Gs,
                           [plain_projection(p, backend, G.dtype, s) for p, G, s in zip(projections, Gs, shapes)],
                           hypers)
        exact.single_steps(reference.lowrank_adamw_step_, [G.double() for G in Gs], projections, hypers)
    for i, (shape, projection, cpu_single_kernel) in enumerate(cases):
        what = f"{backend} matrix {i} {shape} W {Ws[i].dtype} {modes[i]}"
        tol = GAUSSIAN_ENTRY_TOL if has_gaussian(projection) else 0.0
        assert_matrix_parity(i, ours, exact, plain, Ws[i], what + " vs plain torch", tol)
        assert_matrix_parity(i, ours, exact, single, Ws[i], what + " vs lowrank_adamw_step_", tol)
        if backend != "cpu" or cpu_single_kernel:
            for name in ("W", "m", "v", "delta"):
                got, want = getattr(ours, name)[i], getattr(single, name)[i]
                assert got is None or torch.equal(got, want), f"{what}: {name} differs from lowrank_adamw_step_"


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("shape,rank", [((130, 3), 64), ((600, 8), 128), ((301, 1033), 128), ((600, 16), 300),
                                        ((1100, 150), 256), ((1100, 150), 1024)])
def test_update_rounds_w_once(side, shape, rank, rng):
    """W's update added through BLAS's C <- alpha A B + beta C must round W once: BLAS adds A B in pieces in
    its small-matrix kernels (a few columns or rows beside a long projected dimension: measured 10x plain
    torch's error of W - W0 for 8 columns) and across K panels (rank 1024), each piece rounded at W's
    magnitude. Those shapes go through a buffer; the others (rank 256 and less, 32 columns and more) check the
    BLAS epilogue against the rule, 301 x 1033 with a last block of 9 columns that takes the buffer (the CPU
    kernel's blocked path, csrc/cpu/lowrank_adam_multi.cpp; one thread, so the matrix is not run alone)."""
    shape = shape if side == "left" else shape[::-1]
    sketch = seeded("rademacher", rank, 5)
    projection = Projection(sketch, None) if side == "left" else Projection(None, sketch)
    check_call("cpu", [(shape, projection, False)], [torch.randn(shape, generator=rng)], rng)


@pytest.mark.parametrize("backend", [p for p in CPU_BACKENDS if p.values[0] != "triton"])
def test_float64_weights(backend, rng):
    """float64 W computes in float64 (float64 and float32 moments; float32 ones take lowrank_adamw_step_'s kernel
    on the CPU). Triton is left out: its interpreter passes float arguments as float32."""
    shapes = [(31, 26), (31, 26), (26, 31)]
    projections = [Projection(None, seeded("gaussian", 4, 3)), Projection(None, matrix(5, 26, rng)),
                   Projection(dct(6, 26, rng), None)]
    hypers = [hyper(i) for i in range(3)]
    modes = [h["wd_mode"] for h in hypers]
    Ws = [torch.randn(s, generator=rng, dtype=torch.float64) for s in shapes]
    ours = State(Ws, projections, modes, [1, 1, 1], torch.float64)
    ours.m[1] = ours.m[1].float()
    ours.v[1] = ours.v[1].float()
    single = State(Ws, projections, modes, [1, 1, 1], torch.float64)
    single.m[1], single.v[1] = ours.m[1].clone(), ours.v[1].clone()
    exact = State(Ws, projections, modes, [1, 1, 1], torch.float64)
    for _ in range(2):
        Gs = [random_matrix(s, torch.float32, rng, "transposed") for s in shapes]
        ours.multi_step(Gs, projections, hypers, backend)
        single.single_steps(ops.lowrank_adamw_step_, Gs, projections, hypers, backend=backend)
        exact.single_steps(reference.lowrank_adamw_step_, [G.double() for G in Gs], projections, hypers)
    for i in range(3):
        tol = GAUSSIAN_ENTRY_TOL if has_gaussian(projections[i]) else 0.0
        assert_matrix_parity(i, ours, exact, single, Ws[i], f"{backend} float64 matrix {i}", tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_weight_and_states(backend, rng):
    """W given as a transposed view (BLAS reads it column-major on the CPU) and as a strided slice (no unit
    stride: the update goes through a buffer), states as transposed views (the CPU's lowrank_adamw_step_
    kernel), all updated in place as contiguous copies are, within the rule against the oracle."""
    shape = (33, 20)
    projection = Projection(None, seeded("rademacher", 6, 5))
    W_t = torch.randn(shape[1], shape[0], generator=rng).t()
    W_s = torch.randn(2 * shape[0], 2 * shape[1], generator=rng)[::2, ::2]
    W_c = torch.randn(shape, generator=rng)
    Ws = [W_t, W_s, W_c]
    m = [torch.zeros(shape[0], 6), torch.zeros(shape[0], 6), torch.zeros(6, shape[0]).t()]
    v = [torch.zeros(shape[0], 6), torch.zeros(shape[0], 6), torch.zeros(6, shape[0]).t()]
    Gs = [torch.randn(shape, generator=rng) for _ in Ws]
    W0s = [W.clone() for W in Ws]
    h = hyper(0)
    ops.lowrank_adamw_multi_step_(Ws, Gs, m, v, [projection] * 3, step=2, backend=backend, **h)
    assert not W_t.is_contiguous() and not W_s.is_contiguous() and not m[2].is_contiguous()
    for i, (W, W0, G) in enumerate(zip(Ws, W0s, Gs)):
        exact = State([W0.double()], [projection], ["full"], [2], torch.float64)
        plain = State([W0], [projection], ["full"], [2])
        exact.single_steps(reference.lowrank_adamw_step_, [G.double()], [projection], [h])
        plain.single_steps(reference.lowrank_adamw_step_, [G], [projection], [h])
        ours = State([W], [projection], ["full"], [2])
        ours.W, ours.m, ours.v = [W], [m[i]], [v[i]]
        assert_matrix_parity(0, ours, exact, plain, W0, f"{backend} layout {i}", 0.0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_scalar_hyperparameters_broadcast(backend, rng):
    """A number for a hyperparameter means that value for every matrix: the same result as the list."""
    shapes = [(12, 9), (9, 12)]
    projections = [Projection(None, seeded("gaussian", 3, 1)), Projection(seeded("rademacher", 4, 2), None)]
    Ws = [torch.randn(s, generator=rng) for s in shapes]
    Gs = [torch.randn(s, generator=rng) for s in shapes]
    a, b = (State(Ws, projections, ["full", "full"], [3, 3]) for _ in range(2))
    ops.lowrank_adamw_multi_step_(a.W, Gs, a.m, a.v, projections, lr=0.01, weight_decay=0.1, step=3, backend=backend,
                                  **BETAS)
    ops.lowrank_adamw_multi_step_(b.W, Gs, b.m, b.v, projections, lr=[0.01, 0.01], weight_decay=[0.1, 0.1],
                                  step=[3, 3], scale=[1.0, 1.0], wd_mode=["full", "full"], backend=backend, **BETAS)
    for x, y in zip(a.W + a.m + a.v, b.W + b.m + b.v):
        assert torch.equal(x, y)


def test_empty_call_is_a_no_op():
    ops.lowrank_adamw_multi_step_([], [], [], [], [], lr=0.1, step=1, weight_decay=0.0, **BETAS)


@pytest.mark.skipif(not _extension.LOADED, reason="compiled extension not loaded")
def test_two_threads_schedule(rng):
    """On two threads the CPU kernel runs a matrix that would unbalance the threads alone (all threads, through
    lowrank_adamw_step_'s kernel) and the rest one matrix per thread: each within the rule against the oracle.
    (Not bit-identical to a one-thread call: MKL's single-threaded GEMM inside a parallel region may take other
    kernels than at one thread outside one; measured on this machine as a last-bit difference.)"""
    shapes = [(300, 200), (40, 30), (30, 40), (40, 30)]
    projections = [Projection(None, seeded("rademacher", 16, 1)), Projection(None, seeded("gaussian", 5, 2)),
                   Projection(matrix(6, 30, rng), None), Projection(None, dct(4, 30, rng))]
    hypers = [hyper(i) for i in range(4)]
    modes = [h["wd_mode"] for h in hypers]
    Ws = [torch.randn(s, generator=rng) for s in shapes]
    Gs = [torch.randn(s, generator=rng) for s in shapes]
    two, plain = State(Ws, projections, modes, [1] * 4), State(Ws, projections, modes, [1] * 4)
    exact = State([W.double() for W in Ws], projections, modes, [1] * 4, torch.float64)
    torch.set_num_threads(2)  # the autouse one_thread fixture (conftest.py) restores the count
    two.multi_step(Gs, projections, hypers, "cpu")
    exact.single_steps(reference.lowrank_adamw_step_, [G.double() for G in Gs], projections, hypers)
    plain.single_steps(reference.lowrank_adamw_step_, Gs, projections, hypers)
    for i in range(4):
        tol = GAUSSIAN_ENTRY_TOL if has_gaussian(projections[i]) else 0.0
        assert_matrix_parity(i, two, exact, plain, Ws[i], f"two threads matrix {i}", tol)


@pytest.mark.skipif(not _extension.LOADED, reason="compiled extension not loaded")
@pytest.mark.parametrize("wd_mode", ["full", "adapter"])
def test_matrices_run_alone_share_one_moment_pass(wd_mode, rng):
    """On two threads, two equal large matrices and a half-size one all run alone (none balances the others):
    the equal pair through the driver's grouped form (run_adam_steps_grouped: one moment pass over the stacked
    group, the form the CUDA kernel runs), which is lowrank_adamw_step_'s arithmetic per element, so bit-identical
    to it on the same thread count; the odd one out through lowrank_adamw_step_'s kernel."""
    shapes = [(300, 200), (300, 200), (300, 100)]
    projections = [Projection(None, seeded("rademacher", 16, 1)), Projection(None, seeded("rademacher", 16, 2)),
                   Projection(None, seeded("rademacher", 16, 3))]
    hypers = [dict(lr=0.01, weight_decay=0.1, scale=0.5, wd_mode=wd_mode, **BETAS)] * 3
    modes = [wd_mode] * 3
    Ws = [torch.randn(s, generator=rng) for s in shapes]
    Gs = [torch.randn(s, generator=rng) for s in shapes]
    torch.set_num_threads(2)  # the autouse one_thread fixture (conftest.py) restores the count
    multi, single = State(Ws, projections, modes, [2] * 3), State(Ws, projections, modes, [2] * 3)
    for _ in range(2):
        multi.multi_step(Gs, projections, hypers, "cpu")
        single.single_steps(ops.lowrank_adamw_step_, Gs, projections, hypers, backend="cpu")
    for i in range(3):
        for name in ("W", "m", "v", "delta"):
            got, want = getattr(multi, name)[i], getattr(single, name)[i]
            assert got is None or torch.equal(got, want), f"matrix {i} {name}"


@pytest.mark.parametrize("backend", [p for p in CPU_BACKENDS if p.values[0] != "reference"])
def test_no_m_by_n_temporary(backend, rng):
    """The step allocates no m x n temporary: the CPU kernel holds per thread P (r x d) and blocks of at most
    512 KiB, the Triton launcher the projected-shape buffers and its tables."""
    shape = (1024, 768) if backend == "cpu" else (256, 384)
    projections = [Projection(None, seeded("gaussian", 32, 1)), Projection(seeded("rademacher", 32, 2), None)]
    Ws = [torch.randn(shape, generator=rng) for _ in projections]
    Gs = [torch.randn(shape, generator=rng) for _ in projections]
    ms = [torch.zeros(p.projected_shape(shape)) for p in projections]
    vs = [torch.zeros(p.projected_shape(shape)) for p in projections]

    def step():
        ops.lowrank_adamw_multi_step_(Ws, Gs, ms, vs, projections, lr=0.01, weight_decay=0.1, step=1,
                                      backend=backend, **BETAS)

    step()
    assert peak_cpu_bytes(step) < Ws[0].nbytes / 4


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend, rng):
    shapes = [(21, 13), (21, 13), (13, 21)]
    W = [torch.randn(shapes[0], generator=rng), torch.randn(shapes[1], generator=rng).to(torch.bfloat16),
         torch.randn(shapes[2], generator=rng)]
    G = [torch.randn(s, generator=rng).to(torch.bfloat16) for s in shapes]
    m = [torch.zeros(21, 3), torch.rand(21, 4, generator=rng), torch.rand(5, 21, generator=rng)]
    v = [torch.rand(t.shape, generator=rng) for t in m]
    delta = [torch.randn(21, 4, generator=rng)]
    P = torch.randn(4, 13, generator=rng)
    indices = torch.tensor([0, 3, 4, 9, 12], dtype=torch.int16)
    args = (W, G, m, v, delta, ["none", "none", "dct"], [0, 0, 0], [0, 0, 5], [None, None, indices],
            ["gaussian", "matrix", "none"], [LARGE_SEED - 2**64, 0, 0], [3, 4, 0], [None, P, None],
            [1e-3, 2e-3, 3e-3], [0.9] * 3, [0.999] * 3, [1e-8] * 3, [0.01, 0.0, 0.1], [2, 1, 5], [1.0, 0.5, 2.0],
            ["full", "adapter", "full"])
    torch.library.opcheck(torch.ops.lowrank_ops.lowrank_adamw_multi_step_.default, args, {"backend": backend})


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compiled_training_step_matches_eager(backend, rng):
    """A training step compiled with torch.compile(fullgraph=True, backend="aot_eager"): forward, gradients
    (torch.func.grad_and_value) and the multi-tensor step on both weights of a two-layer model, which traces
    through the op's fake kernel and the mutation annotations of its lists; bit-equal to the same step run
    eagerly, over two steps."""
    W1, W2 = torch.randn(12, 10, generator=rng), torch.randn(7, 12, generator=rng)
    x, y = torch.randn(5, 10, generator=rng), torch.randn(5, 7, generator=rng)
    projections = [Projection(None, seeded("rademacher", 4, 1)), Projection(seeded("gaussian", 3, 2), None)]

    def loss_fn(W1, W2):
        return ((x @ W1.T).relu() @ W2.T - y).pow(2).mean()

    def train_step(W1, W2, m1, v1, m2, v2, step):
        (g1, g2), loss = torch.func.grad_and_value(loss_fn, argnums=(0, 1))(W1, W2)
        ops.lowrank_adamw_multi_step_([W1, W2], [g1, g2], [m1, m2], [v1, v2], projections, lr=0.01,
                                      weight_decay=0.1, step=step, backend=backend, **BETAS)
        return loss

    def state():
        return [W1.clone(), W2.clone(), torch.zeros(12, 4), torch.zeros(12, 4), torch.zeros(3, 12),
                torch.zeros(3, 12)]

    torch._dynamo.reset()
    compiled = torch.compile(train_step, fullgraph=True, backend="aot_eager")
    eager_state, compiled_state = state(), state()
    for step in (1, 2):
        assert torch.equal(compiled(*compiled_state, step), train_step(*eager_state, step))
    for got, want in zip(compiled_state, eager_state):
        assert torch.equal(got, want)
    assert not torch.equal(compiled_state[0], W1)  # the step did update the weights


def _call(**override):
    shapes = [(6, 5), (5, 6)]
    projections = [Projection(None, seeded("gaussian", 2, 1)), Projection(seeded("rademacher", 2, 1), None)]
    args = dict(W=[torch.randn(s) for s in shapes], G=[torch.randn(s) for s in shapes],
                exp_avg=[torch.zeros(6, 2), torch.zeros(2, 6)], exp_avg_sq=[torch.zeros(6, 2), torch.zeros(2, 6)],
                projections=projections)
    kw = dict(lr=1e-3, weight_decay=0.0, step=1, **BETAS)
    for key, value in override.items():
        (args if key in args else kw)[key] = value
    ops.lowrank_adamw_multi_step_(*args.values(), **kw)


@pytest.mark.parametrize("override,error,message", [
    (dict(G=[torch.randn(6, 5)]), ValueError, "argument 'G' must have one entry per matrix (2, as 'W'), got 1"),
    (dict(W=torch.randn(6, 5)), TypeError, "argument 'W' must be a list of one entry per matrix, got Tensor"),
    (dict(lr=[1e-3]), ValueError, "argument 'lr' must be a number or a sequence of 2 (one per matrix)"),
    (dict(step=[1, 2, 3]), ValueError, "argument 'step' must be an int or a sequence of 2"),
    (dict(G=[torch.randn(6, 5), torch.randn(6, 5)]), ValueError,
     "lowrank_adamw_multi_step_: matrix 1: argument 'G' must be of W's shape [5, 6], got [6, 5]"),
    (dict(exp_avg=[torch.zeros(6, 2), torch.zeros(6, 2)]), ValueError,
     "lowrank_adamw_multi_step_: matrix 1: argument 'exp_avg' must be a float32 tensor of the projected shape"),
    (dict(step=[1, 0]), ValueError, "matrix 1: argument 'step' must be >= 1"),
    (dict(wd_mode=["full", "adapter"]), ValueError, "matrix 1: argument 'delta' must be a tensor when wd_mode="),
    (dict(projections=[Projection(None, seeded("gaussian", 2, 1)), "left"]), TypeError,
     "matrix 1: argument 'projection' must be a lowrank_ops.ops.Projection"),
    (dict(delta=[None]), ValueError, "argument 'delta' must have one entry per matrix (2, as 'W'), got 1"),
    (dict(backend="gpu"), ValueError, "argument 'backend' must be one of"),
])
def test_bad_arguments_raise_clear_errors(override, error, message):
    assert_clear_error(lambda: _call(**override), error, message)


def test_written_tensors_must_not_share_memory():
    W = torch.randn(6, 5)
    assert_clear_error(lambda: _call(W=[W, W.view(5, 6)]), ValueError,
                       "arguments 'W[0]' and 'W[1]' share memory")


@pytest.mark.skipif(not _extension.LOADED, reason="compiled extension not loaded")
@pytest.mark.parametrize("override,message", [
    (dict(G=[torch.randn(6, 5)]), "argument 'G' must have one entry per matrix (2, as 'W'), got 1"),
    (dict(lr=[1e-3]), "argument 'lr' must have one entry per matrix (2, as 'W'), got 1"),
    (dict(delta=[torch.zeros(6, 2)]), ("argument 'delta' must hold one adapter per matrix in wd_mode \"adapter\" "
                                       "(0), got 1")),
    (dict(right_kind=["gaussian", "uniform"]), "matrix 1: argument 'right_kind' must be \"none\", \"rademacher\""),
    (dict(step=[1, 0]), "matrix 1: argument 'step' must be >= 1"),
    (dict(exp_avg=[torch.zeros(6, 2), torch.zeros(6, 2)]), ("matrix 1: argument 'exp_avg' must be a float32 "
                                                            "tensor of the projected shape [2, 6]")),
])
def test_cpp_op_rejects_bad_arguments(override, message):
    """The C++ op checks its lists and each matrix itself, for C++ and torch.ops callers."""
    args = dict(W=[torch.randn(6, 5), torch.randn(5, 6)], G=[torch.randn(6, 5), torch.randn(5, 6)],
                exp_avg=[torch.zeros(6, 2), torch.zeros(2, 6)], exp_avg_sq=[torch.zeros(6, 2), torch.zeros(2, 6)],
                delta=[], left_kind=["none", "rademacher"], left_seed=[0, 1], left_rank=[0, 2],
                left_matrix=[None, None], right_kind=["gaussian", "none"], right_seed=[1, 0], right_rank=[2, 0],
                right_matrix=[None, None], lr=[1e-3, 1e-3], beta1=[0.9, 0.9], beta2=[0.999, 0.999],
                eps=[1e-8, 1e-8], weight_decay=[0.0, 0.0], step=[1, 1], scale=[1.0, 1.0], wd_mode=["full", "full"])
    args.update(override)
    with pytest.raises(RuntimeError) as info:
        torch.ops.lowrank_ops.lowrank_adamw_multi_step_(*args.values(), backend="cpu")
    assert f"lowrank_ops.lowrank_adamw_multi_step_: {message}" in str(info.value), str(info.value)
