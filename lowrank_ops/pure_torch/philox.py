"""Philox4x32 in plain int64 torch arithmetic (Salmon et al., SC'11; the Random123 round function).

Every 32-bit quantity lives in an int64 tensor in [0, 2^32). The 32x32 -> 64-bit product of a round
would overflow int64, so it is formed from 16-bit halves of the constant multiplier."""

import torch

from ..spec import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1

MASK32 = 0xFFFFFFFF


def mul_hi_lo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of a * m for int64 tensors a in [0, 2^32) and a uint32 constant m.

    a*m = (a*m_hi << 16) + a*m_lo; with t = a*m_hi + (a*m_lo >> 16) (< 2^49, no overflow),
    hi = t >> 16 and lo = ((t & 0xffff) << 16) | (a*m_lo & 0xffff)."""
    m_lo, m_hi = m & 0xFFFF, m >> 16
    p_lo = a * m_lo
    t = a * m_hi + (p_lo >> 16)
    return t >> 16, ((t & 0xFFFF) << 16) | (p_lo & 0xFFFF)


def philox_words(c0, c1, c2, c3, seed: int, rounds: int = 10):
    """The four output words for counters (c0, c1, c2, c3) (int64 tensors of uint32 values, broadcast
    together) and a uint64 seed (key = (seed & 0xffffffff, seed >> 32))."""
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    for _ in range(rounds):
        hi0, lo0 = mul_hi_lo(c0, PHILOX_M0)
        hi1, lo1 = mul_hi_lo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def philox4x32(counters: torch.Tensor, seed: int, rounds: int = 10) -> torch.Tensor:
    """The op lowrank_ops::philox4x32: int64 counters [..., 4] of uint32 values -> the words [..., 4]."""
    return torch.stack(philox_words(*counters.unbind(-1), seed % 2**64, rounds), dim=-1)
