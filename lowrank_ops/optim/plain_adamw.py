"""The non-projected parameters of LowRankAdamW and GaLoreAdamW (embeddings, LM head, norms, biases): which
of torch's AdamW implementations steps them, and their state in torch.optim.AdamW's layout.

The choice follows the param group's `fused` and `foreach` keys exactly as torch.optim.AdamW's functional
`torch.optim.adamw.adamw` reads them: fused=True takes torch's fused kernel (also when foreach is True in a
param group; the constructors refuse both True, as torch.optim.AdamW's does), else foreach=True its
multi-tensor implementation, else the single-tensor loop. One difference, the reason this module exists:
with both None, torch.optim.AdamW takes foreach on CUDA and the single-tensor loop on the CPU, and we take
the fused kernel wherever torch has one for all the group's parameters (floating tensors on a device of
torch's fused list, CPU and CUDA included; torch's own rule, `_default_to_fused_or_foreach` with
use_fused=True), foreach otherwise where torch would. On the 60M Llama's embeddings, LM head and norms the
single-tensor loop took 111 ms per step on 2 CPU threads and torch's fused kernel 21 ms (issue 15).

State, as torch.optim.AdamW creates it for the implementation chosen at the parameter's first step: `step`
a float32 tensor on the parameter's device for fused, else a CPU tensor of torch's scalar dtype (float64
under a float64 default dtype, else float32); `exp_avg`, `exp_avg_sq` zeros like the parameter. The layout
is the same in all three implementations apart from where `step` lives, so a state dict saved under one
loads into another (also one saved before the fused default: the single-tensor layout); a `step` not in
the fused layout when the fused kernel runs (a host step of such a state dict, which the CUDA kernel cannot
read, or one after a switch of implementation) is moved to it first (exact: step counts are integers below
2^24).

torch.optim.AdamW(fused=True) also takes a GradScaler's scale into its kernel (_step_supports_amp_scaling);
these optimizers do not (their low-rank step reads unscaled gradients): GradScaler unscales the gradients
before `step()`, as for any optimizer.
"""

import torch
from torch.optim.adamw import adamw as torch_adamw

# torch.optim's own rules, used so that the choice, the fused eligibility check and the step dtype are the
# ones torch.optim.AdamW applies (there is no public spelling of them)
from torch.optim.optimizer import (
    _default_to_fused_or_foreach,
    _device_dtype_check_for_fused,
    _get_scalar_dtype,
)

FUSED, FOREACH, SINGLE = "fused", "foreach", "single"
IMPLEMENTATION_KEYS = ("foreach", "fused")  # param-group keys; a state dict saved before them may lack them


def check_not_both(foreach, fused, where: str) -> None:
    """torch.optim.AdamW's constructor check: `fused` and `foreach` cannot both be True."""
    if fused and foreach:
        raise RuntimeError(
            f"{where}: `fused` and `foreach` cannot be `True` together (got foreach={foreach!r}, "
            f"fused={fused!r}), as in torch.optim.AdamW"
        )


def implementation(group: dict, params) -> str:
    """FUSED, FOREACH or SINGLE for stepping `params` of `group` (module docstring: torch's choice, fused
    by default where torch has the kernel)."""
    fused, foreach = group["fused"], group["foreach"]
    if fused is None and foreach is None:
        fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=True)
    return FUSED if fused else FOREACH if foreach else SINGLE


def check_fused(params, where: str) -> None:
    """torch.optim.AdamW's check of fused=True (a RuntimeError with torch's message, prefixed by `where` and
    the parameter's shape): every parameter a floating tensor on a device with torch's fused kernel."""
    for p in params:
        try:
            _device_dtype_check_for_fused(p)
        except RuntimeError as e:
            raise RuntimeError(f"{where}: a parameter of shape {list(p.shape)}: {e}") from None


def adam_states(states: dict, group: dict, params, where: str) -> tuple[str, list]:
    """(the implementation for `params` of `group`, their states): each parameter's entry of `states` (the
    optimizer's state), created on first use in torch.optim.AdamW's layout for that implementation, its
    `step` moved to the fused layout when the implementation is FUSED (module docstring). A RuntimeError,
    torch's, when fused=True asks the fused kernel to step a parameter it cannot (not floating, or on a
    device without the kernel)."""
    chosen = implementation(group, params)
    fused = chosen == FUSED
    if fused:
        check_fused(params, where)
    out = []
    for p in params:
        state = states[p]
        if not state:
            state["step"] = (
                torch.zeros((), dtype=_get_scalar_dtype(is_fused=True), device=p.device)
                if fused
                else torch.tensor(0.0, dtype=_get_scalar_dtype())  # torch keeps it on the host
            )
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        elif fused and (state["step"].device != p.device or state["step"].dtype != torch.float32):
            state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
        out.append(state)
    return chosen, out


def adamw_step(group: dict, params, states, chosen: str) -> None:
    """One torch.optim.AdamW step of `params` (their grads, their `states` from adam_states) with the
    group's lr, betas, eps and weight_decay, through torch's functional AdamW in implementation `chosen`."""
    beta1, beta2 = group["betas"]
    torch_adamw(
        params,
        [p.grad for p in params],
        [state["exp_avg"] for state in states],
        [state["exp_avg_sq"] for state in states],
        [],
        [state["step"] for state in states],
        foreach=chosen == FOREACH,
        fused=chosen == FUSED,
        has_complex=any(torch.is_complex(p) for p in params),
        amsgrad=False,
        beta1=beta1,
        beta2=beta2,
        lr=group["lr"],
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=False,
    )
