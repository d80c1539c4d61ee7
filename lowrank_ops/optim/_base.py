"""What LowRankAdamW and GaLoreAdamW share: stepping parameter by parameter (so that the per-layer mode,
lowrank_ops.optim.step_in_backward, runs exactly the code of `step()`), the checks before any work of a
step (sparse gradients, projection settings changed mid-run, the opt-in non-finite guard), warnings that
fire once, and a `load_state_dict` that checks the state dict against the optimizer (resume.py) and keeps
the dtype of low-rank state (fp32 moments of bf16 weights)."""

import math
import warnings

import torch

from .. import projections
from ..projections import moments
from ..spec import STATE_BITS, STATE_BLOCK_SIZE
from .multi_step import FusedSteps, lowrank_step
from .nonfinite import finite_flags
from .plain_adamw import IMPLEMENTATION_KEYS
from .resume import check_group, check_param_state, param_label

SEED_LIMIT = 2**64
# Param-group keys of the non-finite guard: `skip_nonfinite` is chosen per run (load_state_dict keeps this
# optimizer's value), `skipped_steps` counts the skipped parameter steps (state: a state dict's value is
# loaded). State dicts saved before the guard existed lack both.
GUARD_KEYS = ("skip_nonfinite", "skipped_steps")
# The moment-format keys (check_state_bits) as state dicts saved before 8-bit moments existed hold them: float
# moments.
MOMENT_FORMAT_DEFAULTS = {"state_bits": 32, "state_block_size": STATE_BLOCK_SIZE}


