"""LowRankAdamW's per-parameter stepping interface: the public calls through which the code that owns a
tensor subclass steps the low-rank parameters of that type, so that the optimizer knows nothing of the
subclass and that code touches no private member of the optimizer. (lowrank_ops.distributed registers the
step of FSDP2's DTensor parameters this way, when it is imported.)

    register_param_step(tensor_type, step_fn)

From then on LowRankAdamW hands each of its low-rank parameters p (a matrix in a group with a rank) with
isinstance(p, tensor_type) to step_fn(step), a LowRankParamStep, instead of stepping p itself. A step
function does on its own tensors (e.g. the local shards W and G of p and p.grad) what
LowRankParamStep.run does on p and p.grad:

    if not step.state:
        step.init_state(projected_shape, like=W)   # ints step/layer/refresh, zero moments: then wrap them
    if step.advance(G):                           # basis refresh when due, adapter reset, step += 1
        step.fused_step(W, G, moments)            # lowrank_ops.ops.lowrank_adamw_step_, the group's settings

Parameters stepped as plain AdamW (groups without a rank, non-matrix parameters) go to torch's functional
AdamW, which handles tensor subclasses itself, and never reach a step function.
"""

from collections.abc import Callable

import torch

from ..ops.projection import Projection
from ..projections import Layout, ProjectionKind, moments
from ._base import lowrank_state, moment_block, refresh_if_due
from .multi_step import FusedSteps, lowrank_step, moment_arguments

_STEPS: dict[type, Callable] = {}  # tensor subclass -> its step function


def register_param_step(tensor_type: type, step_fn: Callable) -> None:
    """LowRankAdamW steps its low-rank parameters that are instances of `tensor_type` (a subclass of
    torch.Tensor; subclasses of it included, the most derived registration wins) with step_fn(step), `step`
    a LowRankParamStep, instead of its own single-tensor step. Registering a type again replaces its
    function."""
    plain = (torch.Tensor, torch.nn.Parameter)
    if not (isinstance(tensor_type, type) and issubclass(tensor_type, torch.Tensor)) or tensor_type in plain:
        raise TypeError(
            "lowrank_ops.optim.register_param_step: argument 'tensor_type' must be a subclass of "
            f"torch.Tensor other than torch.Tensor and torch.nn.Parameter, got {tensor_type!r}"
        )
    if not callable(step_fn):
        raise TypeError(
            "lowrank_ops.optim.register_param_step: argument 'step_fn' must be callable (a function of one "
            f"LowRankParamStep), got {type(step_fn).__name__}"
        )
    _STEPS[tensor_type] = step_fn


def registered_param_step(param: torch.Tensor) -> Callable | None:
    """The step function registered for the type of `param` (or its nearest registered base), or None."""
    for cls in type(param).__mro__:
        if cls in _STEPS:
            return _STEPS[cls]
    return None


