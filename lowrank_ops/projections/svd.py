"""Gradient SVD projections (GaLore): "svd" (one-sided, P = top-r singular vectors of the current
gradient on the projected side) and "two_sided_svd" (L = U[:, :r1]^T, R = Vh[:r2]), the duality paper's
Table 1. As in galore-torch the SVD is the full fp32 `torch.linalg.svd(full_matrices=False)` of G and the
vectors are cast back to G's dtype. Persisted: the matrices state["proj_left"] / ["proj_right"] and the
refresh seed state["proj_seed"] (used only for the fallback).

Robustness (lowrank_ops.projections.base.refresh): never called on a zero or non-finite G; an SVD that
raises or returns non-finite vectors yields False, and the caller keeps the previous basis or, at the
first refresh, uses the seeded semi-orthogonal fallback (orthogonal.py) of the same shape.
"""

import torch

from .base import ProjectionKind, matrix_projection, register
from .orthogonal import write_semi_orthogonal


def top_singular_vectors(G: torch.Tensor, left_rank: int, right_rank: int):
    """{"left": U[:, :left_rank]^T, "right": Vh[:right_rank]} (sides with rank 0 left out) of the fp32 SVD
    of G, cast to G's dtype; None when the SVD fails or its vectors are not finite."""
    try:
        U, _, Vh = torch.linalg.svd(G.float(), full_matrices=False)
    except torch.linalg.LinAlgError:
        return None
    out = {}
    if left_rank:
        out["left"] = U[:, :left_rank].T
    if right_rank:
        out["right"] = Vh[:right_rank]
    if not all(bool(torch.isfinite(v).all()) for v in out.values()):
        return None
    return {side: v.contiguous().to(G.dtype) for side, v in out.items()}


class GradientBasis(ProjectionKind):
    """A kind whose refresh computes basis matrices from the gradient ("svd", "two_sided_svd", "rsvd") and
    persists them with the refresh seed; the fallback is the seeded semi-orthogonal basis. Subclasses give
    `basis`."""

    uses_gradient = True
    persists_matrix = True

    def basis(self, G: torch.Tensor, layout, seed: int):
        """{side: P} for the sides of `layout`, or None when the computation failed."""
        raise NotImplementedError

    def refresh(self, state, G, layout, seed):
        basis = self.basis(G, layout, seed)
        if basis is None:
            return False
        for side, matrix in basis.items():
            state[f"proj_{side}"] = matrix
        state["proj_seed"] = seed
        return True

    def fallback(self, state, G, layout, seed):
        write_semi_orthogonal(state, G, layout, seed)

    def projection(self, state, layout):
        return matrix_projection(state, layout)


class GradientSVD(GradientBasis):
    def __init__(self, name: str, two_sided: bool):
        self.name, self.two_sided = name, two_sided

    def max_rank(self, shape, side):
        return min(shape)  # the reduced SVD has min(m, n) singular vectors on either side

    def basis(self, G, layout, seed):
        return top_singular_vectors(G, layout.left_rank, layout.right_rank)


register(GradientSVD("svd", two_sided=False))
register(GradientSVD("two_sided_svd", two_sided=True))
