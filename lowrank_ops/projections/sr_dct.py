"""Subsampled randomized DCT projection "sr_dct" (the subsampled randomized trigonometric transform of
Woolfe, Liberty, Rokhlin & Tygert 2008; Halko, Martinsson & Tropp 2011 §4.6): a random semi-orthogonal
P (r x d) defined by one seed, docs/DESIGN.md §3 "Subsampled randomized DCT":

    P = S C D,   P P^T = S C D D^T C^T S^T = S S^T = I_r   (exactly, in exact arithmetic)

with C the d x d orthonormal DCT-II basis (lowrank_ops.ops.dct_basis), D = diag(sign) the seed's random
signs and S the seed's random choice of r distinct rows, in the seed's random order. Row block (k, K) of
a K r-row P (Layout.block: DiLoCo's distributed mode) takes the rows at positions [k r, (k+1) r) of that
order: the workers' bases share C and D and pick disjoint rows, so P_i P_j^T = S_i S_j^T = 0 exactly.

The rule (lowrank_ops/spec.py, SRDCT_*): sign_t is the sign of entry (0, t) of the seed's Rademacher sketch
(spec v1); the order sorts the rows t by the 64-bit Philox key of counter (t, SRDCT_KEY_ROW, 0, 0), equal
keys to the lower index. Both come from the ops (lowrank_ops.ops.sketch, lowrank_ops.ops.philox4x32), so
they are bit-identical on every backend.

Persisted: the refresh seed state["proj_seed"] only (an int: memory.estimate counts 8 bytes). Everything
else is regenerated from it. `projection()` hands the fused step an "sr_dct" side (lowrank_ops.ops.SideOperator):
the r row indices (computed from the seed at every call, on the device of the state's tensors, the
optimizer's moments; CPU for a state without tensors) and the seed itself, from which the kernels draw the
signs; they generate P[i, t] = sign_t C[rows[i], t] tile by tile as they generate a "dct" side's rows, so P
is never materialized (docs/DESIGN.md §3). Code that needs P itself (the adapter view, DiLoCo, FSDP column
blocks) gets it from signed_rows below, through its side_matrix (lowrank_ops.projections, lowrank_ops.nn).
"""

import functools

import torch

from ..ops.dct import dct_basis
from ..ops.projection import Projection, SideOperator
from ..ops.sketch import philox4x32, sketch
from ..spec import SRDCT_KEY_ROW, SRDCT_SIGN_ROW
from .base import Layout, ProjectionKind, register
from .dct import index_dtype

WHERE = "lowrank_ops.projections.sr_dct"


def signs(dim: int, seed: int, dtype: torch.dtype = torch.float64, device=None, *,
          backend=None) -> torch.Tensor:
    """The diagonal of D: [dim] values +-1 in `dtype`, the signs of row SRDCT_SIGN_ROW of the Rademacher
    sketch of `seed` (spec v1) computed on `backend` (lowrank_ops.ops.sketch)."""
    rows = sketch(SRDCT_SIGN_ROW + 1, dim, seed, "rademacher", torch.float32, device, backend=backend)
    return torch.where(rows[SRDCT_SIGN_ROW] > 0, 1.0, -1.0).to(dtype)


def order(dim: int, seed: int, device=None, *, backend=None) -> torch.Tensor:
    """The seed's random order of the rows [0, dim): int64 [dim], the rows sorted by their Philox keys
    (lowrank_ops.ops.philox4x32 on `backend`), equal keys to the lower index.

    The unsigned key w0 * 2^32 + w1 is held as the int64 (w0 - 2^31) * 2^32 + w1, which orders the same
    (a shift by 2^63) and cannot overflow; a stable sort keeps equal keys in index order."""
    t = torch.arange(dim, dtype=torch.int64, device=device)
    zero = torch.zeros_like(t)
    counters = torch.stack((t, torch.full_like(t, SRDCT_KEY_ROW), zero, zero), dim=-1)
    words = philox4x32(counters, seed, backend=backend)
    keys = (words[:, 0] - 2**31) * 2**32 + words[:, 1]
    return torch.sort(keys, stable=True).indices


def _check_block(rank: int, dim: int, block) -> tuple[int, int]:
    index, count = block or (0, 1)
    if not 1 <= rank * count <= dim or not 0 <= index < count:
        raise ValueError(
            f"{WHERE}: 'rank' x blocks ({rank} x {count}) must be in [1, dim={dim}] and the block index "
            f"{index} in [0, {count})"
        )
    return index, count


def rows(rank: int, dim: int, seed: int, block=None, device=None, *, backend=None) -> torch.Tensor:
    """The DCT-II rows S picks, in P's row order: positions [k rank, (k+1) rank) of order(dim, seed) for
    `block` = (k, K) (default (0, 1): the first `rank`), in index_dtype(dim) (int16 when dim <= 32767)."""
    index, _ = _check_block(rank, dim, block)
    chosen = order(dim, seed, device, backend=backend)[index * rank : (index + 1) * rank]
    return chosen.to(index_dtype(dim))


def signed_rows(dim: int, indices: torch.Tensor, seed: int, dtype: torch.dtype = torch.float64, device=None, *,
                backend=None) -> torch.Tensor:
    """P[i, t] = sign_t C[indices[i], t] (len(indices) x dim) in `dtype` on `device` (default: the indices'):
    the DCT-II rows computed in float64 (lowrank_ops.ops.dct_basis), times the signs of `seed` (exact),
    rounded once to `dtype`."""
    device = indices.device if device is None else device
    C = dct_basis(dim, indices.to(device), torch.float64, device, backend=backend)
    return (C * signs(dim, seed, torch.float64, device, backend=backend)).to(dtype)


def matrix(rank: int, dim: int, seed: int, dtype: torch.dtype = torch.float64, device=None, block=None, *,
           backend=None) -> torch.Tensor:
    """P = S C D (rank x dim) of `seed` (row block `block`), in `dtype` (signed_rows of the chosen rows)."""
    chosen = rows(rank, dim, seed, block, device, backend=backend)
    return signed_rows(dim, chosen, seed, dtype, backend=backend)


@functools.lru_cache(maxsize=4096)
def _step_rows(rank: int, dim: int, seed: int, block, device) -> torch.Tensor:
    """rows(rank, dim, seed, block, device), computed once per (layer, refresh): the projection is asked for
    at every step, and the Philox keys plus the sort of `dim` rows cost more than the rest of a small
    matrix's step. Read-only for its users (the fused ops only read the index vector)."""
    return rows(rank, dim, seed, block, device)


def _state_device(state: dict):
    """The device of the state's tensors (the optimizer's moments); None (CPU) if it has none."""
    return next((value.device for value in state.values() if isinstance(value, torch.Tensor)), None)


class SubsampledRandomizedDCT(ProjectionKind):
    name = "sr_dct"
    supports_block = True

    def refresh(self, state, G, layout, seed):
        state["proj_seed"] = seed
        return True

    def projection(self, state, layout: Layout) -> Projection:
        ((side, rank, d),) = layout.sides()
        seed = state["proj_seed"]
        block = None if layout.block is None else tuple(layout.block)
        chosen = _step_rows(rank, d, seed, block, _state_device(state))
        return Projection.one_sided(SideOperator("sr_dct", rank, seed=seed, indices=chosen), side)


register(SubsampledRandomizedDCT())
