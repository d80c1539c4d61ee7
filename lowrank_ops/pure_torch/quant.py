"""The quant family in torch ops, from the formats of lowrank_ops/spec.py (docs/DESIGN.md §3; kernels/quant.h
has the same formulas for the compiled kernels).

INT8: symmetric absmax per group of `group_size` consecutive elements of a row of W [out, in]; the last
group of a row may be shorter (it is padded with zeros, which do not change its absmax, and the padding is
never stored). scale = absmax / 127 (float32), code = clamp(round(w / scale), -127, 127), round half to
even; an all-zero group has scale 0 and codes 0.

NF4: blocks of `group_size` consecutive elements of the flattened W (as bitsandbytes blocks), the last one
possibly shorter; absmax in float32, x = w * (1 / max(absmax, 1e-38)), code = the number of codebook
midpoints (float32) strictly below x; element 2i in the high nibble of byte i, 2i + 1 in the low one; an
odd element count pads the last low nibble with the code of 0.

Encoding is done on the float32 value of W. Decoding computes code value x scale in float64 for a float64
result and in float32 otherwise, then rounds once to the requested dtype. dequant_matmul materializes
deq(W) (the compiled and Triton kernels decode it tile by tile)."""

import torch

from ..spec import INT8_MAX, NF4_CODE, NF4_MIN_ABSMAX, compute_dtype


def nf4_codebook(device=None) -> torch.Tensor:
    return torch.tensor(NF4_CODE, dtype=torch.float32, device=device)


def nf4_thresholds(device=None) -> torch.Tensor:
    """The 15 midpoints (c_t + c_(t+1)) / 2, computed in float32."""
    code = nf4_codebook(device)
    return (code[:-1] + code[1:]) / 2


def num_groups(length: int, group_size: int) -> int:
    return -(-length // group_size)


def quantize_int8(W: torch.Tensor, group_size: int):
    """W [m, n] -> (codes int8 [m, n], scales float32 [m, ceil(n / group_size)])."""
    m, n = W.shape
    groups = num_groups(n, group_size)
    w = torch.nn.functional.pad(W.float(), (0, groups * group_size - n)).view(m, groups, group_size)
    scales = w.abs().amax(dim=-1) / torch.tensor(float(INT8_MAX), dtype=torch.float32)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(w / safe.unsqueeze(-1)).clamp(-INT8_MAX, INT8_MAX)
    codes = torch.where(scales.unsqueeze(-1) > 0, codes, torch.zeros_like(codes))
    return codes.to(torch.int8).view(m, groups * group_size)[:, :n].contiguous(), scales


def dequantize_int8(codes: torch.Tensor, scales: torch.Tensor, group_size: int, dtype) -> torch.Tensor:
    compute = compute_dtype(dtype)
    n = codes.shape[1]
    per_element = scales.repeat_interleave(group_size, dim=1)[:, :n]
    return (codes.to(compute) * per_element.to(compute)).to(dtype)


def quantize_nf4(W: torch.Tensor, group_size: int):
    """W [m, n] -> (codes uint8 [ceil(m n / 2)], absmax float32 [ceil(m n / group_size)])."""
    flat = W.reshape(-1).float()
    numel = flat.numel()
    blocks = num_groups(numel, group_size)
    padded = torch.nn.functional.pad(flat, (0, blocks * group_size - numel)).view(blocks, group_size)
    absmax = padded.abs().amax(dim=-1)
    inv = 1.0 / absmax.clamp(min=NF4_MIN_ABSMAX)
    scaled = (padded * inv.unsqueeze(-1)).reshape(-1)[:numel]
    scaled = torch.nn.functional.pad(scaled, (0, numel % 2))  # the pad nibble encodes 0
    q = torch.bucketize(scaled, nf4_thresholds(W.device)).to(torch.uint8)
    return (q[0::2] << 4) | q[1::2], absmax


def nf4_unpack(codes: torch.Tensor, numel: int) -> torch.Tensor:
    """int64 codes of the first `numel` elements."""
    q = torch.stack(((codes >> 4) & 15, codes & 15), dim=-1).reshape(-1)
    return q[:numel].to(torch.int64)


def dequantize_nf4(codes: torch.Tensor, absmax: torch.Tensor, group_size: int, rows: int, cols: int,
                   dtype) -> torch.Tensor:
    compute = compute_dtype(dtype)
    numel = rows * cols
    values = nf4_codebook(codes.device).to(compute)[nf4_unpack(codes, numel)]
    per_element = absmax.repeat_interleave(group_size)[:numel].to(compute)
    return (values * per_element).to(dtype).view(rows, cols)


def quantize_weight(W: torch.Tensor, format: str, group_size: int):
    """The op lowrank_ops::quantize_weight: W [rows, cols] -> (codes, scales)."""
    return quantize_int8(W, group_size) if format == "int8" else quantize_nf4(W, group_size)


def dequantize_weight(codes, scales, format: str, group_size: int, rows: int, cols: int, dtype) -> torch.Tensor:
    """The op lowrank_ops::dequantize_weight: deq(W) [rows, cols] in `dtype`."""
    if format == "int8":
        return dequantize_int8(codes, scales, group_size, dtype)
    return dequantize_nf4(codes, scales, group_size, rows, cols, dtype)


def dequant_matmul(X, codes, scales, format: str, group_size: int, rows: int, cols: int, bias=None):
    """The op lowrank_ops::dequant_matmul: X [t, cols] @ deq(W)^T (+ bias), deq(W) in X's dtype."""
    W = dequantize_weight(codes, scales, format, group_size, rows, cols, X.dtype)
    return torch.nn.functional.linear(X, W, bias)


def dequant_matmul_t(dY, codes, scales, format: str, group_size: int, rows: int, cols: int):
    """The op lowrank_ops::dequant_matmul_t: dY [t, rows] @ deq(W), deq(W) in dY's dtype."""
    return dY @ dequantize_weight(codes, scales, format, group_size, rows, cols, dY.dtype)
