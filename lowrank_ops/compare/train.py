"""Training one method: the loop, evaluation, timing, the measured memory, and checkpoints.

A checkpoint (<out>/checkpoints/<method>.pt, torch.save of plain tensors and ints) holds the model, the
optimizer, the step, the sampler's generator (the data position), torch's RNG state, the validation curve
and the step times. It is written every `ckpt_every` steps and when the run is interrupted: Ctrl-C
(SIGINT) is deferred to the end of the current step, so a checkpoint is always taken between two steps,
and a resumed run continues exactly where the interrupted one stopped (same batches, same state). A
second Ctrl-C interrupts at once (no checkpoint of that step).
"""

from __future__ import annotations

import contextlib
import math
import signal
import statistics
import threading
import time
from pathlib import Path

import torch

from . import data
from .methods import Method, Runner
from .model import Decoder

CHECKPOINT_VERSION = 1


def loss_fn(model, batch, autocast: bool = False):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        return model.loss(batch)


@torch.no_grad()
def evaluate(model, batches, device, autocast: bool) -> float:
    """Mean next-token loss (nats) over the fixed validation windows."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        n = batch[:, 1:].numel()
        total += float(loss_fn(model, batch, autocast)) * n
        count += n
    model.train()
    return total / count


def measured_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Bytes of the persisted weights (model.state_dict(): parameters, quantized bases, stored projections)
    and of the optimizer state tensors, each storage counted once."""
    seen: set[int] = set()

    def size(tensors) -> int:
        total = 0
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
        return total

    weights = size(model.state_dict().values())
    state = size(v for s in optimizer.state.values() for v in s.values())
    return {"weights": weights, "optimizer_state": state, "total": weights + state}


class _DeferredInterrupt:
    """Turns SIGINT into a flag checked between steps (main thread only); a second SIGINT raises at once."""

    def __init__(self):
        self.requested = False

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def checkpoint_path(out: Path, method: Method) -> Path:
    return out / "checkpoints" / f"{method.name.replace('+', '_')}.pt"


def _save(path: Path, runner: Runner, sampler, step: int, history: dict, fingerprint: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "step": step,
                "model": runner.model.state_dict(), "optimizer": runner.optimizer.state_dict(),
                "sampler": sampler.state_dict(), "torch_rng": torch.get_rng_state(), "history": history}, tmp)
    tmp.replace(path)  # a crash while writing never leaves a half-written checkpoint


def train(method: Method, preset, corpus: data.Corpus, out: Path, device: torch.device, seed: int,
          fingerprint: str, *, progress: bool = True, on_step=None) -> dict:
    """Trains `method` for preset.steps steps (resuming from its checkpoint when there is one) and returns
    its result: final validation loss and perplexity, the validation curve, median step time and the
    measured memory. `on_step(step)` is called after each completed step (tests use it to interrupt)."""
    autocast = device.type == "cuda"
    cfg = preset.model
    torch.manual_seed(seed)  # the same initial weights for every method
    model = Decoder(cfg).to(device)
    sampler = data.Sampler(corpus.train, preset.batch, cfg.seq_len, seed)
    init_batch = data.Sampler(corpus.train, preset.batch, cfg.seq_len, seed).next().to(device)
    runner = Runner(method, model, preset, seed, init_batch, lambda m, b: loss_fn(m, b, autocast))
    val = data.validation_batches(corpus.val, preset.batch, cfg.seq_len, preset.eval_tokens)
    history = {"steps": [], "val_loss": [], "step_times": [], "train_loss": []}
    start = 0
    path = checkpoint_path(out, method)
    if path.exists():
        ckpt = torch.load(path, map_location=device, weights_only=True)
        if ckpt.get("version") == CHECKPOINT_VERSION and ckpt.get("fingerprint") == fingerprint:
            runner.model.load_state_dict(ckpt["model"])
            runner.optimizer.load_state_dict(ckpt["optimizer"])
            sampler.load_state_dict(ckpt["sampler"])
            torch.set_rng_state(ckpt["torch_rng"])
            history, start = ckpt["history"], ckpt["step"]
    started = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=preset.steps, initial=start, desc=f"{method.name:>18}", unit="step", leave=True,
                   dynamic_ncols=True)
    interrupt = _DeferredInterrupt()
    completed = start  # steps whose update is in the model and optimizer
    consistent = True  # False while a step is under way (a second Ctrl-C there leaves the last checkpoint)
    try:
        with interrupt.installed():
            for step in range(start, preset.steps):
                consistent = False
                batch = sampler.next().to(device)
                t0 = time.perf_counter()
                runner.before_step(step, batch)
                lr = preset.lr_at(step) * runner.lr_scale(step)
                for group in runner.optimizer.param_groups:
                    group["lr"] = lr
                loss = loss_fn(runner.model, batch, autocast)
                loss.backward()
                runner.optimizer.step()
                runner.optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                history["step_times"].append(time.perf_counter() - t0)
                history["train_loss"].append(loss.item())
                done = step + 1
                if done % preset.eval_every == 0 or done == preset.steps:
                    history["val_loss"].append(evaluate(runner.model, val, device, autocast))
                    history["steps"].append(done)
                completed, consistent = done, True
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", refresh=False)
                if on_step is not None:
                    on_step(done)
                if interrupt.requested:
                    raise KeyboardInterrupt
                if done % preset.ckpt_every == 0 and done < preset.steps:
                    _save(path, runner, sampler, done, history, fingerprint)
    except KeyboardInterrupt:
        if consistent:
            _save(path, runner, sampler, completed, history, fingerprint)
        raise
    finally:
        if bar is not None:
            bar.close()
    times = history["step_times"][min(3, len(history["step_times"]) - 1):]  # drop warm-up steps
    val_loss = history["val_loss"][-1]
    result = {
        "method": method.name,
        "label": method.label,
        "view": method.view,
        "val_loss": val_loss,
        "val_ppl": math.exp(val_loss) if val_loss < 700 else math.inf,
        "curve": {"step": history["steps"], "val_loss": history["val_loss"]},
        "final_train_loss": history["train_loss"][-1],
        "step_time_ms": 1e3 * statistics.median(times),
        "train_time_s": sum(history["step_times"]),
        "wall_s_last_session": time.perf_counter() - started,  # this call: steps, evaluations, checkpoints
        "memory_bytes": measured_bytes(runner.model, runner.optimizer),
    }
    if not math.isfinite(val_loss):
        result["note"] = "diverged (non-finite validation loss)"
    return result
