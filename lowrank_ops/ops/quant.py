"""The quant family: INT8 / NF4 base weights and the dequant-matmul (docs/DESIGN.md §3 "Quantized weights").

  qw = quantize(W, "int8" | "nf4", group_size=None, double_quant=False)   W [out, in] -> QuantizedWeight
  dequantize(qw, dtype)                                                   deq(W) [out, in]
  dequant_matmul(X, qw, bias=None)                                        X deq(W)^T (+ bias), X [..., in]

Formats (kernels/quant.h has the per-element formulas):
  int8  symmetric absmax per group of `group_size` (default 256) consecutive elements of a row; int8 codes
        [out, in] and float32 scales [out, ceil(in / group_size)], scale = absmax / 127; the last group of a
        row may be shorter (zero padding that is never stored and never decoded).
  nf4   QLoRA's NormalFloat4 codebook, absmax per block of `group_size` (default 64, even) consecutive
        elements of the flattened W, two codes per byte (element 2i in the high nibble): byte-compatible with
        bitsandbytes' quantize_4bit(quant_type="nf4", compress_statistics=False), codes [ceil(numel / 2)] and
        float32 absmax [ceil(numel / group_size)].
  double_quant (either format) stores the float32 scales s (absmax values for nf4) as offset + int8 codes:
        offset = mean(s), then s - offset is quantized like an int8 weight of one row with groups of 256
        (so 8.125 bits per scale instead of 32: 0.127 bits per weight instead of 0.5 for nf4 with 64-blocks).
        This is our own scheme, not bitsandbytes' (which uses a dynamic 8-bit map); the codes of W do not
        change, only the scales they are decoded with.

dequant_matmul never materializes deq(W) on the compiled backends: the CPU and CUDA backends decode a tile
of W at a time into a reused buffer and run a BLAS/cuBLAS GEMM on it (csrc/quant_impl.h); Triton decodes W
inside the GEMM's K-loop; only the pure-torch backend ("reference") decodes W whole. Its backward is dX = dY deq(W), computed the same way; codes and scales get no gradient. deq(W) is
rounded to X's dtype first, so the result is that of X @ dequantize(qw, X.dtype).T.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .. import _checks, backends

# The largest |w| quantize takes: half of float32's largest value. W is encoded from its float32 values with
# float32 scales; beyond float32's range the scale is infinite and deq(W) = 0 x inf = NaN. The factor 1/2 is
# the margin for rounding on the way back: an int8 scale s = fl(absmax / 127) may round up, so 127 s can
# exceed absmax by a relative 2^-24, and a double-quantized scale is off by up to 1/254 of the largest
# scale (half an int8 step of the scales' spread); either would overflow a float32 deq(W) near the top.
ENCODABLE_MAX = torch.finfo(torch.float32).max / 2
from ..spec import DEFAULT_GROUP_SIZE, DOUBLE_QUANT_GROUP
from ..spec import QUANT_FORMATS as FORMATS


@dataclass
class QuantizedWeight:
    """A quantized W [out, in]: codes + scales in the layout of the module docstring.

    With double quantization, `scales` holds the int8 codes of (scales - scales_offset) in one row with
    groups of 256, `scales_scale` their float32 scales and `scales_offset` the float32 mean."""
    format: str
    shape: tuple
    group_size: int
    codes: torch.Tensor
    scales: torch.Tensor
    scales_scale: torch.Tensor | None = None
    scales_offset: torch.Tensor | None = None

    @property
    def double_quant(self) -> bool:
        return self.scales_scale is not None

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def nbytes(self) -> int:
        """Bytes of every stored tensor."""
        return sum(t.numel() * t.element_size() for t in self._tensors().values())

    def block_scales(self, backend=None, op: str = "dequantize") -> torch.Tensor:
        """The float32 scales (absmax for nf4) the codes decode with, contiguous; decoded first when
        double-quantized (`op`: the public function that asks, named in errors)."""
        if not self.double_quant:
            return self.scales.contiguous()
        n = self.scales.shape[1]
        decoded = _dequantize_raw(op, self.scales, self.scales_scale, "int8", DOUBLE_QUANT_GROUP, (1, n),
                                  torch.float32, backend)
        shape = (self.shape[0], -(-self.shape[1] // self.group_size)) if self.format == "int8" else (n, )
        return (decoded.view(-1) + self.scales_offset).view(shape)

    def _tensors(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def state_dict(self) -> dict:
        """Plain tensors, ints and strings only, so it loads with torch.load(weights_only=True)."""
        state = {"format": self.format, "shape": [int(s) for s in self.shape], "group_size": int(self.group_size)}
        state.update(self._tensors())
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> QuantizedWeight:
        required = {"format", "shape", "group_size", "codes", "scales"}
        missing = required - set(state)
        if missing:
            raise _checks.error("QuantizedWeight.from_state_dict", "state", f"a dict with keys {sorted(required)}",
                                f"one missing {sorted(missing)}")
        qw = cls(format=state["format"], shape=tuple(int(s) for s in state["shape"]),
                 group_size=int(state["group_size"]), codes=state["codes"], scales=state["scales"],
                 scales_scale=state.get("scales_scale"), scales_offset=state.get("scales_offset"))
        _check_quantized(qw, "QuantizedWeight.from_state_dict")
        for name, t in qw._tensors().items():
            if t.is_floating_point():  # a corrupted file: deq(W) would be NaN/Inf
                _checks.finite("QuantizedWeight.from_state_dict", f"state['{name}']", t)
        return qw

    def to(self, device) -> QuantizedWeight:
        moved = {name: t.to(device) for name, t in self._tensors().items()}
        return QuantizedWeight(format=self.format, shape=self.shape, group_size=self.group_size, **moved)


# --------------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------------


def _group_size(op: str, fmt: str, group_size, arg: str = "group_size") -> int:
    if group_size is None:
        return DEFAULT_GROUP_SIZE[fmt]
    group_size = _checks.int_at_least(op, arg, group_size, 1)
    if fmt == "nf4" and group_size % 2:
        raise _checks.error(op, arg, "even for format 'nf4' (two codes per byte never straddle blocks)",
                            group_size)
    return group_size


def _expect(op, name, t, dtype, shape):
    if isinstance(t, torch.Tensor):
        _checks.tensor(op, name, t)
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != tuple(shape):
        got = f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise _checks.error(op, name, f"a {dtype} tensor of shape {list(shape)}", got)


def _check_quantized(qw, op: str) -> QuantizedWeight:
    """That `qw` is a QuantizedWeight whose tensors match its format, shape and group size."""
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"lowrank_ops.{op}: argument 'qw' must be a QuantizedWeight (from lowrank_ops.ops.quantize), "
                        f"got {type(qw).__name__}")
    _checks.choice(op, "qw.format", qw.format, FORMATS)
    ok = isinstance(qw.shape, (tuple, list)) and len(qw.shape) == 2 and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in qw.shape)
    if not ok:
        raise _checks.error(op, "qw.shape", "two positive ints [out, in]", repr(qw.shape))
    if qw.group_size is None:
        raise _checks.error(op, "qw.group_size", "an int", None)
    _group_size(op, qw.format, qw.group_size, "qw.group_size")
    rows, cols = qw.shape
    numel = rows * cols
    if qw.format == "int8":
        _expect(op, "qw.codes", qw.codes, torch.int8, (rows, cols))
        n_scales = (rows, -(-cols // qw.group_size))
    else:
        _expect(op, "qw.codes", qw.codes, torch.uint8, (-(-numel // 2), ))
        n_scales = (-(-numel // qw.group_size), )
    if qw.double_quant:
        n = 1
        for s in n_scales:
            n *= s
        _expect(op, "qw.scales", qw.scales, torch.int8, (1, n))
        _expect(op, "qw.scales_scale", qw.scales_scale, torch.float32, (1, -(-n // DOUBLE_QUANT_GROUP)))
        _expect(op, "qw.scales_offset", qw.scales_offset, torch.float32, ())
    else:
        _expect(op, "qw.scales", qw.scales, torch.float32, n_scales)
    devices = {t.device for t in qw._tensors().values()}
    if len(devices) != 1:
        raise _checks.error(op, "qw", "tensors on one device", sorted(str(d) for d in devices))
    return qw


def _check_encodable(op: str, W: torch.Tensor) -> None:
    """Every |w| <= ENCODABLE_MAX, so that the float32 scales and deq(W) in float32 are finite (no NaN or
    Inf in W either). One reduction."""
    if not _checks.has_values(W):
        return
    if not bool(W.abs().amax() <= ENCODABLE_MAX):  # NaN compares False
        bad = int((~(W.abs() <= ENCODABLE_MAX)).sum())
        raise _checks.error(op, "W", f"finite in float32, the dtype of the scales, with |w| <= {ENCODABLE_MAX:.7g} "
                            "(half of float32's largest value, so that decoded values cannot overflow)",
                            f"a tensor with {bad} entries that are NaN, Inf or larger")


# --------------------------------------------------------------------------------------------------------
# The raw ops
# --------------------------------------------------------------------------------------------------------


def _quantize_raw(op, W, fmt, group_size, backend):
    """The op quantize_weight for the public function `op` (named in errors)."""
    backend = backends.check(op, backend, W.device, "quantize_weight")
    return torch.ops.lowrank_ops.quantize_weight(W, fmt, group_size, backend)


def _dequantize_raw(op, codes, scales, fmt, group_size, shape, dtype, backend):
    """The op dequantize_weight for the public function `op` (named in errors). The kernels read codes and
    scales as dense arrays: a non-contiguous one (a hand-made QuantizedWeight) is copied first."""
    backend = backends.check(op, backend, codes.device, "dequantize_weight")
    return torch.ops.lowrank_ops.dequantize_weight(codes.contiguous(), scales.contiguous(), fmt, group_size, *shape,
                                                   dtype, backend)


# --------------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------------


def quantize(W: torch.Tensor, format: str = "int8", group_size: int | None = None, double_quant: bool = False, *,
             backend=None) -> QuantizedWeight:
    """W [out, in] (float32, float64, float16 or bfloat16; encoded from its float32 values) -> QuantizedWeight.
    group_size defaults to 256 for "int8" and 64 for "nf4" (even for nf4). Every |w| must be finite and at most
    half of float32's largest value (ENCODABLE_MAX): the result then always decodes to finite values."""
    op = "quantize"
    _checks.choice(op, "format", format, FORMATS)
    group_size = _group_size(op, format, group_size)
    if not isinstance(double_quant, bool):
        raise _checks.type_error(op, "double_quant", "a bool", double_quant)
    _checks.float_matrix(op, "W", W)
    if W.numel() == 0:
        raise _checks.error(op, "W", "a non-empty matrix", list(W.shape))
    _check_encodable(op, W)
    codes, scales = _quantize_raw(op, W, format, group_size, backend)
    qw = QuantizedWeight(format=format, shape=tuple(W.shape), group_size=group_size, codes=codes, scales=scales)
    if not double_quant:
        return qw
    offset = scales.double().mean().float()  # a float32 sum of large scales would overflow (offset inf, deq NaN)
    scale_codes, scale_scales = _quantize_raw(op, (scales - offset).view(1, -1), "int8", DOUBLE_QUANT_GROUP, backend)
    qw.scales, qw.scales_scale, qw.scales_offset = scale_codes, scale_scales, offset
    return qw


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32, *, backend=None) -> torch.Tensor:
    """deq(W) [out, in] in `dtype`: code value x scale in float32 (float64 for float64), rounded once."""
    op = "dequantize"
    _check_quantized(qw, op)
    if not isinstance(dtype, torch.dtype) or dtype not in _checks.FLOAT_DTYPES:
        raise _checks.error(op, "dtype", "float32, float64, float16 or bfloat16", dtype)
    return _dequantize_raw(op, qw.codes, qw.block_scales(backend, op), qw.format, qw.group_size, qw.shape, dtype,
                           backend)


