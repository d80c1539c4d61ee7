"""ReLoRA (Lialin et al. 2024), the duality paper's two-sided baseline: W = W0 + B A with W0 frozen and both
A (r x n) and B (m x r) trained; every `update_gap` steps B A is merged into W0, A is re-drawn, B set to 0
and the optimizer state of A and B is reset (ReLoRA's restart; we zero the moments instead of pruning 99%
of them), and the learning rate re-warms up linearly over `rewarmup` steps (ReLoRA's jagged schedule).
A is initialized like LoRA's (Kaiming-uniform, bound 1/sqrt(n)) from the seed derive_seed(seed, layer,
merge index), so a resumed run draws the A an uninterrupted one would."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import projections


def _draw_A(A: torch.Tensor, seed: int, layer: int, merges: int) -> None:
    g = torch.Generator().manual_seed(projections.derive_seed(seed, layer, merges) % 2**63)
    bound = 1.0 / math.sqrt(A.shape[1])
    A.copy_((torch.rand(A.shape, generator=g, dtype=torch.float64) * 2 - 1).mul_(bound).to(A.dtype))


class LoRALinear(nn.Module):
    """y = x W0^T + (x A^T) B^T, W0 a frozen buffer, A and B trainable."""

    def __init__(self, linear: nn.Linear, rank: int, seed: int, layer: int):
        super().__init__()
        m, n = linear.weight.shape
        r = min(rank, m, n)
        self.seed, self.layer = seed, layer
        self.register_buffer("weight", linear.weight.detach().clone())
        self.register_buffer("merges", torch.zeros((), dtype=torch.int64))
        self.A = nn.Parameter(torch.empty(r, n, dtype=linear.weight.dtype, device=linear.weight.device))
        self.B = nn.Parameter(torch.zeros(m, r, dtype=linear.weight.dtype, device=linear.weight.device))
        with torch.no_grad():
            _draw_A(self.A, seed, layer, 0)

    def forward(self, x):
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.A), self.B)

    @torch.no_grad()
    def merge_and_reset(self) -> None:
        self.weight.add_((self.B.float() @ self.A.float()).to(self.weight.dtype))
        self.merges += 1
        _draw_A(self.A, self.seed, self.layer, int(self.merges))
        self.B.zero_()


def convert(model: nn.Module, targets, rank: int, seed: int) -> list[LoRALinear]:
    """Replaces the nn.Linear modules whose name contains one of `targets` by LoRALinear (in place)."""
    chosen = [(name, m) for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and any(t in name for t in targets)]
    out = []
    for layer, (name, linear) in enumerate(chosen):
        parent, _, child = name.rpartition(".")
        module = LoRALinear(linear, rank, seed, layer)
        setattr(model.get_submodule(parent) if parent else model, child, module)
        out.append(module)
    return out


@torch.no_grad()
def merge_all(modules: list[LoRALinear], optimizer: torch.optim.Optimizer) -> None:
    """Merges every adapter and zeroes the AdamW state of its A and B (a full restart of those moments)."""
    for module in modules:
        module.merge_and_reset()
        for p in (module.A, module.B):
            for key, value in optimizer.state.get(p, {}).items():
                if key != "step" and isinstance(value, torch.Tensor):
                    value.zero_()
