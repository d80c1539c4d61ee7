"""APOLLO / APOLLO-Mini: the fused op lowrank_apollo_step_ on every backend against the float64 oracle
(lowrank_ops/reference/apollo.py), opcheck, lowrank_ops.optim.APOLLO against apollo-torch's APOLLOAdamW
driven with our P on a tiny Llama, and resume bit-identity with weights_only loading."""

import math

import pytest
import torch

from lowrank_ops import ops, projections
from lowrank_ops.ops import Projection
from lowrank_ops.optim import APOLLO
from lowrank_ops.pure_torch import apollo as plain_torch
from lowrank_ops.reference import apollo as reference
from lowrank_ops.reference.sketch import sketch as reference_sketch

from helpers import GAUSSIAN_ENTRY_TOL, assert_within_torch_error, backends

CPU_BACKENDS = backends("lowrank_apollo_step_")
HYPER = dict(lr=3e-2, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=0.1)
STEPS = 4


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(17)


def make_projection(kind, side, rank, d, rng):
    if kind == "matrix":
        return Projection.from_matrix(torch.randn(rank, d, generator=rng), side)
    return Projection.seeded(kind, int(torch.randint(0, 2**62, (), generator=rng)) * 3, rank, side)


def schema_args(projection):
    """The schema's (side, kind, seed, rank, matrix) of a one-sided projection."""
    side, op = ("left", projection.left) if projection.left is not None else ("right", projection.right)
    seed = 0 if op.kind == "matrix" else (op.seed - 2**64 if op.seed >= 2**63 else op.seed)
    return side, op.kind, seed, op.rank, op.matrix


class Run:
    """W and the APOLLO state of one run."""

    def __init__(self, W, shape, state_dtype):
        self.W = W
        self.m, self.v = torch.zeros(shape, dtype=state_dtype), torch.zeros(shape, dtype=state_dtype)
        self.norm = torch.zeros((), dtype=state_dtype)

    def step(self, fn, G, projection, t, **kw):
        fn(self.W, G, self.m, self.v, self.norm, projection, step=t, **HYPER, **kw)


def plain_step(W, G, m, v, norm, projection, step, **kw):
    """The pure-torch chain (plain torch in the op's precisions): what the rule's torch error is measured on."""
    proj_scale = kw.pop("proj_scale", 1.0)
    plain_torch.lowrank_apollo_step_(W, G, m, v, norm, *schema_args(projection), proj_scale, kw["lr"], kw["beta1"],
                                     kw["beta2"], kw["eps"], kw["weight_decay"], step, kw.get("scale", 1.0),
                                     kw.get("scale_type", "channel"), kw.get("limiter", True),
                                     kw.get("correct_bias", True))


CASES = [  # (shape, side, kind, rank, scale_type, W dtype, G dtype, layout)
    ((37, 23), "left", "gaussian", 5, "channel", torch.float32, torch.float32, "contiguous"),
    ((37, 23), "right", "rademacher", 4, "channel", torch.bfloat16, torch.bfloat16, "contiguous"),
    ((19, 131), "left", "matrix", 3, "tensor", torch.float32, torch.float32, "transposed"),
    ((130, 9), "right", "gaussian", 1, "tensor", torch.bfloat16, torch.float32, "contiguous"),
    ((1, 17), "right", "rademacher", 4, "channel", torch.float32, torch.float32, "contiguous"),
    ((29, 1), "left", "gaussian", 2, "channel", torch.float32, torch.float32, "contiguous"),
]


def random_gradient(shape, dtype, layout, rng):
    if layout == "transposed":
        return torch.randn(shape[::-1], generator=rng).to(dtype).T
    return torch.randn(shape, generator=rng).to(dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0][0]}x{c[0][1]}-{c[1]}-{c[2]}-{c[4]}-{c[5]}")
