"""Regression tests of issue 16's reproductions (items 1, 2, 3, 5, 7): the rules the op layer applies to every
argument an op writes (lowrank_ops/_guard.py), writability of NumPy arrays (lowrank_ops/_dlpack.py), and the
argument checks of the public ops (lowrank_ops/_checks.py and each family's module)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lowrank_ops import _ops, ops
from lowrank_ops.ops import Projection

from helpers import assert_clear_error, backends

ROOT = Path(__file__).resolve().parents[1]
LIB = torch.ops.lowrank_ops
HYPER = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1, "step": 1}
PROJECTION = Projection.seeded("gaussian", 5, 3, "left")


def step(W, G=None, m=None, v=None, backend=None, projection=PROJECTION, **changes):
    """lowrank_adamw_step_ on W (9 x 7 unless given) with fresh G and zero moments where not given."""
    shape = projection.projected_shape(W.shape)
    G = torch.randn(W.shape) if G is None else G
    m = torch.zeros(shape) if m is None else m
    v = torch.zeros(shape) if v is None else v
    ops.lowrank_adamw_step_(W, G, m, v, projection, backend=backend, **{**HYPER, **changes})


# --------------------------------------------------------------------------------------------------------
# Item 1: read-only arrays as arguments the op writes
# --------------------------------------------------------------------------------------------------------


def test_read_only_numpy_arrays_are_refused_before_any_write(tmp_path):
    """A read-only memmap as W segfaulted (SIGSEGV): run in a subprocess so that a regression fails here."""
    code = textwrap.dedent(f"""
        import numpy as np
        from lowrank_ops import ops
        path = {str(tmp_path / "w.bin")!r}
        np.ones((9, 7), np.float32).tofile(path)
        frozen = np.ones((9, 7), np.float32)
        frozen.setflags(write=False)
        arrays = [np.memmap(path, np.float32, "r", shape=(9, 7)), np.frombuffer(bytes(9 * 7 * 4), np.float32).reshape(9, 7),
                  frozen]
        proj = ops.Projection.seeded("gaussian", 5, 3, "left")
        hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, step=1)
        for W in arrays:
            before = W.copy()
            try:
                ops.lowrank_adamw_step_(W, np.ones((9, 7), np.float32), np.zeros((3, 7), np.float32),
                                        np.zeros((3, 7), np.float32), proj, **hyper)
                print("accepted")
            except ValueError as e:
                assert "argument 'W' is written in place, but the" in str(e) and "is read-only" in str(e), e
                assert np.array_equal(W, before)
                print("refused")
        m = np.zeros((3, 7), np.float32)
        m.setflags(write=False)
        try:
            ops.lowrank_adamw_step_(np.ones((9, 7), np.float32), np.ones((9, 7), np.float32), m,
                                    np.zeros((3, 7), np.float32), proj, **hyper)
        except ValueError as e:
            print("refused" if "argument 'exp_avg' is written in place" in str(e) else e)
    """)
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["refused"] * 4, result.stdout


def test_read_only_numpy_arrays_are_fine_where_the_op_only_reads():
    G = np.random.default_rng(0).standard_normal((9, 7)).astype(np.float32)
    G.setflags(write=False)
    W, m, v = np.ones((9, 7), np.float32), np.zeros((3, 7), np.float32), np.zeros((3, 7), np.float32)
    ops.lowrank_adamw_step_(W, G, m, v, PROJECTION, **HYPER)
    assert not np.array_equal(W, np.ones((9, 7), np.float32))
    assert isinstance(ops.sketch_project(G, 1, 3), np.ndarray)


# --------------------------------------------------------------------------------------------------------
# Item 2: autograd and version counters, on every backend and through torch.ops
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", backends("lowrank_adamw_step_"))
def test_issue_repro_wrong_gradient_is_now_an_error(backend):
    """The issue's repro: the CPU step mutated W without a version bump and a.grad came out wrong."""
    a = torch.randn(9, 7, requires_grad=True)
    W = a * 2
    y = (W * W).sum()
    assert_clear_error(lambda: step(W, backend=backend), RuntimeError,
                       "lowrank_ops.lowrank_adamw_step_: argument 'W' requires grad")
    with torch.no_grad():
        step(W, backend=backend)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize("backend", backends("lowrank_adamw_step_"))
