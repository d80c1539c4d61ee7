"""The blockwise 8-bit moment format in torch (docs/DESIGN.md §3 "8-bit optimizer moments"): the same
arithmetic as kernels/blockwise8.h, bit for bit, on any device.

A moment of projected shape [rows, cols] is stored as codes uint8 [rows, cols] and absmax float32
[rows, ceil(cols / block)] (blocks of `block` columns within a row). Encoding: absmax = max |v| per block,
x = v / absmax (0 where absmax is 0), q = the number of float32 midpoints of neighbouring code values strictly
below x (the nearest value, ties to the lower index; NaN gives 0). Decoding: code[q] * absmax in float32."""

import functools

import torch

CODES = 256


def code_value(signed: bool, q: int) -> float:
    """Value of byte q of the dynamic tree code (kernels/blockwise8.h q8_code_value64), in float64: for the
    magnitude pattern j >= 1 (q itself unsigned; q - 128 or 127 - q signed) with p = floor(log2 j) and
    k = j - 2^p, (2^p + 9 (k + 1)) / (2^p 10^(bits - p)), bits = 8 unsigned, 7 signed."""
    sign, j, bits = 1.0, q, 8
    if signed:
        bits = 7
        sign, j = (1.0, q - 128) if q >= 128 else (-1.0, 127 - q)
    if j == 0:
        return 0.0
    p = j.bit_length() - 1
    return sign * (float(2**p + 9 * (j - 2**p + 1)) / float(2**p * 10 ** (bits - p)))


@functools.cache
def _tables(signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.tensor([code_value(signed, q) for q in range(CODES)], dtype=torch.float64)
    code = values.to(torch.float32)
    wide = code.double()
    mid = ((wide[:-1] + wide[1:]) * 0.5).to(torch.float32)  # exact midpoints, rounded once
    return code, mid


@functools.cache
def _on(signed: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    code, mid = _tables(signed)
    return code.to(device), mid.to(device)


def code_table(signed: bool, device=None) -> torch.Tensor:
    """The 256 code values, ascending, float32 (byte q decodes to code_table[q] * absmax)."""
    return _on(signed, torch.device(device or "cpu"))[0]


def midpoints(signed: bool, device=None) -> torch.Tensor:
    """The 255 float32 midpoints between neighbouring code values."""
    return _on(signed, torch.device(device or "cpu"))[1]


def num_blocks(cols: int, block: int) -> int:
    return -(-cols // block)


def _padded(v: torch.Tensor, block: int) -> torch.Tensor:
    """v [rows, cols] zero-padded to whole blocks, viewed [rows, blocks, block]."""
    rows, cols = v.shape
    blocks = num_blocks(cols, block)
    out = v.new_zeros(rows, blocks * block)
    out[:, :cols] = v
    return out.view(rows, blocks, block)


def encode(values: torch.Tensor, signed: bool, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 [rows, cols], absmax float32 [rows, ceil(cols / block)]) of the 2-D `values` (read as
    float32)."""
    v = values.to(torch.float32)
    rows, cols = v.shape
    padded = _padded(v, block)
    absmax = padded.abs().amax(dim=2) if cols else v.new_zeros(rows, 0)  # NaN propagates
    scale = absmax.unsqueeze(2)
    x = torch.where(scale == 0, torch.zeros_like(padded), padded / scale)
    q = torch.searchsorted(midpoints(signed, v.device), x.reshape(-1), right=False).view_as(x)
    q = torch.where(torch.isnan(x), 0, q)
    codes = q.reshape(rows, -1)[:, :cols].to(torch.uint8)
    return codes, absmax


def decode(codes: torch.Tensor, absmax: torch.Tensor, signed: bool, block: int) -> torch.Tensor:
    """float32 [rows, cols]: code[codes] * absmax of each element's block."""
    rows, cols = codes.shape
    values = code_table(signed, codes.device)[codes.long()]
    scale = absmax.repeat_interleave(block, dim=1)[:, :cols] if cols else absmax.new_zeros(rows, 0)
    return values * scale
