"""LowRankAdamW on parameters sharded by FSDP2 (torch.distributed.fsdp.fully_shard): DTensor parameters and
gradients with one Shard(s) placement (Replicate on any other mesh dimension). Importing this module
registers `lowrank_step` as LowRankAdamW's step of DTensor parameters
(lowrank_ops.optim.register_param_step). It works through the optimizer's public per-parameter interface
(lowrank_ops.optim.LowRankParamStep) and runs the fused op lowrank_ops.ops.lowrank_adamw_step_ on local
tensors: the Adam math has one implementation per backend, and this path calls it.

W (m x n) is split along dimension s into shards W_k (rows, or columns, [a_k, b_k)); R = L G R^T.
- s not projected (e.g. side "right", R = G P^T, under FSDP2's default Shard(0)): every row of R, of the
  moments and of the update depends only on the same row of G and W, so each rank runs the fused op on its
  shard, with moments sharded like W. No communication; the single-process arithmetic on a subset of rows.
- s projected (e.g. side "left", R = P G, under Shard(0)): R = sum_k P[:, a_k:b_k] G_k, so each rank
  projects its shard with its column block of P, one all-reduce sums the r x n partial products, and the
  fused op, called on a stacked problem whose projected gradient is R (_allreduce_step), updates the
  replicated moments and unprojects into this rank's rows:
  W_k <- W_k - lr wd W_k - lr scale P[:, a_k:b_k]^T N.
  Communication per step: the projected gradient (r x n), never an m x n matrix.
`shard_placement_fn` shards each weight along the dimension its projection does not act on, so that every
weight takes the first path (FSDP2 accepts Shard(1) only when the mesh size divides n; otherwise the
weight keeps Shard(0) and takes the second path).
The moments are DTensors (sharded like W on the first path, Replicate on the second), so
torch.distributed.checkpoint saves them sharded and reshards them on load, to any number of ranks.

Not supported (clear errors): projections that read the gradient ("svd", "two_sided_svd": the SVD needs the
full gradient on one rank), more than one Shard placement (2-D sharding, TP) or strided shards.
"""

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard

from ..ops import Projection, SideOperator
from ..optim import LowRankParamStep, register_param_step
from ..projections import side_matrix

WHERE = "lowrank_ops.optim.LowRankAdamW"


def shard_placement_fn(mesh_size: int, side: str = "auto"):
    """A `shard_placement_fn` for fully_shard: Shard(1) for a 2-D weight whose projection acts on dim 0
    (side "left"; "auto" projects the smaller dimension: left when m < n) when mesh_size divides n, so
    that its optimizer step is shard-local; Shard(0) (FSDP2's default) for everything else."""
    if side not in ("auto", "left", "right"):
        raise ValueError(
            f"lowrank_ops.distributed.shard_placement_fn: 'side' must be auto/left/right, got {side!r}"
        )

    def placement(param):
        if param.dim() != 2:
            return Shard(0)
        m, n = param.shape
        projects_rows = side == "left" or (side == "auto" and m < n)
        return Shard(1) if projects_rows and n % mesh_size == 0 else Shard(0)

    return placement


def _shard(p: DTensor):
    """(mesh dim, tensor dim) of p's Shard placement, or None when p is replicated on every mesh dim."""
    shards = [(i, pl) for i, pl in enumerate(p.placements) if not isinstance(pl, Replicate)]
    if len(shards) > 1 or any(type(pl) is not Shard for _, pl in shards):
        raise NotImplementedError(
            f"{WHERE}: a DTensor parameter with placements {tuple(p.placements)}; the sharded step supports "
            "one plain Shard(dim) placement (FSDP2 / HSDP), Replicate on the other mesh dimensions"
        )
    return (shards[0][0], shards[0][1].dim) if shards else None


