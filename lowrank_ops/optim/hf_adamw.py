"""The non-projected parameters of GaLoreAdamW: galore-torch's AdamW (Hugging Face transformers' AdamW),
per parameter at step t (counted after the increment):
  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
  p <- p - s m / (sqrt(v) + eps),  s = lr sqrt(1 - b2^t) / (1 - b1^t)   (s = lr without correct_bias)
  p <- p - lr wd p                                                     (only if wd > 0, after the update)
State as galore-torch's: an int `step`, `exp_avg` and `exp_avg_sq` like the parameter.

The implementation is chosen from the param group's `foreach` and `fused` keys as torch.optim.AdamW
chooses (plain_adamw.implementation; by default torch's fused kernel where it has one):
- single-tensor: galore-torch's ops, one parameter at a time (bit for bit galore-torch's results);
  foreach: the same ops on the lists of parameters of one step count (torch._foreach_*; bit for bit in
  float32 and float64, to the rounding of the scalar factors in bf16 and fp16: _foreach).
- fused: torch's fused AdamW kernel, which computes p <- p - (lr' / bc1) m / (sqrt(v) / sqrt(bc2) + eps')
  with bc_i = 1 - b_i^t and no decay, then the decay as above. With eps' = eps / sqrt(bc2) this is
  p - lr (sqrt(bc2) / bc1) m / (sqrt(v) + eps), the update above with lr' = lr; without correct_bias,
  lr' = lr bc1 / sqrt(bc2) removes the bias correction. Equal to galore-torch's to float rounding (the
  kernel rounds once per element where galore-torch rounds per op: closer to exact in bf16).
"""

import math

import torch
from torch.optim.adamw import adamw as torch_adamw

from .plain_adamw import FOREACH, FUSED, SINGLE, check_fused, implementation


def hf_adamw_step(states: dict, group: dict, params, where: str) -> None:
    """One galore-torch AdamW step of `params` (with grads) of `group`; `states` is the optimizer's state
    (each parameter's entry created on first use)."""
    chosen = implementation(group, params)
    if chosen == FUSED:
        check_fused(params, where)
    by_step: dict[int, list] = {}  # the step size depends on the step count: one pass per count
    for p in params:
        state = states[p]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        by_step.setdefault(state["step"], []).append(p)
    for done, members in by_step.items():
        update = {FUSED: _fused, FOREACH: _foreach, SINGLE: _single}[chosen]
        update(group, members, [states[p] for p in members], done + 1)
        if group["weight_decay"] > 0.0:  # galore-torch's decay after the update: p <- p - lr wd p
            alpha = -group["lr"] * group["weight_decay"]
            if chosen == SINGLE:
                for p in members:
                    p.add_(p, alpha=alpha)
            else:
                torch._foreach_add_(members, members, alpha=alpha)
        for p in members:
            states[p]["step"] = done + 1


def _step_size(group, t: int) -> float:
    beta1, beta2 = group["betas"]
    if not group["correct_bias"]:
        return group["lr"]
    return group["lr"] * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)


def _single(group, params, states, t: int) -> None:
    """The moments and the update of step t, galore-torch's ops one parameter at a time."""
    beta1, beta2 = group["betas"]
    step_size = _step_size(group, t)
    for p, state in zip(params, states):
        grad, exp_avg, exp_avg_sq = p.grad, state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        p.add_(exp_avg / exp_avg_sq.sqrt().add_(group["eps"]), alpha=-step_size)


def _foreach(group, params, states, t: int) -> None:
    """_single's ops on lists (torch._foreach_*). The same results in float32 and float64; in bf16 and fp16
    torch's foreach multiply by a Python scalar rounds the scalar to the tensor's dtype first, as it does
    in torch.optim.AdamW's foreach implementation, so results differ from _single by that rounding."""
    beta1, beta2 = group["betas"]
    grads = [p.grad for p in params]
    exp_avgs = [state["exp_avg"] for state in states]
    exp_avg_sqs = [state["exp_avg_sq"] for state in states]
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denoms, group["eps"])
    torch._foreach_add_(params, torch._foreach_div(exp_avgs, denoms), alpha=-_step_size(group, t))


def _fused(group, params, states, t: int) -> None:
    """The moments and the update of step t through torch's fused AdamW kernel (module docstring)."""
    beta1, beta2 = group["betas"]
    bc1, bc2 = 1.0 - beta1**t, 1.0 - beta2**t
    lr = group["lr"] if group["correct_bias"] else group["lr"] * bc1 / math.sqrt(bc2)
    torch_adamw(
        params,
        [p.grad for p in params],
        [state["exp_avg"] for state in states],
        [state["exp_avg_sq"] for state in states],
        [],
        # the kernel's step counts (it adds 1 to each before reading it); the state keeps its int
        [torch.full((), t - 1, dtype=torch.float32, device=p.device) for p in params],
        foreach=False,
        fused=True,
        amsgrad=False,
        beta1=beta1,
        beta2=beta2,
        lr=lr,
        weight_decay=0.0,
        eps=group["eps"] / math.sqrt(bc2),
        maximize=False,
    )
