"""What LowRankAdamW and GaLoreAdamW share: stepping parameter by parameter (so that the per-layer mode,
lowrank_ops.optim.step_in_backward, runs exactly the code of `step()`), warnings that fire once, and a
`load_state_dict` that keeps the dtype of low-rank state (fp32 moments of bf16 weights)."""

import math
import warnings

import torch

from .. import projections

SEED_LIMIT = 2**64


class PerParamOptimizer(torch.optim.Optimizer):
    """Subclasses implement `_step_group(group, params)` for the params of one group that have a grad,
    and `_check_group(group, where)`. Low-rank state is marked by the int key "layer"."""

    def __init__(self, params, defaults):
        self._layer_index: dict[torch.Tensor, int] = {}  # param -> its index in the flattened param list
        self._group_index: dict[
            torch.Tensor, int
        ] = {}  # param -> index of its group (groups are replaced on load)
        self._warned: set[str] = set()
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        self._check_group(group, f"lowrank_ops.optim.{type(self).__name__}: param group {index}")
        for p in group["params"]:
            self._layer_index[p] = len(self._layer_index)
            self._group_index[p] = index

    def _check_group(self, group, where):
        raise NotImplementedError

    def _step_group(self, group, params):
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._step_group(group, params)
        return loss

    @torch.no_grad()
    def step_param(self, param: torch.Tensor) -> None:
        """One optimizer step of `param` alone (no-op without a grad): the per-layer mode's entry point."""
        group = self.param_groups[self._managed(param, "step_param")]
        if param.grad is not None:
            self._step_group(group, [param])

    def layer_index(self, param: torch.Tensor) -> int:
        """The index of `param` in the flattened param list (groups in order, params in group order): the
        layer of its projection seeds, projections.derive_seed(seed, layer, refresh)."""
        self._managed(param, "layer_index")
        return self._layer_index[param]

    def _managed(self, param, method: str) -> int:
        """param's group index; ValueError naming `method` when this optimizer does not manage param."""
        if param not in self._group_index:
            raise ValueError(
                f"lowrank_ops.optim.{type(self).__name__}.{method}: the parameter of shape "
                f"{list(param.shape)} is not managed by this optimizer"
            )
        return self._group_index[param]

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def load_state_dict(self, state_dict):
        """torch.optim.Optimizer.load_state_dict, except that low-rank state keeps the dtype it was saved
        with (torch casts every floating state tensor to its parameter's dtype, which would round the
        fp32 moments of a bf16 weight)."""
        super().load_state_dict(state_dict)
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id, {})
            if "layer" in saved:
                for key, value in saved.items():
                    if isinstance(value, torch.Tensor):
                        self.state[p][key] = value.to(device=p.device, copy=True)


def check_hyper(group, where: str) -> None:
    """The AdamW hyperparameter checks of torch.optim.AdamW, with the group named."""
    beta1, beta2 = group["betas"]
    for name, value, ok in (
        ("lr", group["lr"], group["lr"] >= 0),
        ("eps", group["eps"], group["eps"] >= 0),
        ("betas[0]", beta1, 0 <= beta1 < 1),
        ("betas[1]", beta2, 0 <= beta2 < 1),
        ("weight_decay", group["weight_decay"], group["weight_decay"] >= 0),
    ):
        if not ok:
            raise ValueError(f"{where}: invalid '{name}' {value!r}")


def lowrank_state(state: dict, layer: int, projected_shape, W: torch.Tensor, with_delta: bool) -> None:
    """Initial state of a low-rank parameter: ints step/layer/refresh and fp32 moments (fp64 for an fp64
    W) in the projected shape; `delta` (the adapter of wd_mode "adapter") when asked."""
    dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    state.update(step=0, layer=layer, refresh=0)
    for key in ("exp_avg", "exp_avg_sq") + (("delta",) if with_delta else ()):
        state[key] = torch.zeros(projected_shape, dtype=dtype, device=W.device)


def refresh_if_due(state: dict, kind, G, layout, gap: int, base_seed: int, warn, group=None) -> bool:
    """When kind.due says so (by default at steps 0, gap, 2 gap, ..., counted before the increment, as
    galore-torch) refresh the basis with the seed derive_seed(base_seed, layer, refresh), then let the kind
    carry the moments over to the new basis (kind.transform_moments; by default they are kept). `layout` is
    the param group's; the kind's current one is kind.current_layout. False: skip this parameter's step
    (non-finite G)."""
    current = kind.current_layout(state, layout, group)
    if not kind.due(state, G, current, gap, group):
        return True
    seed = projections.derive_seed(base_seed, state["layer"], state["refresh"])
    previous = {key: value for key, value in state.items() if key.startswith("proj_")}
    if not projections.refresh(kind, state, G, current, seed, warn, group):
        return False
    state["refresh"] += 1
    kind.transform_moments(state, previous, kind.current_layout(state, layout, group))
    return True


def is_matrix(p: torch.Tensor) -> bool:
    return p.dim() == 2 and p.is_floating_point() and min(p.shape) > 0


def check_block(block, kind, where: str) -> None:
    """A param group's `block`: None, or (index, count) ints with 0 <= index < count, for a kind that
    supports row blocks."""
    if block is None:
        return
    ok = (
        isinstance(block, (tuple, list))
        and len(block) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in block)
        and 0 <= block[0] < block[1]
    )
    if not ok:
        raise ValueError(
            f"{where}: 'block' must be None or (index, count) with 0 <= index < count, got {block!r}"
        )
    if not kind.supports_block:
        raise ValueError(
            f"{where}: 'block' needs a projection with row blocks ('orthogonal'), got {kind.name!r}"
        )


def check_int(value, where: str, name: str, low: int, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        bound = f"in [{low}, 2^64)" if high == SEED_LIMIT else f">= {low}"
        raise ValueError(f"{where}: '{name}' must be an int {bound}, got {value!r}")