class LowRankParamStep:
    """One low-rank optimizer step of one parameter. LowRankAdamW builds it and either runs it (`run()`)
    or hands it to the step function registered for the parameter's type (register_param_step).

    Attributes: `param`; `group`, its param group (dict); `kind`, its lowrank_ops.projections kind;
    `layout`, the group's projections.Layout for the parameter's full shape; `layer`, the parameter's index
    in the optimizer's flattened param list (the layer of its projection seeds,
    projections.derive_seed(group["seed"], layer, refresh)); `state`, the optimizer's state dict of the
    parameter (updated in place; what `state_dict()` saves)."""

    def __init__(
        self,
        param: torch.Tensor,
        group: dict,
        kind: ProjectionKind,
        state: dict,
        layer: int,
        warn: Callable[[str, str], None],
        backend,
        collector: FusedSteps | None = None,
    ):
        self.param, self.group, self.kind, self.state, self.layer = param, group, kind, state, layer
        self.layout: Layout = kind.layout(param.shape, group["rank"], group["side"], group.get("block"))
        self._warn, self._backend, self._collector = warn, backend, collector

    @property
    def current_layout(self) -> Layout:
        """The layout in use: `layout`, or the kind's current one (e.g. "adaptive", whose rank changes)."""
        return self.kind.current_layout(self.state, self.layout, self.group)

    def init_state(self, projected_shape, like: torch.Tensor) -> dict:
        """Fills the empty `state` with the initial low-rank state: ints step = refresh = 0 and layer =
        `layer`, zero moments exp_avg and exp_avg_sq (and the adapter `delta` in wd_mode "adapter") of
        `projected_shape` on like's device, float32 (float64 for a float64 `like`). Returns `state`; a step
        function may then replace its tensors by wrappers of them (e.g. DTensors)."""
        with_delta = self.group["wd_mode"] == "adapter"
        block = moment_block(self.group, tuple(projected_shape))
        lowrank_state(self.state, self.layer, tuple(projected_shape), like, with_delta, block)
        return self.state

    def warn_once(self, key: str, message: str) -> None:
        """A RuntimeWarning with `message`, at most once per optimizer and `key`."""
        self._warn(key, message)

    def refresh_due(self, G: torch.Tensor) -> bool:
        """Whether `advance` will refresh the basis first (the kind's rule; by default at steps 0,
        update_gap, 2 update_gap, ... counted before the increment). `G` is read only by kinds whose rule
        looks at the gradient."""
        return self.kind.due(self.state, G, self.current_layout, self.group["update_gap"], self.group)

    def advance(self, G: torch.Tensor) -> bool:
        """Refreshes the basis when due (seed projections.derive_seed(group["seed"], layer, refresh); kinds
        that read the gradient read `G`, the others only its dtype and device), restarts the adapter
        `delta` at a refresh, and counts the step. False: skip this step (a non-finite G at a refresh; the
        basis is kept and a warning given once)."""
        state, group = self.state, self.group
        refreshes = state["refresh"]
        gap, seed = group["update_gap"], group["seed"]
        if not refresh_if_due(state, self.kind, G, self.layout, gap, seed, self._warn, group):
            return False
        if state["refresh"] != refreshes and "delta" in state:
            if state["delta"].shape == state["exp_avg"].shape:
                state["delta"].zero_()
            else:  # the rank changed ("adaptive"): the adapter restarts in the new projected shape
                state["delta"] = moments.zeros_like(state)
        state["step"] += 1
        return True

    def projection(self) -> Projection:
        """The current basis as the fused op's Projection argument."""
        return self.kind.projection(self.state, self.current_layout)

    def fused_step(self, W: torch.Tensor, G: torch.Tensor, moments=None, projection=None) -> None:
        """lowrank_ops.ops.lowrank_adamw_step_ on W (in place, at once) with gradient G, the group's
        hyperparameters and the optimizer's backend, on the moments exp_avg / exp_avg_sq (and delta) and the
        step count of `moments` (default `state`; a step function passes e.g. the local tensors of wrapped
        state) through `projection` (default `projection()`)."""
        exp_avg, exp_avg_sq, projection, keywords = self._step_arguments(moments, projection)
        lowrank_step(None, self._backend, W, G, exp_avg, exp_avg_sq, projection, **keywords)

    def _step_arguments(self, state, projection) -> tuple:
        """(exp_avg, exp_avg_sq, projection, keywords) of lowrank_adamw_step_ (fused_step's defaults), with
        8-bit moments' absmax and block length (multi_step.moment_arguments)."""
        state = self.state if state is None else state
        projection = self.projection() if projection is None else projection
        group = self.group
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq, eight_bit = moment_arguments(state)
        keywords = {"lr": group["lr"], "beta1": beta1, "beta2": beta2, "eps": group["eps"],
                    "weight_decay": group["weight_decay"], "step": state["step"], "scale": group["scale"],
                    "wd_mode": group["wd_mode"], "delta": state.get("delta"), **eight_bit}
        return exp_avg, exp_avg_sq, projection, keywords

    def run(self) -> None:
        """The step LowRankAdamW takes for a plain tensor: the calls above on `param` and its grad. A tensor
        subclass that dispatches its own ops (a wrapper such as DTensor: the fused kernels cannot read its
        data) needs a registered step function; without one, a TypeError says so."""
        p = self.param
        if type(p).__torch_dispatch__ is not torch.Tensor.__torch_dispatch__:
            raise TypeError(
                f"lowrank_ops.optim.LowRankAdamW: a low-rank parameter of shape {list(p.shape)} is a "
                f"{type(p).__name__}, a tensor subclass that dispatches its own ops, and no step is "
                "registered for its type; its owner registers one with "
                "lowrank_ops.optim.register_param_step (for FSDP2's DTensor: import lowrank_ops.distributed)"
            )
        if not self.state:
            self.init_state(self.current_layout.projected_shape, like=p)
        if self.advance(p.grad):  # into the optimizer's multi-tensor call when it collects (multi_step.py)
            exp_avg, exp_avg_sq, projection, keywords = self._step_arguments(None, None)
            lowrank_step(self._collector, self._backend, p, p.grad, exp_avg, exp_avg_sq, projection, **keywords)
