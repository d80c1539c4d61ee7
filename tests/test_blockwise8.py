"""The blockwise 8-bit moment format (docs/DESIGN.md §3 "8-bit optimizer moments"): the code tables against
the tree description of the oracle, the C++ arithmetic (kernels/blockwise8.h through _C.cpu.blockwise8_*)
bit-identical to the pure-torch one, both against the float64 oracle, the tie rule and round trips."""

import pytest
import torch

from lowrank_ops import _extension, backends
from lowrank_ops.pure_torch import blockwise8 as production
from lowrank_ops.reference import blockwise8 as reference

SIGNS = [pytest.param(True, id="signed"), pytest.param(False, id="unsigned")]
EPS32 = torch.finfo(torch.float32).eps


def _cpp():
    cpu = _extension.compiled("cpu")
    if cpu is None or not hasattr(cpu, "blockwise8_encode"):
        pytest.skip("lowrank_ops._C is not built (with the blockwise8 functions)")
    return cpu


def _encoders():
    """The implementations of the format's arithmetic: pure torch, C++ (kernels/blockwise8.h) and Triton (in
    the interpreter without a GPU)."""
    return [pytest.param("torch", id="torch"), pytest.param("cpp", id="cpp"), pytest.param("triton", id="triton")]


def _impl(name):
    if name == "torch":
        return production.encode, production.decode
    if name == "triton":
        reason = backends.unavailable_reason("triton", "lowrank_adamw_step_", torch.device("cpu"))
        if reason is not None:
            pytest.skip(str(reason))
        from lowrank_ops.triton import blockwise8 as triton8

        return triton8.encode, triton8.decode
    cpu = _cpp()
    return cpu.blockwise8_encode, cpu.blockwise8_decode


def _moment(shape, signed, rng, spread=6.0):
    """Values of a wide dynamic range (magnitudes 10^-spread .. 1 times a random scale), with an all-zero row
    block when there is room, as Adam moments have."""
    magnitude = torch.pow(10.0, -spread * torch.rand(shape, generator=rng, dtype=torch.float64))
    v = magnitude * torch.exp(torch.randn(shape[0], 1, generator=rng, dtype=torch.float64))
    if signed:
        v = v * torch.where(torch.rand(shape, generator=rng) < 0.5, -1.0, 1.0).double()
    if shape[0] > 2 and shape[1] > 3:
        v[1, :3] = 0.0
        v[2] = 0.0
    return v.float()


@pytest.mark.parametrize("signed", SIGNS)
def test_code_table_is_the_tree_code(signed):
    """The closed form of the kernels equals the oracle's enumeration of the tree's bit patterns, bit for
    bit, and the C++ table decodes to the same values."""
    torch.testing.assert_close(production.code_table(signed), reference.code_table(signed), rtol=0, atol=0)
    codes = torch.arange(256, dtype=torch.uint8).view(1, 256)
    decoded = production.decode(codes, torch.ones(1, 1), signed, 256)
    assert torch.equal(decoded.view(-1), reference.code_table(signed))


@pytest.mark.parametrize("signed", SIGNS)
def test_code_table_shape(signed):
    """Ascending in [-1, 1] (or [0, 1]) with +-1 and 0 exact; each decade (10^-(e+1), 10^-e] holds 2^f evenly
    spaced values; the signed code's spare pattern is a second 0 (bytes 127 and 128)."""
    code = production.code_table(signed).double()
    assert bool((code[1:] >= code[:-1]).all())
    assert code[-1] == 1.0 and (code[0] == -1.0 if signed else code[0] == 0.0)
    zeros = (code == 0).nonzero().view(-1).tolist()
    assert zeros == ([127, 128] if signed else [0])
    positive = code[code > 0]
    bits = 7 if signed else 8
    assert len(positive) == 2**bits - 1
    # decade e (from the top) has 2^(bits - 1 - e) values, the smallest 10^-e (0.1 + 0.9 / 2^f)
    start = len(positive)
    for e in range(bits):
        f = bits - 1 - e
        decade = positive[start - 2**f : start]
        start -= 2**f
        assert decade[-1] == pytest.approx(10.0**-e, rel=EPS32)
        assert decade[0] == pytest.approx(10.0**-e * (0.1 + 0.9 / 2**f), rel=EPS32)
        steps = decade.diff()
        if len(steps):
            # float32 values: each step is off by at most the rounding of its two ends
            assert torch.allclose(steps, torch.full_like(steps, 10.0**-e * 0.9 / 2**f), rtol=0,
                                  atol=2 * EPS32 * 10.0**-e)


