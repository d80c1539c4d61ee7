"""Training one method: the loop, evaluation, timing, the measured memory, and checkpoints.

A checkpoint (<out>/checkpoints/<method>.pt, torch.save of plain tensors and ints) holds the model, the
optimizer, the step, the sampler's generator (the data position), torch's RNG state, the validation curve
and the step times, with the run's fingerprint and the method's name. It is written atomically
(files.atomic_write) every `ckpt_every` steps and when the run is interrupted: Ctrl-C (SIGINT) is
deferred to the end of the current step, so a checkpoint is always taken between two steps, and a resumed
run continues exactly where the interrupted one stopped (same batches, same state). A second Ctrl-C
interrupts at once (no checkpoint of that step; the previous one stays). A checkpoint that cannot be read
or belongs to another run or method is reported by name with the fix (--fresh-method NAME), never
silently replaced.
"""

from __future__ import annotations

import contextlib
import math
import signal
import statistics
import threading
import time
import zipfile
from pathlib import Path

import torch

from . import data, files
from .methods import Method, Runner
from .model import Decoder

CHECKPOINT_VERSION = 2  # 2: the method's name is stored and checked


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


class DeferredInterrupt:
    """Turns SIGINT into a flag that the run checks at safe points (between steps, between the stages of a
    method's set-up, between methods), main thread only. A second SIGINT raises KeyboardInterrupt at once;
    once it has been raised, further SIGINTs are ignored, so that saving and reporting what is saved are
    not cut short.

    Why not raise at the first SIGINT where nothing is being written (loading data, building a model): a
    KeyboardInterrupt inside a module's first import (torch imports torch._dynamo lazily when the first
    optimizer is built) leaves that module half-imported for the rest of the process, and one raised
    inside code run by exec/eval (dataclasses, sympy) makes CPython end the process by SIGINT even after
    the run caught it."""

    def __init__(self):
        self.requested = False
        self._raised = False

    def check(self) -> None:
        """A safe point: raises KeyboardInterrupt if a SIGINT has been recorded."""
        if self.requested:
            self._raised = True
            raise KeyboardInterrupt

    def _handler(self, signum, frame):
        if self._raised:
            return
        if self.requested:
            self._raised = True
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


def _save(path: Path, method: Method, runner: Runner, sampler, step: int, history: dict,
          fingerprint: str) -> None:
    state = {"version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "method": method.name, "step": step,
             "model": runner.model.state_dict(), "optimizer": runner.optimizer.state_dict(),
             "sampler": sampler.state_dict(), "torch_rng": torch.get_rng_state(), "history": history}
    files.atomic_write(path, lambda f: torch.save(state, f))


def _checkpoint_error(path: Path, method: Method, why: str) -> files.OutputError:
    return files.OutputError(f"error: checkpoint {path} {why}; add --fresh-method {method.name} to restart "
                             f"{method.name} (the other methods' results are kept), or move the file aside")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _evaluations_until(step: int, preset) -> int:
    """How many validation losses a run has recorded after `step` steps (every eval_every, and the last)."""
    return step // preset.eval_every + (step == preset.steps and preset.steps % preset.eval_every != 0)


def _checkpoint_problem(ckpt, method: Method, fingerprint: str, preset) -> str | None:
    """What makes `ckpt` unusable for resuming `method` in this run (None: nothing found)."""
    if not isinstance(ckpt, dict):
        return f"holds a {type(ckpt).__name__}, not a checkpoint of lowrank_ops.compare"
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        return f"is not a checkpoint of lowrank_ops.compare (no {', '.join(map(repr, missing))})"
    if ckpt["version"] != CHECKPOINT_VERSION:
        return (f"was written by another version of lowrank_ops.compare (format {ckpt['version']!r}; this "
                f"one reads {CHECKPOINT_VERSION})")
    if ckpt["fingerprint"] != fingerprint:
        return "was written by a run of other settings (preset, steps, seed, data or device)"
    if ckpt["method"] != method.name:
        return f"holds method {ckpt['method']!r}, not {method.name!r}"
    step = ckpt["step"]
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= preset.steps:
        return f"has step {step!r}, expected an integer in [0, {preset.steps}]"
    if not all(isinstance(ckpt[k], dict) for k in ("model", "optimizer", "sampler", "history")):
        return "has a model, optimizer, sampler or history that is not a dict"
    if not (isinstance(ckpt["torch_rng"], torch.Tensor) and ckpt["torch_rng"].dtype == torch.uint8):
        return "has a torch_rng that is not a uint8 tensor"
    history = ckpt["history"]
    lengths = {k: len(history[k]) if isinstance(history.get(k), list) else None for k in _HISTORY_KEYS}
    evaluations = _evaluations_until(step, preset)
    expected = {"steps": evaluations, "val_loss": evaluations, "step_times": step, "train_loss": step}
    if lengths != expected:
        return f"has a history of lengths {lengths}, expected {expected} at step {step}"
    if not all(type(x) in (int, float) for k in _HISTORY_KEYS for x in history[k]):
        return "has a history with entries that are not numbers"
    return None


