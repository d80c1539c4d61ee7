"""The DCT family: SVD-free projections from a fixed orthonormal DCT-II basis (Modoranu et al., "SVD-Free
Low-Rank Adaptive Gradient Optimization for Large Language Models", arXiv:2505.17967).

D is the d x d orthonormal DCT-II matrix (docs/DESIGN.md §3, scipy.fft.dct(norm="ortho")):
D[k, t] = c_k cos(pi k (2t + 1) / (2d)), c_0 = sqrt(1/d), c_k = sqrt(2/d). Per layer, the r basis rows
best aligned with the gradient G form the projection P = D[idx, :]; only idx is persisted.
  dct_scores(G, side, norm)     the alignment score of every basis row: the l1 (default) or l2 norms of
                                the rows of D G (side "left", d = G.shape[0]) or of the columns of G D^T
                                (side "right", d = G.shape[1]). float32 for float32/bfloat16/float16 G,
                                float64 for float64 G.
  dct_topk(G, rank, side, norm) the `rank` best rows by score: int32, ascending, equal scores going to the
                                lower index; it selects on the scores dct_scores returns on that backend.
  dct_basis(dim, indices)       the rows D[indices, :] (for tests, and for users who want P itself).
  dct_project(G, indices, side, signs)          P G (left) or G P^T (right) for P[i, t] = signs[t] D[indices[i], t]
  dct_unproject(R, indices, dim, side, signs)   P^T R (left) or R P (right): the adjoint
                                (signs None: P = D[indices, :]; with +-1 signs, the sr_dct projection S C D).
Scores, top-k and basis are not differentiable (selection is piecewise constant; nothing downstream
differentiates the scores); dct_project and dct_unproject are linear in G / R, each the other's backward.
NaN/Inf in G: dct_scores returns non-finite scores (NaN or Inf, depending on the backend's order of
summation), every score, since each basis row meets every entry of G; dct_topk refuses G with a NaN/Inf
entry (ValueError), since a selection among non-finite scores means nothing.

Backends (scores): "cpu" computes in float64 and rounds the scores once (so its float32 scores are the float64
reference's, rounded), by an FFT for d > 64 and a GEMM on generated basis tiles below (csrc/cpu/dct.cpp
has the measurements); "cuda" multiplies generated basis tiles with cuBLAS; "triton" is one GEMM that
generates the basis tile in its K-loop and reduces the norms in its epilogue; "reference" is float64 torch.
Backends (project / unproject, computed in float32, float64 for float64 data): "cpu" multiplies generated
tiles of P (GEMM) or transforms every signal by the FFT and selects (unproject: scatters and inverts), the
measured faster way for the shape (csrc/cpu/dct_transform.cpp; method "gemm" / "fft" forces one);
"reference" materializes P (r x d); there is no CUDA or Triton kernel yet (CUDA tensors take the
pure-torch one).
"""

import torch

from .. import _checks, backends
from ..spec import DCT_MAX_DIM, DCT_METHODS, FLOAT_DTYPES, INDEX_DTYPES, SIDES
from ..spec import DCT_NORMS as NORMS


def _projected_dim(op: str, G, side: str) -> int:
    _checks.float_matrix(op, "G", G)
    _checks.choice(op, "side", side, SIDES)
    d = G.shape[0 if side == "left" else 1]
    if d < 1:
        raise _checks.error(op, "G", f"non-empty along the projected dimension (side {side!r})", list(G.shape))
    return d


def dct_scores(G: torch.Tensor, side: str, norm: str = "l1", *, backend=None) -> torch.Tensor:
    """Scores of the d basis rows against G: norms of the rows of D G (side "left", d = G.shape[0]) or of
    the columns of G D^T (side "right", d = G.shape[1]). Returns [d] float32 (float64 for float64 G)."""
    op = "dct_scores"
    _projected_dim(op, G, side)
    _checks.choice(op, "norm", norm, NORMS)
    return torch.ops.lowrank_ops.dct_scores(G, side, norm, "auto", backends.check(op, backend, G.device))


def dct_topk(G: torch.Tensor, rank: int, side: str, norm: str = "l1", *, backend=None) -> torch.Tensor:
    """Indices of the `rank` best-scoring basis rows (see dct_scores): int32 [rank], ascending; equal
    scores go to the lower index, so the result is deterministic on every backend."""
    op = "dct_topk"
    d = _projected_dim(op, G, side)
    rank = _checks.positive_int(op, "rank", rank)
    if rank > d:
        raise _checks.error(op, "rank", f"<= {d} (the projected dimension d of G, side {side!r}, shape "
                            f"{list(G.shape)})", rank)
    _checks.choice(op, "norm", norm, NORMS)
    _checks.finite(op, "G", G)
    return torch.ops.lowrank_ops.dct_topk(G, rank, side, norm, "auto", backends.check(op, backend, G.device))


def _index_tensor(op: str, indices, device) -> torch.Tensor:
    """`indices` (a tensor, or a sequence of ints: no bools, no floats) as a tensor on `device`."""
    if not isinstance(indices, torch.Tensor):
        if not isinstance(indices, (list, tuple, range)):
            raise _checks.type_error(op, "indices", "a 1-D integer tensor or a sequence of ints", indices)
        values = [_checks.integer(op, "indices", v, "a sequence of ints") for v in indices]
        return torch.tensor(values, dtype=torch.int64, device=device)
    return indices if device is None else indices.to(device)


