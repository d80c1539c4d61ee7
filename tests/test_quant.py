"""The quant family (INT8 / NF4 weights, docs/DESIGN.md §3) on every available backend: NF4 byte-identical to
bitsandbytes 0.50, INT8 round trips within half a step, bit-identical decoding across backends, odd shapes,
dequant_matmul against the float64 reference under the tolerance rule, autograd, opcheck, gradcheck,
torch.compile, double quantization, weights_only state dicts and argument errors.

bitsandbytes (installed by scripts/install.sh: a CPU wheel, it brings no CUDA torch) runs inside the tests;
without it the comparisons skip and say so."""

import io

import pytest
import torch

from lowrank_ops import _extension, ops
from lowrank_ops.ops import quant as quant_ops
from lowrank_ops.reference import quant as reference

from helpers import (
    assert_clear_error,
    assert_compiled_matches_eager,
    assert_within_torch_error,
    backends,
    random_matrix,
)

try:
    import bitsandbytes.functional as bnb
except ImportError:  # pragma: no cover - install.sh installs it
    bnb = None

needs_bnb = pytest.mark.skipif(bnb is None, reason="bitsandbytes is not installed (scripts/install.sh installs it)")

CPU_BACKENDS = backends("dequant_matmul")
GPU_BACKENDS = backends("dequant_matmul", "cuda")
FAST_BACKENDS = [p for p in CPU_BACKENDS if p.values[0] != "triton"]  # for shapes too big for the interpreter
FORMATS = ("int8", "nf4")
U = 2.0**-24  # float32 unit roundoff
INTERPRETER_ELEMENTS = 4096  # the Triton interpreter runs the cases whose weight has at most this many elements


def per_backend(cases, weight_shape=lambda case: case[0]):
    """pytest params (backend, *case) over the CPU-reachable backends; the Triton interpreter, which is
    slow, gets the cases whose weight is small."""
    params = []
    for b in CPU_BACKENDS:
        name = b.values[0]
        for case in cases:
            rows, cols = weight_shape(case)
            if name == "triton" and rows * cols > INTERPRETER_ELEMENTS:
                continue
            params.append(pytest.param(name, *case, marks=b.marks, id="-".join([name] + [str(c) for c in case])))
    return params


def weight(shape, dtype, rng, layout="contiguous"):
    """A random weight with an all-zero row (a zero group / block) when it has more than one row."""
    W = random_matrix(shape, dtype, rng, layout)
    if shape[0] > 1:
        W[0] = 0
    return W


# --------------------------------------------------------------------------------------------------------
# NF4 against bitsandbytes
# --------------------------------------------------------------------------------------------------------

NF4_CASES = [(shape, blocksize) for shape in [(64, 128), (33, 17), (7, 5), (1, 1), (300, 257), (2, 4096)]
             for blocksize in (64, 256)]


