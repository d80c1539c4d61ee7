"""The projection argument of the fused optimizer ops.

A projection maps a gradient G (m x n) to R = L G R^T, where each side operator is the identity
("none"), a seeded sketch ("rademacher" / "gaussian": regenerated from its seed inside the kernels, never
stored), an explicit matrix ("matrix": P of shape rank x d, e.g. from an SVD or an orthonormalized
sketch), rows of the orthonormal DCT-II basis ("dct": P[i, :] = D[indices[i], :] of the d x d basis of
lowrank_ops.ops.dct, regenerated from the index vector inside the kernels, never stored) or signed basis rows
("sr_dct": P[i, t] = sign_t D[indices[i], t] with the signs of the side's seed by the rule of
lowrank_ops/spec.py SRDCT_*, both regenerated inside the kernels; the "sr_dct" projection kind's S C D).
One-sided left is R = P G (r x n), one-sided right R = G P^T (m x r), two-sided L G R^T
(r1 x r2), matching docs/DESIGN.md §3 and the duality paper's Table 1. The adjoint maps N back:
L^T N R (the "unprojection").
"""

from dataclasses import dataclass

import torch

from ..spec import BASIS_KINDS, INDEX_DTYPES, SIDE_KINDS
from ..spec import SEEDED_KINDS  # noqa: F401 (re-exported: callers name the side kinds where Projection lives)


@dataclass(frozen=True)
class SideOperator:
    """One side of a projection: `kind` in SIDE_KINDS, its `rank`, and a `seed` (seeded kinds, and the sign
    seed of "sr_dct"), a `matrix` (kind "matrix": rank x d, any float dtype; kernels read it in float32) or
    `indices` (kinds "dct" and "sr_dct": the rank basis rows, a 1-D int16/int32/int64 tensor with values in
    [0, d))."""

    kind: str
    rank: int
    seed: int = 0
    matrix: torch.Tensor | None = None
    indices: torch.Tensor | None = None

    def __post_init__(self):
        if self.kind not in SIDE_KINDS:
            raise ValueError(f"lowrank_ops.Projection: side kind must be one of {SIDE_KINDS}, got {self.kind!r}")
        if self.kind == "matrix":
            if not isinstance(self.matrix, torch.Tensor) or self.matrix.dim() != 2:
                raise ValueError("lowrank_ops.Projection: kind 'matrix' needs a 2-D `matrix` (rank x d)")
            if self.matrix.shape[0] != self.rank:
                raise ValueError(f"lowrank_ops.Projection: matrix has {self.matrix.shape[0]} rows, rank is {self.rank}")
        elif self.matrix is not None:
            raise ValueError(f"lowrank_ops.Projection: kind {self.kind!r} takes no matrix")
        if self.kind in BASIS_KINDS:
            ok = isinstance(self.indices, torch.Tensor) and self.indices.dim() == 1
            if not ok or self.indices.dtype not in INDEX_DTYPES:
                raise ValueError(f"lowrank_ops.Projection: kind {self.kind!r} needs `indices`, a 1-D "
                                 "int16/int32/int64 tensor of basis rows")
            if self.indices.shape[0] != self.rank:
                raise ValueError(f"lowrank_ops.Projection: indices has {self.indices.shape[0]} entries, rank is "
                                 f"{self.rank}")
        elif self.indices is not None:
            raise ValueError(f"lowrank_ops.Projection: kind {self.kind!r} takes no indices")
        if self.rank < 1:
            raise ValueError(f"lowrank_ops.Projection: rank must be >= 1, got {self.rank}")


@dataclass(frozen=True)
class Projection:
    """R = L G R^T with `left` = L (None: identity) and `right` = R (None: identity)."""

    left: SideOperator | None = None
    right: SideOperator | None = None

    def __post_init__(self):
        if self.left is None and self.right is None:
            raise ValueError("lowrank_ops.Projection: at least one side must be set")

    @staticmethod
    def seeded(kind: str, seed: int, rank: int, side: str) -> "Projection":
        """One-sided seeded sketch: side "left" (R = P G) or "right" (R = G P^T)."""
        return Projection.one_sided(SideOperator(kind, rank, seed=seed), side)

    @staticmethod
    def from_matrix(P: torch.Tensor, side: str) -> "Projection":
        """One-sided explicit P (rank x d)."""
        return Projection.one_sided(SideOperator("matrix", P.shape[0], matrix=P), side)

    @staticmethod
    def from_dct_indices(indices: torch.Tensor, side: str) -> "Projection":
        """One-sided P = D[indices, :], the DCT-II basis rows `indices` (lowrank_ops.ops.dct)."""
        return Projection.one_sided(SideOperator("dct", indices.shape[0], indices=indices), side)

    @staticmethod
    def one_sided(op: SideOperator, side: str) -> "Projection":
        if side not in ("left", "right"):
            raise ValueError(f"lowrank_ops.Projection: side must be 'left' or 'right', got {side!r}")
        return Projection(left=op) if side == "left" else Projection(right=op)

    def projected_shape(self, shape) -> tuple[int, int]:
        m, n = shape
        return (self.left.rank if self.left else m, self.right.rank if self.right else n)
