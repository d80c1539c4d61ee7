"""Random semi-orthogonal projection ("orthogonal", the duality paper's Table 1): the rows of P (r x d)
are the orthonormalized rows of the seeded Gaussian sketch S (r x d, spec v1): S^T = Q R (reduced QR),
columns of Q multiplied by sign(diag(R)) so that diag(R) > 0 (the unique QR with that property), P = Q^T,
hence P P^T = I_r.

Persisted as a matrix (state["proj_left"] or ["proj_right"], in the gradient's dtype) as well as its seed
state["proj_seed"]. Why not regenerate it from the seed: the kernels need P at every step (a QR per step
costs O(d r^2)), so it is held in memory during training anyway; and a QR is not bitwise reproducible
across LAPACK builds, thread counts and devices, so regenerating it on load could break the bit-identical
resume. The checkpoint cost is r x d per layer, the "persisted P" of Table 1.
"""

import torch

from ..ops.sketch import sketch
from .base import ProjectionKind, matrix_projection, register, side_seeds


def semi_orthogonal(
    rank: int, dim: int, seed: int, dtype: torch.dtype, device=None, block=None
) -> torch.Tensor:
    """P (rank x dim, rank <= dim) with orthonormal rows: the orthonormalized seeded Gaussian sketch.
    With `block` = (k, K): rows [k rank, (k+1) rank) of the orthonormalized (K rank) x dim sketch, so the
    K blocks of one seed are mutually orthogonal, P_i P_j^T = 0 (distributed-orthogonal, docs/DESIGN.md §3)."""
    index, count = block or (0, 1)
    if not 1 <= rank * count <= dim or not 0 <= index < count:
        raise ValueError(
            f"lowrank_ops.projections.semi_orthogonal: 'rank' x blocks ({rank} x {count}) must be in "
            f"[1, dim={dim}] and the block index {index} in [0, {count})"
        )
    S = sketch(rank * count, dim, seed, "gaussian", torch.float32, device)
    Q, R = torch.linalg.qr(S.T)
    signs = torch.where(R.diagonal() < 0, -1.0, 1.0)
    return (Q * signs).T[index * rank : (index + 1) * rank].contiguous().to(dtype)


def write_semi_orthogonal(state: dict, G: torch.Tensor, layout, seed: int) -> None:
    """Sets state["proj_<side>"] of every projected side to a seeded semi-orthogonal matrix."""
    seeds = side_seeds(seed, layout)
    for side, rank, d in layout.sides():
        state[f"proj_{side}"] = semi_orthogonal(rank, d, seeds[side], G.dtype, G.device, layout.block)
    state["proj_seed"] = seed


class Orthogonal(ProjectionKind):
    name = "orthogonal"
    persists_matrix = True
    supports_block = True

    def refresh(self, state, G, layout, seed):
        write_semi_orthogonal(state, G, layout, seed)
        return True

    def projection(self, state, layout):
        return matrix_projection(state, layout)


register(Orthogonal())
