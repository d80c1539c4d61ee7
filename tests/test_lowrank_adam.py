"""The fused low-rank AdamW step (lowrank_adam family) on every available backend against the float64
oracle (lowrank_ops/reference/lowrank_adam.py) under the tolerance rule of tests/helpers.py: every
projection kind (one-sided seeded and explicit on both sides, two-sided seeded, explicit and mixed),
float32/bfloat16 (and float64) W, float32/bfloat16/float16 G, both weight-decay modes, odd sizes, several
steps with the state carried, non-contiguous G and states; the identity projection against
torch.optim.AdamW; no m x n temporary; opcheck of the op on every backend; clear argument errors."""

import pytest
import torch

from lowrank_ops import _extension, ops
from lowrank_ops.ops import Projection, SideOperator
from lowrank_ops.reference import lowrank_adam as reference

from helpers import GAUSSIAN_ENTRY_TOL, assert_clear_error, assert_within_torch_error, backends, random_matrix

CPU_BACKENDS = backends("lowrank_adamw_step_")
GPU_BACKENDS = backends("lowrank_adamw_step_", "cuda")
LARGE_SEED = 2**64 - 77  # the high key word and the int64 wrap of the schema
HYPER = dict(lr=0.05, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, scale=0.7)
STEPS = 3

KINDS = ["left_rademacher", "left_gaussian", "right_rademacher", "right_gaussian", "left_matrix", "right_matrix",
         "two_sided_seeded", "two_sided_matrix", "mixed"]
SHAPES = [(37, 29), (23, 41), (70, 19)]
# (G dtype, G layout) and wd_mode rotate with the case, so that every projection kind meets both W dtypes,
# both weight-decay modes and several G dtypes and layouts without the full cross product.
G_CONFIGS = [(torch.float32, "contiguous"), (torch.bfloat16, "transposed"), (torch.float16, "sliced")]
WD_MODES = ["full", "adapter"]


def make_projection(kind: str, shape, rng) -> Projection:
    m, n = shape

    def seeded(k, rank, seed):
        return SideOperator(k, rank, seed=seed)

    def matrix(rank, d):
        return SideOperator("matrix", rank, matrix=torch.randn(rank, d, generator=rng) / d**0.5)

    sides = {
        "left_rademacher": (seeded("rademacher", 5, LARGE_SEED), None),
        "left_gaussian": (seeded("gaussian", 6, 11), None),
        "right_rademacher": (None, seeded("rademacher", 4, 12)),
        "right_gaussian": (None, seeded("gaussian", 7, LARGE_SEED)),
        "left_matrix": (matrix(5, m), None),
        "right_matrix": (None, matrix(6, n)),
        "two_sided_seeded": (seeded("gaussian", 5, 13), seeded("rademacher", 4, 14)),
        "two_sided_matrix": (matrix(4, m), matrix(6, n)),
        "mixed": (matrix(5, m), seeded("gaussian", 3, 15)),
    }[kind]
    return Projection(*sides)


def has_gaussian(projection) -> bool:
    return any(op is not None and op.kind == "gaussian" for op in (projection.left, projection.right))


def plain_projection(projection, backend, g_dtype, shape):
    """The projection as the backend's products see it. Triton multiplies a 16-bit G with P rounded to G's
    dtype (lowrank_ops/triton/lowrank_adam.py); plain torch doing the same materializes the rounded P."""
    if backend != "triton" or g_dtype not in (torch.bfloat16, torch.float16):
        return projection

    def rounded(op, dim):
        if op is None:
            return None
        P = reference.side_matrix(op, dim, torch.float32, "cpu").to(g_dtype).float()
        return SideOperator("matrix", op.rank, matrix=P)

    return Projection(rounded(projection.left, shape[0]), rounded(projection.right, shape[1]))


class Run:
    """One implementation's W and optimizer state, carried across steps."""

    def __init__(self, W, shape, state_dtype, adapter):
        self.W = W
        self.m = torch.zeros(shape, dtype=state_dtype)
        self.v = torch.zeros(shape, dtype=state_dtype)
        self.delta = torch.zeros(shape, dtype=state_dtype) if adapter else None

    def step(self, fn, G, projection, t, wd_mode, **kw):
        fn(self.W, G, self.m, self.v, projection, step=t, wd_mode=wd_mode, delta=self.delta, **HYPER, **kw)


