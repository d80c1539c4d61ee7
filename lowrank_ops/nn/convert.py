"""Model surgery for the adapter view: convert nn.Linear modules to LowRankLinear, merge the adapters into the
base weights with a projection refresh (ReLoRA-style restart), reset A's optimizer state, and convert back.

Merge rule and its optimizer-state counterpart (see lowrank_ops.duality for the step-by-step check):
LowRankAdamW at a refresh (step update_gap, 2 update_gap, ...) draws P from derive_seed(seed, layer, k),
restarts the adapter delta at 0 (wd_mode "adapter") and KEEPS its moments and step count (as galore-torch).
merge_and_reset does the same in the adapter view: W0 <- quant(deq(W0) + L^T A R), A <- 0 in place (the same
Parameter object, so an optimizer keeps tracking it), P <- the next seed. With moments="keep" (the default)
A's optimizer state is left as it is, which is exactly LowRankAdamW's rule: Adam on A after the merge is
step for step LowRankAdamW after its refresh. moments="zero" instead zeroes every tensor of A's shape in its
optimizer state (exp_avg, exp_avg_sq, max_exp_avg_sq) and its step count: a full restart, the same as
building a fresh torch.optim.AdamW over the model (the test checks that); it has no LowRankAdamW counterpart.
"""

from __future__ import annotations

import torch

from .linear import LowRankLinear

MOMENTS = ("keep", "zero")


def _shared_weights(model: torch.nn.Module) -> set[int]:
    """ids of parameters reachable under more than one name (tied weights, e.g. an LM head tied to the
    embedding): converting such a Linear would untie them."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {i for i, count in seen.items() if count > 1}


def linear_targets(model: torch.nn.Module, target=None) -> list[tuple[str, torch.nn.Linear]]:
    """(name, module) of the nn.Linear modules `convert` replaces, in named_modules order.

    target None: every nn.Linear except those inside nn.MultiheadAttention (it reads out_proj.weight
    directly) and those whose weight is tied to another module's; a callable (name, module) -> bool; or a
    tuple/list of name substrings (a module is converted when its name contains one)."""
    if target is not None and not callable(target) and not isinstance(target, (tuple, list)):
        raise TypeError("lowrank_ops.nn.convert: 'target' must be None, a callable (name, module) -> bool or a "
                        f"tuple of name substrings, got {type(target).__name__}")
    shared = _shared_weights(model)
    inside_mha = {id(sub) for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)
                  for sub in m.modules()}
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if target is None:
            chosen = id(module) not in inside_mha and id(module.weight) not in shared
        elif callable(target):
            chosen = bool(target(name, module))
        else:
            chosen = any(t in name for t in target)
        if chosen:
            out.append((name, module))
    return out


def _set_submodule(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def lowrank_modules(model: torch.nn.Module) -> list[tuple[str, LowRankLinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LowRankLinear)]


def convert(model: torch.nn.Module, rank, projection: str = "rademacher", base: str | None = None, target=None,
            seed: int = 0, *, side: str = "auto", group_size: int | None = None, double_quant: bool = False,
            grads: dict | None = None, backend=None) -> torch.nn.Module:
    """Replaces the targeted nn.Linear modules of `model` in place by LowRankLinear (A = 0, so the function is
    unchanged up to the quantization of W0 when `base` is "int8" / "nf4") and returns the model.

    The k-th converted module (named_modules order) gets layer index k: its P at refresh j is drawn from
    derive_seed(seed, k, j), as LowRankAdamW draws it for its k-th parameter (lowrank_ops.duality).
    `grads` ({module name: W's gradient}) is required by kinds that read the gradient ("svd"). Other
    parameters are left as they are (freeze them yourself for QLoRA-style finetuning). A rank above the
    projected dimension is capped, as in LowRankAdamW."""
    targets = linear_targets(model, target)
    if target is not None and not targets:
        raise ValueError("lowrank_ops.nn.convert: 'target' matched no nn.Linear module")
    for layer, (name, linear) in enumerate(targets):
        grad = None if grads is None else grads.get(name)
        module = LowRankLinear.from_linear(linear, rank, projection=projection, side=side, base=base,
                                           group_size=group_size, double_quant=double_quant, seed=seed, layer=layer,
                                           grad=grad, backend=backend)
        _set_submodule(model, name, module)
    return model


def reset_optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module, moments: str = "zero") -> None:
    """Resets the optimizer state of every A of `model`'s LowRankLinear modules: moments "zero" zeroes each
    state tensor of A's shape and the step count; "keep" does nothing (LowRankAdamW's rule at a refresh)."""
    if moments not in MOMENTS:
        raise ValueError(f"lowrank_ops.nn.reset_optimizer_state: 'moments' must be one of {MOMENTS}, got {moments!r}")
    if moments == "keep":
        return
    for _, module in lowrank_modules(model):
        state = optimizer.state.get(module.A)
        if not state:
            continue
        for key, value in state.items():
            if key == "step":
                state[key] = torch.zeros_like(value) if isinstance(value, torch.Tensor) else 0
            elif isinstance(value, torch.Tensor) and value.shape == module.A.shape:
                value.zero_()


@torch.no_grad()
def merge_and_reset(model: torch.nn.Module, step: int | None = None, optimizer: torch.optim.Optimizer | None = None,
                    *, moments: str = "keep", dense: bool = False, grads: dict | None = None) -> torch.nn.Module:
    """For every LowRankLinear of `model`: W0 <- quant(deq(W0) + L^T A R), A <- 0, P refreshed with the next
    seed (LowRankLinear.merge_and_reset; `step` is recorded as the merge step). With `optimizer`, A's state
    is reset by reset_optimizer_state(optimizer, model, moments) (default "keep": LowRankAdamW's rule, module
    docstring). `grads` ({module name: W's gradient}) for kinds that read the gradient.

    dense=True instead replaces every LowRankLinear by a plain nn.Linear holding deq(W0) + L^T A R (not
    requantized), e.g. before save_pretrained; A leaves the model, so build a new optimizer if training goes on.
    Returns the model."""
    if moments not in MOMENTS:
        raise ValueError(f"lowrank_ops.nn.merge_and_reset: 'moments' must be one of {MOMENTS}, got {moments!r}")
    if dense:
        return unconvert(model)
    for name, module in lowrank_modules(model):
        module.merge_and_reset(step, None if grads is None else grads.get(name))
    if optimizer is not None:
        reset_optimizer_state(optimizer, model, moments)
    return model


@torch.no_grad()
def unconvert(model: torch.nn.Module) -> torch.nn.Module:
    """Replaces every LowRankLinear of `model` in place by the nn.Linear of its effective weight
    deq(W0) + L^T A R (in the layer's dtype, not requantized) and bias; returns the model. A model converted
    from a plain one and unconverted is a plain model again (Hugging Face save_pretrained works on it)."""
    for name, module in lowrank_modules(model):
        _set_submodule(model, name, module.to_linear())
    return model
