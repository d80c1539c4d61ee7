"""8-bit low-rank moments in the optimizers (issue 17, items 1 and 2; docs/DESIGN.md §3 "8-bit optimizer
moments"): the 8-bit step against a float64 oracle that applies the same quantization, the state layout,
bit-identical resume from a weights_only checkpoint, the format checks of load_state_dict, the "adaptive"
kind's transform on decoded moments, GaLoreAdamW8bit's API against galore-torch's, and memory.estimate
against the bytes the optimizer really holds."""

import inspect
import io

import pytest
import torch

from lowrank_ops import _extension, memory
from lowrank_ops import backends as lowrank_backends
from lowrank_ops.ops import Projection, SideOperator
from lowrank_ops.optim import GaLoreAdamW8bit, LowRankAdamW
from lowrank_ops.optim.multi_step import FusedSteps, lowrank_step, moment_arguments
from lowrank_ops.projections import moments
from lowrank_ops.pure_torch import blockwise8 as production
from lowrank_ops.pure_torch import lowrank_adam8 as plain8
from lowrank_ops.reference import blockwise8 as reference8
from lowrank_ops.reference import lowrank_adam as reference
from lowrank_ops.reference import lowrank_adam8 as reference8_step

from helpers import assert_within_torch_error, backends
from tiny_models import batch, lm_loss, make_model, split_groups, state_equal, train

EPS32 = torch.finfo(torch.float32).eps
HYPER = {"lr": 0.05, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1, "scale": 0.7}
BACKENDS = backends("lowrank_adamw_step_")


# ---------------------------------------------------------------------------------------------------
# The 8-bit step against the float64 oracle with the same quantization


def _state(shape, block, rng, steps_done):
    """An 8-bit moment state as after `steps_done` steps: moments of a wide dynamic range, encoded."""
    state = {}
    moments.init(state, shape, torch.zeros(1), block)
    if steps_done:
        m = torch.randn(shape, generator=rng) * torch.pow(10.0, -3 * torch.rand(shape, generator=rng))
        v = m * m * (1 + torch.rand(shape, generator=rng))
        moments.write_into(state, m, v)
    return state


def _exact_step(W, G, state, projection, t, wd_mode, delta):
    """(W', m', v', delta') in float64: the oracle of the 8-bit step (reference/lowrank_adam8.py) from the
    stored state, its moments before encoding."""
    codes = (state["exp_avg"], state["exp_avg_sq"])
    absmax = (state["exp_avg_absmax"], state["exp_avg_sq_absmax"])
    W64, delta64, (m, v), _ = reference8_step.lowrank_adamw_step8(
        W, G, codes, absmax, state["state_block_size"], projection, step=t, wd_mode=wd_mode, delta=delta, **HYPER)
    return W64, m, v, delta64


def _plain_step(W, G, state, projection, t, wd_mode, delta):
    """The same chain as plain torch runs it in the op's precision: the production decode, the float32 step
    (reference/lowrank_adam.py in W's compute dtype), the moments before encoding."""
    m, v = (x.clone() for x in moments.read(state))
    W, delta = W.clone(), None if delta is None else delta.clone()
    reference.lowrank_adamw_step_(W, G, m, v, projection, step=t, wd_mode=wd_mode, delta=delta, **HYPER)
    return W, m, v, delta


def _check_moment(name, signed, state, ours_codes, ours_absmax, exact, plain, block):
    """Our encoded moment against the oracle's float64 moment `exact`: every decoded value within half its
    code gap (times the block's absmax) of it, plus twice plain torch's largest float32 error, and the absmax
    to the same margin."""
    cols = exact.shape[1]
    margin = 2 * float((plain.double() - exact).abs().max()) + EPS32 * float(exact.abs().max())
    ref_absmax = torch.stack([c.abs().amax(dim=1) for c in exact.split(block, dim=1)], dim=1)
    assert float((ours_absmax.double() - ref_absmax).abs().max()) <= margin, f"{name} absmax"
    code = production.code_table(signed).double()
    gaps = torch.cat([code.diff(), code.diff()[-1:]])
    q = ours_codes.long()
    gap = torch.maximum(gaps[q], gaps[(q - 1).clamp(min=0)])
    scale = ours_absmax.double().repeat_interleave(block, dim=1)[:, :cols]
    decoded = code[q] * scale
    bound = gap / 2 * scale + margin * (1 + gap)
    worst = float(((decoded - exact).abs() - bound).max())
    assert worst <= 0, f"{name}: decoded value off the oracle's by {worst:.3e} beyond the quantization bound"


# Seeded sides are Rademacher: its entries are bit-identical on every backend (docs/DESIGN.md §3), while
# Gaussian entries may differ by a few ulp, which the ill-conditioned 8-bit states (a moment decoded to 0 in a
# block of a wide range) amplify beyond the additive allowance of the tolerance rule. The side's kind does not
# reach the 8-bit arithmetic, and Gaussian sides are covered by the float step's tests.
CASES = [  # (shape, side, kind, block, W dtype, wd_mode)
    ((37, 29), "left", "rademacher", 4, torch.float32, "full"),
    ((23, 41), "right", "rademacher", 256, torch.bfloat16, "adapter"),
    ((70, 19), "right", "matrix", 3, torch.float32, "adapter"),
    ((1, 1), "left", "rademacher", 256, torch.float32, "full"),
    ((19, 300), "left", "matrix", 7, torch.bfloat16, "full"),
    ((9, 13), "left", "rademacher", 1, torch.float64, "full"),
    ((31, 26), "both", "rademacher", 3, torch.float32, "adapter"),  # two sides: the second GEMM's epilogue
    ((6, 700), "left", "matrix", 300, torch.float32, "full"),  # a block wider than a Triton tile row
]