def check_parity(backend, projection, W0, G_list, wd_mode, plain=None, state_dtype=torch.float32, what=""):
    """Runs the op, plain torch (the reference chain in the op's precisions, on `plain` or `projection`) and
    the float64 reference for len(G_list) steps; checks the moments, delta and W - W0 under the rule."""
    shape = projection.projected_shape(W0.shape)
    adapter = wd_mode == "adapter"
    ours = Run(W0.clone(), shape, state_dtype, adapter)
    theirs = Run(W0.clone(), shape, state_dtype, adapter)
    exact = Run(W0.double(), shape, torch.float64, adapter)
    for t, G in enumerate(G_list, start=1):
        ours.step(ops.lowrank_adamw_step_, G, projection, t, wd_mode, backend=backend)
        theirs.step(reference.lowrank_adamw_step_, G, plain or projection, t, wd_mode)
        exact.step(reference.lowrank_adamw_step_, G.double(), projection, t, wd_mode)
    tol = GAUSSIAN_ENTRY_TOL if has_gaussian(projection) else 0.0
    k = max(W0.shape)
    assert ours.W.dtype == W0.dtype and ours.m.dtype == state_dtype
    W0_64 = W0.double()
    assert_within_torch_error(ours.W.double() - W0_64, exact.W - W0_64, theirs.W.double() - W0_64,
                              f"{what} W - W0", k=k, entry_tol=tol)
    assert_within_torch_error(ours.m, exact.m, theirs.m, f"{what} exp_avg", k=k, entry_tol=tol)
    assert_within_torch_error(ours.v, exact.v, theirs.v, f"{what} exp_avg_sq", k=k, entry_tol=tol)
    if adapter:
        assert_within_torch_error(ours.delta, exact.delta, theirs.delta, f"{what} delta", k=k, entry_tol=tol)


