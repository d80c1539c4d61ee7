"""GaLoreAdamW: a drop-in for galore-torch's `GaLoreAdamW` (param-group keys rank, update_proj_gap,
scale, proj_type) that reproduces its arithmetic on the fused op.

galore-torch 1.0's GaLoreAdamW (jiaweizzhao/GaLore), per low-rank param at step t (t counted after the
increment):
  refresh when (t - 1) % update_proj_gap == 0: fp32 SVD of G, vectors cast back to G's dtype;
      std: right (P = Vh[:r], R = G P^T) if m >= n else left (R = U[:, :r]^T G); reverse_std: swapped;
      left / right: that side; full: both sides, R = U[:, :r]^T G Vh[:r]^T. Moments are not transformed.
  m <- b1 m + (1 - b1) R;  v <- b2 v + (1 - b2) R^2;  u = m / (sqrt(v) + eps)
  W <- W - s scale unproject(u),  s = lr sqrt(1 - b2^t) / (1 - b1^t)  (s = lr without correct_bias)
  W <- W - lr wd W                                                     (only if wd > 0, after the update)
The fused op computes W <- W - lr wd W - lr scale' unproject((m / bc1) / (sqrt(v) / sqrt(bc2) + eps')),
bc_i = 1 - b_i^t. Both are equal for eps' = eps / sqrt(bc2) and scale' = scale (1 - lr wd)
(times bc1 / sqrt(bc2) without correct_bias), so results agree to fp32 rounding.
Params without a rank (and non-matrix params of rank groups) get galore-torch's HF-style AdamW
(hf_adamw.py): by default through torch's fused AdamW kernel with eps and lr rescaled per step (equal to
galore-torch's to float rounding), with foreach or single-tensor chosen (keys `foreach`, `fused`, as in
torch.optim.AdamW) in galore-torch's op order, bit for bit on the CPU.

Differences, each deliberate: moments of low-rank params are fp32 for bf16 weights (galore-torch keeps
them in the gradient's dtype); the side is fixed from the weight's shape, so square and rank >= dim
projected gradients cannot pick the wrong side on the way back (galore-torch users report shape errors
there for some proj_types); the rank is capped at min(m, n); the state holds only tensors and ints (no
projector objects: torch.load(weights_only=True) works); a failed SVD keeps the previous basis (a seeded
semi-orthogonal one at the first refresh) and a NaN/Inf gradient at a refresh skips that param's step,
instead of NaN weights (galore-torch users report SVDs that fail on ill-conditioned gradients and a loss
that collapses after them).
"""

import math

from .. import projections
from ..projections import Layout
from ._base import (
    PerParamOptimizer,
    check_guard,
    check_hyper,
    check_int,
    is_matrix,
    lowrank_state,
    moment_block,
    refresh_if_due,
)
from .hf_adamw import hf_adamw_step
from .multi_step import moment_arguments
from .plain_adamw import check_not_both

PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")
GROUP_DEFAULTS = dict(
    update_proj_gap=200, scale=1.0, proj_type="std"
)  # galore-torch's GaLoreProjector defaults
FALLBACK_BASE_SEED = 0  # galore-torch has no seed; the fallback basis of a failed first SVD uses this one


def galore_layout(shape, rank: int, proj_type: str) -> Layout:
    m, n = shape
    r = min(rank, m, n)
    if proj_type == "full":
        return Layout((m, n), r, r)
    side = {
        "std": "right" if m >= n else "left",
        "reverse_std": "left" if m >= n else "right",
        "left": "left",
        "right": "right",
    }[proj_type]
    return Layout((m, n), r, 0) if side == "left" else Layout((m, n), 0, r)