def _check_8bit_parity(case, rng, our_step):
    """Three steps of `our_step(W, G, state, projection, t, wd_mode, delta)` (in place on W, the 8-bit state
    and delta) from a non-trivial 8-bit state; at each, the oracle starts from the same stored state. W under
    the tolerance rule; the re-encoded moments within the quantization bound of the oracle's float64 moments."""
    shape, side, kind, block, w_dtype, wd_mode = CASES[case]
    m, n = shape
    rank = max(1, min(shape[0 if side == "left" else 1] - 1, 5)) if min(shape) > 1 else 1
    d = m if side == "left" else n
    op = (SideOperator(kind, rank, seed=2**64 - 5) if kind != "matrix"
          else SideOperator("matrix", rank, matrix=torch.randn(rank, d, generator=rng) / d**0.5))
    if side == "both":  # `kind` (seeded) on the left, a 7-row matrix on the right
        projection = Projection(op, SideOperator("matrix", 7, matrix=torch.randn(7, n, generator=rng) / n**0.5))
    else:
        projection = Projection(op, None) if side == "left" else Projection(None, op)
    projected = projection.projected_shape(shape)
    state = _state(projected, block, rng, steps_done=1)
    delta = torch.randn(projected, generator=rng) * 1e-3 if wd_mode == "adapter" else None
    W = torch.randn(shape, generator=rng).to(w_dtype)
    for t in range(2, 5):
        G = torch.randn(shape, generator=rng)
        before = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
        W_prev, delta_prev = W.clone(), None if delta is None else delta.clone()
        exact = _exact_step(W_prev, G, before, projection, t, wd_mode, delta_prev)
        plain = _plain_step(W_prev, G, before, projection, t, wd_mode, delta_prev)
        our_step(W, G, state, projection, t, wd_mode, delta)
        W64 = W_prev.double()
        assert_within_torch_error(W.double() - W64, exact[0] - W64, plain[0].double() - W64,
                                  f"step {t} W - W0", k=max(shape))
        if delta is not None:
            assert_within_torch_error(delta, exact[3], plain[3], f"step {t} delta", k=max(shape))
        assert state["exp_avg"].dtype == torch.uint8 and state["exp_avg_absmax"].dtype == torch.float32
        for name, signed, i in (("exp_avg", True, 1), ("exp_avg_sq", False, 2)):
            _check_moment(f"step {t} {name}", signed, state, state[name], state[moments.absmax_key(name)],
                          exact[i], plain[i], block)


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_optimizer_8bit_step_matches_float64_oracle_with_the_same_quantization(case, backend, multi, rng):
    """The optimizers' 8-bit step (the fused op on the 8-bit state, through multi_step.lowrank_step with and
    without a multi-tensor collector: lowrank_adamw_step_ or lowrank_adamw_multi_step_, every backend) against
    the oracle."""
    if backend == "triton" and CASES[case][4] == torch.float64:
        pytest.skip("the Triton step does not take float64 weights")

    def step(W, G, state, projection, t, wd_mode, delta):
        exp_avg, exp_avg_sq, eight_bit = moment_arguments(state)
        collector = FusedSteps(backend) if multi else None
        lowrank_step(collector, backend, W, G, exp_avg, exp_avg_sq, projection, step=t, wd_mode=wd_mode,
                     delta=delta, **eight_bit, **HYPER)
        if collector is not None:
            assert len(collector.calls) == 1  # collected: it runs in the multi-tensor op's call
            collector.run()

    _check_8bit_parity(case, rng, step)


# The multi-tensor op on 8-bit moments: ONE call of every matrix below (float and 8-bit mixed). The large
# left-side matrices make the C++ CPU kernel's blocked path cut W's columns into chunks (r = 256: 512 columns
# for a float32 W, 254 for a bfloat16 one), rounded to whole moment blocks: B = 100 gives chunks of 500 and 200
# with a short last one; B = 700, above the chunk, gives chunks of 700. Two-sided projections run
# lowrank_adamw_step_'s 8-bit kernel there.
MULTI_BACKENDS = backends("lowrank_adamw_multi_step_")
MULTI_CASES = [  # (shape, (left, right) as (kind, rank) or None, block (None: float moments), W dtype, wd_mode)
    ((37, 29), (("rademacher", 5), None), 4, torch.float32, "full"),
    ((23, 41), (None, ("rademacher", 5)), 256, torch.bfloat16, "adapter"),
    ((260, 1201), (("rademacher", 256), None), 100, torch.float32, "full"),
    ((260, 1201), (("rademacher", 256), None), 700, torch.bfloat16, "adapter"),
    ((300, 45), (None, ("matrix", 7)), 3, torch.float32, "adapter"),
    ((1, 9), (("rademacher", 1), None), 2, torch.float32, "full"),
    ((31, 26), (("rademacher", 4), ("rademacher", 3)), 5, torch.float32, "full"),
    ((29, 37), (("rademacher", 5), None), None, torch.float32, "full"),
]


def _multi_case_projection(sides, shape, rng):
    ops_ = []
    for (kind_rank, d) in zip(sides, shape):
        if kind_rank is None:
            ops_.append(None)
            continue
        kind, rank = kind_rank
        ops_.append(SideOperator("matrix", rank, matrix=torch.randn(rank, d, generator=rng) / d**0.5)
                    if kind == "matrix" else SideOperator(kind, rank, seed=2**64 - 5 - rank))
    return Projection(*ops_)