def test_autograd_leaves_and_inference_tensors(backend):
    leaf = torch.randn(9, 7, requires_grad=True)
    assert_clear_error(lambda: step(leaf, backend=backend), RuntimeError, "argument 'W' requires grad")
    with torch.no_grad():  # how optimizers call it
        step(leaf, backend=backend)
    with torch.inference_mode():
        frozen = torch.randn(9, 7)
    assert_clear_error(lambda: step(frozen, backend=backend), RuntimeError, "argument 'W' is an inference tensor")
    with torch.inference_mode():
        step(frozen, backend=backend)
    m = torch.zeros(3, 7, requires_grad=True)
    assert_clear_error(lambda: step(torch.randn(9, 7), m=m, backend=backend), RuntimeError,
                       "argument 'exp_avg' requires grad")


@pytest.mark.parametrize("backend", backends("lowrank_adamw_step_"))
def test_every_written_tensor_gets_a_version_bump(backend):
    W, m, v = torch.randn(9, 7), torch.zeros(3, 7), torch.zeros(3, 7)
    G = torch.randn(9, 7)
    before = [t._version for t in (W, G, m, v)]
    step(W, G, m, v, backend=backend)
    after = [t._version for t in (W, G, m, v)]
    assert after[0] > before[0] and after[2] > before[2] and after[3] > before[3]
    assert after[1] == before[1]  # G is only read


def test_the_rules_come_from_the_schemas_and_cover_direct_calls():
    """Every op whose schema writes an argument gets the rules, also when called through torch.ops."""
    written = {op: [rules.names[i] for i in rules.mutated] for op, rules in _ops.RULES.items() if rules.mutated}
    assert written == {"sketch_fill_": ["out"],
                       "lowrank_adamw_step_": ["W", "exp_avg", "exp_avg_sq", "delta", "exp_avg_absmax",
                                               "exp_avg_sq_absmax"],
                       "lowrank_apollo_step_": ["W", "exp_avg", "exp_avg_sq", "limiter_norm"],
                       "lowrank_apollo_multi_step_": ["W", "exp_avg", "exp_avg_sq", "limiter_norm"],
                       "lowrank_adamw_multi_step_": ["W", "exp_avg", "exp_avg_sq", "delta", "exp_avg_absmax",
                                                     "exp_avg_sq_absmax"]}
    out = torch.empty(3, 7)
    version = out._version
    LIB.sketch_fill_(out, 1, "gaussian")
    assert out._version > version
    leaf = torch.empty(3, 7, requires_grad=True)
    assert_clear_error(lambda: LIB.sketch_fill_(leaf, 1, "gaussian"), RuntimeError,
                       "lowrank_ops.sketch_fill_: argument 'out' requires grad")
    expanded = torch.empty(1, 7).expand(3, 7)
    assert_clear_error(lambda: LIB.sketch_fill_(expanded, 1, "gaussian", "reference"), ValueError,
                       "argument 'out' is written in place, but some of its elements share memory")
    # list arguments: every entry, named by its index
    W, m = [torch.randn(5, 4), torch.randn(5, 4, requires_grad=True)], [torch.zeros(2, 4), torch.zeros(2, 4)]
    multi_args = ([torch.randn(5, 4)] * 2, m, [torch.zeros(2, 4), torch.zeros(2, 4)], [], ["rademacher"] * 2, [1, 2],
                  [2, 2], [None, None], ["none"] * 2, [0, 0], [0, 0], [None, None], [0.1] * 2, [0.9] * 2, [0.99] * 2,
                  [1e-8] * 2, [0.0] * 2, [1, 1], [1.0] * 2, ["full"] * 2)
    assert_clear_error(lambda: LIB.lowrank_adamw_multi_step_(W, *multi_args), RuntimeError,
                       "lowrank_ops.lowrank_adamw_multi_step_: argument 'W[1]' requires grad")
    W[1] = W[1].detach()
    version = m[1]._version
    LIB.lowrank_adamw_multi_step_(W, *multi_args)
    assert m[1]._version > version


