"""The duality of the gradient view and the adapter view, made checkable (duality paper, Thm. 1, Cor. 3, App. B).

Gradient view: LowRankAdamW on the dense weights W of a model's nn.Linear layers (plain AdamW on the other
parameters). Adapter view: the same model converted by lowrank_ops.nn.convert (W = W0 + L^T A R with the same
P: layer k's P at refresh j from derive_seed(seed, k, j) in both views) and trained by torch.optim.AdamW on
A (and the other parameters), merging with lowrank_ops.nn.merge_and_reset at every refresh step (moments
kept, LowRankAdamW's rule). Thm. 1: with Adam and A(0) = 0 the effective weights are equal at every step.
Weight decay (App. B): AdamW on A decays A, i.e. only the adapter's delta since the last merge, which is
LowRankAdamW's wd_mode "adapter"; wd_mode "full" decays W itself and the views diverge.

    report = check(model, loss_fn, steps=50, rank=4, update_gap=20, weight_decay=0.1)
    report.worst   # max over steps and layers of ||W_gradient - W_adapter||_F / ||W_gradient||_F

`loss_fn(model, step)` returns the scalar loss of `model` at `step` (both views see the same batches).

Kinds that read the gradient ("svd": GaLore) need, at each refresh, the dense gradient of the effective
weights, which the adapter view never forms while training; check computes it on a dense copy
(lowrank_ops.nn.unconvert of a deep copy) and passes it to convert / merge_and_reset as `grads`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from . import projections
from .nn.convert import convert, linear_targets, merge_and_reset, unconvert
from .optim import LowRankAdamW


@dataclass
class DualityReport:
    """Per step (after the optimizer step): the largest relative Frobenius difference over the converted
    layers between the gradient view's W and the adapter view's deq(W0) + L^T A R, and over the other
    trainable parameters; the steps at which the adapter view merged."""

    weight_diff: list[float] = field(default_factory=list)
    other_diff: list[float] = field(default_factory=list)
    merges: list[int] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max(self.weight_diff + self.other_diff, default=0.0)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    norm = torch.linalg.norm(a)
    diff = torch.linalg.norm(a - b)
    return float(diff / norm) if norm > 0 else float(diff)


def check(model: torch.nn.Module, loss_fn, steps: int, *, rank, projection: str = "rademacher", side: str = "auto",
          update_gap: int = 200, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 0.0, wd_mode: str = "adapter", seed: int = 0, target=None,
          backend=None) -> DualityReport:
    """Trains two deep copies of `model` for `steps` steps, one per view (module docstring), and returns the
    per-step differences of their effective weights. `model` itself is not modified."""
    kind = projections.get(projection, "lowrank_ops.duality.check")
    hyper = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    grad_model = copy.deepcopy(model)
    names = [name for name, _ in linear_targets(grad_model, target)]
    weights = [grad_model.get_submodule(name).weight for name in names]
    weight_ids = {id(w) for w in weights}
    rest = [p for p in grad_model.parameters() if p.requires_grad and id(p) not in weight_ids]
    # The weights form the first group, so LowRankAdamW's layer index of the k-th weight is k, as convert's.
    groups = [{"params": weights}] + ([{"params": rest, "rank": None}] if rest else [])
    grad_opt = LowRankAdamW(groups, **hyper, rank=rank, projection=projection, side=side, update_gap=update_gap,
                            wd_mode=wd_mode, seed=seed, backend=backend)

    def dense_gradients(dense, step):
        """{name: W's gradient} of the targets of a dense model (gradient-reading kinds only)."""
        if not kind.uses_gradient:
            return None
        loss_fn(dense, step).backward()
        return {name: dense.get_submodule(name).weight.grad for name in names}

    adapter_model = convert(copy.deepcopy(model), rank, projection, None, target, seed, side=side,
                            grads=dense_gradients(copy.deepcopy(model), 0), backend=backend)
    adapter_opt = torch.optim.AdamW([p for p in adapter_model.parameters() if p.requires_grad], **hyper)
    others = [(n, p) for n, p in grad_model.named_parameters() if p.requires_grad and id(p) not in weight_ids]
    adapter_params = dict(adapter_model.named_parameters())

    report = DualityReport()
    for step in range(steps):
        if step and step % update_gap == 0:
            grads = dense_gradients(unconvert(copy.deepcopy(adapter_model)), step)
            merge_and_reset(adapter_model, step, adapter_opt, grads=grads)
            report.merges.append(step)
        for m, opt in ((grad_model, grad_opt), (adapter_model, adapter_opt)):
            opt.zero_grad(set_to_none=True)
            loss_fn(m, step).backward()
            opt.step()
        report.weight_diff.append(max(
            (_rel(grad_model.get_submodule(n).weight, adapter_model.get_submodule(n).merged_weight(torch.float64))
             for n in names), default=0.0))
        report.other_diff.append(max((_rel(p, adapter_params[n]) for n, p in others), default=0.0))
    return report