@pytest.mark.parametrize("impl", [p for p in _encoders() if p.values[0] != "torch"])
@pytest.mark.parametrize("signed", SIGNS)
@pytest.mark.parametrize("shape,block", [((1, 1), 256), ((3, 7), 4), ((5, 300), 256), ((17, 33), 8),
                                         ((2, 513), 256), ((4, 9), 9), ((6, 10), 1)])
def test_every_backend_encodes_bit_identically_to_pure_torch(impl, signed, shape, block, rng):
    """C++ and Triton give the pure-torch codes and absmax bits, and decode to the same bits."""
    encode, decode = _impl(impl)
    v = _moment(shape, signed, rng) if signed else _moment(shape, signed, rng).abs()
    codes, absmax = production.encode(v, signed, block)
    got_codes, got_absmax = encode(v, signed, block)
    assert got_codes.dtype == torch.uint8 and got_absmax.dtype == torch.float32
    assert torch.equal(got_codes, codes) and torch.equal(got_absmax, absmax)
    assert torch.equal(decode(codes, absmax, signed, block), production.decode(codes, absmax, signed, block))


@pytest.mark.parametrize("impl", _encoders())
@pytest.mark.parametrize("signed", SIGNS)
@pytest.mark.parametrize("shape,block", [((1, 1), 256), ((9, 31), 8), ((4, 600), 256), ((33, 5), 2)])
def test_encode_matches_the_float64_oracle(impl, signed, shape, block, rng):
    """Against the oracle's direct nearest-value search in float64: the same absmax, and the same code value
    except where the float64 quotient v / absmax lies within float32 rounding of a midpoint (where the
    float32 quotient may fall on the other side); there the two codes are neighbours."""
    encode, _ = _impl(impl)
    v = _moment(shape, signed, rng) if signed else _moment(shape, signed, rng).abs()
    codes, absmax = encode(v, signed, block)
    ref_codes, ref_absmax = reference.quantize(v, signed, block)
    assert torch.equal(absmax.double(), ref_absmax)  # a max of float32 values is exact
    code = reference.code_table(signed).double()
    ours, theirs = code[codes.long()], code[ref_codes]
    differ = ours != theirs
    if bool(differ.any()):
        lo = torch.minimum(codes.long(), ref_codes)[differ]
        assert bool(((codes.long() - ref_codes).abs()[differ] == 1).all())
        x = (v.double() / ref_absmax.repeat_interleave(block, dim=1)[:, : shape[1]])[differ]
        midpoint = (code[lo] + code[lo + 1]) / 2
        assert bool(((x - midpoint).abs() <= 2 * EPS32 * midpoint.abs()).all())
    assert int(differ.sum()) <= max(1, v.numel() // 100)


@pytest.mark.parametrize("impl", _encoders())
@pytest.mark.parametrize("signed", SIGNS)
def test_ties_go_to_the_lower_index(impl, signed):
    """x exactly on a float32 midpoint takes the lower code; the next float32 above it the upper one. One row,
    one block whose absmax is 1 (its first element), so x is the stored value itself."""
    encode, _ = _impl(impl)
    mid = production.midpoints(signed)
    keep = mid != 0  # the signed code's two zeros: their midpoint 0 is a code value, not a tie
    above = torch.nextafter(mid, torch.full_like(mid, 2.0))
    for values, offset in ((mid, 0), (above, 1)):
        row = torch.cat([torch.ones(1), values[keep]]).view(1, -1)
        codes, absmax = encode(row, signed, row.shape[1])
        assert float(absmax) == 1.0
        expected = torch.arange(255)[keep] + offset
        assert torch.equal(codes.view(-1)[1:].long(), expected)


@pytest.mark.parametrize("signed", SIGNS)
def test_cpp_encode_at_every_change_point(signed):
    """The C++ encode (an O(1) bucket table on the top 16 bits of x, kernels/blockwise8.h) gives the pure-torch
    codes (searchsorted over the midpoints) wherever the code or the bucket changes: at every bucket's first
    and last float32 pattern in [-1, 1] and their neighbours, at every midpoint and its two neighbours each
    way, at +-0 and the denormals' ends. One row whose first element is 1, so absmax = 1 and x = v."""
    cpu = _cpp()
    keys = torch.arange(0x3F80 + 1, dtype=torch.int64)  # magnitudes up to 1.0's bucket
    starts = (keys << 16).to(torch.int32).view(torch.float32)
    ends = ((keys << 16) | 0xFFFF).to(torch.int32).view(torch.float32)
    mid = production.midpoints(signed)
    base = torch.cat([starts, ends, mid, torch.tensor([0.0, 1.4e-45, 1.1754942e-38, 1.1754944e-38])])
    up, down = torch.full_like(base, 2.0), torch.full_like(base, -2.0)
    up1, down1 = torch.nextafter(base, up), torch.nextafter(base, down)
    x = torch.cat([base, up1, torch.nextafter(up1, up), down1, torch.nextafter(down1, down)])
    x = torch.cat([x, -x]) if signed else x
    x = x[x.abs() <= 1.0]
    row = torch.cat([torch.ones(1), x]).view(1, -1)
    codes, absmax = cpu.blockwise8_encode(row, signed, row.shape[1])
    expected, expected_absmax = production.encode(row, signed, row.shape[1])
    assert float(absmax) == 1.0 and torch.equal(absmax, expected_absmax)
    assert torch.equal(codes, expected)


@pytest.mark.parametrize("impl", _encoders())
@pytest.mark.parametrize("signed", SIGNS)
def test_round_trip(impl, signed, rng):
    """decode(encode(v)) is within half the local code gap (times absmax) of v, the block's largest element is
    exact, and encoding the decoded values again gives the same codes (+0 for the signed code's spare 128)
    and absmax: requantizing an untouched moment changes nothing."""
    encode, decode = _impl(impl)
    v = _moment((7, 45), signed, rng) if signed else _moment((7, 45), signed, rng).abs()
    codes, absmax = encode(v, signed, 16)
    back = decode(codes, absmax, signed, 16)
    code = production.code_table(signed).double()
    gaps = torch.cat([code.diff(), code.diff()[-1:]])
    q = codes.long()
    gap = torch.maximum(gaps[q], gaps[(q - 1).clamp(min=0)])
    scale = absmax.double().repeat_interleave(16, dim=1)[:, :45]
    assert bool(((back.double() - v.double()).abs() <= (gap / 2 + 2 * EPS32) * scale).all())
    blocks = v.abs().view(7, -1).split(16, dim=1)
    for b, part in enumerate(blocks):
        top = part.argmax(dim=1)
        assert torch.equal(back[:, b * 16:][torch.arange(7), top].abs(), absmax[:, b])
    again, again_absmax = encode(back, signed, 16)
    normal = torch.where(codes == 128, 127, codes) if signed else codes
    assert torch.equal(again, normal) and torch.equal(again_absmax, absmax)


@pytest.mark.parametrize("impl", _encoders())
def test_nonfinite_values_spoil_only_their_block(impl):
    """A NaN makes its block's absmax NaN (the block decodes to NaN); the other blocks are untouched."""
    encode, decode = _impl(impl)
    v = torch.tensor([[0.5, float("nan"), 0.25, 2.0, -2.0, 0.0]])  # the second block: +-1 and 0, exact
    codes, absmax = encode(v, True, 3)
    assert torch.isnan(absmax[0, 0]) and float(absmax[0, 1]) == 2.0
    back = decode(codes, absmax, True, 3)
    assert bool(torch.isnan(back[0, :3]).all())
    assert back[0, 3:].tolist() == [2.0, -2.0, 0.0]


def test_cpp_functions_check_their_arguments():
    cpu = _cpp()
    with pytest.raises(RuntimeError, match="blockwise8_encode: argument 'values' must be a 2-D float32 CPU"):
        cpu.blockwise8_encode(torch.zeros(3, dtype=torch.float64), True, 4)
    with pytest.raises(RuntimeError, match="blockwise8_encode: argument 'block' must be >= 1, got 0"):
        cpu.blockwise8_encode(torch.zeros(2, 3), True, 0)
    with pytest.raises(RuntimeError, match=r"blockwise8_decode: argument 'absmax' must be a float32 CPU tensor of "
                                           r"shape \[2, 1\], got Float of shape \[2, 2\]"):
        cpu.blockwise8_decode(torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(2, 2), True, 4)