# --------------------------------------------------------------------------------------------------------
# Item 3: aliasing, overlap and devices
# --------------------------------------------------------------------------------------------------------


def assert_shared(call, *names):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "lowrank_ops.lowrank_adamw_step_: arguments" in message and "share memory and one of them is written in " \
        "place" in message and all(f"'{n}'" in message for n in names), message


@pytest.mark.parametrize("backend", backends("lowrank_adamw_step_"))
def test_aliases_and_overlaps_are_refused(backend):
    W = torch.randn(9, 7)
    m = torch.zeros(3, 7)
    for W_bad in (torch.randn(1, 7).expand(9, 7), torch.zeros(63).as_strided((9, 7), (1, 1))):
        assert_clear_error(lambda W_bad=W_bad: step(W_bad, backend=backend), ValueError,
                           "argument 'W' is written in place, but some of its elements share memory")
    assert_shared(lambda: step(W, m=m, v=m, backend=backend), "exp_avg", "exp_avg_sq")
    assert_shared(lambda: step(W, G=W[:], backend=backend), "W", "G")
    assert_shared(lambda: step(W, m=m, delta=m, wd_mode="adapter", backend=backend), "exp_avg", "delta")
    buffer = torch.zeros(2 * 21 - 1)  # exp_avg and exp_avg_sq overlapping by one element
    assert_shared(lambda: step(W, m=buffer[:21].view(3, 7), v=buffer[20:].view(3, 7), backend=backend),
                  "exp_avg", "exp_avg_sq")
    flat = torch.zeros(2 * 21)  # disjoint views of one buffer are fine (an optimizer's flat state)
    step(W, m=flat[:21].view(3, 7), v=flat[21:].view(3, 7), backend=backend)
    G = torch.randn(9, 9)
    matrix = Projection.from_matrix(G[:3], "left")  # reads may share memory with reads
    step(torch.randn(9, 9), G=G, projection=matrix, backend=backend)


def test_overlap_sweep_against_all_pairs():
    """The O(k log k) sweep finds exactly the pairs an all-pairs test finds (written with anything)."""
    from lowrank_ops._guard import Rules
    rules = Rules("lowrank_adamw_step_", LIB.lowrank_adamw_step_.default._schema)
    g = torch.Generator().manual_seed(0)
    buffer = torch.zeros(64)
    for _ in range(300):
        found = []
        for k in range(5):
            start, length = (int(x) for x in torch.randint(0, 32, (2, ), generator=g))
            found.append((f"t{k}", buffer[start:start + length], bool(torch.randint(0, 2, (), generator=g))))
        spans = [(n, t.data_ptr(), t.data_ptr() + t.numel() * 4 - 1, w) for n, t, w in found if t.numel()]
        expected = any((wa or wb) and a0 <= b1 and b0 <= a1 for i, (_, a0, a1, wa) in enumerate(spans)
                       for (_, b0, b1, wb) in spans[i + 1:])
        try:
            rules._check_no_overlap(found)
            got = False
        except ValueError:
            got = True
        assert got == expected, found


@pytest.mark.parametrize("backend", backends("lowrank_adamw_step_"))
def test_a_meta_argument_beside_cpu_ones_is_refused(backend):
    W = torch.randn(9, 7)
    assert_clear_error(lambda: step(W, G=torch.randn(9, 7, device="meta"), backend=backend), ValueError,
                       "argument 'G' must be on W's device cpu, got meta")
    assert_clear_error(lambda: step(W, m=torch.zeros(3, 7, device="meta"), backend=backend), ValueError,
                       "argument 'exp_avg' must be on W's device cpu, got meta")
    meta = Projection.from_matrix(torch.randn(3, 9, device="meta"), "left")
    assert_clear_error(lambda: step(W, projection=meta, backend=backend), ValueError,
                       "argument 'projection.left.matrix' must be on W's device cpu, got meta")