@pytest.mark.parametrize("backend", MULTI_BACKENDS)
def test_multi_op_8bit_matches_float64_oracle_and_single_op(backend, rng):
    """lowrank_adamw_multi_step_ on a mixed call over three steps: each 8-bit matrix against the oracle (W under
    the tolerance rule, the re-encoded moments within the quantization bound), and bit-identical to
    lowrank_adamw_step_ on the same backend where both run the same arithmetic (the reference and Triton
    kernels loop over the single op; the C++ CPU kernel hands it the two-sided matrices, on one thread)."""
    from lowrank_ops import ops

    # the large matrices exercise the C++ CPU kernel's column chunks; elsewhere they only cost time
    cases = MULTI_CASES if backend == "cpu" else [c for c in MULTI_CASES if max(c[0]) < 1000]
    projections = [_multi_case_projection(c[1], c[0], rng) for c in cases]
    Ws = [torch.randn(c[0], generator=rng).to(c[3]) for c in cases]
    states, singles, deltas, single_deltas = [], [], [], []
    for case, projection in zip(cases, projections):
        shape, _, block, _, wd_mode = case
        projected = projection.projected_shape(shape)
        if block is None:
            state = {"exp_avg": torch.zeros(projected), "exp_avg_sq": torch.zeros(projected)}
        else:
            state = _state(projected, block, rng, steps_done=1)
        states.append(state)
        singles.append({k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()})
        delta = torch.randn(projected, generator=rng) * 1e-3 if wd_mode == "adapter" else None
        deltas.append(delta)
        single_deltas.append(None if delta is None else delta.clone())
    single_Ws = [W.clone() for W in Ws]
    for t in range(2, 5):
        Gs = [torch.randn(c[0], generator=rng) for c in cases]
        expected = []
        for i, case in enumerate(cases):
            if case[2] is None:
                expected.append(None)
                continue
            before = {k: v.clone() if torch.is_tensor(v) else v for k, v in states[i].items()}
            W_prev, delta_prev = Ws[i].clone(), None if deltas[i] is None else deltas[i].clone()
            expected.append((W_prev, _exact_step(W_prev, Gs[i], before, projections[i], t, case[4], delta_prev),
                             _plain_step(W_prev, Gs[i], before, projections[i], t, case[4], delta_prev)))
        eight_bit = [moment_arguments(state)[2] for state in states]
        ops.lowrank_adamw_multi_step_(
            Ws, Gs, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], projections, step=t,
            wd_mode=[c[4] for c in cases], delta=deltas, backend=backend, **HYPER,
            exp_avg_absmax=[k.get("exp_avg_absmax") for k in eight_bit],
            exp_avg_sq_absmax=[k.get("exp_avg_sq_absmax") for k in eight_bit],
            state_block_size=[c[2] or 256 for c in cases])
        for i, case in enumerate(cases):
            exp_avg, exp_avg_sq, keywords = moment_arguments(singles[i])
            ops.lowrank_adamw_step_(single_Ws[i], Gs[i], exp_avg, exp_avg_sq, projections[i], step=t,
                                    wd_mode=case[4], delta=single_deltas[i], backend=backend, **HYPER, **keywords)
        for i, case in enumerate(cases):
            what = f"{backend} step {t} matrix {i} {case[0]} B={case[2]} W {case[3]} {case[4]}"
            if backend != "cpu" or (case[1][0] is not None and case[1][1] is not None):
                assert torch.equal(Ws[i], single_Ws[i]), f"{what}: W differs from lowrank_adamw_step_"
                for key, value in states[i].items():
                    assert not torch.is_tensor(value) or torch.equal(value, singles[i][key]), f"{what}: {key}"
            if expected[i] is None:
                continue
            W_prev, exact, plain = expected[i]
            W64 = W_prev.double()
            assert_within_torch_error(Ws[i].double() - W64, exact[0] - W64, plain[0].double() - W64, what + " W - W0",
                                      k=max(case[0]))
            if deltas[i] is not None:
                assert_within_torch_error(deltas[i], exact[3], plain[3], what + " delta", k=max(case[0]))
            for name, signed, j in (("exp_avg", True, 1), ("exp_avg_sq", False, 2)):
                _check_moment(f"{what} {name}", signed, states[i], states[i][name],
                              states[i][moments.absmax_key(name)], exact[j], plain[j], case[2])


@pytest.mark.parametrize("backend", MULTI_BACKENDS)
def test_opcheck_multi_op_on_8bit_moments(backend, rng):
    """torch.library.opcheck of lowrank_adamw_multi_step_ with an 8-bit and a float matrix (schema, fake kernel,
    in-place annotations of the absmax lists)."""
    state = _state((3, 13), 4, rng, steps_done=1)
    W = [torch.randn(21, 13, generator=rng), torch.randn(9, 13, generator=rng)]
    G = [torch.randn(21, 13, generator=rng), torch.randn(9, 13, generator=rng).to(torch.bfloat16)]
    torch.library.opcheck(
        torch.ops.lowrank_ops.lowrank_adamw_multi_step_.default,
        (W, G, [state["exp_avg"], torch.zeros(9, 2)], [state["exp_avg_sq"], torch.zeros(9, 2)], [torch.zeros(9, 2)],
         ["rademacher", "none"], [5, 0], [3, 0], [None, None], ["none", "gaussian"], [0, 7], [0, 2], [None, None],
         [1e-3, 2e-3], [0.9, 0.9], [0.999, 0.99], [1e-8, 1e-8], [0.01, 0.0], [2, 1], [1.0, 0.5], ["full", "adapter"],
         [state["exp_avg_absmax"]], [state["exp_avg_sq_absmax"]], [4, 0]),
        {"backend": backend})


def _multi_call_8bit(rng, **override):
    """A two-matrix call of the public multi-tensor op, matrix 1 on 8-bit moments (block 4), with `override`."""
    from lowrank_ops import ops

    state = _state((3, 13), 4, rng, steps_done=1)
    args = {"W": [torch.randn(21, 13), torch.randn(21, 13)], "G": [torch.randn(21, 13), torch.randn(21, 13)],
            "exp_avg": [torch.zeros(3, 13), state["exp_avg"]], "exp_avg_sq": [torch.zeros(3, 13), state["exp_avg_sq"]],
            "projections": [Projection(SideOperator("rademacher", 3, seed=5), None)] * 2}
    kwargs = {"exp_avg_absmax": [None, state["exp_avg_absmax"]],
              "exp_avg_sq_absmax": [None, state["exp_avg_sq_absmax"]], "state_block_size": 4}
    for key, value in override.items():
        (args if key in args else kwargs)[key] = value
    ops.lowrank_adamw_multi_step_(*args.values(), step=1, **HYPER, **kwargs)