class GaLoreAdamW(PerParamOptimizer):
    """galore-torch's GaLoreAdamW (HF-style AdamW: eps=1e-6, weight_decay=0.0, correct_bias) on the fused
    low-rank step. A param group is low-rank when it has a "rank" key. `no_deprecation_warning` is
    accepted for signature compatibility and has no effect (there is no deprecation to warn about).
    `foreach`, `fused` (keyword-only; galore-torch has neither): torch.optim.AdamW's arguments, choosing
    the implementation of the plain params' AdamW (hf_adamw.py; both None: torch's fused kernel where it
    has one; both True: RuntimeError, as torch's). `multi_tensor` (default True): `step()` runs the low-rank
    steps as one lowrank_adamw_multi_step_ call per device (optim/multi_step.py); False: one
    lowrank_adamw_step_ call per parameter, as the per-layer mode does.

    Guards, as LowRankAdamW's (lowrank_ops.optim.lowrank_adamw): sparse gradients are refused before any
    work; `skip_nonfinite=True` (constructor or param-group key) skips the step of each parameter whose
    gradient has a NaN/Inf, counted in `skipped_steps()`; `load_state_dict` refuses a state dict of another
    optimizer type or another layout (the presence and value of "rank", "proj_type") and keeps the state
    dict's hyperparameters (lr, betas, eps, weight_decay, correct_bias, update_proj_gap, scale, foreach,
    fused). Changed mid-run: rank (added, removed or changed) and proj_type restart the state of the
    group's low-rank parameters at their next step (moments zeroed, step count from 0, a new SVD basis),
    warned once; the other keys take effect at once."""

    LAYOUT_KEYS = ("rank", "proj_type")

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-6,
        weight_decay=0.0,
        correct_bias=True,
        no_deprecation_warning=False,
        *,
        foreach=None,
        fused=None,
        skip_nonfinite=False,
        backend=None,
        multi_tensor=True,
    ):
        self._backend = backend
        self._multi_tensor = bool(multi_tensor)
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, correct_bias=correct_bias
        )
        super().__init__(
            params, {**defaults, "foreach": foreach, "fused": fused, "skip_nonfinite": skip_nonfinite}
        )
        check_not_both(foreach, fused, "lowrank_ops.optim.GaLoreAdamW")

    def _check_group(self, group, where):
        check_hyper(group, where)
        check_guard(group, where)
        if "rank" not in group:
            return
        for key, value in GROUP_DEFAULTS.items():
            group.setdefault(key, value)
        check_int(group["rank"], where, "rank", 1)
        check_int(group["update_proj_gap"], where, "update_proj_gap", 1)
        if group["proj_type"] not in PROJ_TYPES:
            raise ValueError(f"{where}: 'proj_type' must be one of {PROJ_TYPES}, got {group['proj_type']!r}")

    def _lowrank_layout(self, group, p, state):
        if "rank" not in group or not is_matrix(p):
            return None
        kind = projections.get("two_sided_svd" if group["proj_type"] == "full" else "svd")
        layout = galore_layout(p.shape, group["rank"], group["proj_type"])
        return kind, layout, False, moment_block(group, layout.projected_shape)

    def _step_group(self, group, params):
        lowrank = "rank" in group
        plain = [p for p in params if not (lowrank and is_matrix(p))]
        if plain:
            hf_adamw_step(self.state, group, plain, self._where(self._group_index[plain[0]]))
        if lowrank:
            for p in params:
                if is_matrix(p):
                    self._step_lowrank(p, group)

    def _step_lowrank(self, p, group):
        layout = galore_layout(p.shape, group["rank"], group["proj_type"])
        kind = projections.get("two_sided_svd" if group["proj_type"] == "full" else "svd")
        state = self.state[p]
        if not state:
            block = moment_block(group, layout.projected_shape)
            lowrank_state(state, self.layer_index(p), layout.projected_shape, p, with_delta=False, block=block)
        G = p.grad
        if not refresh_if_due(
            state, kind, G, layout, group["update_proj_gap"], FALLBACK_BASE_SEED, self._warn
        ):
            return
        state["step"] += 1
        t, (beta1, beta2), lr = state["step"], group["betas"], group["lr"]
        wd = max(0.0, group["weight_decay"])
        eps, scale = self._folded(group, t, wd)
        exp_avg, exp_avg_sq, eight_bit = moment_arguments(state)
        self._lowrank_step(
            p,
            G,
            exp_avg,
            exp_avg_sq,
            kind.projection(state, layout),
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            weight_decay=wd,
            step=t,
            scale=scale,
            wd_mode="full",
            **eight_bit,
        )

    def _folded(self, group, t: int, wd: float) -> tuple[float, float]:
        """(eps, scale) of the fused op for galore-torch's HF-style update at step t with weight decay wd
        applied after the update (module docstring)."""
        beta1, beta2 = group["betas"]
        bc1, bc2 = 1.0 - beta1**t, 1.0 - beta2**t
        correction = 1.0 if group["correct_bias"] else bc1 / math.sqrt(bc2)
        return group["eps"] / math.sqrt(bc2), group["scale"] * (1.0 - group["lr"] * wd) * correction
