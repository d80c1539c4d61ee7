"""Oracle of the blockwise 8-bit moment format (docs/DESIGN.md §3 "8-bit optimizer moments"), written from
the description of the dynamic tree code in Dettmers et al., "8-bit Optimizers via Block-wise Quantization",
not from the kernels' closed form:

  a bit pattern is [sign bit (signed code only)] + a run of e zero bits + a 1 bit + f fraction bits k;
  |value| = 10^-e (0.1 + 0.9 (k + 1) / 2^f), the all-zero pattern (after the sign) is 0. Exact rationals
  (fractions.Fraction), rounded once to float64 and then to float32; the table is the 256 values sorted.

Quantization in float64: absmax = max |v| per block of `block` columns of a row, x = v / absmax (0 when absmax
is 0), q = argmin |x - code_q| with ties to the lower index (a direct search, not the kernels' midpoints), and
decoding code_q * absmax in float64."""

from fractions import Fraction

import torch


def _tree_values(bits: int) -> list[Fraction]:
    """Magnitudes of every `bits`-bit tree pattern (0 for the all-zero one)."""
    out = []
    for pattern in range(2**bits):
        text = format(pattern, f"0{bits}b")
        if "1" not in text:
            out.append(Fraction(0))
            continue
        e = text.index("1")  # the run of zero bits: the decimal exponent
        fraction_bits = text[e + 1 :]
        f = len(fraction_bits)
        k = int(fraction_bits, 2) if f else 0
        out.append(Fraction(1, 10**e) * (Fraction(1, 10) + Fraction(9, 10) * Fraction(k + 1, 2**f)))
    return out


def code_table(signed: bool) -> torch.Tensor:
    """The 256 code values, ascending, as float32 (via float64)."""
    if signed:
        magnitudes = _tree_values(7)
        values = magnitudes + [-m for m in magnitudes]  # sign bit 0, then sign bit 1
    else:
        values = _tree_values(8)
    return torch.tensor(sorted(float(v) for v in values), dtype=torch.float64).to(torch.float32)


def quantize(values: torch.Tensor, signed: bool, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int64 [rows, cols], absmax float64 [rows, ceil(cols / block)]) of the 2-D `values` in float64."""
    v = values.detach().to(torch.float64).cpu()
    rows, cols = v.shape
    code = code_table(signed).double()
    blocks = -(-cols // block)
    codes = torch.zeros(rows, cols, dtype=torch.int64)
    absmax = torch.zeros(rows, blocks, dtype=torch.float64)
    for b in range(blocks):
        part = v[:, b * block : (b + 1) * block]
        scale = part.abs().amax(dim=1)
        absmax[:, b] = scale
        x = torch.where(scale[:, None] == 0, torch.zeros_like(part), part / scale[:, None])
        distance = (x[..., None] - code).abs()
        codes[:, b * block : (b + 1) * block] = distance.argmin(dim=-1)  # the first minimum: the lower index
    return codes, absmax


def dequantize(codes: torch.Tensor, absmax: torch.Tensor, signed: bool, block: int) -> torch.Tensor:
    """float64 [rows, cols]: code_q * absmax."""
    code = code_table(signed).double()
    cols = codes.shape[1]
    scale = absmax.double().cpu().repeat_interleave(block, dim=1)[:, :cols]
    return code[codes.long().cpu()] * scale
