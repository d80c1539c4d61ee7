"""Projection kinds for the low-rank optimizers: how each layer's basis is chosen at a refresh and what
of it is persisted (the duality paper's Table 1; conventions in docs/DESIGN.md §3).

    kind                 basis at each refresh                                 persisted per layer
    "gaussian"           seeded Gaussian sketch, E[P P^T] = I (Flora)          one int seed
    "rademacher"         seeded +-1/sqrt(d) sketch                             one int seed
    "two_sided_gaussian" seeded Gaussian L and R                               one int seed
    "orthogonal"         orthonormalized seeded Gaussian sketch                P (r x d) and its seed
    "svd"                top-r singular vectors of the gradient (GaLore)       P (r x d)
    "rsvd"               range-finder estimate of the top-r singular vectors   P (r x d)
    "adaptive"           AdaRankGrad: rank by energy, refresh on convergence   P (r_t x d), rank, a moment copy
    "two_sided_svd"      L = U[:, :r1]^T, R = Vh[:r2] of the gradient          L and R
    "dct"                the r DCT-II basis rows best aligned with the         r int16/int32 indices
                         gradient (SVD-free; regenerated in the kernels)
    "sr_dct"             P = S C D: r seeded rows of the DCT-II basis C with    one int seed
                         seeded signs D (semi-orthogonal, from the seed)

Seeds: per layer and refresh from one user seed (seeds.derive_seed, splitmix64). Adding a kind: a module
that subclasses base.ProjectionKind and calls base.register, and an import line below.
"""

from . import orthogonal, seeded, svd  # noqa: F401  (importing a kind module registers its kinds)
from . import dct  # noqa: F401  (the SVD-free "dct" kind)
from . import adaptive, rsvd  # noqa: F401  ("rsvd", "adaptive": range finder, AdaRankGrad)
from . import sr_dct  # noqa: F401  (the seeded semi-orthogonal "sr_dct")
from .base import Layout, ProjectionKind, get, names, option_names, refresh, register
from .dense import side_matrix
from .orthogonal import semi_orthogonal
from .seeds import derive_seed, splitmix64
from .svd import top_singular_vectors

__all__ = [
    "Layout",
    "ProjectionKind",
    "derive_seed",
    "get",
    "names",
    "option_names",
    "refresh",
    "register",
    "semi_orthogonal",
    "side_matrix",
    "splitmix64",
    "top_singular_vectors",
]
