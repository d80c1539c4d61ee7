"""Oracle of the subsampled randomized DCT P = S C D (docs/DESIGN.md §3 "Subsampled randomized DCT",
lowrank_ops/spec.py SRDCT_*), written from the rule in Python integers and float64:

    sign_t = +1 if bit (t mod 32) of word (t mod 128) // 32 of philox((t // 128, SRDCT_SIGN_ROW, 0, 0)) is
             set, else -1;
    key_t  = w0 * 2^32 + w1 of philox((t, SRDCT_KEY_ROW, 0, 0)), an unsigned 64-bit integer;
    order  = the rows t sorted by (key_t, t);
    P[i, t] = sign_t * C[order[k r + i], t]  for row block (k, K) (default (0, 1)),

with the Philox words of this package's NumPy oracle and C the float64 DCT-II basis of reference/dct.py."""

import numpy as np
import torch

from ..spec import SRDCT_KEY_ROW, SRDCT_SIGN_ROW
from .dct import dct_basis
from .philox import philox4x32


def _words(c0, c1, seed: int):
    """The four Philox words (NumPy int64 arrays) of counters (c0, c1, 0, 0) under the uint64 seed."""
    zero = torch.zeros(len(c0), dtype=torch.int64)
    words = philox4x32(torch.as_tensor(c0), torch.as_tensor(c1), zero, zero, seed)
    return [w.numpy() for w in words]


def signs(dim: int, seed: int) -> torch.Tensor:
    """float64 [dim] of +-1."""
    t = np.arange(dim, dtype=np.int64)
    words = np.stack(_words(t // 128, np.full(dim, SRDCT_SIGN_ROW), seed), axis=1)  # [dim, 4]
    word = words[t, (t % 128) // 32]
    return torch.from_numpy(np.where((word >> (t % 32)) & 1 == 1, 1.0, -1.0))


def order(dim: int, seed: int) -> list[int]:
    """The rows [0, dim) sorted by (key, index)."""
    w0, w1, _, _ = _words(np.arange(dim, dtype=np.int64), np.full(dim, SRDCT_KEY_ROW), seed)
    keys = [(int(a) << 32) | int(b) for a, b in zip(w0, w1)]
    return sorted(range(dim), key=lambda t: (keys[t], t))


def rows(rank: int, dim: int, seed: int, block=(0, 1)) -> list[int]:
    """The basis rows of row block `block` = (k, K): positions [k rank, (k+1) rank) of the order."""
    k, _ = block
    return order(dim, seed)[k * rank : (k + 1) * rank]


def matrix(rank: int, dim: int, seed: int, block=(0, 1)) -> torch.Tensor:
    """P (rank x dim) in float64."""
    return dct_basis(dim, rows(rank, dim, seed, block)) * signs(dim, seed)[None, :]