def fresh_gradients(shape, dtype, layout, rng, steps=STEPS):
    return [random_matrix(shape, dtype, rng, layout) for _ in range(steps)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16], ids=["W_fp32", "W_bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_parity_with_float64_reference(backend, kind, w_dtype, rng):
    case = KINDS.index(kind) + (w_dtype == torch.bfloat16)
    g_dtype, layout = G_CONFIGS[case % len(G_CONFIGS)]
    wd_mode = WD_MODES[case % len(WD_MODES)]
    shape = SHAPES[KINDS.index(kind) % len(SHAPES)]
    projection = make_projection(kind, shape, rng)
    W0 = torch.randn(shape, generator=rng).to(w_dtype)
    check_parity(backend, projection, W0, fresh_gradients(shape, g_dtype, layout, rng), wd_mode,
                 plain=plain_projection(projection, backend, g_dtype, shape),
                 what=f"{backend} {kind} W {w_dtype} G {g_dtype} {layout} {wd_mode}")


@pytest.mark.parametrize("backend", [p for p in CPU_BACKENDS if p.values[0] != "triton"])
@pytest.mark.parametrize("kind", ["left_gaussian", "right_matrix", "two_sided_seeded"])
@pytest.mark.parametrize("wd_mode", WD_MODES)
def test_float64_weights(backend, kind, wd_mode, rng):
    """float64 W computes in float64 (float32 moments). Triton is left out: its interpreter passes float
    arguments as float32 (lowrank_ops/triton/lowrank_adam.py refuses float64 W there)."""
    shape = (31, 26)
    projection = make_projection(kind, shape, rng)
    W0 = torch.randn(shape, generator=rng, dtype=torch.float64)
    check_parity(backend, projection, W0, fresh_gradients(shape, torch.float32, "transposed", rng), wd_mode,
                 what=f"{backend} {kind} W float64")


EDGE_CASES = [  # (shape, left (kind, rank) or None, right (kind, rank) or None): sizes 1, ranks > d
    ((1, 9), ("rademacher", 3), None),
    ((9, 1), None, ("gaussian", 2)),
    ((1, 1), ("gaussian", 2), ("rademacher", 3)),
    ((3, 130), ("gaussian", 5), None),
    ((129, 2), None, ("rademacher", 1)),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape,left,right", EDGE_CASES)
def test_edge_sizes(backend, shape, left, right, rng):
    side = (lambda spec, seed: None if spec is None else SideOperator(spec[0], spec[1], seed=seed))
    projection = Projection(side(left, 21), side(right, 22))
    W0 = torch.randn(shape, generator=rng)
    check_parity(backend, projection, W0, fresh_gradients(shape, torch.float32, "contiguous", rng, steps=2), "full",
                 what=f"{backend} {shape} {left} {right}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["left_gaussian", "right_matrix"])
def test_non_contiguous_weight_and_states(backend, kind, rng):
    """W, the moments and delta given as transposed views are updated in place exactly as contiguous ones."""
    shape = (33, 20)
    projection = make_projection(kind, shape, rng)
    r = projection.projected_shape(shape)
    W = torch.randn(shape[1], shape[0], generator=rng).t()
    states = [torch.rand(r[1], r[0], generator=rng).t() for _ in range(3)]
    want_W, want = W.contiguous(), [s.contiguous() for s in states]
    G = torch.randn(shape, generator=rng)
    ops.lowrank_adamw_step_(W, G, *states[:2], projection, step=4, wd_mode="adapter", delta=states[2], **HYPER,
                            backend=backend)
    ops.lowrank_adamw_step_(want_W, G, *want[:2], projection, step=4, wd_mode="adapter", delta=want[2], **HYPER,
                            backend=backend)
    for got, expected in zip([W] + states, [want_W] + want):
        assert not got.is_contiguous() and torch.equal(got, expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_identity_projection_is_torch_adamw(backend, rng):
    """With P = I (an explicit right side of rank n) the step is AdamW on the full matrix: the moments and
    W follow torch.optim.AdamW (plain torch here) within the rule, against AdamW run in float64."""
    shape = (17, 12)
    projection = Projection.from_matrix(torch.eye(shape[1]), "right")
    W0 = torch.randn(shape, generator=rng)
    grads = [torch.randn(shape, generator=rng) for _ in range(4)]
    hyper = dict(lr=HYPER["lr"], betas=(HYPER["beta1"], HYPER["beta2"]), eps=HYPER["eps"],
                 weight_decay=HYPER["weight_decay"])
    runs = {}
    for dtype in (torch.float32, torch.float64):
        p = torch.nn.Parameter(W0.clone().to(dtype))
        opt = torch.optim.AdamW([p], **hyper)
        for G in grads:
            p.grad = G.to(dtype)
            opt.step()
        runs[dtype] = (p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])
    W, m, v = W0.clone(), torch.zeros(shape), torch.zeros(shape)
    for t, G in enumerate(grads, start=1):
        ops.lowrank_adamw_step_(W, G, m, v, projection, step=t, lr=hyper["lr"], beta1=HYPER["beta1"],
                                beta2=HYPER["beta2"], eps=HYPER["eps"], weight_decay=HYPER["weight_decay"],
                                backend=backend)
    for name, ours, exact, theirs in zip(("W", "exp_avg", "exp_avg_sq"), (W, m, v), runs[torch.float64],
                                         runs[torch.float32]):
        assert_within_torch_error(ours, exact, theirs, f"{backend} identity {name}")


def peak_cpu_bytes(fn) -> int:
    """Peak bytes held by torch's CPU allocator above the starting point during fn() (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak


@pytest.mark.parametrize("backend", [p for p in CPU_BACKENDS if p.values[0] != "reference"])
@pytest.mark.parametrize("kind", ["left_gaussian", "right_rademacher", "two_sided_seeded"])
def test_no_m_by_n_temporary(backend, kind, rng):
    """The fused step allocates no m x n temporary: the C++ step holds one tile of P's columns (1/8 of d, at
    least 128) and per-thread chunks of U = unproject(N) besides the projected-shape buffers; the Triton
    launcher only the projected-shape buffers (U lives in registers; the interpreter's own copies are not
    torch allocations). The eager reference chain, for comparison, needs several m x n temporaries."""
    shape = (1024, 768) if backend == "cpu" else (128, 192)
    projection = make_projection(kind, shape, rng)
    W, G = torch.randn(shape, generator=rng), torch.randn(shape, generator=rng)
    r = projection.projected_shape(shape)
    m, v = torch.zeros(r), torch.zeros(r)
    step = (lambda: ops.lowrank_adamw_step_(W, G, m, v, projection, step=1, **HYPER, backend=backend))
    step()  # warm-up: lazy initialization is not the op's memory
    assert peak_cpu_bytes(step) < W.nbytes / 4
    eager = (lambda: reference.lowrank_adamw_step_(W, G, m, v, projection, step=1, **HYPER))
    assert peak_cpu_bytes(eager) >= W.nbytes  # the profiler does see m x n buffers


def opcheck_step(backend, shape, cases, rng):
    """torch.library.opcheck of the op on `backend` for each (W dtype, left, right, wd_mode) of `cases`, each side
    given as the schema's (kind, seed, rank, tensor), with a bfloat16 G of `shape`."""
    for w_dtype, left, right, wd_mode in cases:
        r = (left[2] if left[0] != "none" else shape[0], right[2] if right[0] != "none" else shape[1])
        W = torch.randn(shape, generator=rng).to(w_dtype)
        G = torch.randn(shape, generator=rng).to(torch.bfloat16)
        m, v, delta = torch.zeros(r), torch.rand(r, generator=rng), torch.randn(r, generator=rng)
        torch.library.opcheck(torch.ops.lowrank_ops.lowrank_adamw_step_.default,
                              (W, G, m, v, delta, *left, *right, 1e-3, 0.9, 0.999, 1e-8, 0.01, 2, 1.0, wd_mode),
                              {"backend": backend})


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend, rng):
    P = torch.randn(4, 13, generator=rng)
    opcheck_step(backend, (21, 13), [
        (torch.float32, ("gaussian", LARGE_SEED - 2**64, 3, None), ("none", 0, 0, None), "full"),
        (torch.bfloat16, ("rademacher", 5, 3, None), ("matrix", 0, 4, P), "adapter"),
    ], rng)


def assert_compiled_step_matches_eager(step, W, G, m, v):
    """step(W, G, m, v), an in-place update of W, m and v, gives the same tensors under
    torch.compile(fullgraph=True) as eagerly."""
    eager = [t.clone() for t in (W, m, v)]
    torch._dynamo.reset()
    torch.compile(step, fullgraph=True, backend="aot_eager")(W, G, m, v)
    step(eager[0], G, eager[1], eager[2])
    for got, want in zip((W, m, v), eager):
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend", [p for p in CPU_BACKENDS if p.values[0] != "triton"])
def test_torch_compile_fullgraph_matches_eager(backend, rng):
    """The op traces (fake kernel, mutation in the schema) and the compiled step equals the eager one."""
    projection = make_projection("mixed", (10, 7), rng)

    def step(W, G, m, v):
        ops.lowrank_adamw_step_(W, G, m, v, projection, step=2, **HYPER, backend=backend)
        return W.sum()

    W, G = torch.randn(10, 7, generator=rng), torch.randn(10, 7, generator=rng)
    m, v = torch.rand(5, 3, generator=rng), torch.rand(5, 3, generator=rng)
    assert_compiled_step_matches_eager(step, W, G, m, v)


def _call(W=None, G=None, m=None, v=None, projection=None, **kw):
    shape = (6, 5)
    W = torch.randn(shape) if W is None else W
    G = torch.randn(shape) if G is None else G
    projection = projection or Projection.seeded("gaussian", 1, 2, "left")
    r = projection.projected_shape(W.shape) if isinstance(projection, Projection) else (2, 5)
    m = torch.zeros(r) if m is None else m
    v = torch.zeros(r) if v is None else v
    args = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    args.update(kw)
    ops.lowrank_adamw_step_(W, G, m, v, projection, **args)


@pytest.mark.parametrize("call,error,message", [
    (lambda: _call(W=torch.ones(6, 5, dtype=torch.int32)), ValueError, "argument 'W' must be float32"),
    (lambda: _call(W=torch.randn(6, 5).half()), ValueError, "argument 'W' must be float32, bfloat16 or float64"),
    (lambda: _call(G=torch.randn(5, 6)), ValueError, "argument 'G' must be of W's shape [6, 5], got [5, 6]"),
    (lambda: _call(projection="gaussian"), TypeError, "argument 'projection' must be a lowrank_ops.ops.Projection"),
    (lambda: _call(projection=Projection.from_matrix(torch.randn(2, 7), "left")), ValueError,
     "argument 'projection.left.matrix' must be of shape [2, 6], got [2, 7]"),
    (lambda: _call(m=torch.zeros(5, 2)), ValueError, "argument 'exp_avg' must be a float32 tensor of the projected "
                                                     "shape [2, 5]"),
    (lambda: _call(v=torch.zeros(2, 5, dtype=torch.bfloat16)), ValueError, "argument 'exp_avg_sq' must be a float32"),
    (lambda: _call(step=0), ValueError, "argument 'step' must be >= 1"),
    (lambda: _call(wd_mode="decoupled"), ValueError, "argument 'wd_mode' must be 'full' or 'adapter'"),
    (lambda: _call(wd_mode="adapter"), ValueError, "argument 'delta' must be a tensor when wd_mode='adapter'"),
    (lambda: _call(backend="gpu"), ValueError, "argument 'backend' must be one of"),
    (lambda: Projection(), ValueError, "at least one side must be set"),
    (lambda: SideOperator("matrix", 2), ValueError, "kind 'matrix' needs a 2-D `matrix`"),
    (lambda: SideOperator("gaussian", 0), ValueError, "rank must be >= 1, got 0"),
])
def test_bad_arguments_raise_clear_errors(call, error, message):
    assert_clear_error(call, error, message)


@pytest.mark.skipif(not _extension.LOADED, reason="compiled extension not loaded")
@pytest.mark.parametrize("override,message", [
    (dict(left_kind="uniform"), "argument 'left_kind' must be \"none\", \"rademacher\", \"gaussian\", \"matrix\", "
                                "\"dct\" or \"sr_dct\""),
    (dict(left_rank=0), "argument 'left_rank' must be >= 1, got 0"),
    (dict(left_kind="matrix"), "argument 'left_matrix' must be a tensor for kind \"matrix\", got None"),
    (dict(left_matrix=torch.randn(2, 6)), "argument 'left_matrix' must be None for a seeded kind"),
    (dict(left_kind="none"), "at least one of 'left_kind' and 'right_kind' must not be \"none\""),
    (dict(exp_avg=torch.zeros(2, 4)), "argument 'exp_avg' must be a float32 tensor of the projected shape [2, 5]"),
    (dict(wd_mode="adapter"), "argument 'delta' must be a tensor when wd_mode is \"adapter\""),
    (dict(step=0), "argument 'step' must be >= 1"),
    (dict(G=torch.randn(6, 4)), "argument 'G' must be of W's shape"),
])
def test_cpp_op_rejects_bad_arguments(override, message):
    """The C++ op checks its arguments itself, for C++ and torch.ops callers."""
    args = dict(W=torch.randn(6, 5), G=torch.randn(6, 5), exp_avg=torch.zeros(2, 5), exp_avg_sq=torch.zeros(2, 5),
                delta=None, left_kind="gaussian", left_seed=3, left_rank=2, left_matrix=None, right_kind="none",
                right_seed=0, right_rank=0, right_matrix=None, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.0, step=1, scale=1.0, wd_mode="full")
    args.update(override)
    with pytest.raises(RuntimeError) as info:
        torch.ops.lowrank_ops.lowrank_adamw_step_(*args.values())
    assert f"lowrank_ops.lowrank_adamw_step_: {message}" in str(info.value), str(info.value)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("w_dtype,g_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                             (torch.float32, torch.bfloat16), (torch.float64, torch.float32)])
@pytest.mark.parametrize("wd_mode", WD_MODES)
def test_gpu_parity(backend, kind, w_dtype, g_dtype, wd_mode, rng):
    """CUDA and Triton on the GPU against the float64 reference (CPU), on a shape that spans several tiles
    of every kernel, with transposed G."""
    shape = (517, 301)
    projection = make_projection(kind, shape, rng)
    W0 = torch.randn(shape, generator=rng).to(w_dtype)
    grads = fresh_gradients(shape, g_dtype, "transposed", rng)
    adapter = wd_mode == "adapter"
    r = projection.projected_shape(shape)
    to_cuda = (lambda op: None if op is None else SideOperator(
        op.kind, op.rank, op.seed, None if op.matrix is None else op.matrix.cuda()))
    cuda_projection = Projection(to_cuda(projection.left), to_cuda(projection.right))
    W = W0.cuda()
    m, v = torch.zeros(r, device="cuda"), torch.zeros(r, device="cuda")
    delta = torch.zeros(r, device="cuda") if adapter else None
    theirs = Run(W0.clone(), r, torch.float32, adapter)
    exact = Run(W0.double(), r, torch.float64, adapter)
    plain = plain_projection(projection, backend, g_dtype, shape)
    for t, G in enumerate(grads, start=1):
        ops.lowrank_adamw_step_(W, G.cuda(), m, v, cuda_projection, step=t, wd_mode=wd_mode, delta=delta, **HYPER,
                                backend=backend)
        theirs.step(reference.lowrank_adamw_step_, G, plain, t, wd_mode)
        exact.step(reference.lowrank_adamw_step_, G.double(), projection, t, wd_mode)
    tol = GAUSSIAN_ENTRY_TOL if has_gaussian(projection) else 0.0
    W0_64 = W0.double()
    assert_within_torch_error(W.cpu().double() - W0_64, exact.W - W0_64, theirs.W.double() - W0_64,
                              f"{backend} {kind} W", k=max(shape), entry_tol=tol)
    assert_within_torch_error(m.cpu(), exact.m, theirs.m, f"{backend} {kind} exp_avg", k=max(shape), entry_tol=tol)
    assert_within_torch_error(v.cpu(), exact.v, theirs.v, f"{backend} {kind} exp_avg_sq", k=max(shape),
                              entry_tol=tol)
