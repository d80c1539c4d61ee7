"""One side operator of a projection (lowrank_ops.ops.SideOperator) as a dense rank x d matrix, for code
that needs P itself rather than the fused kernels' products: column blocks of P (the FSDP2 step of a
parameter sharded along its projected dimension) and the least-squares coefficients of DiLoCo.

The values are the ones the fused kernels generate: seeded kinds through lowrank_ops.ops.sketch (sketch
spec v1, the same Philox stream), "dct" rows through lowrank_ops.ops.dct_basis, "sr_dct" rows through
lowrank_ops.projections.sr_dct.signed_rows, "matrix" as stored.
"""

import torch

from ..ops import SideOperator, dct_basis, sketch
from .sr_dct import signed_rows


def side_matrix(op: SideOperator, dim: int, dtype: torch.dtype, device) -> torch.Tensor:
    """P (op.rank x dim) of side operator `op` acting on a dimension of size `dim`, in `dtype` on
    `device` (a "matrix" operator already there in that dtype is returned as is, not copied)."""
    if op.kind == "matrix":
        if op.matrix.shape[1] != dim:
            raise ValueError(
                f"lowrank_ops.projections.side_matrix: the matrix operator is {list(op.matrix.shape)}, "
                f"expected {op.rank} x {dim}"
            )
        return op.matrix.to(device=device, dtype=dtype)
    if op.kind == "dct":
        return dct_basis(dim, op.indices.to(device), dtype, device)
    if op.kind == "sr_dct":
        return signed_rows(dim, op.indices, op.seed, dtype, device)
    return sketch(op.rank, dim, op.seed, op.kind, dtype, device)  # the seeded kinds
