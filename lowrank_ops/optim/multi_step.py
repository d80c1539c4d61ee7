"""The optimizers' low-rank steps collected over one `step()` and run as ONE multi-tensor call per device
(lowrank_ops.ops.lowrank_adamw_multi_step_, issue 15), instead of one lowrank_adamw_step_ call per matrix.

Each collected step carries its own hyperparameters and step count (parameter groups, GaLoreAdamW's folded
eps and scale), so the call computes what the per-matrix calls would: the same arithmetic on the reference
and Triton backends, and on the C++ CPU backend the same math in other GEMM summation orders (within the
tolerance rule, docs/DESIGN.md §5; csrc/cpu/lowrank_adam_multi.cpp). Steps run at `run()`: nothing may read a
collected weight or its state in between (the optimizers only advance step counts and refresh bases of other
parameters there)."""

import torch

from ..ops.lowrank_adam import lowrank_adamw_step_
from ..ops.lowrank_adam_multi import lowrank_adamw_multi_step_
from ..projections import moments

ARGS = ("lr", "beta1", "beta2", "eps", "weight_decay", "step", "scale", "wd_mode")
EIGHT_BIT = ("exp_avg_absmax", "exp_avg_sq_absmax")  # moment_arguments' tensors of 8-bit moments


class FusedSteps:
    """lowrank_adamw_step_ calls, collected (`add`) and run together (`run`) on `backend`."""

    def __init__(self, backend):
        self.backend = backend
        self.calls: list[tuple] = []

    def add(self, W: torch.Tensor, G: torch.Tensor, exp_avg, exp_avg_sq, projection, *, delta=None, **hyper):
        """Records lowrank_adamw_step_(W, G, exp_avg, exp_avg_sq, projection, delta=delta, **hyper) (float
        moments, or 8-bit ones with the keywords of moment_arguments)."""
        self.calls.append((W, G, exp_avg, exp_avg_sq, projection, delta, hyper))

    def run(self) -> None:
        """Every recorded step, one multi-tensor call per device (in the order recorded within a device)."""
        calls, self.calls = self.calls, []
        by_device: dict[torch.device, list] = {}
        for call in calls:
            by_device.setdefault(call[0].device, []).append(call)
        for group in by_device.values():
            lists = list(zip(*(call[:6] for call in group)))
            hyper = {name: [call[6][name] for call in group] for name in ARGS}
            delta = None if all(d is None for d in lists[5]) else list(lists[5])
            eight_bit = {}
            if any(EIGHT_BIT[0] in call[6] for call in group):  # float and 8-bit moments mixed in one call
                eight_bit = {name: [call[6].get(name) for call in group] for name in EIGHT_BIT}
                eight_bit["state_block_size"] = [call[6].get("state_block_size", 0) for call in group]
            lowrank_adamw_multi_step_(*(list(x) for x in lists[:5]), delta=delta, backend=self.backend, **hyper,
                                      **eight_bit)


def lowrank_step(collector: FusedSteps | None, backend, *args, **kwargs) -> None:
    """One low-rank step: recorded in `collector` when the optimizer collects (its `step()`), else run at once
    through the single-matrix op (the per-layer mode, per-matrix optimizers); float or 8-bit moments (the
    keywords of moment_arguments) alike."""
    if collector is None:
        lowrank_adamw_step_(*args, backend=backend, **kwargs)
    else:
        collector.add(*args, **kwargs)


def moment_arguments(state: dict) -> tuple:
    """(exp_avg, exp_avg_sq, keywords) of the fused op for a low-rank state (projections/moments.py): float
    moments and no keywords, or 8-bit codes with the keywords exp_avg_absmax, exp_avg_sq_absmax and
    state_block_size."""
    if not moments.is_8bit(state):
        return state["exp_avg"], state["exp_avg_sq"], {}
    keywords = {"exp_avg_absmax": state[moments.absmax_key("exp_avg")],
                "exp_avg_sq_absmax": state[moments.absmax_key("exp_avg_sq")],
                "state_block_size": state[moments.BLOCK_KEY]}
    return state["exp_avg"], state["exp_avg_sq"], keywords
