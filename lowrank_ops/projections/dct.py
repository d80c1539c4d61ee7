"""SVD-free projection "dct" (Modoranu et al., "SVD-Free Low-Rank Adaptive Gradient Optimization for Large
Language Models", arXiv:2505.17967; conventions in docs/DESIGN.md §3 "DCT"): at each refresh, P = D[idx, :], the
r rows of the fixed d x d orthonormal DCT-II basis D best aligned with the current gradient on the projected
side (lowrank_ops.ops.dct_topk: the largest l1 norms of the rows of D G or columns of G D^T; ascending,
ties to the lower index). One transform and a selection per refresh instead of an SVD.

Persisted: the index vector state["proj_left"] or state["proj_right"] (int16 when d <= 32767, else int32;
shape [r]) and the refresh seed state["proj_seed"] (an int, used only by the fallback). The fused step
regenerates the rows from the indices inside its kernels (SideOperator kind "dct"), so P is never stored.
The indices are exact integers, so save -> load -> continue is bit-identical on any machine.

Robustness (lowrank_ops.projections.base.refresh): never called on a zero or non-finite G (the previous
indices are kept); a zero G at the first refresh takes the fallback: r distinct basis rows drawn from the
refresh seed (torch.randperm on a CPU generator seeded with it, sorted), a seeded random semi-orthogonal
basis like the SVD kinds' fallback.
"""

import torch

from ..ops.dct import dct_topk
from ..ops.projection import Projection, SideOperator
from .base import Layout, ProjectionKind, register

INT16_MAX_DIM = 32767  # the largest d whose indices (0 .. d - 1) fit int16


def index_dtype(dim: int) -> torch.dtype:
    """The dtype the indices of a basis of size `dim` are persisted in: int16 when they fit, else int32."""
    return torch.int16 if dim <= INT16_MAX_DIM else torch.int32


def seeded_indices(rank: int, dim: int, seed: int, device=None) -> torch.Tensor:
    """`rank` distinct basis rows of [0, dim) drawn from `seed` (a uint64), ascending, in index_dtype(dim)."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(dim, generator=generator)[:rank]
    return torch.sort(chosen).values.to(device=device, dtype=index_dtype(dim))


class DCT(ProjectionKind):
    name = "dct"
    uses_gradient = True

    def refresh(self, state, G, layout, seed):
        for side, rank, d in layout.sides():
            state[f"proj_{side}"] = dct_topk(G, rank, side).to(index_dtype(d))
        state["proj_seed"] = seed
        return True

    def fallback(self, state, G, layout, seed):
        for side, rank, d in layout.sides():
            state[f"proj_{side}"] = seeded_indices(rank, d, seed, G.device)
        state["proj_seed"] = seed

    def projection(self, state, layout: Layout) -> Projection:
        return Projection(
            **{
                side: SideOperator("dct", rank, indices=state[f"proj_{side}"])
                for side, rank, _ in layout.sides()
            }
        )

    def persisted_bytes(self, layout: Layout, dtype: torch.dtype) -> int:
        """The index vectors: r indices of 2 bytes (int16) or 4 (int32) per projected side."""
        return sum(rank * torch.empty((), dtype=index_dtype(d)).element_size() for _, rank, d in layout.sides())


register(DCT())