@pytest.mark.parametrize("override,error,message", [
    ({"exp_avg_absmax": [None]}, ValueError, "argument 'exp_avg_absmax' must have one entry per matrix (2, as 'W')"),
    ({"exp_avg_sq_absmax": [None, None]}, ValueError,
     "matrix 1: argument 'exp_avg_sq_absmax' must be a tensor when the other absmax is given"),
    ({"exp_avg_sq_absmax": [None, torch.zeros(3, 3)]}, ValueError,
     "matrix 1: argument 'exp_avg_sq_absmax' must be a float32 tensor of shape [3, 4] (one absmax per 4"),
    ({"state_block_size": [4, 0]}, ValueError, "matrix 1: argument 'state_block_size' must be >= 1, got 0"),
    ({"state_block_size": [4]}, ValueError, "argument 'state_block_size' must be an int or a sequence of 2"),
    ({"exp_avg": [torch.zeros(3, 13), torch.zeros(3, 13)]}, ValueError,
     "matrix 1: argument 'exp_avg' must be a uint8 tensor (8-bit codes) of the projected shape"),
    ({"exp_avg_absmax": None}, ValueError, "matrix 1: argument 'exp_avg_absmax' must be a tensor when the other"),
])
def test_multi_op_8bit_arguments_are_checked(override, error, message, rng):
    with pytest.raises(error) as info:
        _multi_call_8bit(rng, **override)
    assert f"lowrank_ops.lowrank_adamw_multi_step_: {message}" in str(info.value), str(info.value)


@pytest.mark.parametrize("backend", MULTI_BACKENDS)
@pytest.mark.parametrize("override,message", [
    ({"state_block_size": [4]}, "argument 'state_block_size' must be empty or have one entry per matrix (2, as 'W'), "
                                "got 1"),
    ({"exp_avg_absmax": []}, ("argument 'exp_avg_absmax' must hold one absmax per matrix with 8-bit moments "
                              "(state_block_size != 0: 1), got 0")),
    ({"state_block_size": [0, 0]}, ("argument 'exp_avg_absmax' must hold one absmax per matrix with 8-bit moments "
                                    "(state_block_size != 0: 0), got 1")),
])
def test_multi_op_8bit_lists_are_checked_by_the_kernels(backend, override, message, rng):
    """torch.ops callers reach the kernels unchecked: every backend checks the 8-bit lists itself."""
    state = _state((3, 13), 4, rng, steps_done=1)
    args = dict(W=[torch.randn(21, 13), torch.randn(21, 13)], G=[torch.randn(21, 13), torch.randn(21, 13)],
                exp_avg=[torch.zeros(3, 13), state["exp_avg"]], exp_avg_sq=[torch.zeros(3, 13), state["exp_avg_sq"]],
                delta=[], left_kind=["rademacher"] * 2, left_seed=[5, 5], left_rank=[3, 3], left_matrix=[None, None],
                right_kind=["none"] * 2, right_seed=[0, 0], right_rank=[0, 0], right_matrix=[None, None],
                lr=[1e-3] * 2, beta1=[0.9] * 2, beta2=[0.999] * 2, eps=[1e-8] * 2, weight_decay=[0.0] * 2,
                step=[1, 1], scale=[1.0] * 2, wd_mode=["full"] * 2, exp_avg_absmax=[state["exp_avg_absmax"]],
                exp_avg_sq_absmax=[state["exp_avg_sq_absmax"]], state_block_size=[0, 4])
    args.update(override)
    with pytest.raises((RuntimeError, ValueError)) as info:
        torch.ops.lowrank_ops.lowrank_adamw_multi_step_(*args.values(), backend=backend)
    assert f"lowrank_ops.lowrank_adamw_multi_step_: {message}" in str(info.value), str(info.value)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_pure_torch_8bit_kernel_matches_float64_oracle_with_the_same_quantization(case, rng):
    """pure_torch/lowrank_adam8.py, the 8-bit op's pure-torch kernel (schema arguments), against the oracle."""

    def step(W, G, state, projection, t, wd_mode, delta):
        sides = [x for op in (projection.left, projection.right) for x in _schema_side(op)]
        plain8.lowrank_adamw_step_(W, G, state["exp_avg"], state["exp_avg_sq"], delta, *sides, HYPER["lr"],
                                   HYPER["beta1"], HYPER["beta2"], HYPER["eps"], HYPER["weight_decay"], t,
                                   HYPER["scale"], wd_mode, state["exp_avg_absmax"], state["exp_avg_sq_absmax"],
                                   state["state_block_size"])

    _check_8bit_parity(case, rng, step)


def _schema_side(op):
    """A SideOperator as the schema's (kind, seed, rank, matrix)."""
    if op is None:
        return ("none", 0, 0, None)
    seed = op.seed - 2**64 if op.seed is not None and op.seed >= 2**63 else (op.seed or 0)
    return (op.kind, seed, op.rank, op.matrix)


def _moment_chain(r, m, v, delta, t, adapter, dtype):
    """kernels/adam.h's moment update and direction in `dtype` (plain torch's chain, or float64)."""
    r, m, v = r.to(dtype), m.to(dtype), v.to(dtype)
    lr, b1, b2, eps, wd = (HYPER[k] for k in ("lr", "beta1", "beta2", "eps", "weight_decay"))
    m = m + (1 - b1) * (r - m)
    v = v * b2 + (1 - b2) * r * r
    N = (m / (1 - b1**t)) / (v.sqrt() / (1 - b2**t) ** 0.5 + eps)
    if adapter:
        N = N + wd * delta.to(dtype)
        delta = delta.to(dtype) - lr * N
    return N, m, v, delta


