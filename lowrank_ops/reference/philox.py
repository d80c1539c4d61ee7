"""Philox4x32 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11), as
Random123's philox4x32_R defines it, in NumPy uint64 arithmetic: a 32 x 32-bit product is exact in 64 bits,
so its high and low words are a shift and a mask.

One round on counter (x0, x1, x2, x3) with key (k0, k1):
    (hi0, lo0) = M0 * x0,  (hi1, lo1) = M1 * x2
    (x0, x1, x2, x3) <- (hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0)
and the key is bumped by (W0, W1) mod 2^32 before every round but the first."""

import numpy as np
import torch

from ..spec import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1

LOW32 = np.uint64(0xFFFFFFFF)


def philox4x32(c0, c1, c2, c3, seed: int, rounds: int = 10):
    """The four output words (int64 tensors of uint32 values) for counters c0..c3 (int64 tensors of uint32
    values, broadcast together) under the uint64 seed, key = (seed & 0xffffffff, seed >> 32)."""
    device = torch.as_tensor(c0).device
    x = [np.asarray(torch.as_tensor(c).cpu(), dtype=np.int64).astype(np.uint64) for c in (c0, c1, c2, c3)]
    x = [a.copy() for a in np.broadcast_arrays(*x)]
    key = [seed % 2**32, (seed >> 32) % 2**32]
    for r in range(rounds):
        if r > 0:
            key = [(key[0] + PHILOX_W0) % 2**32, (key[1] + PHILOX_W1) % 2**32]
        p0 = x[0] * np.uint64(PHILOX_M0)
        p1 = x[2] * np.uint64(PHILOX_M1)
        x = [(p1 >> np.uint64(32)) ^ x[1] ^ np.uint64(key[0]), p1 & LOW32,
             (p0 >> np.uint64(32)) ^ x[3] ^ np.uint64(key[1]), p0 & LOW32]
    return tuple(torch.from_numpy(a.astype(np.int64)).to(device) for a in x)