@needs_bnb
@pytest.mark.parametrize("backend,shape,blocksize", per_backend(NF4_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nf4_codes_and_absmax_byte_identical_to_bitsandbytes(backend, shape, blocksize, dtype, rng):
    W = random_matrix(shape, dtype, rng)
    if W.numel() >= 2 * blocksize:
        W.view(-1)[:blocksize] = 0  # an all-zero full block
    codes, state = bnb.quantize_4bit(W, blocksize=blocksize, quant_type="nf4", compress_statistics=False)
    qw = ops.quantize(W, "nf4", blocksize, backend=backend)
    assert qw.codes.dtype == torch.uint8 and torch.equal(qw.codes, codes.view(-1))
    assert qw.scales.dtype == torch.float32 and torch.equal(qw.scales, state.absmax)


@needs_bnb
@pytest.mark.parametrize("backend,shape,blocksize", per_backend([((9, 96), 32), ((3, 4096), 4096)]))
def test_nf4_blocksize_32_and_4096_byte_identical(backend, shape, blocksize, rng):
    W = random_matrix(shape, torch.float32, rng)
    codes, state = bnb.quantize_4bit(W, blocksize=blocksize, quant_type="nf4", compress_statistics=False)
    qw = ops.quantize(W, "nf4", blocksize, backend=backend)
    assert torch.equal(qw.codes, codes.view(-1)) and torch.equal(qw.scales, state.absmax)


@needs_bnb
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nf4_midpoints_round_down_like_bitsandbytes(backend):
    """Values exactly on a midpoint between two codes (absmax 1, so w * inv = w exactly) take the lower
    code; values one float32 ulp above take the upper one."""
    mids = reference.nf4_thresholds()
    above = torch.nextafter(mids, torch.full_like(mids, 2.0))
    block = torch.cat([torch.tensor([1.0]), mids, above, -mids, torch.zeros(64 - 1 - 45)])
    W = block.view(1, 64)
    codes, state = bnb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=False)
    qw = ops.quantize(W, "nf4", 64, backend=backend)
    assert torch.equal(qw.codes, codes.view(-1)) and torch.equal(qw.scales, state.absmax)
    q = reference.nf4_unpack(qw.codes, 64)
    assert q[1:16].tolist() == list(range(15)) and q[16:31].tolist() == list(range(1, 16))


@needs_bnb
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nf4_all_zero_tail_block_is_a_documented_difference(backend):
    """bitsandbytes 0.50's CPU quantize_4bit stores absmax 1e-38 (its divisor clamp) for an all-zero LAST
    partial block but 0 for an all-zero full block; we store 0 for both. The codes agree and both decode
    to exact zeros."""
    W = torch.cat([torch.randn(64), torch.zeros(10)]).view(2, 37)
    codes, state = bnb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=False)
    qw = ops.quantize(W, "nf4", 64, backend=backend)
    assert torch.equal(qw.codes, codes.view(-1))
    assert torch.equal(qw.scales[:1], state.absmax[:1])
    assert qw.scales[1] == 0 and state.absmax[1] == torch.tensor(1e-38, dtype=torch.float32)
    assert torch.equal(ops.dequantize(qw, backend=backend).view(-1)[64:], torch.zeros(10))


def bnb_flat_dequantize(qw, dtype):
    """bitsandbytes' dequantize_4bit of our codes and absmax, told the tensor is flat [numel]. bitsandbytes
    0.50.2's native CPU dequantize_4bit of a 2-D shape blocks each ROW separately, which disagrees with its
    own quantize_4bit (flat blocks) whenever in_features is not a multiple of the block size; given the flat
    shape it decodes flat blocks, as quantize_4bit encodes them."""
    n = qw.shape[0] * qw.shape[1]
    state = bnb.QuantState(absmax=qw.scales, shape=torch.Size([n]), dtype=dtype, blocksize=qw.group_size,
                           quant_type="nf4")
    return bnb.dequantize_4bit(qw.codes, quant_state=state).view(qw.shape)


@needs_bnb
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape,blocksize", [((64, 128), 64), ((16, 512), 256), ((33, 18), 64), ((7, 6), 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nf4_dequantize_matches_bitsandbytes(backend, shape, blocksize, dtype, rng):
    W = random_matrix(shape, dtype, rng)
    qw = ops.quantize(W, "nf4", blocksize, backend=backend)
    out = ops.dequantize(qw, dtype, backend=backend)
    assert torch.equal(out, bnb_flat_dequantize(qw, dtype))
    if shape[1] % blocksize == 0:  # the plain user path agrees too
        codes, state = bnb.quantize_4bit(W, blocksize=blocksize, quant_type="nf4", compress_statistics=False)
        assert torch.equal(out, bnb.dequantize_4bit(codes, state))