class PerParamOptimizer(torch.optim.Optimizer):
    """Subclasses set `_backend` (the fused op's backend) and `_multi_tensor` (collect the low-rank steps of
    a `step()` into one multi-tensor call, by a `_COLLECTOR`) before calling this __init__, and implement
    `_step_group(group, params)` for the params of one group that have a finite grad (when the group
    guards), `_check_group(group, where)` and `_lowrank_layout(group, p, state)`, and
    name their settings in LAYOUT_KEYS, KEPT_KEYS and REFRESH_KEYS. Low-rank state is marked by the int key
    "layer"."""

    # Param-group keys that shape the state of a group's low-rank parameters (moment shapes, basis entries,
    # the adapter delta): compared by load_state_dict; changed mid-run, they restart that state.
    LAYOUT_KEYS: tuple[str, ...] = ("rank",)
    # Of LAYOUT_KEYS, those whose mid-run change `_keep_state` applies to the state instead of a restart.
    KEPT_KEYS: tuple[str, ...] = ()
    # Keys read only at a refresh: changed mid-run, they take effect at the next refresh (warned once).
    REFRESH_KEYS: tuple[str, ...] = ()
    # What collects a step()'s low-rank steps with multi_tensor: made with the backend, `add`ed to, `run` once.
    _COLLECTOR = FusedSteps

    def __init__(self, params, defaults):
        self._layer_index: dict[torch.Tensor, int] = {}  # param -> its index in the flattened param list
        self._group_index: dict[
            torch.Tensor, int
        ] = {}  # param -> index of its group (groups are replaced on load)
        self._applied: list[dict] = []  # per group: the settings its state was built with (_settings)
        self._warned: set[str] = set()
        self._collector = None  # set during step() when multi_tensor (a _COLLECTOR)
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        group.setdefault("skipped_steps", 0)
        self._check_group(group, self._where(index))
        self._applied.append(self._settings(group))
        for p in group["params"]:
            self._layer_index[p] = len(self._layer_index)
            self._group_index[p] = index

    def _where(self, index: int) -> str:
        return f"lowrank_ops.optim.{type(self).__name__}: param group {index}"

    def _check_group(self, group, where):
        raise NotImplementedError

    def _step_group(self, group, params):
        raise NotImplementedError

    def _lowrank_layout(self, group, p, state):
        """(kind, the Layout in use, whether the state has the adapter `delta`[, the block length of its 8-bit
        moments or None: moment_block, for optimizers with 8-bit moments]) of a low-rank parameter of `group`
        with `state`; None for a parameter the group steps as plain AdamW."""
        raise NotImplementedError

    def _keep_state(self, key, old, new, states) -> None:
        """Applies the mid-run change of KEPT_KEYS' `key` from `old` to `new` to the low-rank `states`."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = [
            (i, [p for p in group["params"] if p.grad is not None])
            for i, group in enumerate(self.param_groups)
        ]
        for index, params in work:
            self._check_dense(index, params)
        for index, _ in work:
            self._sync_settings(index)
        # The low-rank steps of every group are collected and run as one multi-tensor call per device (the
        # per-layer mode's step_param runs each at once).
        self._collector = self._COLLECTOR(self._backend) if self._multi_tensor else None
        try:
            for index, params in self._finite_only(work):
                if params:
                    self._step_group(self.param_groups[index], params)
        finally:
            collector, self._collector = self._collector, None
            if collector is not None:
                collector.run()
        return loss

    def _lowrank_step(self, *args, **kwargs) -> None:
        """lowrank_ops.ops.lowrank_adamw_step_(*args, **kwargs) on the optimizer's backend: collected into
        the step's multi-tensor call inside step() with multi_tensor, else run at once."""
        lowrank_step(self._collector, self._backend, *args, **kwargs)

    @torch.no_grad()
    def step_param(self, param: torch.Tensor) -> None:
        """One optimizer step of `param` alone (no-op without a grad): the per-layer mode's entry point."""
        index = self._managed(param, "step_param")
        if param.grad is None:
            return
        self._check_dense(index, [param])
        self._sync_settings(index)
        for _, params in self._finite_only([(index, [param])]):
            if params:
                self._step_group(self.param_groups[index], params)

    def skipped_steps(self) -> int:
        """Parameter steps skipped so far by the guard `skip_nonfinite` for a NaN/Inf gradient (summed over
        the param groups; per group in group["skipped_steps"]; saved in the state dict)."""
        return sum(group["skipped_steps"] for group in self.param_groups)

    def state_dict(self):
        for index in range(len(self.param_groups)):
            self._sync_settings(index)  # the saved state matches the saved settings
        return super().state_dict()

    def _check_dense(self, index: int, params) -> None:
        group = self.param_groups[index]
        for p in params:
            if p.grad.layout != torch.strided:
                i = next(i for i, q in enumerate(group["params"]) if q is p)
                raise RuntimeError(
                    f"{self._where(index)}, {param_label(group, i, p)}: sparse gradients are not supported "
                    f"(got a {p.grad.layout} gradient; the optimizer's kernels read dense gradients); use a "
                    "dense gradient, e.g. nn.Embedding(..., sparse=False)"
                )

    def _finite_only(self, work):
        """`work` ([(group index, params)]) without the params whose gradient holds a NaN/Inf in groups with
        skip_nonfinite (counted in group["skipped_steps"], warned once): one max|g| per gradient, one host
        sync per device and dtype for all groups (nonfinite.py)."""
        guarded = [
            (index, p) for index, params in work if self.param_groups[index]["skip_nonfinite"] for p in params
        ]
        if not guarded:
            return work
        flags = finite_flags([p.grad for _, p in guarded])
        bad = {p for (_, p), ok in zip(guarded, flags) if not ok}
        if not bad:
            return work
        out = []
        for index, params in work:
            group = self.param_groups[index]
            skipped = [p for p in params if p in bad]
            if skipped:
                group["skipped_steps"] += len(skipped)
                i = next(i for i, q in enumerate(group["params"]) if q is skipped[0])
                self._warn(
                    "skip_nonfinite",
                    f"{self._where(index)}, {param_label(group, i, skipped[0])}: its gradient has NaN/Inf; "
                    "its step is skipped (skip_nonfinite: weights and state unchanged, counted in "
                    "skipped_steps()); warned once",
                )
            out.append((index, [p for p in params if p not in bad]))
        return out

    def _layout(self, group) -> dict:
        """The group's LAYOUT_KEYS, {key: value}; only "rank" when it is None (a plain group)."""
        keys = self.LAYOUT_KEYS if group.get("rank") is not None else ("rank",)
        return {key: _frozen(group.get(key)) for key in keys}

    def _settings(self, group) -> dict:
        """What a mid-run change is tracked on: the group's _layout and REFRESH_KEYS."""
        return {**self._layout(group), **{key: group.get(key) for key in self.REFRESH_KEYS}}

    def _sync_settings(self, index: int) -> None:
        """Applies a change of group `index`'s settings since its state was built (one dict comparison per
        group and step): the new settings are checked (a bad value raises here, before any work); a change
        of LAYOUT_KEYS (other than KEPT_KEYS) restarts the state of every parameter that is low-rank under
        the old or the new settings (deleted: the next step starts it as for a new parameter: zero moments,
        step count 0, a basis drawn at once); KEPT_KEYS go to `_keep_state`; REFRESH_KEYS take effect at the
        next refresh. Each change is warned once per group and key, only when some state exists."""
        group = self.param_groups[index]
        old = self._applied[index]
        if self._settings(group) == old:
            return
        self._check_group(group, self._where(index))
        new = self._settings(group)
        self._applied[index] = new
        params = [p for p in group["params"] if self.state.get(p)]
        was = {p for p in params if old["rank"] is not None and is_matrix(p)}
        now = {p for p in params if new["rank"] is not None and is_matrix(p)}
        changed = [key for key in dict.fromkeys([*old, *new]) if old.get(key) != new.get(key)]
        restart = [  # the keys named: those set before and after (rank None -> 4 names only the rank)
            key
            for key in changed
            if key in self.LAYOUT_KEYS and key not in self.KEPT_KEYS and key in old and key in new
        ]
        if restart and was | now:
            for p in was | now:
                del self.state[p]
            self._warn_change(
                index,
                restart,
                old,
                new,
                f"the state of its {len(was | now)} low-rank parameter(s) restarts: "
                "moments zeroed, step count and bias correction from 0, a new basis at their next step",
            )
            was = now = set()
        for key in changed:
            if key in self.KEPT_KEYS and was & now:
                self._keep_state(key, old.get(key), new.get(key), [self.state[p] for p in was & now])
                self._warn_change(index, [key], old, new, "it takes effect at the next step, moments kept")
            elif key in self.REFRESH_KEYS and now:
                self._warn_change(
                    index, [key], old, new, "the current bases are kept; it takes effect at the next refresh"
                )

    def _warn_change(self, index, keys, old, new, what: str) -> None:
        changes = ", ".join(f"{key!r} from {old.get(key)!r} to {new.get(key)!r}" for key in keys)
        self._warn(
            f"setting:{index}:{','.join(keys)}",
            f"{self._where(index)}: {changes} after its state was built; {what} (warned once)",
        )

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
        """torch.optim.Optimizer.load_state_dict, checked against this optimizer, nothing loaded when a check
        fails (ValueError naming the group, parameter, key, this optimizer's value and the state dict's):
        every key of this optimizer's defaults must be present (else: another optimizer type), the
        LAYOUT_KEYS must be equal (they shape the low-rank state), the other keys' values must pass the
        group checks, and each parameter's state must be what the step reads (keys, shapes). As in
        torch.optim, the state dict's hyperparameters (lr, betas, eps, weight_decay, foreach, fused, ...)
        replace this optimizer's and may be changed afterwards (a state dict saved before `foreach` or
        `fused` existed loads them as None, as torch.optim.AdamW does); `skip_nonfinite` stays this
        optimizer's (a guard chosen for this run). Low-rank state keeps the dtype it was saved with (torch
        casts every floating state tensor to its parameter's dtype, which would round the fp32 moments of a
        bf16 weight)."""
        where = f"lowrank_ops.optim.{type(self).__name__}.load_state_dict"
        own_groups, own_state = self.param_groups, self.state
        super().load_state_dict(state_dict)
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id, {})
            if "layer" in saved:
                for key, value in saved.items():
                    if isinstance(value, torch.Tensor):
                        self.state[p][key] = value.to(device=p.device, copy=True)
        try:
            for index, (group, own) in enumerate(zip(self.param_groups, own_groups)):
                self._check_loaded_group(where, index, group, own)
        except Exception:
            self.__dict__.update(state=own_state, param_groups=own_groups)  # nothing loaded
            raise
        self._applied = [self._settings(group) for group in self.param_groups]

    def _required_keys(self, own: dict) -> list[str]:
        """The keys a loaded group must have: those of this optimizer's defaults in its group `own` (torch
        adds defaults of its own on load), the guard's and the plain AdamW implementation's excepted."""
        optional = GUARD_KEYS + IMPLEMENTATION_KEYS + tuple(MOMENT_FORMAT_DEFAULTS)
        return [key for key in self.defaults if key in own and key not in optional]

    def _check_loaded_group(self, where, index, group, own) -> None:
        for key, value in MOMENT_FORMAT_DEFAULTS.items():  # state dicts saved before 8-bit moments: float ones
            if key in own:
                group.setdefault(key, value)
        check_group(
            where, index, group, own, self._required_keys(own), self._layout(own), self._layout(group)
        )
        group["skip_nonfinite"] = own["skip_nonfinite"]
        group.setdefault("skipped_steps", 0)
        for (
            key
        ) in IMPLEMENTATION_KEYS:  # absent from state dicts saved before the key existed: None, as torch
            group.setdefault(key, None)
        self._check_group(group, f"{where}: param group {index} of the state dict")
        for i, p in enumerate(group["params"]):
            state = self.state.get(p)
            if state:
                check_param_state(
                    where,
                    f"param group {index}, {param_label(group, i, p)}",
                    state,
                    p,
                    self._lowrank_layout(group, p, state),
                )