def test_direct_calls_with_mixed_devices_are_refused():
    """torch.ops with a meta G beside a CPU W dispatched to the fake kernel, which silently did nothing."""
    W, m, v = torch.randn(9, 7), torch.zeros(3, 7), torch.zeros(3, 7)
    G = torch.randn(9, 7, device="meta")
    args = (None, "gaussian", 5, 3, None, "none", 0, 0, None, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1, 1.0, "full")
    assert_clear_error(lambda: LIB.lowrank_adamw_step_(W, G, m, v, *args), ValueError,
                       "lowrank_ops.lowrank_adamw_step_: argument 'G' must be on the device of 'W' (cpu), got meta")
    assert_clear_error(lambda: LIB.dequant_matmul(torch.randn(2, 4), torch.zeros(3, 4, dtype=torch.int8, device="meta"),
                                                  torch.ones(3, 1), "int8", 4, 3, 4),
                       ValueError, "argument 'codes' must be on the device of 'X' (cpu), got meta")


# --------------------------------------------------------------------------------------------------------
# Item 5: quantize and dequantize at the ends of float32's range
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", backends("quantize_weight"))
def test_quantize_refuses_values_beyond_float32(backend):
    for W in (torch.tensor([[1e39, -1e39]], dtype=torch.float64), torch.tensor([[3e38, 1.0]])):
        assert_clear_error(lambda W=W: ops.quantize(W, backend=backend), ValueError,
                           "lowrank_ops.quantize: argument 'W' must be finite in float32, the dtype of the scales")
    for bad in (float("nan"), float("inf")):
        assert_clear_error(lambda bad=bad: ops.quantize(torch.tensor([[1.0, bad]]), backend=backend), ValueError,
                           "argument 'W' must be finite in float32")