# --------------------------------------------------------------------------------------------------------
# INT8
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape,group", [((1, 1), 256), ((5, 300), 256), ((17, 64), 64), ((9, 65), 64), ((4, 10), 3),
                                         ((3, 7), 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_int8_round_trip_within_half_a_step(backend, shape, group, dtype, layout, rng):
    """code = rint(fl(w / s)) with |fl(w / s) - w / s| <= u |w / s| <= 127.5 u, so in exact arithmetic
    |w - code s| <= s (1/2 + 128 u): half a quantization step, plus the rounding of the quotient."""
    W = weight(shape, dtype, rng, layout)
    qw = ops.quantize(W, "int8", group, backend=backend)
    m, n = shape
    groups = -(-n // group)
    assert qw.codes.shape == (m, n) and qw.codes.dtype == torch.int8
    assert qw.scales.shape == (m, groups) and qw.scales.dtype == torch.float32
    w = W.float().double()
    padded = torch.nn.functional.pad(w.abs(), (0, groups * group - n)).view(m, groups, group)
    assert torch.equal(qw.scales, (padded.amax(-1).float() / 127))  # each group's own absmax / 127 in float32
    step = qw.scales.double().repeat_interleave(group, dim=1)[:, :n]
    err = (w - qw.codes.double() * step).abs()
    assert (err <= step * (0.5 + 128 * U)).all(), f"max error / step {(err / step.clamp_min(1e-300)).max():.6f}"
    assert qw.codes.abs().max() <= 127
    if m > 1:  # the zero row: scale 0, codes 0, decodes to exact zeros
        assert (qw.scales[0] == 0).all() and (qw.codes[0] == 0).all()
        assert torch.equal(ops.dequantize(qw, backend=backend)[0], torch.zeros(n))
    ref = reference.quantize_int8(W, group)
    assert torch.equal(qw.codes, ref[0]) and torch.equal(qw.scales, ref[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_int8_partial_group_is_scaled_by_its_own_elements(backend):
    """in_features = g + 1: the last group of each row holds one element, padded with g - 1 zeros that are
    never stored; its scale comes from that element alone (not from the padding, not from the next row),
    so the element decodes to +-127 s = its own value up to the rounding of s."""
    W = torch.full((3, 9), 1000.0)
    W[:, 8] = torch.tensor([0.5, -2.0, 3.0])
    qw = ops.quantize(W, "int8", 8, backend=backend)
    assert torch.equal(qw.scales[:, 1], W[:, 8].abs() / 127)
    assert qw.codes[:, 8].tolist() == [127, -127, 127]
    torch.testing.assert_close(ops.dequantize(qw, torch.float64, backend=backend)[:, 8], W[:, 8].double(),
                               rtol=U, atol=0)


# --------------------------------------------------------------------------------------------------------
# Decoding is bit-identical across backends
# --------------------------------------------------------------------------------------------------------

SHAPES = [((1, 1), None), ((37, 100), 32), ((64, 300), None), ((70, 131), 64), ((5, 9), 2)]


@pytest.mark.parametrize("backend,shape,group", per_backend(SHAPES))
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_quantize_and_dequantize_equal_reference(backend, fmt, shape, group, dtype, rng):
    W = weight(shape, torch.float32, rng)
    qw = ops.quantize(W, fmt, group, backend=backend)
    codes, scales = reference.quantize(W, fmt, qw.group_size)
    assert torch.equal(qw.codes, codes) and torch.equal(qw.scales, scales)
    out = ops.dequantize(qw, dtype, backend=backend)
    assert out.shape == shape and out.dtype == dtype
    assert torch.equal(out, reference.dequantize(codes, scales, fmt, qw.group_size, shape, dtype))


# --------------------------------------------------------------------------------------------------------
# dequant_matmul
# --------------------------------------------------------------------------------------------------------


def plain_torch_matmul(X, qw, bias):
    """What a user would write: materialize deq(W) in X's dtype, then matmul."""
    return torch.nn.functional.linear(X, ops.dequantize(qw, X.dtype, backend="reference"), bias)


def reference64(X, qw, bias):
    b = bias.double() if bias is not None else None
    return torch.nn.functional.linear(X.double(), ops.dequantize(qw, torch.float64, backend="reference"), b)


MATMUL_CASES = [((1, 1), None, (1, )), ((37, 100), 32, (5, )), ((64, 300), None, (2, 3)), ((70, 131), 64, (33, )),
                ((19, 9), 2, (4, )), ((6, 10), 4, (0, )), ((6, 10), 4, ())]


@pytest.mark.parametrize("backend,shape,group,lead", per_backend(MATMUL_CASES))
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_dequant_matmul_matches_float64_reference(backend, fmt, shape, group, lead, dtype, with_bias, rng):
    qw = ops.quantize(weight(shape, torch.float32, rng), fmt, group, backend=backend)
    X = torch.randn(*lead, shape[1], generator=rng).to(dtype)
    bias = torch.randn(shape[0], generator=rng).to(dtype) if with_bias else None
    out = ops.dequant_matmul(X, qw, bias, backend=backend)
    assert out.shape == (*lead, shape[0]) and out.dtype == dtype
    assert_within_torch_error(out, reference64(X, qw, bias), plain_torch_matmul(X, qw, bias),
                              f"{backend} {fmt} {dtype}", k=shape[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", ["transposed", "sliced"])
def test_dequant_matmul_non_contiguous_input(backend, fmt, layout, rng):
    qw = ops.quantize(weight((40, 70), torch.float32, rng), fmt, backend=backend)
    X = random_matrix((11, 70), torch.float32, rng, layout)
    assert not X.is_contiguous()
    out = ops.dequant_matmul(X, qw, backend=backend)
    assert_within_torch_error(out, reference64(X, qw, None), plain_torch_matmul(X, qw, None), layout, k=70)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_dequant_matmul_across_several_tiles(backend, fmt, rng):
    """W [1100, 2048] in float32 is 8.6 MiB, more than one 8 MiB CPU tile: the forward runs two row tiles
    (1024 + 76 rows), the backward two column tiles (1792 + 256 columns)."""
    qw = ops.quantize(torch.randn(1100, 2048, generator=rng), fmt, backend=backend)
    X = torch.randn(3, 2048, generator=rng, requires_grad=True)
    bias = torch.randn(1100, generator=rng)
    out = ops.dequant_matmul(X, qw, bias, backend=backend)
    X0 = X.detach()
    assert_within_torch_error(out.detach(), reference64(X0, qw, bias), plain_torch_matmul(X0, qw, bias), fmt,
                              k=2048)
    dY = torch.randn(3, 1100, generator=rng)
    (dX, ) = torch.autograd.grad(out, X, dY)
    W64 = ops.dequantize(qw, torch.float64, backend="reference")
    assert_within_torch_error(dX, dY.double() @ W64, dY @ W64.float(), f"{fmt} backward", k=1100)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequant_matmul_backward(backend, fmt, dtype, rng):
    """dX = dY deq(W) and dbias = sum of dY over tokens; the codes and scales get no gradient."""
    qw = ops.quantize(weight((45, 67), torch.float32, rng), fmt, 16, backend=backend)
    X = torch.randn(2, 6, 67, generator=rng).to(dtype).requires_grad_()
    bias = torch.randn(45, generator=rng).to(dtype).requires_grad_()
    dY = torch.randn(2, 6, 45, generator=rng).to(dtype)
    dX, db = torch.autograd.grad(ops.dequant_matmul(X, qw, bias, backend=backend), (X, bias), dY)
    W = ops.dequantize(qw, dtype, backend="reference")
    W64 = ops.dequantize(qw, torch.float64, backend="reference")
    assert dX.shape == X.shape and dX.dtype == dtype
    assert_within_torch_error(dX, dY.double() @ W64, dY @ W, f"{backend} {fmt} dX", k=45)
    assert_within_torch_error(db, dY.double().sum((0, 1)), dY.sum((0, 1)), "dbias", k=12)
    assert not qw.codes.requires_grad and not qw.scales.requires_grad


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_gradcheck_float64(backend, fmt, rng):
    qw = ops.quantize(weight((3, 6), torch.float32, rng), fmt, 4, backend=backend)
    X = torch.randn(2, 6, dtype=torch.float64, generator=rng, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, generator=rng, requires_grad=True)
    f = lambda x, b: ops.dequant_matmul(x, qw, b, backend=backend)
    assert torch.autograd.gradcheck(f, (X, bias))
    assert torch.autograd.gradgradcheck(f, (X, bias))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_opcheck(backend, fmt, rng):
    L = torch.ops.lowrank_ops
    W = torch.randn(9, 22, generator=rng)
    torch.library.opcheck(L.quantize_weight.default, (W, fmt, 4, backend))
    codes, scales = L.quantize_weight(W, fmt, 4, backend)
    weight_args = (codes, scales, fmt, 4, 9, 22)
    torch.library.opcheck(L.dequantize_weight.default, (*weight_args, torch.bfloat16, backend))
    for dtype in (torch.float32, torch.bfloat16):
        X = torch.randn(5, 22, generator=rng).to(dtype).requires_grad_(dtype == torch.float32)
        bias = torch.randn(9, generator=rng).to(dtype).requires_grad_(dtype == torch.float32)
        torch.library.opcheck(L.dequant_matmul.default, (X, *weight_args, bias, backend))
        torch.library.opcheck(L.dequant_matmul.default, (X, *weight_args, None, backend))
        dY = torch.randn(5, 9, generator=rng).to(dtype).requires_grad_(dtype == torch.float32)
        torch.library.opcheck(L.dequant_matmul_t.default, (dY, *weight_args, backend))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_torch_compile_fullgraph_matches_eager(backend, rng):
    qw = ops.quantize(torch.randn(12, 40, generator=rng), "nf4", backend=backend)

    def f(X, bias):
        return torch.tanh(ops.dequant_matmul(X, qw, bias, backend=backend))

    X, bias = torch.randn(3, 40, generator=rng), torch.randn(12, generator=rng)
    assert_compiled_matches_eager(f, X, bias)


# --------------------------------------------------------------------------------------------------------
# Double quantization, storage
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_double_quant_keeps_codes_and_bounds_the_scale_error(backend, fmt, rng):
    """The codes of W do not change; each decoded scale is within half a step of the second-level int8
    quantization (plus its quotient's rounding, as in the INT8 test), and storage shrinks."""
    W = torch.randn(50, 300, generator=rng)
    plain = ops.quantize(W, fmt, backend=backend)
    dq = ops.quantize(W, fmt, double_quant=True, backend=backend)
    assert dq.double_quant and torch.equal(dq.codes, plain.codes)
    assert dq.scales.dtype == torch.int8 and dq.nbytes < plain.nbytes
    n = plain.scales.numel()
    assert torch.equal(dq.scales_offset, plain.scales.double().mean().float())
    step = dq.scales_scale.double().repeat_interleave(quant_ops.DOUBLE_QUANT_GROUP, dim=1)[0, :n]
    decoded = dq.block_scales(backend=backend).double().view(-1)
    # the float32 addition of the offset adds one more rounding of the decoded value
    bound = step * (0.5 + 128 * U) + decoded.abs() * U
    assert ((decoded - plain.scales.double().view(-1)).abs() <= bound).all()
    out = ops.dequant_matmul(torch.randn(4, 300, generator=rng), dq, backend=backend)
    assert out.shape == (4, 50)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("double_quant", [False, True])
def test_state_dict_round_trips_with_weights_only_load(fmt, double_quant, rng):
    qw = ops.quantize(torch.randn(20, 33, generator=rng), fmt, 8, double_quant=double_quant)
    buffer = io.BytesIO()
    torch.save({"w": qw.state_dict()}, buffer)
    buffer.seek(0)
    loaded = ops.QuantizedWeight.from_state_dict(torch.load(buffer, weights_only=True)["w"])
    assert loaded.format == fmt and loaded.shape == (20, 33) and loaded.group_size == 8
    assert loaded.double_quant == double_quant
    assert torch.equal(ops.dequantize(loaded), ops.dequantize(qw))


def test_state_dict_with_wrong_tensors_is_rejected(rng):
    state = ops.quantize(torch.randn(4, 8, generator=rng), "nf4", 4).state_dict()
    state["scales"] = state["scales"][:-1]
    with pytest.raises(ValueError, match="argument 'qw.scales' must be a torch.float32 tensor of shape"):
        ops.QuantizedWeight.from_state_dict(state)
    with pytest.raises(ValueError, match="keys"):
        ops.QuantizedWeight.from_state_dict({"format": "nf4"})


# --------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------

QW = ops.quantize(torch.randn(6, 10), "int8", 4)


@pytest.mark.parametrize("call,message", [
    (lambda: ops.quantize(torch.randn(3, 4), "int4"), "argument 'format' must be 'int8' or 'nf4', got 'int4'"),
    (lambda: ops.quantize(torch.randn(3, 4), "int8", 0), "argument 'group_size' must be >= 1, got 0"),
    (lambda: ops.quantize(torch.randn(3, 4), "nf4", 63), "argument 'group_size' must be even for format 'nf4'"),
    (lambda: ops.quantize(torch.randn(2, 3, 4), "int8"), "argument 'W' must be a 2-D tensor"),
    (lambda: ops.quantize(torch.ones(3, 4, dtype=torch.int32), "int8"), "argument 'W' must be float32"),
    (lambda: ops.quantize(torch.randn(0, 4), "int8"), "argument 'W' must be a non-empty matrix"),
    (lambda: ops.quantize(torch.tensor([[1.0, float("inf")]]), "nf4"), "argument 'W' must be finite"),
    (lambda: ops.dequant_matmul(torch.randn(3, 9), QW), "argument 'X' must be a tensor [..., 10]"),
    (lambda: ops.dequant_matmul(torch.ones(3, 10, dtype=torch.int64), QW), "argument 'X' must be a float32"),
    (lambda: ops.dequant_matmul(torch.randn(3, 10), QW, torch.randn(5)), "argument 'bias' must be a torch.float32"),
    (lambda: ops.dequant_matmul(torch.randn(3, 10), QW, torch.randn(6).double()), "argument 'bias' must be"),
    (lambda: ops.dequantize(QW, torch.int8), "argument 'dtype' must be float32"),
    (lambda: ops.dequant_matmul(torch.randn(3, 10), QW, backend="gpu"), "argument 'backend' must be one of"),
])
def test_bad_arguments_raise_clear_errors(call, message):
    assert_clear_error(call, ValueError, message)


def test_not_a_quantized_weight():
    with pytest.raises(TypeError, match="argument 'qw' must be a QuantizedWeight"):
        ops.dequant_matmul(torch.randn(3, 10), torch.randn(6, 10))


def test_cpu_backend_rejects_bad_input_too():
    """The C++ ops check their arguments themselves, for C++ and torch.ops callers."""
    if not _extension.LOADED:
        pytest.skip("compiled extension not loaded")
    L = torch.ops.lowrank_ops
    with pytest.raises(RuntimeError, match="dequant_matmul: argument 'codes' must be int8 for format \"int8\""):
        L.dequant_matmul(torch.randn(3, 10), QW.codes.to(torch.uint8), QW.scales, "int8", 4, 6, 10)
    with pytest.raises(RuntimeError, match=r"dequantize_weight: argument 'scales' must have shape \[6, 3\]"):
        L.dequantize_weight(QW.codes, QW.scales[:, :2].contiguous(), "int8", 4, 6, 10, torch.float32)
    with pytest.raises(RuntimeError, match="dequant_matmul_t: argument 'dY' must be a 2-D tensor \\[tokens, 6\\]"):
        L.dequant_matmul_t(torch.randn(3, 10), QW.codes, QW.scales, "int8", 4, 6, 10)
    with pytest.raises(RuntimeError, match="quantize_weight: argument 'format' must be \"int8\" or \"nf4\""):
        L.quantize_weight(torch.randn(3, 4), "fp4", 64)


# --------------------------------------------------------------------------------------------------------
# GPU (pytest -m gpu on a CUDA machine)
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_parity_with_cpu(backend, fmt, dtype, rng):
    """CUDA and Triton on the GPU: codes and decoded weights bit-identical to the CPU's; dequant_matmul and
    its backward within the tolerance rule of the float64 reference."""
    W = weight((517, 301), torch.float32, rng)
    cpu = ops.quantize(W, fmt)
    gpu = ops.quantize(W.cuda(), fmt, backend=backend)
    assert torch.equal(gpu.codes.cpu(), cpu.codes) and torch.equal(gpu.scales.cpu(), cpu.scales)
    assert torch.equal(ops.dequantize(gpu, dtype, backend=backend).cpu(), ops.dequantize(cpu, dtype))
    X = torch.randn(2, 65, 301, generator=rng).to(dtype)
    bias = torch.randn(517, generator=rng).to(dtype)
    Xg = X.cuda().requires_grad_()
    out = ops.dequant_matmul(Xg, gpu, bias.cuda(), backend=backend)
    assert_within_torch_error(out.cpu(), reference64(X, cpu, bias), plain_torch_matmul(X, cpu, bias), backend,
                              k=301)
    dY = torch.randn(2, 65, 517, generator=rng).to(dtype)
    (dX, ) = torch.autograd.grad(out, Xg, dY.cuda())
    W64 = ops.dequantize(cpu, torch.float64)
    assert_within_torch_error(dX.cpu(), dY.double() @ W64, dY @ ops.dequantize(cpu, dtype), f"{backend} dX", k=517)