def _frozen(value):
    """A setting as compared: a list as the tuple of its items (rank pairs, blocks)."""
    return tuple(value) if isinstance(value, list) else value


def check_guard(group, where: str) -> None:
    """The guard's keys: `skip_nonfinite` a bool, `skipped_steps` an int >= 0."""
    if not isinstance(group["skip_nonfinite"], bool):
        raise TypeError(f"{where}: 'skip_nonfinite' must be a bool, got {group['skip_nonfinite']!r}")
    check_int(group["skipped_steps"], where, "skipped_steps", 0)


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


def lowrank_state(state: dict, layer: int, projected_shape, W: torch.Tensor, with_delta: bool,
                  block: int | None = None) -> None:
    """Initial state of a low-rank parameter: ints step/layer/refresh and zero moments in the projected
    shape, fp32 (fp64 for an fp64 W), or blockwise 8-bit with blocks of `block` elements of a row
    (projections/moments.py); `delta` (the adapter of wd_mode "adapter") when asked."""
    state.update(step=0, layer=layer, refresh=0)
    moments.init(state, tuple(projected_shape), W, block)
    if with_delta:
        state["delta"] = moments.zeros_like(state)


def check_state_bits(group, where: str) -> None:
    """The 8-bit moment keys: `state_bits` 32 (float moments) or 8 (blockwise 8-bit, docs/DESIGN.md §3),
    `state_block_size` an int >= 1, `min_8bit_size` (GaLoreAdamW8bit) an int >= 0."""
    if group["state_bits"] not in STATE_BITS or isinstance(group["state_bits"], bool):
        raise ValueError(f"{where}: 'state_bits' must be one of {STATE_BITS}, got {group['state_bits']!r}")
    check_int(group["state_block_size"], where, "state_block_size", 1)
    if "min_8bit_size" in group:
        check_int(group["min_8bit_size"], where, "min_8bit_size", 0)


def moment_block(group: dict, projected_shape) -> int | None:
    """The block length of the 8-bit moments of a low-rank parameter of `group` with moments of
    `projected_shape`, or None for float moments: state_bits 8 and at least min_8bit_size (default 0)
    elements."""
    if group.get("state_bits", 32) != 8 or math.prod(projected_shape) < group.get("min_8bit_size", 0):
        return None
    return group["state_block_size"]


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
            f"{where}: 'block' needs a projection with row blocks ('orthogonal', 'sr_dct'), got {kind.name!r}"
        )


def check_int(value, where: str, name: str, low: int, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        bound = f"in [{low}, 2^64)" if high == SEED_LIMIT else f">= {low}"
        raise ValueError(f"{where}: '{name}' must be an int {bound}, got {value!r}")
