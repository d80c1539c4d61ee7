"""Randomized-SVD projection "rsvd": GaLore with the randomized range finder (lowrank_ops.ops.range_finder,
Halko, Martinsson & Tropp 2011, Alg. 4.4 + 5.1) in place of the full SVD. One-sided: on the projected side
(docs/DESIGN.md §3) P = Q^T, Q (d x r) the range finder's estimate of the top-r left (side "left") or right
(side "right") singular vectors of the current gradient, from a Gaussian sketch with the refresh seed
derive_seed(seed, layer, refresh) (oversample 8, one power iteration: the op's defaults), cast to G's
dtype. Persisted: the matrix state["proj_left"] / ["proj_right"] and the refresh seed state["proj_seed"]
(which, with G, determines the basis; the matrix is kept so that resume does not depend on recomputing it).

Robustness as "svd" (lowrank_ops.projections.base.refresh): a NaN/Inf gradient keeps the basis and skips
the step; a zero gradient keeps the previous basis or, at the first refresh, uses the seeded
semi-orthogonal fallback (orthogonal.py); a range finder that raises or returns non-finite vectors is
treated as a failed refresh the same way.
"""

import torch

from ..ops.range_finder import range_finder
from .base import register
from .svd import GradientBasis


def range_finder_basis(G: torch.Tensor, side: str, rank: int, seed: int, **kwargs):
    """P = Q^T (rank x d) of lowrank_ops.ops.range_finder(G, rank, side=side, seed=seed, **kwargs) in G's
    dtype, and the op's S, or (None, None) when the op raises (e.g. an overflowing norm) or returns
    non-finite vectors."""
    try:
        Q, S = range_finder(G, rank, seed=seed, side=side, **kwargs)
    except ValueError:
        return None, None
    if not bool(torch.isfinite(Q).all()):
        return None, None
    return Q.T.contiguous().to(G.dtype), S


class RandomizedSVD(GradientBasis):
    name = "rsvd"

    def max_rank(self, shape, side):
        return min(shape)  # range_finder's rank is at most min(m, n)

    def basis(self, G, layout, seed):
        ((side, rank, _),) = layout.sides()
        P, _ = range_finder_basis(G, side, rank, seed)
        return None if P is None else {side: P}


register(RandomizedSVD())
