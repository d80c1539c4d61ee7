"""lowrank_ops.optim.GaLoreAdamW against the real galore-torch 1.0 package (installed by scripts/install.sh
with --no-deps), on the same model, data and hyper-parameters.

The reference is galore-torch itself run in float64 (its SVD is fp32 either way, as in its
GaLoreProjector); the tolerance is flash-attention's rule: our fp32 trajectory is at most twice as far from
it as galore-torch's own fp32 trajectory (tests/helpers.py). test_optim.py checks the same arithmetic
against a transcription of the formulas; this file checks the package, including its proj_type handling.
"""

import copy

import pytest
import torch

from lowrank_ops.optim import GaLoreAdamW
from tests.helpers import assert_within_torch_error

galore_torch = pytest.importorskip("galore_torch", reason="galore-torch is not installed")

STEPS = 9  # refreshes at steps 0, 3, 6 (update_proj_gap=3)
HYPER = dict(lr=1e-2, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-6)


class TwoLayer(torch.nn.Module):
    """A 2-layer MLP whose weights are non-square (both std sides occur) plus a bias (a plain group)."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(12, 20)
        self.down = torch.nn.Linear(20, 7, bias=False)

    def forward(self, x):
        return self.down(torch.tanh(self.up(x)))


def groups(model, proj_type):
    lowrank = [model.up.weight, model.down.weight]
    return [
        dict(params=lowrank, rank=4, update_proj_gap=3, scale=0.25, proj_type=proj_type),
        dict(params=[model.up.bias]),
    ]


def trajectory(model, optimizer_cls, proj_type, data):
    opt = optimizer_cls(groups(model, proj_type), **HYPER)
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("proj_type", ["std", "reverse_std", "left", "right", "full"])
def test_matches_galore_torch(proj_type):
    torch.manual_seed(0)
    base = TwoLayer()
    data = [(torch.randn(32, 12), torch.randn(32, 7)) for _ in range(STEPS)]
    ref64 = trajectory(copy.deepcopy(base).double(), galore_torch.GaLoreAdamW, proj_type,
                       [(x.double(), y.double()) for x, y in data])
    theirs32 = trajectory(copy.deepcopy(base), galore_torch.GaLoreAdamW, proj_type, data)
    ours32 = trajectory(copy.deepcopy(base), GaLoreAdamW, proj_type, data)
    for name, ours, ref, theirs in zip(("up.weight", "up.bias", "down.weight"), ours32, ref64, theirs32):
        assert_within_torch_error(ours, ref, theirs, f"{proj_type} {name}")


@pytest.mark.parametrize("correct_bias", [True, False])
@pytest.mark.parametrize(
    "foreach,dtype",
    [(False, torch.float32), (False, torch.bfloat16), (True, torch.float32)],
    ids=["single-fp32", "single-bf16", "foreach-fp32"],
)
def test_plain_params_are_galore_torch_bit_for_bit(foreach, dtype, correct_bias):
    """Without a rank, the single-tensor implementation runs galore-torch's AdamW ops in its order
    (lowrank_ops/optim/hf_adamw.py): the same weights and state, bit for bit; foreach too in float32 (in
    bf16 torch's foreach ops round the scalar factors to bf16: test_optim_plain.py bounds it). The
    default, torch's fused kernel, rounds differently: test_matches_galore_torch's bias and
    test_optim_plain.py cover it within the tolerance."""
    torch.manual_seed(0)
    base = TwoLayer().to(dtype)
    data = [(torch.randn(32, 12, dtype=dtype), torch.randn(32, 7, dtype=dtype)) for _ in range(STEPS)]
    runs = []
    for make in (
        lambda params: galore_torch.GaLoreAdamW(params, **HYPER, correct_bias=correct_bias),
        lambda params: GaLoreAdamW(params, **HYPER, correct_bias=correct_bias, foreach=foreach),
    ):
        model = copy.deepcopy(base)
        opt = make(model.parameters())
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(x).float(), y.float()).backward()
            opt.step()
        runs.append((model, opt))
    (theirs, their_opt), (ours, our_opt) = runs
    for p, q in zip(theirs.parameters(), ours.parameters()):
        assert torch.equal(p, q)
        assert their_opt.state[p]["step"] == our_opt.state[q]["step"] == STEPS
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(their_opt.state[p][key], our_opt.state[q][key])