def test_parity_with_float64_oracle(backend, case, rng):
    shape, side, kind, rank, scale_type, w_dtype, g_dtype, layout = case
    d = shape[0] if side == "left" else shape[1]
    projection = make_projection(kind, side, rank, d, rng)
    projected = projection.projected_shape(shape)
    W0 = torch.randn(shape, generator=rng).to(w_dtype)
    ours, theirs = Run(W0.clone(), projected, torch.float32), Run(W0.clone(), projected, torch.float32)
    exact = Run(W0.double(), projected, torch.float64)
    kw = dict(scale=2.0, scale_type=scale_type, proj_scale=math.sqrt(d / rank))
    for t in range(1, STEPS + 1):
        G = random_gradient(shape, g_dtype, layout, rng) * (1 + t)  # a growing norm: the limiter acts
        ours.step(ops.lowrank_apollo_step_, G, projection, t, backend=backend, **kw)
        theirs.step(plain_step, G, projection, t, **kw)
        exact.step(reference.lowrank_apollo_step_, G.double(), projection, t, **kw)
    tol = GAUSSIAN_ENTRY_TOL if kind == "gaussian" else 0.0
    what = f"{backend} {case}"
    assert ours.W.dtype == w_dtype and ours.m.dtype == torch.float32
    W0_64 = W0.double()
    assert_within_torch_error(ours.W.double() - W0_64, exact.W - W0_64, theirs.W.double() - W0_64, f"{what} W - W0",
                              k=max(shape), entry_tol=tol)
    assert_within_torch_error(ours.m, exact.m, theirs.m, f"{what} exp_avg", k=max(shape), entry_tol=tol)
    assert_within_torch_error(ours.v, exact.v, theirs.v, f"{what} exp_avg_sq", k=max(shape), entry_tol=tol)
    assert_within_torch_error(ours.norm, exact.norm, theirs.norm, f"{what} limiter_norm", k=max(shape), entry_tol=tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float64_weights_and_options(backend, rng):
    """float64 W and states, the limiter off and no bias correction: float64 all the way."""
    shape, rank = (21, 34), 3
    projection = make_projection("rademacher", "left", rank, shape[0], rng)
    W0 = torch.randn(shape, generator=rng, dtype=torch.float64)
    ours, exact = Run(W0.clone(), (rank, 34), torch.float64), Run(W0.clone(), (rank, 34), torch.float64)
    for t in range(1, STEPS + 1):
        G = torch.randn(shape, generator=rng, dtype=torch.float64)
        for run, fn, kw in ((ours, ops.lowrank_apollo_step_, dict(backend=backend)),
                            (exact, reference.lowrank_apollo_step_, {})):
            run.step(fn, G, projection, t, limiter=False, correct_bias=False, scale_type="tensor", **kw)
    assert float(ours.norm) == 0.0  # the limiter off: its state untouched
    torch.testing.assert_close(ours.W, exact.W, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.m, exact.m, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", [p for p in CPU_BACKENDS if p.values[0] not in ("reference", "triton")])
@pytest.mark.parametrize("kind,side", [("gaussian", "left"), ("rademacher", "right"), ("matrix", "left")])
def test_no_m_by_n_temporary(backend, kind, side, rng):
    """The C++ step holds R, the moments, per-channel vectors and slabs of G (64 Ki elements) besides
    W and G: below a quarter of W's bytes for a bf16 G (converted slab by slab). The eager chain needs
    several m x n temporaries (the profiler does see them)."""
    from test_lowrank_adam import peak_cpu_bytes

    shape, rank = (1024, 768), 8
    projection = make_projection(kind, side, rank, shape[0] if side == "left" else shape[1], rng)
    W, G = torch.randn(shape, generator=rng), torch.randn(shape, generator=rng).to(torch.bfloat16)
    r = projection.projected_shape(shape)
    m, v, norm = torch.zeros(r), torch.zeros(r), torch.zeros(())
    kw = dict(step=1, **HYPER, scale_type="channel")
    step = (lambda: ops.lowrank_apollo_step_(W, G, m, v, norm, projection, backend=backend, **kw))
    step()  # warm-up: lazy initialization is not the op's memory
    assert peak_cpu_bytes(step) < W.nbytes / 4
    eager = (lambda: ops.lowrank_apollo_step_(W, G, m, v, norm, projection, backend="reference", **kw))
    assert peak_cpu_bytes(eager) >= W.nbytes


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend, rng):
    shape = (21, 13)
    P = torch.randn(4, 13, generator=rng)
    for w_dtype, side, kind, seed, rank, matrix, scale_type in [
        (torch.float32, "left", "gaussian", -2**63 + 5, 3, None, "channel"),
        (torch.bfloat16, "right", "matrix", 0, 4, P, "tensor"),
    ]:
        r = (rank, shape[1]) if side == "left" else (shape[0], rank)
        W = torch.randn(shape, generator=rng).to(w_dtype)
        G = torch.randn(shape, generator=rng).to(torch.bfloat16)
        m, v, norm = torch.zeros(r), torch.rand(r, generator=rng), torch.tensor(3.0)
        torch.library.opcheck(torch.ops.lowrank_ops.lowrank_apollo_step_.default,
                              (W, G, m, v, norm, side, kind, seed, rank, matrix, 1.5, 1e-3, 0.9, 0.999, 1e-6, 0.01, 2,
                               1.0, scale_type, True, True, backend))


# --------------------------------------------------------------------------------------------------------
# The optimizer against apollo-torch's APOLLOAdamW, both with our P
# --------------------------------------------------------------------------------------------------------

VOCAB, SEQ = 23, 9


def tiny_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=36, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def apollo_compatible(name, shape, scale_type, proj_type):
    """Whether apollo-torch can step this weight: its "channel" scaling reduces along dim 1 when m >= n, else
    dim 0, and broadcasts only when that is the projected dimension (std always; right for m >= n; left for
    m < n; reverse_std never). Its "tensor" scaling steps every shape."""
    if scale_type == "tensor" or proj_type == "std":
        return True
    return proj_type == ("right" if shape[0] >= shape[1] else "left")


def projected_weights(model, scale_type, proj_type):
    """The attention / MLP weights apollo-torch can step in this setting; everything else frozen (the plain
    params' AdamW is torch's in ours and HF-style in apollo-torch's: not what this test compares)."""
    chosen = []
    for name, p in model.named_parameters():
        keep = ("self_attn" in name or "mlp" in name) and apollo_compatible(name, p.shape, scale_type, proj_type)
        p.requires_grad_(keep)
        if keep:
            chosen.append(p)
    return chosen


def our_projector_class(base_seed, sketch_kind):
    """apollo-torch's GradientProjector drawing OUR P: at the k-th refresh of the weight of layer `layer`,
    sqrt(d / r) times the spec-v1 sketch of seed derive_seed(base_seed, layer, k) (reference generator), as
    lowrank_ops.optim.APOLLO uses it; transposed to apollo-torch's m x r for a left side."""
    from apollo_torch.random_projector import GradientProjector

    class OurProjector(GradientProjector):
        def __init__(self, layer, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.layer, self.refreshes = layer, 0

        def get_orthogonal_matrix(self, weights, rank, type, seed):
            d = weights.shape[0] if type == "left" else weights.shape[1]
            seed = projections.derive_seed(base_seed, self.layer, self.refreshes)
            self.refreshes += 1
            P = reference_sketch(rank, d, seed, sketch_kind, torch.float32) * math.sqrt(d / rank)
            return P.T.contiguous() if type == "left" else P

    return OurProjector


def apollo_torch_with_our_p(params, base_seed, sketch_kind, **kw):
    apollo_torch = pytest.importorskip("apollo_torch")
    projector = our_projector_class(base_seed, sketch_kind)

    class Driven(apollo_torch.APOLLOAdamW):
        def _initialize_projector(self, group, state):
            if group["proj"] != "random":  # its own SVD projector
                return super()._initialize_projector(group, state)
            # state["seed"] is apollo-torch's 1-based index of the param: our layer index + 1
            return projector(state["seed"] - 1, group["rank"], update_proj_gap=group["update_proj_gap"],
                             scale=group["scale"], proj_type=group["proj_type"])

    return Driven(params, **kw)


def lm_batch(i):
    g = torch.Generator().manual_seed(100 + i)
    return torch.randint(0, VOCAB, (4, SEQ), generator=g)


@pytest.mark.parametrize("scale_type,proj_type,rank,scale,proj", [
    ("channel", "std", 4, 1.0, "random"), ("channel", "right", 3, 1.0, "random"), ("channel", "left", 5, 2.0, "random"),
    ("tensor", "std", 1, 128.0, "random"), ("tensor", "reverse_std", 1, 128.0, "random"),
    ("tensor", "left", 2, 8.0, "random"), ("tensor", "right", 1, 128.0, "random"),
    ("channel", "std", 4, 1.0, "svd"), ("tensor", "reverse_std", 2, 4.0, "svd"),
])
def test_matches_apollo_torch_with_our_p(scale_type, proj_type, rank, scale, proj):
    """30 steps on a tiny Llama with refreshes every 10 (steps 0, 10, 20): weights equal to float32 rounding
    of the accumulated updates. proj "svd": both take torch's float32 SVD of the gradient (apollo-torch's own
    projector; singular vectors' signs do not change APOLLO's step). apollo-torch computes each step in
    float32 in another order (the scaled gradient formed in full, its norm summed over it), so the runs differ
    by rounding that the training feeds back; the bound is 1e-4 of the weights' total change (seen: ~2e-6).
    The step size lr sqrt(scale) is 1e-2: at 0.1 this tiny model's training turns chaotic and any rounding
    difference grows ~4x per step."""
    models = [tiny_llama(), tiny_llama()]
    params = [projected_weights(model, scale_type, proj_type) for model in models]
    assert params[0], "no weight apollo-torch can step in this setting"
    group = dict(rank=rank, scale_type=scale_type, proj_type=proj_type, update_proj_gap=10, scale=scale, proj=proj)
    hyper = dict(lr=1e-2 / math.sqrt(scale), betas=(0.9, 0.95), eps=1e-6, weight_decay=0.05)
    ours = APOLLO([dict(params=params[0], **group)], seed=7, **hyper)
    theirs = apollo_torch_with_our_p([dict(params=params[1], **group)], 7, "gaussian", **hyper)
    start = [p.detach().clone() for p in params[0]]
    for i in range(30):
        tokens = lm_batch(i)
        for model, opt in zip(models, (ours, theirs)):
            opt.zero_grad(set_to_none=True)
            model(input_ids=tokens, labels=tokens).loss.backward()
            opt.step()
    assert all(state["refresh"] == 3 for state in ours.state.values())
    for p, q, p0 in zip(params[0], params[1], start):
        p, q = p.detach(), q.detach()
        change = torch.linalg.norm(q - p0)
        assert change > 0
        assert torch.linalg.norm(p - q) <= 1e-4 * change, (list(p.shape), float(torch.linalg.norm(p - q) / change))


# --------------------------------------------------------------------------------------------------------
# State: resume bit-identity, weights_only loading, load_state_dict's checks
# --------------------------------------------------------------------------------------------------------


def small_problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.Tanh(), torch.nn.Linear(20, 7))
    data = [(torch.randn(16, 12, generator=torch.Generator().manual_seed(i)),
             torch.randn(16, 7, generator=torch.Generator().manual_seed(50 + i))) for i in range(12)]
    return model, data


def make_apollo(model, **group):
    weights = [model[0].weight, model[2].weight]
    return APOLLO([dict(params=weights, **group), dict(params=[model[0].bias, model[2].bias])], lr=1e-2,
                  weight_decay=0.01, seed=3)


def train(model, opt, data):
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("group", [dict(rank=3, update_proj_gap=4), dict(rank=1, scale_type="tensor", scale=16.0),
                                   dict(rank=2, proj="svd", proj_type="reverse_std", update_proj_gap=3)],
                         ids=["apollo", "apollo_mini", "svd"])
def test_resume_is_bit_identical_and_loads_weights_only(group, tmp_path):
    model, data = small_problem()
    opt = make_apollo(model, **group)
    train(model, opt, data[:5])
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
    train(model, opt, data[5:])
    saved = torch.load(path, weights_only=True)
    resumed, _ = small_problem(seed=1)
    resumed.load_state_dict(saved["model"])
    opt2 = make_apollo(resumed, **group)
    opt2.load_state_dict(saved["opt"])
    train(resumed, opt2, data[5:])
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    state = opt.state[model[0].weight]
    persisted = {k for k, v in state.items() if isinstance(v, torch.Tensor)}
    basis = {"proj_left", "proj_right"} & persisted
    assert persisted - basis == {"exp_avg", "exp_avg_sq", "limiter_norm"}
    assert bool(basis) == (group.get("proj") == "svd")  # a random P persists its seed only


def test_load_state_dict_refuses_other_settings():
    model, data = small_problem()
    opt = make_apollo(model, rank=3)
    train(model, opt, data[:2])
    saved = opt.state_dict()
    other = make_apollo(small_problem()[0], rank=3, proj_type="left")
    with pytest.raises(ValueError, match="'proj_type': expected 'left' \\(this optimizer\\), got 'std'"):
        other.load_state_dict(saved)
    adamw = torch.optim.AdamW([{"params": [model[0].weight, model[2].weight]},
                               {"params": [model[0].bias, model[2].bias]}]).state_dict()
    with pytest.raises(ValueError, match="lacks the keys"):
        make_apollo(small_problem()[0], rank=3).load_state_dict(adamw)
    broken = opt.state_dict()
    broken["state"][0]["limiter_norm"] = torch.zeros(2)
    with pytest.raises(ValueError, match="'limiter_norm' must be a 0-dim tensor"):
        make_apollo(small_problem()[0], rank=3).load_state_dict(broken)


@pytest.mark.parametrize("key,value,error,message", [
    ("scale_type", "row", ValueError, "'scale_type' must be one of ('channel', 'tensor'), got 'row'"),
    ("proj", "dct", ValueError, "'proj' must be one of ('random', 'svd'), got 'dct'"),
    ("proj_type", "full", ValueError, "'proj_type' must be one of ('std', 'reverse_std', 'left', 'right')"),
    ("rank", 0, ValueError, "'rank' must be an int >= 1, got 0"),
    ("scale", -1.0, ValueError, "'scale' must be a finite number >= 0, got -1.0"),
    ("disable_nl", 1, TypeError, "'disable_nl' must be a bool, got 1"),
])
def test_bad_group_keys_raise_clear_errors(key, value, error, message):
    model, _ = small_problem()
    group = dict(rank=3)
    group[key] = value
    with pytest.raises(error) as info:
        make_apollo(model, **group)
    assert message in str(info.value) and "lowrank_ops.optim.APOLLO: param group 0" in str(info.value)


def test_scale_front_is_refused():
    model, _ = small_problem()
    with pytest.raises(ValueError, match="'scale_front' must be False"):
        APOLLO(model.parameters(), 1e-3, (0.9, 0.999), 1e-6, 0.0, True, True)


def test_apollo_mini_state_is_rank_one():
    """APOLLO-Mini's state per projected matrix: rank-1 moments (n or m numbers each), one scalar, one seed."""
    model, data = small_problem()
    opt = make_apollo(model, rank=1, scale_type="tensor", scale=128.0)
    train(model, opt, data[:2])
    for p in (model[0].weight, model[2].weight):
        state = opt.state[p]
        assert state["exp_avg"].numel() == max(p.shape) and state["exp_avg_sq"].numel() == max(p.shape)
        assert state["limiter_norm"].numel() == 1 and isinstance(state["proj_seed"], int)


@pytest.mark.parametrize("backend", [p for p in CPU_BACKENDS if p.values[0] == "cpu"])
@pytest.mark.parametrize("override,message", [
    (dict(side="up"), "argument 'side' must be \"left\" or \"right\", got \"up\""),
    (dict(kind="dct"), "argument 'kind' must be \"rademacher\", \"gaussian\" or \"matrix\", got \"dct\""),
    (dict(exp_avg=torch.zeros(2, 5)), "argument 'exp_avg' must be a float32 tensor of shape [3, 5]"),
    (dict(limiter_norm=torch.zeros(1)), "argument 'limiter_norm' must be a float32 tensor of shape []"),
    (dict(scale_type="row"), "argument 'scale_type' must be \"channel\" or \"tensor\", got \"row\""),
    (dict(kind="matrix", matrix=torch.zeros(3, 4)), "argument 'matrix' must be of shape [3, 7], got [3, 4]"),
    (dict(step=0), "argument 'step' must be >= 1, got 0"),
])
def test_cpp_op_rejects_bad_arguments(backend, override, message):
    """The C++ kernel checks its own arguments (C++ callers skip the Python layer's checks)."""
    from lowrank_ops import _C

    args = dict(W=torch.zeros(7, 5), G=torch.zeros(7, 5), exp_avg=torch.zeros(3, 5), exp_avg_sq=torch.zeros(3, 5),
                limiter_norm=torch.zeros(()), side="left", kind="gaussian", seed=1, rank=3, matrix=None, proj_scale=1.0,
                lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0, step=1, scale=1.0, scale_type="channel",
                limiter=True, correct_bias=True)
    args.update(override)
    with pytest.raises(RuntimeError) as info:
        _C.cpu.lowrank_apollo_step_(*args.values())
    assert f"lowrank_ops.lowrank_apollo_step_: {message}" in str(info.value), str(info.value)