def _epilogue(impl):
    """The 8-bit moment epilogue of the fused kernels: C++ (csrc/cpu/adam_epilogues8.h) or Triton
    (triton/blockwise8.py q8_adam_epilogue, in the interpreter without a GPU), through their entries."""
    if impl == "triton":
        reason = lowrank_backends.unavailable_reason("triton", "lowrank_adamw_step_", torch.device("cpu"))
        if reason is not None:
            pytest.skip(str(reason))
        from lowrank_ops.triton import blockwise8 as triton8

        return triton8.adam_moments_
    cpu = _extension.compiled("cpu")
    if cpu is None or not hasattr(cpu, "blockwise8_adam_moments_"):
        pytest.skip("lowrank_ops._C is not built (with blockwise8_adam_moments_)")
    return cpu.blockwise8_adam_moments_


@pytest.mark.parametrize("impl", ["cpp", "triton"])
@pytest.mark.parametrize("adapter", [False, True], ids=["full", "adapter"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,block", [((1, 1), 256), ((7, 13), 4), ((5, 300), 256), ((3, 40), 7)])
def test_8bit_moment_epilogue_matches_float64_oracle(shape, block, dtype, adapter, impl, rng):
    """The fused kernels' 8-bit moment epilogue: the direction (and delta) under the tolerance rule against
    the float64 chain on the oracle's decode, the encoded moments within the quantization bound."""
    if impl == "triton" and dtype == torch.float64:
        pytest.skip("the Triton step computes in float32 (it takes no float64 weights)")
    epilogue = _epilogue(impl)
    state = _state(shape, block, rng, steps_done=1)
    r = torch.randn(shape, generator=rng, dtype=dtype)
    delta = torch.randn(shape, generator=rng, dtype=dtype) * 1e-3 if adapter else None
    t = 3
    exact_m, exact_v = (reference8.dequantize(state[k], state[moments.absmax_key(k)], signed, block)
                        for k, signed in (("exp_avg", True), ("exp_avg_sq", False)))
    exact = _moment_chain(r, exact_m, exact_v, delta, t, adapter, torch.float64)
    plain = _moment_chain(r, *moments.read(state), delta, t, adapter, dtype)  # the format's float32 decode
    ours_r, ours_delta = r.clone(), None if delta is None else delta.clone()
    epilogue(ours_r, state["exp_avg"], state["exp_avg_absmax"], state["exp_avg_sq"], state["exp_avg_sq_absmax"],
             ours_delta, block, HYPER["lr"], HYPER["beta1"], HYPER["beta2"], HYPER["eps"], HYPER["weight_decay"], t,
             adapter)
    assert_within_torch_error(ours_r, exact[0], plain[0], "direction")
    if adapter:
        assert_within_torch_error(ours_delta, exact[3], plain[3], "delta")
    for name, signed, i in (("exp_avg", True, 1), ("exp_avg_sq", False, 2)):
        _check_moment(name, signed, state, state[name], state[moments.absmax_key(name)], exact[i], plain[i], block)


@pytest.mark.parametrize("backend", ["triton"])
@pytest.mark.parametrize("side", ["left", "right", "both"])
@pytest.mark.parametrize("wd_mode", ["full", "adapter"])
def test_fused_8bit_step_encodes_bit_identically_to_the_cpu_kernel(wd_mode, side, backend, rng):
    """Given the same float32 projected gradient, the fused 8-bit step of `backend` (Triton: the projection
    GEMM's ADAM8 epilogue, in the interpreter without a GPU) writes the same codes, absmax and delta as the
    C++ CPU kernel, bit for bit (docs/DESIGN.md §3: identical float32 inputs encode to identical bytes). The
    projected gradient is exact in float32 in every summation order: sides of entries in {-1, 0, 1}, an integer
    gradient. Blocks of 7 do not divide the projected rows."""
    if not hasattr(_extension.compiled("cpu"), "lowrank_adamw_step8_"):
        pytest.skip("lowrank_ops._C is not built (with lowrank_adamw_step8_)")
    reason = lowrank_backends.unavailable_reason(backend, "lowrank_adamw_step_", torch.device("cpu"))
    if reason is not None:
        pytest.skip(str(reason))
    from lowrank_ops import ops

    shape, rank, block = (29, 45), 11, 7

    def side_operator(d):
        return SideOperator("matrix", rank, matrix=torch.randint(-1, 2, (rank, d), generator=rng).float())

    left = side_operator(shape[0]) if side in ("left", "both") else None
    right = side_operator(shape[1]) if side in ("right", "both") else None
    projection = Projection(left, right)
    projected = projection.projected_shape(shape)
    state = _state(projected, block, rng, steps_done=1)
    G = torch.randint(-8, 9, shape, generator=rng).float()
    W = torch.randn(shape, generator=rng)
    delta = torch.randn(projected, generator=rng) * 1e-3 if wd_mode == "adapter" else None
    results = {}
    for name in ("cpu", backend):
        st = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
        d = None if delta is None else delta.clone()
        ops.lowrank_adamw_step_(W.clone(), G, st["exp_avg"], st["exp_avg_sq"], projection, step=3, wd_mode=wd_mode,
                                delta=d, exp_avg_absmax=st["exp_avg_absmax"],
                                exp_avg_sq_absmax=st["exp_avg_sq_absmax"], state_block_size=block, backend=name,
                                **HYPER)
        results[name] = [st[k] for k in ("exp_avg", "exp_avg_sq")]
        results[name] += [x.view(torch.int32) for x in (st["exp_avg_absmax"], st["exp_avg_sq_absmax"], d)
                          if x is not None]
    for what, ours, cpu in zip(("exp_avg", "exp_avg_sq", "exp_avg_absmax", "exp_avg_sq_absmax", "delta"),
                               results[backend], results["cpu"]):
        assert torch.equal(ours, cpu), f"{what}: {int((ours != cpu).sum())} of {ours.numel()} differ"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wd_mode", ["full", "adapter"])
def test_opcheck_on_8bit_moments(backend, wd_mode, rng):
    """torch.library.opcheck of lowrank_adamw_step_ with 8-bit moments (schema, fake kernel, in-place
    annotations of the codes and absmax)."""
    shape, block = (21, 13), 4
    state = _state((3, 13), block, rng, steps_done=1)
    W, G = torch.randn(shape, generator=rng), torch.randn(shape, generator=rng).to(torch.bfloat16)
    delta = torch.randn(3, 13, generator=rng) if wd_mode == "adapter" else None
    torch.library.opcheck(
        torch.ops.lowrank_ops.lowrank_adamw_step_.default,
        (W, G, state["exp_avg"], state["exp_avg_sq"], delta, "rademacher", 5, 3, None, "none", 0, 0, None, 1e-3,
         0.9, 0.999, 1e-8, 0.01, 2, 1.0, wd_mode, state["exp_avg_absmax"], state["exp_avg_sq_absmax"], block),
        {"backend": backend})


@pytest.mark.parametrize("override,message", [
    ({"exp_avg_absmax": None}, "argument 'exp_avg_absmax' must be a tensor when the other absmax is given"),
    ({"exp_avg": torch.zeros(3, 13)}, "argument 'exp_avg' must be a uint8 tensor (8-bit codes) of the projected"),
    ({"exp_avg_sq_absmax": torch.zeros(3, 3)},
     ("argument 'exp_avg_sq_absmax' must be a float32 tensor of shape [3, 4] (one absmax per 4 elements")),
    ({"state_block_size": 0}, "argument 'state_block_size' must be >= 1, got 0"),
])
def test_8bit_step_arguments_are_checked(override, message, rng):
    from lowrank_ops import ops

    state = _state((3, 13), 4, rng, steps_done=1)
    kwargs = {"exp_avg": state["exp_avg"], "exp_avg_sq": state["exp_avg_sq"],
              "exp_avg_absmax": state["exp_avg_absmax"], "exp_avg_sq_absmax": state["exp_avg_sq_absmax"],
              "state_block_size": 4} | override
    with pytest.raises(ValueError) as info:
        ops.lowrank_adamw_step_(torch.randn(21, 13), torch.randn(21, 13), kwargs.pop("exp_avg"),
                                kwargs.pop("exp_avg_sq"), Projection(SideOperator("rademacher", 3, seed=5), None),
                                step=1, **HYPER, **kwargs)
    assert f"lowrank_ops.lowrank_adamw_step_: {message}" in str(info.value), str(info.value)


# ---------------------------------------------------------------------------------------------------
# State layout, resume, load checks


def _opt8(model, kind="rademacher", block=5, **extra):
    groups = split_groups(model, rank=3, projection=kind, update_gap=4, state_bits=8, state_block_size=block,
                          **extra)
    return LowRankAdamW(groups, lr=5e-3, weight_decay=0.05, seed=11)


def _galore8(model, **extra):
    groups = split_groups(model, rank=3, update_proj_gap=4, scale=0.5, proj_type="std")
    return GaLoreAdamW8bit(groups, lr=5e-3, min_8bit_size=0, state_block_size=4, **extra)


def _saved(model, opt):
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


RESUME = [("lowrank-rademacher", lambda m: _opt8(m)),
          ("lowrank-svd-adapter", lambda m: _opt8(m, "svd", 256, wd_mode="adapter")),
          ("lowrank-adaptive", lambda m: _opt8(m, "adaptive", 2, min_gap=2)),
          ("lowrank-per-matrix", lambda m: _opt8(m, "gaussian", 3)),
          ("galore8bit", _galore8)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,make", RESUME, ids=[r[0] for r in RESUME])
def test_8bit_resume_is_bit_identical_from_a_weights_only_checkpoint(name, make, dtype):
    model = make_model(dtype)
    opt = make(model)
    if name == "lowrank-per-matrix":
        opt._multi_tensor = False
    train(model, opt, 6)
    saved = _saved(model, opt)
    low = [s for s in saved["opt"]["state"].values() if "layer" in s]
    assert low
    for state in low:  # codes, absmax, the block length; nothing but tensors and ints
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.uint8
        rows, cols = state["exp_avg"].shape
        block = state["state_block_size"]
        for key in ("exp_avg_absmax", "exp_avg_sq_absmax"):
            assert state[key].dtype == torch.float32 and state[key].shape == (rows, -(-cols // block))
        assert all(isinstance(v, (int, torch.Tensor)) for v in state.values())
    resumed_model = make_model(dtype, seed=5)
    resumed_model.load_state_dict(saved["model"])
    resumed = make(resumed_model)
    resumed.load_state_dict(saved["opt"])
    if name == "lowrank-per-matrix":
        resumed._multi_tensor = False
    train(model, opt, 7, start=6)  # crosses the refresh at step 8
    train(resumed_model, resumed, 7, start=6)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
        if p in opt.state:
            state_equal(opt.state[p], resumed.state[q])


def test_load_refuses_another_moment_format():
    model = make_model()
    opt8 = _opt8(model)
    train(model, opt8, 2)
    saved8 = opt8.state_dict()
    opt32 = LowRankAdamW(split_groups(model, rank=3, projection="rademacher", update_gap=4), lr=5e-3, seed=11)
    train(model, opt32, 1)
    with pytest.raises(ValueError, match=r"'state_bits': expected 32 \(this optimizer\), got 8 \(the state dict\)"):
        opt32.load_state_dict(saved8)
    other_block = _opt8(model, block=7)
    with pytest.raises(ValueError, match=r"'state_block_size': expected 7 \(this optimizer\), got 5"):
        other_block.load_state_dict(saved8)
    broken = _opt8(model).state_dict() | {"state": {k: dict(v) for k, v in saved8["state"].items()}}
    for state in broken["state"].values():
        if "layer" in state:
            state["exp_avg_absmax"] = state["exp_avg_absmax"][:, :1]
    fresh = _opt8(model)
    with pytest.raises(ValueError, match="the state's 'exp_avg_absmax' must be a float32 tensor of shape"):
        fresh.load_state_dict(broken)


def test_float_state_dicts_saved_before_8bit_moments_still_load():
    model = make_model()
    opt = LowRankAdamW(split_groups(model, rank=3, projection="rademacher", update_gap=4), lr=5e-3, seed=11)
    train(model, opt, 2)
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["state_bits"], group["state_block_size"]
    fresh = LowRankAdamW(split_groups(model, rank=3, projection="rademacher", update_gap=4), lr=5e-3, seed=11)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["state_bits"] == 32


def test_changing_state_bits_mid_run_restarts_the_state():
    model = make_model()
    opt = LowRankAdamW(split_groups(model, rank=3, projection="rademacher", update_gap=4), lr=5e-3, seed=11)
    train(model, opt, 2)
    opt.param_groups[0]["state_bits"] = 8
    with pytest.warns(RuntimeWarning, match="'state_bits' from 32 to 8 after its state was built; the state"):
        train(model, opt, 1, start=2)
    state = opt.state[model.fc1.weight]
    assert state["exp_avg"].dtype == torch.uint8 and state["step"] == 1


def test_bad_moment_settings_raise_clear_errors():
    model = make_model()
    with pytest.raises(ValueError, match=r"param group 0: 'state_bits' must be one of \(32, 8\), got 16"):
        LowRankAdamW(split_groups(model, rank=3, state_bits=16))
    with pytest.raises(ValueError, match=r"'state_block_size' must be an int >= 1, got 0"):
        LowRankAdamW(split_groups(model, rank=3, state_bits=8, state_block_size=0))
    with pytest.raises(ValueError, match=r"GaLoreAdamW8bit: argument 'amsgrad' must be False"):
        GaLoreAdamW8bit(model.parameters(), amsgrad=True)
    with pytest.raises(ValueError, match=r"argument 'percentile_clipping' must be 100"):
        GaLoreAdamW8bit(model.parameters(), percentile_clipping=5)


def test_adaptive_moments_are_transformed_decoded_and_stay_8bit():
    """The "adaptive" kind's refresh maps the moments into the new basis on their decoded values and encodes
    the result: the state stays 8-bit in the new rank's shape, and the anchor is the decoded first moment."""
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(24, 10))
    opt = LowRankAdamW([W], rank=6, projection="adaptive", update_gap=3, min_gap=1, max_gap=3, state_bits=8,
                       state_block_size=4, lr=1e-2)
    target = torch.randn(24, 2) @ torch.randn(2, 10)
    refreshes = set()
    for _ in range(10):
        opt.zero_grad()
        ((W - target) ** 2).sum().backward()
        opt.step()
        state = opt.state[W]
        refreshes.add(state["refresh"])
        assert state["exp_avg"].dtype == torch.uint8
        rows, cols = state["exp_avg"].shape
        assert state["exp_avg_absmax"].shape == (rows, -(-cols // 4))
        assert state["proj_anchor"].dtype == torch.float32 and state["proj_anchor"].shape == (rows, cols)
        assert (rows, cols) == (24, opt.ranks()[0])
    assert len(refreshes) > 2


# ---------------------------------------------------------------------------------------------------
# GaLoreAdamW8bit


def test_galore8bit_takes_galore_torchs_arguments_and_param_group_keys():
    """Every parameter of galore-torch's GaLoreAdamW8bit (bitsandbytes' AdamW8bit constructor) is accepted,
    with its defaults; its param-group keys rank, update_proj_gap, scale, proj_type drive the projection."""
    galore_torch = pytest.importorskip("galore_torch")
    theirs = inspect.signature(galore_torch.GaLoreAdamW8bit.__init__).parameters
    ours = inspect.signature(GaLoreAdamW8bit.__init__).parameters
    for name, parameter in theirs.items():
        assert name in ours, name
        assert ours[name].default == parameter.default, name
    model = make_model()
    groups = split_groups(model, rank=2, update_proj_gap=3, scale=0.25, proj_type="reverse_std")
    opt = GaLoreAdamW8bit(groups, lr=1e-3, min_8bit_size=0)
    train(model, opt, 4)
    fc1 = opt.state[model.fc1.weight]  # [20, 12]: reverse_std projects the larger (left) side at rank 2
    assert fc1["exp_avg"].shape == (2, 12) and fc1["exp_avg"].dtype == torch.uint8 and fc1["refresh"] == 2


def test_galore8bit_follows_bitsandbytes_adam_update(rng):
    """One low-rank step of GaLoreAdamW8bit (32-bit moments: below min_8bit_size) against a float64
    transcription of galore-torch's GaLoreAdamW8bit with bitsandbytes' Adam (module docstring of
    lowrank_ops/optim/galore8bit.py), given the optimizer's own basis."""
    W = torch.nn.Parameter(torch.randn(30, 12, generator=rng))
    W0 = W.detach().clone().double()
    opt = GaLoreAdamW8bit([{"params": [W], "rank": 4, "update_proj_gap": 10, "scale": 0.5, "proj_type": "std"}],
                          lr=0.01, weight_decay=0.1, eps=1e-3)
    G = torch.randn(30, 12, generator=rng)
    W.grad = G.clone()
    opt.step()
    state = opt.state[W]
    assert state["exp_avg"].dtype == torch.float32  # 30 x 4 < min_8bit_size = 4096

    def transcribed(dtype):
        P = state["proj_right"].to(dtype)  # std, m >= n: right, R = G P^T
        R = G.to(dtype) @ P.T
        m, v = 0.1 * R, 0.001 * R * R  # first step from zero moments
        u = -0.01 * (m / 0.1) / (v.sqrt() / 0.001**0.5 + 1e-3)  # bitsandbytes' Adam on a zero "weight"
        return (W0.to(dtype) + 0.5 * u @ P) * (1 - 0.01 * 0.1)  # project back, then the weight decay

    expected, plain = transcribed(torch.float64), transcribed(torch.float32)
    assert_within_torch_error(W.detach().double() - W0, expected - W0, plain.double() - W0, "W - W0", k=30)


# ---------------------------------------------------------------------------------------------------
# memory.estimate


@pytest.mark.parametrize("block", [256, 5])
def test_estimate_counts_the_8bit_state_the_optimizer_holds(block):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 70, bias=False), torch.nn.Linear(70, 9, bias=False))
    opt = LowRankAdamW(model.parameters(), rank=6, state_bits=8, state_block_size=block)
    model(torch.randn(3, 40)).sum().backward()
    opt.step()
    held = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    config = {"rank": 6, "state_bits": 8, "state_block_size": block}
    estimate = memory.estimate(model, config, dtype=torch.float32)
    assert estimate.optimizer_state == held
    fp32 = memory.estimate(model, {"rank": 6}, dtype=torch.float32).optimizer_state
    rows_blocks = 70 * -(-6 // block) + 6 * -(-70 // block)  # [70, 6] (right of 70 x 40), [6, 70] (left of 9 x 70)
    assert estimate.optimizer_state == 2 * (fp32 // 8 + 4 * rows_blocks)


def test_estimate_8bit_state_at_the_papers_shapes_is_under_a_third():
    shapes = memory.llama_shapes(2, 1024, 2736)
    targets = ("proj",)
    fp32 = memory.estimate(shapes, {"rank": 256, "targets": targets, "state_bits": 32}, dtype=torch.bfloat16)
    q8 = memory.estimate(shapes, {"rank": 256, "targets": targets, "state_bits": 8}, dtype=torch.bfloat16)
    plain = memory.estimate([s for n, s in shapes if "proj" not in n], None, dtype=torch.bfloat16).optimizer_state
    assert (q8.optimizer_state - plain) <= 0.3 * (fp32.optimizer_state - plain)
    with pytest.raises(ValueError, match="argument 'state_bits' must be one of"):
        memory.estimate(shapes, {"rank": 4, "state_bits": 4})


# ---------------------------------------------------------------------------------------------------
# Per-layer mode, and CUDA (gpu tests: skipped without a GPU)


@pytest.mark.parametrize("make", [lambda m: _opt8(m, "rademacher", 4), _galore8], ids=["lowrank", "galore8bit"])
def test_per_layer_8bit_equals_the_per_matrix_step(make):
    """step_in_backward steps each matrix through the single op with its 8-bit moments decoded and encoded
    around it: bit-identical to step() on the same op (multi_tensor=False)."""
    from lowrank_ops.optim import step_in_backward

    regular_model, layer_model = make_model(), make_model()
    regular, per_layer = make(regular_model), make(layer_model)
    regular._multi_tensor = False
    stepper = step_in_backward(layer_model, per_layer)
    for i in range(5):
        regular.zero_grad(set_to_none=True)
        lm_loss(regular_model, batch(i)).backward()
        regular.step()
        lm_loss(layer_model, batch(i)).backward()
    for p, q in zip(regular_model.parameters(), layer_model.parameters()):
        assert torch.equal(p, q)
        if p in regular.state:
            state_equal(regular.state[p], per_layer.state[q])
    stepper.remove()


@pytest.mark.gpu
@pytest.mark.parametrize("make", [lambda m: _opt8(m, "rademacher", 4), _galore8], ids=["lowrank", "galore8bit"])
def test_8bit_optimizers_run_on_cuda_as_on_the_cpu(make):
    """The 8-bit optimizers on CUDA (GaLoreAdamW8bit too: galore-torch's needs bitsandbytes' CUDA kernels) give
    the CPU run's weights to float32 rounding after a few steps, with 8-bit states on the device."""
    cpu_model, cuda_model = make_model(), make_model().cuda()
    cpu_opt, cuda_opt = make(cpu_model), make(cuda_model)
    for i in range(4):
        for model, opt, device in ((cpu_model, cpu_opt, "cpu"), (cuda_model, cuda_opt, "cuda")):
            opt.zero_grad(set_to_none=True)
            lm_loss(model, batch(i).to(device)).backward()
            opt.step()
    for p, q in zip(cpu_model.parameters(), cuda_model.parameters()):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-4, atol=1e-5)
    states = [s for s in cuda_opt.state.values() if "layer" in s]
    assert states and all(s["exp_avg"].dtype == torch.uint8 and s["exp_avg"].is_cuda for s in states)


@pytest.mark.gpu
@pytest.mark.parametrize("signed", [True, False])
def test_triton_encode_on_cuda_is_bit_identical_to_pure_torch(signed, rng):
    from lowrank_ops.triton import blockwise8 as triton8

    v = torch.randn(37, 300, generator=rng).cuda() * torch.pow(10.0, -6 * torch.rand(37, 300, generator=rng)).cuda()
    v = v if signed else v.abs()
    codes, absmax = triton8.encode(v, signed, 256)
    want_codes, want_absmax = production.encode(v, signed, 256)
    assert torch.equal(codes, want_codes) and torch.equal(absmax, want_absmax)
    assert torch.equal(triton8.decode(codes, absmax, signed, 256), production.decode(codes, absmax, signed, 256))