def dct_basis(dim: int, indices, dtype: torch.dtype = torch.float32, device=None, *, backend=None) -> torch.Tensor:
    """The rows D[indices, :] of the dim x dim basis: [len(indices), dim] in `dtype` (computed in float32,
    float64 for float64). `indices`: a 1-D int16/int32/int64 tensor or a sequence of ints, each in
    [0, dim); `device`: default the tensor's device (torch's default device for a sequence)."""
    op = "dct_basis"
    dim = _checks.positive_int(op, "dim", dim)
    if dim > DCT_MAX_DIM:
        raise _checks.error(op, "dim", f"<= {DCT_MAX_DIM}", dim)
    device = _checks.device(op, "device", device)
    indices = _index_tensor(op, indices, device)
    _checks.tensor(op, "indices", indices)
    if indices.dtype not in INDEX_DTYPES:
        raise _checks.error(op, "indices", "an int16, int32 or int64 tensor", indices.dtype)
    if indices.dim() != 1:
        raise _checks.error(op, "indices", "a 1-D tensor", f"a {indices.dim()}-D tensor of shape {list(indices.shape)}")
    if _checks.float_dtype(op, "dtype", dtype) is None:
        raise _checks.error(op, "dtype", "a floating dtype", None)
    _checks.index_range(op, indices, dim)  # not while traced: the kernels check the values then
    return torch.ops.lowrank_ops.dct_basis(indices, dim, dtype, backends.check(op, backend, indices.device))


def _transform_args(op: str, X, indices, dim: int, side: str, signs, out_dtype, method) -> None:
    """The checks shared by dct_project and dct_unproject, for the input X (G or R) whose side acts on a
    dimension of size `dim`: indices a non-empty 1-D int16/int32/int64 tensor on X's device with values in
    [0, dim), signs None or a float tensor [dim] there, and the options."""
    _checks.tensor(op, "indices", indices)  # dense (a sparse one reached aten::min: an unclear error)
    if indices.dtype not in INDEX_DTYPES:
        raise _checks.error(op, "indices", "an int16, int32 or int64 tensor", indices.dtype)
    if indices.dim() != 1 or indices.numel() < 1:
        raise _checks.error(op, "indices", "a non-empty 1-D tensor", f"shape {list(indices.shape)}")
    if indices.device != X.device:
        raise _checks.error(op, "indices", f"on the device of the data ({X.device})", indices.device)
    if not torch.compiler.is_compiling():  # traced, the value check runs inside the kernels
        _checks.index_range(op, indices, dim)
    if signs is not None:
        _checks.tensor(op, "signs", signs)
        if signs.dtype not in FLOAT_DTYPES or signs.dim() != 1 or signs.shape[0] != dim:
            raise _checks.error(op, "signs", f"None or a 1-D float tensor of length d = {dim}",
                                f"{signs.dtype} of shape {list(signs.shape)}")
        if signs.device != X.device:
            raise _checks.error(op, "signs", f"on the device of the data ({X.device})", signs.device)
    _checks.float_dtype(op, "out_dtype", out_dtype)
    _checks.choice(op, "method", method, DCT_METHODS)


def dct_project(G: torch.Tensor, indices: torch.Tensor, side: str, signs: torch.Tensor | None = None, *,
                out_dtype: torch.dtype | None = None, method: str = "auto", backend=None) -> torch.Tensor:
    """P G (side "left", d = G.shape[0], result r x n) or G P^T (side "right", d = G.shape[1], result m x r)
    for P[i, t] = signs[t] D[indices[i], t] (r = len(indices); signs None: all 1), without materializing P
    on the CPU. Computed in float32 (float64 for float64 G); the result has `out_dtype` (default G's dtype).
    `method` ("auto", "gemm", "fft") picks the CPU kernel's way. Differentiable in G."""
    op = "dct_project"
    d = _projected_dim(op, G, side)
    _transform_args(op, G, indices, d, side, signs, out_dtype, method)
    return torch.ops.lowrank_ops.dct_project(G, indices, side, signs, out_dtype, method,
                                             backends.check(op, backend, G.device))


def dct_unproject(R: torch.Tensor, indices: torch.Tensor, dim: int, side: str, signs: torch.Tensor | None = None,
                  *, out_dtype: torch.dtype | None = None, method: str = "auto", backend=None) -> torch.Tensor:
    """P^T R (side "left", R r x n, result dim x n) or R P (side "right", R m x r, result m x dim) for the P of
    dct_project (P is r x dim). Differentiable in R."""
    op = "dct_unproject"
    _checks.float_matrix(op, "R", R)
    _checks.choice(op, "side", side, SIDES)
    dim = _checks.positive_int(op, "dim", dim)
    rank = R.shape[0 if side == "left" else 1]
    if isinstance(indices, torch.Tensor) and indices.dim() == 1 and rank != indices.shape[0]:
        which = "rows" if side == "left" else "columns"
        raise _checks.error(op, "R", f"{indices.shape[0]} {which} (one per index; side {side!r})",
                            f"shape {list(R.shape)}")
    _transform_args(op, R, indices, dim, side, signs, out_dtype, method)
    return torch.ops.lowrank_ops.dct_unproject(R, indices, dim, side, signs, out_dtype, method,
                                               backends.check(op, backend, R.device))
