"""Per-layer stepping: each weight is stepped as soon as its gradient is complete, and that gradient is
freed, so at most one layer's full gradient is alive at a time (GaLore's per-layer recipe).

Unlike the recipe users report (galore-torch issues #78, #62, #66), gradient accumulation is honored: a
parameter is stepped on its `accumulation_steps`-th gradient (torch's post-accumulate-grad hook fires once
per backward, after that backward's contributions, tied uses included, are summed into .grad), so each
optimizer step sees the summed gradient of the micro-batches and counts once; and the norm of the
gradients actually stepped is available (`grad_norm()`), not 0.

Contract: every parameter receives a gradient in every micro-batch (a parameter unused in some micro-batch
would be stepped after its own accumulation_steps-th gradient; `flush()` steps leftovers at the end);
do not call optimizer.step() or zero_grad() in between (the hooks step and free); gradient clipping by
the global norm and GradScaler need the whole gradient before any step and are not available here; the
optimizer's skip_nonfinite guard works per parameter (one host sync per parameter step).
"""

import operator

import torch


class BackwardStepper:
    """Handle of step_in_backward: `steps` (optimizer steps completed), `grad_norm()`, `flush()`,
    `remove()`."""

    def __init__(self, model: torch.nn.Module, optimizer, accumulation_steps: int, track_grad_norm: bool):
        if not callable(getattr(optimizer, "step_param", None)):
            raise TypeError(
                "lowrank_ops.optim.step_in_backward: argument 'optimizer' must have a step_param(param) "
                f"method (LowRankAdamW, GaLoreAdamW), got {type(optimizer).__name__}"
            )
        try:
            accumulation_steps = operator.index(accumulation_steps)
        except TypeError:
            accumulation_steps = 0
        if accumulation_steps < 1:
            raise ValueError(
                "lowrank_ops.optim.step_in_backward: argument 'accumulation_steps' must be an int >= 1, "
                f"got {accumulation_steps!r}"
            )
        managed = {p for group in optimizer.param_groups for p in group["params"]}
        params = [p for p in model.parameters() if p.requires_grad and p in managed]
        if not params:
            raise ValueError(
                "lowrank_ops.optim.step_in_backward: none of the model's trainable parameters is "
                "managed by the optimizer"
            )
        self.optimizer, self.accumulation_steps, self.track_grad_norm = (
            optimizer,
            accumulation_steps,
            track_grad_norm,
        )
        self._pending = {p: 0 for p in params}  # gradients accumulated since the param's last step
        self._steps = {p: 0 for p in params}
        self._sq_norm = None  # sum of squared norms of the gradients stepped since the last grad_norm()
        self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in params]

    def _hook(self, p: torch.Tensor) -> None:
        self._pending[p] += 1
        if self._pending[p] == self.accumulation_steps:
            self._step(p)

    def _step(self, p: torch.Tensor) -> None:
        self._pending[p] = 0
        if p.grad is None:
            return
        if self.track_grad_norm:
            sq = torch.linalg.vector_norm(p.grad, dtype=torch.float32).square()
            self._sq_norm = sq if self._sq_norm is None else self._sq_norm + sq.to(self._sq_norm.device)
        self.optimizer.step_param(p)
        self._steps[p] += 1
        p.grad = None

    @property
    def steps(self) -> int:
        """Optimizer steps completed (micro-batches / accumulation_steps), the count to drive schedulers."""
        return max(self._steps.values())

    def grad_norm(self, reset: bool = True) -> torch.Tensor:
        """Global L2 norm of the (accumulated) gradients stepped since the last reset, as a float32 tensor
        on the parameters' device (no host sync). Needs track_grad_norm=True."""
        if not self.track_grad_norm:
            raise RuntimeError("lowrank_ops.optim.step_in_backward: grad_norm() needs track_grad_norm=True")
        out = torch.zeros((), dtype=torch.float32) if self._sq_norm is None else self._sq_norm.sqrt()
        if reset:
            self._sq_norm = None
        return out

    @torch.no_grad()
    def flush(self) -> None:
        """Steps every parameter holding a partially accumulated gradient (e.g. the last, short window)."""
        for p, pending in self._pending.items():
            if pending:
                self._step(p)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def step_in_backward(
    model: torch.nn.Module, optimizer, accumulation_steps: int = 1, *, track_grad_norm: bool = True
) -> BackwardStepper:
    """Registers post-accumulate-grad hooks on the model's trainable parameters that the optimizer manages:
    each parameter is stepped (optimizer.step_param) on every `accumulation_steps`-th backward, then its
    gradient is freed. Returns the handle (see BackwardStepper). Loop:

        stepper = step_in_backward(model, opt, accumulation_steps=k)
        for i, batch in enumerate(batches):
            (loss_fn(model(batch)) / k).backward()     # steps happen inside the k-th backward
            if (i + 1) % k == 0:
                scheduler.step(); log(stepper.grad_norm())
    """
    return BackwardStepper(model, optimizer, accumulation_steps, track_grad_norm)
