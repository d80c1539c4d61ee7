"""LowRankAdamW: AdamW whose 2-D weights are updated through a low-rank projection of their gradients
(GaLore-style; the projection kinds of the duality paper's Table 1, lowrank_ops.projections).

Per low-rank parameter W (m x n) with projection R = L G R^T, every step:
  at steps 0, update_gap, 2 update_gap, ... (before the increment; a kind may decide otherwise through
      ProjectionKind.due, "adaptive" on convergence): refresh the basis from the seed
      derive_seed(seed, layer index, refresh index) and, for "svd" kinds, the current gradient; in
      wd_mode "adapter" the adapter delta restarts at 0 (the adapter is merged into W and re-initialized,
      as in the paper's Table 2 runs). Moments are kept, not transformed (as galore-torch), unless the
      kind transforms them (ProjectionKind.transform_moments: "adaptive", whose rank, and so the moments'
      projected shape, can change at a refresh).
  step += 1; lowrank_ops.ops.lowrank_adamw_step_: Adam moments in the projected shape (fp32),
      W <- W - lr wd W - lr scale L^T N R (wd_mode "full"), or decay of the adapter only ("adapter").
Params of groups without a rank (rank None), and non-matrix params of any group (biases, norms: never
an SVD), are plain AdamW through torch's own functional `torch.optim.adamw.adamw` with torch's state
layout (plain_adamw.py): the param-group keys `foreach` and `fused` choose torch's implementation as in
torch.optim.AdamW, except that with both None (the default) the fused kernel runs wherever torch has one
for the group's plain params (CPU and CUDA floating tensors). They follow torch.optim.AdamW with the same
implementation bit for bit.

State per low-rank param: ints step, layer, refresh, proj_seed; fp32 tensors exp_avg, exp_avg_sq
(projected shape; with state_bits=8 uint8 codes, float32 exp_avg_absmax / exp_avg_sq_absmax per block and the
int state_block_size: lowrank_ops/projections/moments.py), delta ("adapter" mode), and the basis matrices of
matrix kinds (proj_left/proj_right).
Seeded kinds persist ints only. `state_dict()` loads with torch.load(weights_only=True), and save ->
load -> continue is bit-identical to not stopping. `load_state_dict` refuses a state dict of another
optimizer type, of other layout settings (rank, projection, side, block, wd_mode) or of other parameter
shapes, naming the group, the key and both values (nothing is loaded then); the hyperparameters come from
the state dict, as in torch.optim, and may be changed afterwards.

Non-finite gradients. Without the guard, a gradient with NaN/Inf is checked only at refresh steps (one
reduction every update_gap steps): there the param's step is skipped and the basis kept (warned once).
Between refreshes it goes into the step, as with torch.optim.AdamW: the NaN reaches the projected moments,
which keep it, and through the unprojection whole rows or columns of W (all of W for two-sided kinds), at
this and every later step. Guard with a GradScaler (its found-inf check skips the whole step) or with
`skip_nonfinite=True` (constructor or param-group key): each parameter whose gradient has a NaN/Inf skips
its step (weights and state unchanged, step count not advanced), counted in `skipped_steps()` and the
groups' "skipped_steps" (saved in the state dict), at the cost of one max|g| reduction per parameter and
one host sync per step and device (nonfinite.py; per parameter in the per-layer mode). Sparse gradients
are refused before any work.
"""

import torch

from .. import projections
from ..ops.lowrank_adam import WD_MODES
from ..projections import moments
from ..spec import STATE_BLOCK_SIZE
from . import plain_adamw
from ._base import (
    SEED_LIMIT,
    PerParamOptimizer,
    check_block,
    check_guard,
    check_hyper,
    check_int,
    check_state_bits,
    is_matrix,
    moment_block,
)
from .param_step import LowRankParamStep, registered_param_step