_CHECKPOINT_KEYS = ("version", "fingerprint", "method", "step", "model", "optimizer", "sampler", "torch_rng",
                    "history")
_HISTORY_KEYS = ("steps", "val_loss", "step_times", "train_loss")


def read_checkpoint(path: Path, method: Method, fingerprint: str, preset, *, map_location="cpu",
                    mmap: bool = False) -> dict | None:
    """The checkpoint of `method` at `path` (None when there is none), checked against this run; raises
    files.OutputError naming the file and the fix when it is unreadable, empty, truncated or foreign.
    mmap=True reads only its structure (tensor data is mapped, not read): the cheap check before training."""
    if not (path.exists() or path.is_symlink()):
        return None
    if not path.is_file():
        raise _checkpoint_error(path, method, "is not a file")
    if path.stat().st_size == 0:
        raise _checkpoint_error(path, method, "is empty")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise _checkpoint_error(path, method, "is not a torch.save archive (damaged, truncated or other)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # any failure to parse the file means it is damaged or not a checkpoint
        raise _checkpoint_error(path, method, f"cannot be read ({_first_line(exc)})") from None
    why = _checkpoint_problem(ckpt, method, fingerprint, preset)
    if why is not None:
        raise _checkpoint_error(path, method, why)
    return ckpt


def train(method: Method, preset, corpus: data.Corpus, out: Path, device: torch.device, seed: int,
          fingerprint: str, *, interrupt: DeferredInterrupt, on_saved=None, progress: bool = True,
          on_step=None) -> dict:
    """Trains `method` for preset.steps steps (resuming from its checkpoint when there is one) and returns
    its result: final validation loss and perplexity, the validation curve, median step time and the
    measured memory. A SIGINT recorded by `interrupt` stops the set-up at its next stage (nothing to save)
    and training at the next step boundary, with a checkpoint of the steps done (KeyboardInterrupt either
    way). `on_saved(step)` is told the step of each checkpoint written; `on_step(step)` is called
    after each completed step (tests use it to interrupt)."""
    autocast = device.type == "cuda"
    cfg = preset.model
    path = checkpoint_path(out, method)
    # the set-up writes nothing: a Ctrl-C stops it at the next of these checks, with nothing to save
    torch.manual_seed(seed)  # the same initial weights for every method
    model = Decoder(cfg).to(device)
    interrupt.check()
    sampler = data.Sampler(corpus.train, preset.batch, cfg.seq_len, seed)
    init_batch = data.Sampler(corpus.train, preset.batch, cfg.seq_len, seed).next().to(device)
    runner = Runner(method, model, preset, seed, init_batch, lambda m, b: loss_fn(m, b, autocast))
    interrupt.check()
    val = data.validation_batches(corpus.val, preset.batch, cfg.seq_len, preset.eval_tokens)
    history = {"steps": [], "val_loss": [], "step_times": [], "train_loss": []}
    start, saved = 0, None  # saved: the step of the checkpoint on disk
    ckpt = read_checkpoint(path, method, fingerprint, preset, map_location=device)
    interrupt.check()
    if ckpt is not None:
        try:
            runner.model.load_state_dict(ckpt["model"])
            runner.optimizer.load_state_dict(ckpt["optimizer"])
            sampler.load_state_dict(ckpt["sampler"])
            torch.set_rng_state(ckpt["torch_rng"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            raise _checkpoint_error(path, method, f"does not fit this method ({_first_line(exc)})") from None
        history, start = ckpt["history"], ckpt["step"]
        saved = start
    started = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=preset.steps, initial=start, desc=f"{method.name:>18}", unit="step", leave=True,
                   dynamic_ncols=True)
    completed = start  # steps whose update is in the model and optimizer
    consistent = True  # False while a step is under way (a second Ctrl-C there leaves the last checkpoint)

    def save(step):
        nonlocal saved
        _save(path, method, runner, sampler, step, history, fingerprint)
        saved = step
        if on_saved is not None:
            on_saved(step)

    try:
        for step in range(start, preset.steps):
            interrupt.check()
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
            if done % preset.ckpt_every == 0 and done < preset.steps and not interrupt.requested:
                save(done)
    except KeyboardInterrupt:
        if consistent and completed > 0 and completed != saved:
            save(completed)
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