def dequant_matmul(X: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None, *,
                   backend=None) -> torch.Tensor:
    """X [..., in] deq(W)^T (+ bias) -> [..., out] in X's dtype, without materializing deq(W). Differentiable
    in X and bias (dX = dY deq(W), tile-wise as well). NaN/Inf in X propagate to their rows of the result."""
    op = "dequant_matmul"
    _check_quantized(qw, op)
    _checks.tensor(op, "X", X)
    if X.dtype not in _checks.FLOAT_DTYPES:
        raise _checks.error(op, "X", "a float32, float64, float16 or bfloat16 tensor", X.dtype)
    rows, cols = qw.shape
    if X.dim() < 1 or X.shape[-1] != cols:
        raise _checks.error(op, "X", f"a tensor [..., {cols}] (in_features of qw)", list(X.shape))
    if X.device != qw.device:
        raise _checks.error(op, "X", f"on the device of qw ({qw.device})", X.device)
    if bias is not None:
        _checks.tensor(op, "bias", bias)
        if not (tuple(bias.shape) == (rows, ) and bias.dtype == X.dtype and bias.device == X.device):
            raise _checks.error(op, "bias", f"a {X.dtype} tensor of shape [{rows}] on {X.device} (X's dtype and "
                                "device)", f"{bias.dtype} {list(bias.shape)} on {bias.device}")
    lead = X.shape[:-1]
    X2 = X.reshape(-1, cols)
    backend = backends.check(op, backend, X.device)
    scales = qw.block_scales(backend, op)
    Y = torch.ops.lowrank_ops.dequant_matmul(X2, qw.codes.contiguous(), scales, qw.format, qw.group_size, rows, cols, bias, backend)
    return Y.reshape(*lead, rows)