class LowRankAdamW(PerParamOptimizer):
    """AdamW with low-rank gradient projections.

    Param-group keys (defaults from the constructor): `rank` (int, a (left, right) pair for two-sided
    kinds, or None for plain AdamW), `projection` (one of lowrank_ops.projections.names()), `update_gap`,
    `scale` (multiplies the unprojected update), `side` ("auto": the smaller dimension; "left"/"right"),
    `wd_mode` ("full": decay W; "adapter": decay only the low-rank delta since the last refresh, App. B),
    `seed` (the base seed of the per-layer, per-refresh sketch seeds), `block` (None, or (k, K): use rows
    [k r, (k+1) r) of the K r x d basis of the same seed, "orthogonal" and "sr_dct": the distributed
    worker blocks that lowrank_ops.distributed.DiLoCo sets). `foreach`, `fused`: torch.optim.AdamW's
    arguments, for the plain params (module docstring; both None: torch's fused kernel where it has one;
    both True: RuntimeError, as torch's). `backend` picks the fused op's backend (None: the default for
    the device). A low-rank parameter of a tensor subclass whose owner registered a step for it
    (lowrank_ops.optim.register_param_step) is stepped by that: importing lowrank_ops.distributed
    registers the step of FSDP2's DTensor parameters (shard-local where the projected dimension is not
    sharded, one r x n all-reduce where it is). Keywords beyond these are param-group keys that
    projection kinds declare (ProjectionKind.options, e.g. "adaptive"'s `energy`, `max_rank`, `min_rank`,
    `converge_tol`, `min_gap`, `max_gap`); `ranks()` reports the rank in use per low-rank parameter.
    `state_bits` (32, the default: float32 moments, float64 for float64 weights; or 8: blockwise 8-bit
    moments, docs/DESIGN.md §3 "8-bit optimizer moments") and `state_block_size` (B, default 256: one float32
    absmax per B consecutive elements of a row of the projected moment) are param-group keys too.
    `skip_nonfinite` (bool, default False): a parameter whose gradient has a NaN/Inf skips its step,
    counted in `skipped_steps()` (module docstring, "Non-finite gradients"). `multi_tensor` (bool, default
    True): `step()` runs the low-rank steps of all groups as one lowrank_adamw_multi_step_ call per device
    (optim/multi_step.py); False: one lowrank_adamw_step_ call per parameter, as the per-layer mode and
    registered per-parameter steps always do.

    Settings changed mid-run (param_groups[i][key] = value once the group's parameters have state) are
    checked at the next step, before any work (a bad value raises there), and:
      lr, betas, eps, weight_decay, scale, update_gap, foreach, fused, the kinds' options: take effect at
          once (the refresh clock step % update_gap reads the new gap);
      seed: takes effect at the next refresh (the current bases are kept), warned once;
      wd_mode: takes effect at the next step, moments kept: to "adapter", the adapter delta starts at
          zero (decay of the updates since the change); to "full", it is dropped; warned once;
      rank, projection, side, block: the state of the group's low-rank parameters restarts at their next
          step (moments zeroed, step count and bias correction from 0, a new basis drawn at once), warned
          once. These fix the moments' shape and what the basis is: old moments have no sound carry-over
          to another shape or kind of basis, and waiting for the next scheduled refresh would mean stepping
          (and saving) with settings the param group no longer states.

    The default projection is "rademacher": it persists one int per layer, never stalls on an SVD, and
    trains on par with GaLore's SVD in the duality paper's Table 2.
    """

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        *,
        seed=0,
        rank=None,
        projection="rademacher",
        update_gap=200,
        scale=1.0,
        side="auto",
        wd_mode="full",
        block=None,
        foreach=None,
        fused=None,
        skip_nonfinite=False,
        backend=None,
        multi_tensor=True,
        state_bits=32,
        state_block_size=STATE_BLOCK_SIZE,
        **options,
    ):
        unknown = sorted(set(options) - set(projections.option_names()))
        if unknown:
            raise TypeError(
                f"lowrank_ops.optim.LowRankAdamW: unexpected keyword arguments {unknown}; besides its own, it "
                f"takes the param-group keys of the projection kinds: {list(projections.option_names())}"
            )
        self._backend = backend
        self._multi_tensor = bool(multi_tensor)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            seed=seed,
            rank=rank,
            projection=projection,
            update_gap=update_gap,
            scale=scale,
            side=side,
            wd_mode=wd_mode,
            block=block,
            foreach=foreach,
            fused=fused,
            skip_nonfinite=skip_nonfinite,
            state_bits=state_bits,
            state_block_size=state_block_size,
            **options,
        )
        super().__init__(params, defaults)
        plain_adamw.check_not_both(foreach, fused, "lowrank_ops.optim.LowRankAdamW")

    LAYOUT_KEYS = ("rank", "projection", "side", "block", "wd_mode", "state_bits", "state_block_size")
    KEPT_KEYS = ("wd_mode",)
    REFRESH_KEYS = ("seed",)

    def _check_group(self, group, where):
        check_hyper(group, where)
        check_guard(group, where)
        check_state_bits(group, where)
        check_int(group["seed"], where, "seed", 0, SEED_LIMIT)
        if group["rank"] is None:
            return
        projections.get(group["projection"], where).check_settings(group["rank"], group["side"], where)
        check_int(group["update_gap"], where, "update_gap", 1)
        if group["wd_mode"] not in WD_MODES:
            raise ValueError(f"{where}: 'wd_mode' must be one of {WD_MODES}, got {group['wd_mode']!r}")
        check_block(group["block"], projections.get(group["projection"]), where)
        projections.get(group["projection"]).check_options(group, where)

    def _required_keys(self, own):
        # a kind's options may be absent (the kind's default applies)
        return [key for key in super()._required_keys(own) if key not in projections.option_names()]

    def _lowrank_layout(self, group, p, state):
        if group["rank"] is None or not is_matrix(p):
            return None
        kind = projections.get(group["projection"])
        layout = kind.layout(p.shape, group["rank"], group["side"], group.get("block"))
        layout = kind.current_layout(state, layout, group)
        return kind, layout, group["wd_mode"] == "adapter", moment_block(group, layout.projected_shape)

    def _keep_state(self, key, old, new, states):
        # wd_mode: the adapter delta (updates since the last refresh) starts at zero, or is dropped
        for state in states:
            if new == "adapter" and "delta" not in state:
                state["delta"] = moments.zeros_like(state)
            elif new != "adapter":
                state.pop("delta", None)

    def _step_group(self, group, params):
        lowrank = group["rank"] is not None
        plain = [p for p in params if not (lowrank and is_matrix(p))]
        if plain:
            self._adamw(group, plain)
        if lowrank:
            kind = projections.get(group["projection"])
            for p in params:
                if is_matrix(p):
                    self._step_lowrank(p, group, kind)

    def is_lowrank(self, param: torch.Tensor) -> bool:
        """Whether `param` (managed by this optimizer) is stepped through a low-rank projection: a non-empty
        floating matrix in a group with a rank. The others are plain AdamW."""
        return self.param_groups[self._managed(param, "is_lowrank")]["rank"] is not None and is_matrix(param)

    def ranks(self) -> dict:
        """The rank in use per low-rank parameter, {key: rank}, to watch e.g. "adaptive" ranks decay: key is
        the parameter's name when the optimizer was built from named parameters, else its index in the
        flattened param list; rank is an int, or (left_rank, right_rank) for two-sided kinds. Before a
        parameter's first step: the rank its group asks for ("adaptive": max_rank)."""
        out = {}
        for group in self.param_groups:
            if group["rank"] is None:
                continue
            kind = projections.get(group["projection"])
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                if not is_matrix(p):
                    continue
                layout = kind.layout(p.shape, group["rank"], group["side"], group.get("block"))
                layout = kind.current_layout(self.state.get(p, {}), layout, group)
                ranks = [rank for _, rank, _ in layout.sides()]
                out[names[i] if names else self.layer_index(p)] = (
                    (layout.left_rank, layout.right_rank) if kind.two_sided else ranks[0]
                )
        return out

    def _adamw(self, group, params):
        """torch.optim.AdamW's step for `params`, fused where torch has the kernel (plain_adamw)."""
        where = self._where(self._group_index[params[0]])
        chosen, states = plain_adamw.adam_states(self.state, group, params, where)
        plain_adamw.adamw_step(group, params, states, chosen)

    def _step_lowrank(self, p, group, kind):
        step = LowRankParamStep(p, group, kind, self.state[p], self.layer_index(p), self._warn, self._backend,
                                self._collector)
        step_fn = registered_param_step(p)
        if step_fn is None:
            step.run()
        else:  # a tensor subclass whose owner registered its step (register_param_step), e.g. DTensor
            step_fn(step)
