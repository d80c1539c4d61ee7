"""APOLLO: apollo-torch's APOLLOAdamW (APOLLO and APOLLO-Mini, Zhu et al., "APOLLO: SGD-like Memory,
AdamW-level Performance", 2024) on the fused op lowrank_ops.ops.lowrank_apollo_step_.

Per low-rank parameter W (m x n) with gradient G, at step t (counted after the increment):
  refresh when (t - 1) % update_proj_gap == 0: proj "random": the seeded Gaussian sketch of spec v1 with
      seed derive_seed(seed, layer, refresh) (only that int is persisted; regenerated in the kernels),
      scaled by c = sqrt(d / r) so that its entries are N(0, 1/r) like apollo-torch's; proj "svd": the
      top-r singular vectors of G (GaLore's basis, c = 1). The side follows galore-torch's proj_type rule
      (std: right if m >= n else left; reverse_std: swapped; left / right: that side). Moments are kept.
  R = c P G (left) or c G P^T (right); Adam moments of R; N = m / (sqrt(v) + eps);
  s = ||N|| / (||R|| + 1e-8) per kept channel (scale_type "channel": the columns of W for a left side, its
      rows for a right one) or of the whole matrices ("tensor", APOLLO-Mini, usually with rank 1);
  Fira's norm-growth limiter on the scaled gradient s G (on by default; `disable_nl=True` turns it off);
  W <- (W - lr sqrt(scale) sqrt(1 - b2^t) / (1 - b1^t) s G / limiter) (1 - lr wd)
(the exact formulas: lowrank_ops/pure_torch/apollo.py). Given the same P this is apollo-torch's step to
float32 rounding. Params of groups without a rank, and non-matrix params of any group, are plain AdamW as
in LowRankAdamW (torch.optim.AdamW's arithmetic through plain_adamw.py, keys `foreach`, `fused`).

Differences from apollo-torch, each deliberate: P is a Philox sketch (seed-only, the same bits on every
device) instead of torch's CPU-generator draw that apollo-torch stores; "channel" scaling always scales
the dimension the projection keeps, so every proj_type works on every shape (apollo-torch scales along
the shape's smaller side and raises a broadcast error when that is not the kept one); the rank is capped
at min(m, n); moments are fp32 for bf16 weights; the state holds only tensors and ints (no projector
objects: torch.load(weights_only=True) works); `scale_front=True` is refused (apollo-torch's default,
False, is what this does). State per low-rank param: ints step, layer, refresh, proj_seed; fp32
exp_avg / exp_avg_sq (projected shape) and limiter_norm (0-dim); proj "svd" adds the basis proj_left or
proj_right. save -> load -> continue is bit-identical to not stopping. With `multi_tensor` (the default) a
step() runs the low-rank steps of all groups as one lowrank_apollo_multi_step_ call per device, which computes
what the per-parameter lowrank_apollo_step_ calls would: bit for bit on one intra-op thread, within the tolerance
rule on more (lowrank_ops/ops/apollo_multi.py says why).
"""

import math

import torch

from .. import projections
from ..ops.apollo import SCALE_TYPES, lowrank_apollo_step_
from ..ops.apollo_multi import lowrank_apollo_multi_step_
from . import plain_adamw
from ._base import SEED_LIMIT, PerParamOptimizer, check_guard, check_hyper, check_int, is_matrix, lowrank_state, \
    refresh_if_due
from .galore import galore_layout

PROJ_TYPES = ("std", "reverse_std", "left", "right")
PROJS = ("random", "svd")
SKETCHES = ("gaussian", "rademacher")
GROUP_DEFAULTS = dict(update_proj_gap=200, scale=1.0, proj_type="std", proj="random", scale_type="channel",
                      sketch="gaussian")


class ApolloSteps:
    """The lowrank_apollo_step_ calls of one step(), collected (`add`) and run as one lowrank_apollo_multi_step_
    call per device (`run`, in the order recorded within a device) on `backend`."""

    def __init__(self, backend):
        self.backend = backend
        self.calls: list[tuple] = []

    def add(self, W, G, exp_avg, exp_avg_sq, limiter_norm, projection, **hyper):
        """Records lowrank_apollo_step_(W, G, exp_avg, exp_avg_sq, limiter_norm, projection, **hyper)."""
        self.calls.append(((W, G, exp_avg, exp_avg_sq, limiter_norm, projection), hyper))

    def run(self) -> None:
        calls, self.calls = self.calls, []
        by_device: dict[torch.device, list] = {}
        for call in calls:
            by_device.setdefault(call[0][0].device, []).append(call)
        for group in by_device.values():
            lists = [list(column) for column in zip(*(args for args, _ in group))]
            hyper = {name: [h[name] for _, h in group] for name in group[0][1]}
            lowrank_apollo_multi_step_(*lists, backend=self.backend, **hyper)


