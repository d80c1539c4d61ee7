"""Oracle of the quant family, group by group from the formats of lowrank_ops/spec.py (docs/DESIGN.md §3),
in NumPy float32 where the format says float32:

  int8  per row, per group of `group_size` columns (the last one shorter): scale = absmax / 127 (float32);
        code = round half to even of w / scale (float32 quotient), clamped to [-127, 127]; a zero group has
        scale 0 and codes 0.
  nf4   per block of `group_size` elements of the flattened W (the last one shorter): absmax (float32);
        x = w * (1 / max(absmax, 1e-38)) (float32); code = how many codebook midpoints (float32 means of
        neighbouring codes) lie below x; codes 2i and 2i + 1 share byte i (2i in the high nibble), an odd
        count is padded with the code of 0.
  decode code value x scale in float64 for a float64 result, in float32 otherwise, rounded once.
Every W is read as its float32 values."""

import numpy as np
import torch

from ..spec import INT8_MAX, NF4_CODE, NF4_MIN_ABSMAX, compute_dtype

NF4 = np.array(NF4_CODE, dtype=np.float32)


def nf4_thresholds(device=None) -> torch.Tensor:
    """The 15 float32 midpoints between neighbouring codes."""
    mids = [(NF4[t] + NF4[t + 1]) * np.float32(0.5) for t in range(len(NF4) - 1)]
    return torch.tensor(np.array(mids, dtype=np.float32), device=device)


def _blocks(length: int, size: int):
    return [(start, min(start + size, length)) for start in range(0, length, size)]


def quantize_int8(W: torch.Tensor, group_size: int):
    """(codes int8 [m, n], scales float32 [m, ceil(n / group_size)])."""
    w = W.detach().float().cpu().numpy()
    codes = np.zeros(w.shape, dtype=np.int8)
    scales = np.zeros((w.shape[0], len(_blocks(w.shape[1], group_size))), dtype=np.float32)
    for i, row in enumerate(w):
        for g, (a, b) in enumerate(_blocks(w.shape[1], group_size)):
            scale = np.abs(row[a:b]).max() / np.float32(INT8_MAX)
            scales[i, g] = scale
            if scale > 0:
                codes[i, a:b] = np.clip(np.rint(row[a:b] / scale), -INT8_MAX, INT8_MAX)
    return torch.from_numpy(codes).to(W.device), torch.from_numpy(scales).to(W.device)


def quantize_nf4(W: torch.Tensor, group_size: int):
    """(codes uint8 [ceil(numel / 2)], absmax float32 [ceil(numel / group_size)])."""
    flat = W.detach().float().cpu().numpy().reshape(-1)
    mids = nf4_thresholds().numpy()
    q = np.empty(flat.size + flat.size % 2, dtype=np.uint8)
    q[-1] = np.searchsorted(mids, np.float32(0))  # the pad of an odd count (overwritten when even)
    absmax = np.zeros(len(_blocks(flat.size, group_size)), dtype=np.float32)
    for g, (a, b) in enumerate(_blocks(flat.size, group_size)):
        absmax[g] = np.abs(flat[a:b]).max()
        inverse = np.float32(1) / max(absmax[g], np.float32(NF4_MIN_ABSMAX))
        q[a:b] = np.searchsorted(mids, flat[a:b] * inverse, side="left")  # midpoints strictly below
    return torch.from_numpy(q[0::2] * np.uint8(16) + q[1::2]).to(W.device), torch.from_numpy(absmax).to(W.device)


def nf4_unpack(codes: torch.Tensor, numel: int) -> torch.Tensor:
    """int64 codes of the first `numel` elements (high nibble first)."""
    c = codes.cpu().numpy().astype(np.int64)
    return torch.from_numpy(np.column_stack((c // 16, c % 16)).reshape(-1)[:numel]).to(codes.device)


def quantize(W: torch.Tensor, fmt: str, group_size: int):
    return quantize_int8(W, group_size) if fmt == "int8" else quantize_nf4(W, group_size)


def dequantize(codes, scales, fmt: str, group_size: int, shape, dtype=torch.float32) -> torch.Tensor:
    """deq(W) [shape] in `dtype`: value x scale in compute_dtype(dtype), rounded once."""
    compute = np.float64 if compute_dtype(dtype) == torch.float64 else np.float32
    rows, cols = shape
    s = scales.cpu().numpy().astype(compute)
    if fmt == "int8":
        values = codes.cpu().numpy().astype(compute)
        per_element = np.repeat(s, group_size, axis=1)[:, :cols]
    else:
        values = NF4.astype(compute)[nf4_unpack(codes, rows * cols).numpy()].reshape(rows, cols)
        per_element = np.repeat(s, group_size)[:rows * cols].reshape(rows, cols)
    return torch.from_numpy(values * per_element).to(dtype=dtype, device=codes.device)