@pytest.mark.parametrize("backend", backends("dequantize_weight"))
@pytest.mark.parametrize("fmt", ["int8", "nf4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_dequantize_of_extreme_valid_weights_is_finite(backend, fmt, double_quant):
    big = torch.finfo(torch.float32).max / 2  # the largest |w| quantize takes
    W = torch.tensor([[big, -big, 1.0, 0.0], [1e-45, -1.5e38, 1.2e38, 7.0]], dtype=torch.float64)
    qw = ops.quantize(W, fmt, group_size=2, double_quant=double_quant, backend=backend)
    for dtype in (torch.float32, torch.float64):
        out = ops.dequantize(qw, dtype, backend=backend)
        assert not bool(torch.isnan(out).any()) and bool(torch.isfinite(out).all()), out
    zeros = ops.quantize(torch.zeros(2, 4), fmt, group_size=2, double_quant=double_quant, backend=backend)
    assert torch.equal(ops.dequantize(zeros, backend=backend), torch.zeros(2, 4))


# --------------------------------------------------------------------------------------------------------
# Item 7: types, hyperparameters, non-finite inputs, meta tensors, backends that agree, messages
# --------------------------------------------------------------------------------------------------------

G8 = torch.randn(8, 6)
BOOL_CASES = [
    (lambda: ops.sketch_project(G8, 0, True), "'rank' must be an int (not a bool)"),
    (lambda: ops.sketch_unproject(torch.randn(2, 6), 0, True), "'dim' must be an int (not a bool)"),
    (lambda: ops.sketch_project(G8, False, 2), "'seed' must be an int in [0, 2^64) (not a bool)"),
    (lambda: ops.sketch(True, 4, 0), "'rows' must be an int (not a bool)"),
    (lambda: ops.philox4x32(torch.zeros(1, 4, dtype=torch.int64), 0, rounds=True), "'rounds' must be an int (not a bool)"),
    (lambda: ops.quantize(G8, group_size=True), "'group_size' must be an int (not a bool)"),
    (lambda: ops.dct_basis(True, [0]), "'dim' must be an int (not a bool)"),
    (lambda: ops.dct_topk(G8, True, "left"), "'rank' must be an int (not a bool)"),
    (lambda: ops.range_finder(G8, True), "'rank' must be an int (not a bool)"),
    (lambda: ops.range_finder(G8, 2, power_iters=False), "'power_iters' must be an int (not a bool)"),
    (lambda: ops.adaptive_rank(G8, True, 3), "'energy' must be a number in (0, 1), got bool"),
    (lambda: step(torch.randn(9, 7), step=True), "'step' must be an int (not a bool)"),
    (lambda: step(torch.randn(9, 7), projection=Projection.seeded("gaussian", True, 3, "left")),
     "'projection.left.seed' must be an int in [0, 2^64) (not a bool)"),
]


@pytest.mark.parametrize("call,message", BOOL_CASES)
def test_bools_are_not_ints(call, message):
    assert_clear_error(call, TypeError, message)


@pytest.mark.parametrize("backend", backends("lowrank_adamw_step_"))
@pytest.mark.parametrize("change,error,message", [
    ({"beta1": 1.0}, ValueError, "'beta1' must be a number in [0, 1), got 1.0"),
    ({"beta2": -0.1}, ValueError, "'beta2' must be a number in [0, 1), got -0.1"),
    ({"lr": float("nan")}, ValueError, "'lr' must be a finite number >= 0, got nan"),
    ({"lr": -1e-3}, ValueError, "'lr' must be a number >= 0"),
    ({"lr": "0.01"}, TypeError, "'lr' must be a number >= 0, got str"),
    ({"eps": 0.0}, ValueError, "'eps' must be a number > 0, got 0.0"),
    ({"weight_decay": float("inf")}, ValueError, "'weight_decay' must be a finite number >= 0, got inf"),
    ({"scale": float("-inf")}, ValueError, "'scale' must be a finite number >= 0"),
    ({"step": 1.5}, TypeError, "'step' must be an int, got float"),
    ({"step": 0}, ValueError, "'step' must be >= 1, got 0"),
    ({"step": 2**64}, ValueError, "'step' must be < 2^63, got 18446744073709551616"),
])
def test_fused_step_hyperparameters(backend, change, error, message):
    W = torch.randn(9, 7)
    before = W.clone()
    assert_clear_error(lambda: step(W, backend=backend, **change), error, message)
    assert torch.equal(W, before)


def test_fused_step_takes_numpy_and_tensor_scalars():
    W = torch.randn(9, 7)
    step(W, lr=np.float32(1e-2), beta1=torch.tensor(0.9), step=np.int64(4))
    assert bool(torch.isfinite(W).all())


@pytest.mark.parametrize("indices,error,message", [
    ([1.5], TypeError, "argument 'indices' must be a sequence of ints, got float"),
    ([True], TypeError, "argument 'indices' must be a sequence of ints (not a bool)"),
    ("12", TypeError, "argument 'indices' must be a 1-D integer tensor or a sequence of ints, got str"),
    (torch.tensor([1.0]), ValueError, "argument 'indices' must be an int16, int32 or int64 tensor"),
    ([8], ValueError, "argument 'indices' must be values in [0, 8), got values in [8, 8]"),
])
def test_dct_basis_indices(indices, error, message):
    assert_clear_error(lambda: ops.dct_basis(8, indices), error, message)


@pytest.mark.parametrize("backend", backends("dct_topk"))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_dct_topk_refuses_non_finite_gradients(backend, bad):
    G = torch.randn(8, 5)
    G[2, 3] = bad
    assert_clear_error(lambda: ops.dct_topk(G, 2, "left", backend=backend), ValueError,
                       "lowrank_ops.dct_topk: argument 'G' must be finite, got a tensor with 1 NaN/Inf entries")


@pytest.mark.parametrize("backend", backends("dct_scores"))
def test_dct_scores_propagates_non_finite_gradients(backend):
    """Documented: a NaN/Inf in G makes every score non-finite (not an error, unlike dct_topk)."""
    for bad in (float("nan"), float("inf")):
        G = torch.randn(8, 5)
        G[2, 3] = bad
        for side in ("left", "right"):
            assert not bool(torch.isfinite(ops.dct_scores(G, side, backend=backend)).any())


def test_adaptive_rank_names_itself_for_non_finite_gradients():
    G = torch.randn(8, 5)
    G[0, 0] = float("inf")
    assert_clear_error(lambda: ops.adaptive_rank(G, 0.5, 3), ValueError,
                       "lowrank_ops.adaptive_rank: argument 'G' must be finite, got")


def test_meta_tensors_give_fake_results():
    """Was `Tensor.item() cannot be called on meta tensors` in philox4x32, dct_basis, range_finder, quantize."""
    meta = torch.device("meta")
    assert ops.philox4x32(torch.zeros(5, 4, dtype=torch.int64, device=meta), 1).shape == (5, 4)
    basis = ops.dct_basis(8, torch.tensor([1, 3], device=meta), torch.float64)
    assert basis.device == meta and basis.shape == (2, 8) and basis.dtype == torch.float64
    Q, S = ops.range_finder(torch.randn(8, 6, device=meta), 3)
    assert Q.device == meta and Q.shape == (8, 3) and S.shape == (3, )
    for fmt, double_quant in (("int8", False), ("nf4", True)):
        qw = ops.quantize(torch.randn(8, 6, device=meta), fmt, 4, double_quant)
        assert qw.codes.device == meta
        assert ops.dequantize(qw).shape == (8, 6)
    assert ops.dct_topk(torch.randn(8, 6, device=meta), 3, "left").shape == (3, )
    assert ops.sketch(3, 5, 0, device=meta).device == meta
    assert_clear_error(lambda: ops.adaptive_rank(torch.randn(8, 6, device=meta), 0.5, 3), ValueError,
                       "lowrank_ops.adaptive_rank: argument 'G' must be a tensor with values")


def _outcome(call):
    try:
        call()
        return "accepted"
    except (ValueError, TypeError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("call", [
    lambda backend: ops.sketch_project(G8, -1, 2, backend=backend),
    lambda backend: step(torch.randn(9, 7), projection=Projection.from_matrix(torch.ones(3, 9, dtype=torch.int64),
                                                                              "left"), backend=backend),
    lambda backend: step(torch.randn(0, 7), projection=Projection.seeded("gaussian", 1, 3, "right"),
                         backend=backend),
    lambda backend: ops.sketch_project(torch.randn(0, 6), 0, 2, backend=backend),
    lambda backend: ops.dct_scores(torch.randn(8, 0), "right", backend=backend),
    lambda backend: ops.dequant_matmul(torch.randn(2, 4), ops.quantize(torch.randn(3, 4), group_size=4),
                                       torch.zeros(3, dtype=torch.float64), backend=backend),
], ids=["negative seed", "int64 matrix", "empty W", "empty projected dim", "empty dct dim", "bias dtype"])
def test_cpu_and_reference_accept_the_same_inputs(call):
    outcomes = {backend: _outcome(lambda b=backend: call(b)) for backend in ("cpu", "reference")}
    assert outcomes["cpu"] == outcomes["reference"] != "accepted", outcomes


@pytest.mark.parametrize("call,public", [
    (lambda: ops.sketch(3, 4, 0, backend="gpu"), "sketch"),
    (lambda: ops.sketch(3, 4, 0, dtype=torch.int32), "sketch"),
    (lambda: ops.quantize(G8, backend="cuda"), "quantize"),
    (lambda: ops.dequantize(ops.quantize(G8), backend="gpu"), "dequantize"),
    (lambda: ops.dequantize(ops.quantize(G8, double_quant=True), backend="gpu"), "dequantize"),
    (lambda: ops.adaptive_rank(G8, 0.5, 3, backend="gpu"), "adaptive_rank"),
])
def test_messages_name_the_public_op(call, public):
    with pytest.raises((ValueError, RuntimeError)) as info:
        call()
    message = str(info.value)
    assert message.startswith(f"lowrank_ops.{public}:"), message
    assert not any(internal in message for internal in ("sketch_fill_", "quantize_weight", "dequantize_weight"))