class APOLLO(PerParamOptimizer):
    """apollo-torch's APOLLOAdamW (HF-style defaults: eps=1e-6, weight_decay=0.0, correct_bias) on the fused
    APOLLO step. A param group is low-rank when its "rank" is an int (None: plain AdamW). Param-group keys
    of low-rank groups (defaults as apollo-torch / transformers' `apollo_adamw`): `rank`, `scale_type`
    ("channel": APOLLO; "tensor": APOLLO-Mini, with rank 1 in the paper), `scale` (the update is
    multiplied by sqrt(scale)), `update_proj_gap`, `proj` ("random" | "svd"), `proj_type` ("std",
    "reverse_std", "left", "right"), `sketch` (the random P's kind, "gaussian" as apollo-torch or
    "rademacher"), `seed` (the base seed of the per-layer, per-refresh sketch seeds). `disable_nl`: turn off
    the norm-growth limiter (apollo-torch's argument; a param-group key). `multi_tensor` (default True):
    step() runs the low-rank steps as one lowrank_apollo_multi_step_ call per device; False: one
    lowrank_apollo_step_ call per parameter (the same bits on one intra-op thread). `scale_front` (only False) and
    `no_deprecation_warning` (no effect) keep apollo-torch's positional signature. `foreach`, `fused`: the plain
    params' torch.optim.AdamW implementation, as in LowRankAdamW. `skip_nonfinite`, the sparse-gradient
    check, mid-run setting changes and `load_state_dict`'s checks are LowRankAdamW's (PerParamOptimizer):
    rank, proj, proj_type and sketch shape the state (a change restarts it; a state dict with other values
    is refused), seed takes effect at the next refresh."""

    LAYOUT_KEYS = ("rank", "proj", "proj_type", "sketch")
    _COLLECTOR = ApolloSteps
    REFRESH_KEYS = ("seed",)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, correct_bias=True,
                 scale_front=False, disable_nl=False, no_deprecation_warning=True, *, rank=None, seed=0, foreach=None,
                 fused=None, skip_nonfinite=False, backend=None, multi_tensor=True, **group_defaults):
        if scale_front:
            raise ValueError("lowrank_ops.optim.APOLLO: 'scale_front' must be False (apollo-torch's default: "
                             "sqrt(scale) multiplies the update after the norm-growth limiter), got True")
        unknown = sorted(set(group_defaults) - set(GROUP_DEFAULTS))
        if unknown:
            raise TypeError(f"lowrank_ops.optim.APOLLO: unexpected keyword arguments {unknown}; the param-group "
                            f"keys it takes as defaults: {sorted(GROUP_DEFAULTS)}")
        self._backend = backend
        self._multi_tensor = bool(multi_tensor)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, correct_bias=correct_bias,
                        disable_nl=disable_nl, rank=rank, seed=seed, **{**GROUP_DEFAULTS, **group_defaults},
                        foreach=foreach, fused=fused, skip_nonfinite=skip_nonfinite)
        super().__init__(params, defaults)
        plain_adamw.check_not_both(foreach, fused, "lowrank_ops.optim.APOLLO")

    def _check_group(self, group, where):
        check_hyper(group, where)
        check_guard(group, where)
        check_int(group["seed"], where, "seed", 0, SEED_LIMIT)
        for key in ("correct_bias", "disable_nl"):
            if not isinstance(group[key], bool):
                raise TypeError(f"{where}: '{key}' must be a bool, got {group[key]!r}")
        if group["rank"] is None:
            return
        check_int(group["rank"], where, "rank", 1)
        check_int(group["update_proj_gap"], where, "update_proj_gap", 1)
        for key, options in (("proj_type", PROJ_TYPES), ("proj", PROJS), ("scale_type", SCALE_TYPES),
                             ("sketch", SKETCHES)):
            if group[key] not in options:
                raise ValueError(f"{where}: '{key}' must be one of {options}, got {group[key]!r}")
        scale = group["scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale < math.inf:
            raise ValueError(f"{where}: 'scale' must be a finite number >= 0, got {scale!r}")

    def _kind(self, group):
        return projections.get("svd" if group["proj"] == "svd" else group["sketch"])

    def _lowrank_layout(self, group, p, state):
        if group["rank"] is None or not is_matrix(p):
            return None
        return self._kind(group), galore_layout(p.shape, group["rank"], group["proj_type"]), False

    def _check_loaded_group(self, where, index, group, own) -> None:
        super()._check_loaded_group(where, index, group, own)
        for p in group["params"]:
            state = self.state.get(p)
            if state and "layer" in state:
                norm = state.get("limiter_norm")
                if not isinstance(norm, torch.Tensor) or norm.dim() != 0:
                    raise ValueError(f"{where}: param group {index}, a parameter of shape {list(p.shape)}: the "
                                     f"state's 'limiter_norm' must be a 0-dim tensor, got {norm!r}")

    def _step_group(self, group, params):
        lowrank = group["rank"] is not None
        plain = [p for p in params if not (lowrank and is_matrix(p))]
        if plain:
            where = self._where(self._group_index[plain[0]])
            chosen, states = plain_adamw.adam_states(self.state, group, plain, where)
            plain_adamw.adamw_step(group, plain, states, chosen)
        if lowrank:
            for p in params:
                if is_matrix(p):
                    self._step_lowrank(p, group)

    def _step_lowrank(self, p, group):
        kind = self._kind(group)
        layout = galore_layout(p.shape, group["rank"], group["proj_type"])
        state = self.state[p]
        if not state:
            lowrank_state(state, self.layer_index(p), layout.projected_shape, p, with_delta=False)
            state["limiter_norm"] = torch.zeros((), dtype=state["exp_avg"].dtype, device=p.device)
        if not refresh_if_due(state, kind, p.grad, layout, group["update_proj_gap"], group["seed"], self._warn):
            return
        state["step"] += 1
        ((_, rank, d), ) = layout.sides()
        beta1, beta2 = group["betas"]
        args = (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["limiter_norm"], kind.projection(state, layout))
        hyper = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                     step=state["step"], scale=group["scale"], scale_type=group["scale_type"],
                     limiter=not group["disable_nl"], correct_bias=group["correct_bias"],
                     proj_scale=math.sqrt(d / rank) if group["proj"] == "random" else 1.0)
        if self._collector is None:
            lowrank_apollo_step_(*args, backend=self._backend, **hyper)
        else:
            self._collector.add(*args, **hyper)