def _chunk(size: int, parts: int, index: int) -> tuple[int, int]:
    """[a, b) of chunk `index` of torch.chunk(size, parts): DTensor's and FSDP2's Shard layout."""
    step = -(-size // parts)
    a = min(index * step, size)
    return a, min(a + step, size)


def _sharded_zeros(local: torch.Tensor, p: DTensor, placements, global_shape) -> DTensor:
    return DTensor.from_local(
        local,
        p.device_mesh,
        placements,
        run_check=False,
        shape=torch.Size(global_shape),
        stride=(global_shape[1], 1),
    )


def lowrank_step(step: LowRankParamStep) -> None:
    """One LowRankAdamW step of the sharded low-rank parameter step.param (a DTensor): the step function
    this module registers for DTensor (lowrank_ops.optim.register_param_step)."""
    p, kind, layout = step.param, step.kind, step.layout
    if kind.uses_gradient:
        raise NotImplementedError(
            f"{WHERE}: projection {kind.name!r} needs the SVD of the full gradient, which no rank holds for a "
            "sharded (FSDP2) parameter; use a seeded kind ('orthogonal', 'sr_dct', 'rademacher', 'gaussian', "
            "'two_sided_gaussian')"
        )
    if step.group.get("state_bits", 32) != 32:
        raise NotImplementedError(
            f"{WHERE}: 8-bit moments (state_bits={step.group['state_bits']}) are not supported for sharded "
            "(FSDP2) parameters yet (their blocks would straddle the shards); use state_bits=32"
        )
    if not isinstance(p.grad, DTensor) or tuple(p.grad.placements) != tuple(p.placements):
        raise ValueError(
            f"{WHERE}: the gradient of a DTensor parameter must be a DTensor with its placements"
        )
    shard = _shard(p)
    projected = {0 if side == "left" else 1 for side, _, _ in layout.sides()}
    local = shard is None or shard[1] not in projected
    W, G = p.to_local(), p.grad.to_local()
    state = step.state
    if not state:
        _init_state(step, W, shard if local else None)
    if step.refresh_due(G) and not _finite_everywhere(G, p, shard):
        step.warn_once(
            "nonfinite",
            f"lowrank_ops: a gradient of shape {list(p.shape)} has NaN/Inf at a projection refresh; the basis "
            "is kept and this parameter's step is skipped (warned once)",
        )
        return
    # refresh (all ranks derive the same seed), adapter reset, step count; the seeded kinds read only
    # dtype and device of G, so an empty shard passes a 1 x 1 stand-in
    if not step.advance(G if G.numel() else G.new_zeros(1, 1)):
        return
    projection = step.projection()
    moments = {key: v.to_local() for key, v in state.items() if isinstance(v, DTensor)}
    moments["step"] = state["step"]
    if local:
        if W.numel():
            step.fused_step(W, G, moments, projection)
        return
    mesh_dim, dim = shard
    mesh = p.device_mesh
    a, b = _chunk(p.shape[dim], mesh.size(mesh_dim), mesh.get_local_rank(mesh_dim))
    if W.shape[dim] != b - a:
        raise RuntimeError(
            f"{WHERE}: local shard {list(W.shape)} of {list(p.shape)} is not torch.chunk's [{a}, {b})"
        )
    _allreduce_step(step, W, G, moments, projection, dim, (a, b, p.shape[dim]), mesh.get_group(mesh_dim))


def _init_state(step: LowRankParamStep, W, local_shard):
    """The initial state on the local shape, then each tensor wrapped as a DTensor: sharded like W along the
    unprojected dimension `local_shard` (mesh dim, dim), or replicated (None)."""
    p, layout = step.param, step.layout
    placements = [Replicate()] * p.device_mesh.ndim
    shape = list(layout.projected_shape)
    if local_shard is not None:
        mesh_dim, dim = local_shard
        placements[mesh_dim] = Shard(dim)
        shape[dim] = W.shape[dim]
    state = step.init_state(shape, like=W)
    for key in ("exp_avg", "exp_avg_sq", "delta"):
        if key in state:
            state[key] = _sharded_zeros(state[key], p, placements, layout.projected_shape)


def _finite_everywhere(G, p, shard) -> bool:
    """Whether the whole (sharded) gradient is finite: one all-reduce of a flag, so all ranks agree."""
    bad = torch.tensor([0.0 if bool(torch.isfinite(G).all()) else 1.0])
    if shard is not None:
        dist.all_reduce(bad, group=p.device_mesh.get_group(shard[0]))
    return bool(bad.item() == 0)


def _allreduce_step(step: LowRankParamStep, W, G, moments, projection, dim, extent, process_group):
    """The step of a parameter sharded along a projected dimension `dim` (this rank's slice [a, b) of its
    size d): the partial projection of the local shard with the matching columns of the side operators,
    one all-reduce to the projected gradient R, then the fused op with R (step_with_projected)."""
    a, b, d = extent
    compute = torch.float64 if W.dtype == torch.float64 else torch.float32
    operators = []  # per dimension of W: the dense operator (its columns [a, b) on `dim`), or None
    for axis, op in enumerate((projection.left, projection.right)):
        P = None if op is None else side_matrix(op, d if axis == dim else W.shape[axis], compute, W.device)
        operators.append(P[:, a:b] if P is not None and axis == dim else P)
    L, Rt = operators
    if G.numel():
        R = G.to(compute)
        R = R if L is None else L @ R
        R = R if Rt is None else R @ Rt.T
    else:  # an empty shard contributes zeros
        R = torch.zeros(moments["exp_avg"].shape, dtype=compute, device=W.device)
    dist.all_reduce(R, group=process_group)
    step_with_projected(step, W, R, moments, operators)


def step_with_projected(step: LowRankParamStep, W, R, moments, operators) -> None:
    """The fused op's step of W (in place) given its projected gradient R instead of its gradient:
    `operators` are the dense side operators restricted to W (None: identity), P_0 (r_0 x e_0) on the left
    and P_1 (r_1 x e_1) on the right for W of shape e_0 x e_1, so that the unprojected update of W is
    P_0^T N P_1 (one-sided: P_0^T N or N P_1).

    The op computes the projected gradient from a gradient itself, so it runs on a stacked problem whose
    projected gradient is R. Per dimension i: projected, the stacked operator is [P_i | I_{r_i}]
    (r_i x (e_i + r_i)) and R sits at offset e_i; unprojected, the identity and offset 0. W' holds W at
    [0:e_0, 0:e_1] and 0 elsewhere, G' holds R at the offsets and 0 elsewhere. Then
      L' G' R'^T = R                exactly: apart from R's entries times 1, every product has a 0 factor;
      (L'^T N R')[0:e_0, 0:e_1] = P_0^T N P_1, the same terms as the unsharded unprojection's rows;
    so the op updates the moments with R (kernels/adam.h's arithmetic, or its backend's twin) and
    W'[0:e_0, 0:e_1] exactly as it updates these rows (columns) of the unsharded W; the appended blocks of
    W' are discarded. Cost over an op that took R: the copies into W' and G', and the zero blocks' share of
    the op's two GEMMs (r_i / e_i more work per projected dimension)."""
    compute = R.dtype
    extents = [W.shape[axis] + (0 if P is None else P.shape[0]) for axis, P in enumerate(operators)]
    offsets = [0 if P is None else W.shape[axis] for axis, P in enumerate(operators)]
    stacked_W = W.new_zeros(extents)
    stacked_W[: W.shape[0], : W.shape[1]] = W
    stacked_G = torch.zeros(extents, dtype=compute, device=W.device)
    stacked_G[offsets[0] :, offsets[1] :] = R
    sides = [
        None
        if P is None
        else SideOperator("matrix", P.shape[0], matrix=torch.cat([P, torch.eye(P.shape[0]).to(P)], dim=1))
        for P in operators
    ]
    step.fused_step(stacked_W, stacked_G, moments, Projection(*sides))
    W.copy_(stacked_W[: W.shape[0], : W.shape[1]])


register_param_step(DTensor, lowrank_step)
