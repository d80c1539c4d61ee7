"""Command line of the comparison: `python -m lowrank_ops.compare [options]` or `lowrank-ops compare
[options]`. Bad arguments, unreadable data and unusable output files end with one line on stderr and a
nonzero exit status (2: arguments, 1: data or output folder), before training starts where they can be
seen then. Ctrl-C stops at the next step with a checkpoint, says what is saved and exits with 130;
running the same command again continues (methods already finished are taken from <out>/results.json).
One run at a time per --out folder: a second one refuses with one line (files.py)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import data, files, methods, report, train
from .presets import PRESETS

DEFAULT_OUT = "lowrank_compare_out"


class UsageError(Exception):
    """A problem with the arguments, the data or the output folder: printed as one line."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message} (see --help)", 2)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2^63), got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2^63), got {text!r}")
    return value


def _add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                   help="model size and schedule (default tiny: all methods in < 10 min on a 2-core CPU)")
    p.add_argument("--methods", default="all",
                   help="comma-separated methods, or 'all' (default). Known: " + ", ".join(methods.BY_NAME))
    p.add_argument("--steps", type=_positive, default=None,
                   help="training steps per method (default: the preset's; warm-up and refresh gap scale along)")
    p.add_argument("--data", default=None,
                   help="a text file or a folder of text files (default: the Python standard library's sources)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: cuda when a GPU is visible (bf16 autocast), else cpu")
    p.add_argument("--seed", type=_seed, default=0, help="model initialization, batches and projections")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"results, plot and checkpoints (default ./{DEFAULT_OUT}); "
                   "one run at a time: a second run on the same folder refuses")
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch CPU threads (default: the preset's; tiny uses 1)")
    p.add_argument("--fresh", action="store_true", help="discard earlier results and checkpoints in --out")
    p.add_argument("--fresh-method", action="append", default=[], metavar="NAME[,NAME]",
                   help="discard the checkpoint and result of these methods in --out (they start over), "
                        "keeping the other methods'; repeatable")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def compare_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Pretrain a small Llama-style decoder with each low-rank method and "
                "compare validation perplexity, memory and step time (the duality paper's Table 2 in miniature).")
    _add_compare_arguments(p)
    return p


def _select(text: str, option: str = "--methods") -> list[methods.Method]:
    if option == "--methods" and text.strip() == "all":
        return list(methods.METHODS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in methods.BY_NAME]
    if unknown or not names:
        raise UsageError(f"{option}: unknown method(s) {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(methods.BY_NAME)}", 2)
    return [methods.BY_NAME[n] for n in dict.fromkeys(names)]


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible to this torch", 2)
    return torch.device(name)


def _machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    try:
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in
                                 Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu_model"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:  # the code that produced the numbers, when run from a git checkout
        root = Path(__file__).resolve().parents[2]
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                        timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["commit"] = "unknown"
    try:
        info["load_average_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


class _Saved:
    """What this run has on disk, for the one line printed when it is interrupted."""

    def __init__(self, out: Path):
        self.results = out / report.RESULTS
        self.finished = None  # finished methods in results.json; None: nothing read or written yet
        self.stage = "before training started"
        self.method = None  # while a method trains: its name, checkpoint path, the step saved there (None: no
        self.checkpoint = None  # checkpoint) and its number of steps
        self.step = None
        self.steps = None

    def record(self, doc: dict) -> None:
        self.finished = sum(1 for row in doc["methods"].values()
                            if isinstance(row, dict) and row.get("status") == "finished")

    def training(self, method: methods.Method, checkpoint: Path, step: int | None, steps: int) -> None:
        self.stage, self.method, self.checkpoint = "during", method.name, checkpoint
        self.step, self.steps = step, steps

    def message(self) -> str:
        if self.finished is None:
            return ("interrupted before training started; nothing was written; run the same command again "
                    "to start")
        results = (f"{self.finished} finished method(s) saved in {self.results}" if self.finished
                   else "no finished method saved yet")
        if self.stage == "after the last method":
            return (f"interrupted after the last method: {results}; the plot was not drawn; run the same "
                    "command again to draw it")
        where = self.stage
        if self.stage == "during":
            saved = ("no checkpoint of it saved yet" if self.step is None
                     else f"checkpoint of step {self.step}/{self.steps} saved in {self.checkpoint}")
            where = f"during {self.method}: {saved}"
        return f"\ninterrupted {where}; {results}; run the same command again to continue"


def _prepare_out(out: Path, fingerprint: str, fresh: bool, fresh_methods: list[methods.Method]) -> dict:
    """The earlier results of this run in `out` ({} if none), after discarding what --fresh and
    --fresh-method ask; refuses a folder holding another run's results. Holds the folder's lock."""
    results = out / report.RESULTS
    if fresh:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        if results.is_file():
            results.unlink()
    previous = report.load(out, discard=[m.name for m in fresh_methods])
    if previous is not None and previous["fingerprint"] != fingerprint:
        raise UsageError(f"--out {out} holds results of other settings (preset, steps, seed, data or device); "
                         "use another --out, or --fresh to discard them")
    for method in fresh_methods:
        checkpoint = train.checkpoint_path(out, method)
        files.file_slot(checkpoint)
        checkpoint.unlink(missing_ok=True)
    if previous is None:
        return {}
    if fresh_methods:  # the discarded entries leave results.json now, not at the next write
        report.write(out, previous)
    return previous["methods"]


def _check_out(out: Path, pending: list[methods.Method], fingerprint: str, preset) -> dict:
    """Checks, before training, every file this run will write: the checkpoints folder and the files in
    it, results.json and the plot. Returns {method name: step of its checkpoint} for the pending methods."""
    files.writable_folder(out / "checkpoints", "checkpoints folder", "move it aside or pass another --out")
    files.remove_stale_temps(out)
    files.remove_stale_temps(out / "checkpoints")
    files.file_slot(out / report.RESULTS)
    files.file_slot(out / report.PLOT)
    steps = {}
    for method in pending:
        path = train.checkpoint_path(out, method)
        ckpt = train.read_checkpoint(path, method, fingerprint, preset, mmap=True)
        if ckpt is not None:
            steps[method.name] = ckpt["step"]
    return steps


def run_compare(args, *, on_step=None) -> int:
    """Runs the comparison for parsed `args`; returns the exit status. `on_step(method, step)` is a test hook.
    Ctrl-C stops the run at the next safe point (DeferredInterrupt); what is saved is then printed."""
    selected = _select(args.methods)
    fresh_methods = [m for text in args.fresh_method for m in _select(text, "--fresh-method")]
    device = _device(args.device)
    preset = PRESETS[args.preset]
    if args.steps is not None:
        preset = preset.with_steps(args.steps)
    threads = args.threads or preset.threads
    previous_threads = torch.get_num_threads()
    if threads and device.type == "cpu":
        torch.set_num_threads(threads)
    saved = _Saved(Path(args.out))
    interrupt = train.DeferredInterrupt()
    try:
        with interrupt.installed():  # kept while the message prints: a further Ctrl-C is ignored there
            try:
                return _run(args, selected, fresh_methods, device, preset, on_step, interrupt, saved)
            except KeyboardInterrupt:
                print(saved.message(), file=sys.stderr)
                return 130
    finally:  # a caller in the same process (tests, a notebook) keeps its thread count
        torch.set_num_threads(previous_threads)


def _run(args, selected, fresh_methods, device, preset, on_step, interrupt, saved) -> int:
    try:
        corpus = data.load(args.data, preset.model.seq_len)
    except data.DataError as exc:
        raise UsageError(f"error: {exc}") from None
    interrupt.check()
    config = {"preset": args.preset, "hyper": preset.describe(), "seed": args.seed, "data": corpus.source,
              "data_fingerprint": corpus.fingerprint, "device": device.type}
    fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    out = Path(args.out)
    with files.FolderLock(out):
        done = _prepare_out(out, fingerprint, args.fresh, fresh_methods)
        pending = [m for m in selected if m.unavailable() is None
                   and done.get(m.name, {}).get("status") != "finished"]
        checkpoint_steps = _check_out(out, pending, fingerprint, preset)
        doc = {"config": config, "fingerprint": fingerprint, "machine": _machine(device),
               "methods": dict(done)}
        report.write(out, doc)  # claims the folder for these settings; proves results.json can be written
        saved.record(doc)
        interrupt.check()
        return _train_all(args, selected, device, preset, corpus, out, doc, checkpoint_steps, on_step,
                          interrupt, saved)


def _train_all(args, selected, device, preset, corpus, out, doc, checkpoint_steps, on_step, interrupt,
               saved) -> int:
    print(f"lowrank_ops.compare: preset {args.preset} ({preset.steps} steps, batch {preset.batch} x "
          f"{preset.model.seq_len} bytes, hidden {preset.model.hidden}, {preset.model.layers} layers, rank "
          f"{preset.rank}, refresh every {preset.update_gap} steps) on {device}; {corpus.describe()}",
          flush=True)
    started = time.perf_counter()
    rows = []
    for method in selected:
        interrupt.check()
        reason = method.unavailable()
        previous = doc["methods"].get(method.name)
        if reason is not None:
            row = {"method": method.name, "label": method.label, "status": "unavailable", "reason": reason}
        elif previous is not None and previous.get("status") == "finished":
            row = previous
        else:
            saved.training(method, train.checkpoint_path(out, method), checkpoint_steps.get(method.name),
                           preset.steps)
            hook = None if on_step is None else (lambda step, m=method: on_step(m, step))
            row = train.train(method, preset, corpus, out, device, args.seed, doc["fingerprint"],
                              interrupt=interrupt, on_saved=lambda step: setattr(saved, "step", step),
                              progress=not args.no_progress, on_step=hook)
            row.update(status="finished", **{f"est_gb_{c}": methods.estimate_gb(method, c) for c in ("200M", "1.3B")})
        rows.append(row)
        doc["methods"][method.name] = row
        report.write(out, doc)
        saved.record(doc)
        saved.stage = "between two methods"
        if row.get("status") == "finished":  # results.json has it now; the checkpoint is no longer needed
            train.checkpoint_path(out, method).unlink(missing_ok=True)
    doc["wall_s_this_run"] = time.perf_counter() - started
    try:
        doc["machine"]["load_average_end"] = list(os.getloadavg())
    except OSError:
        pass
    report.write(out, doc)
    print()
    print(report.table(rows))
    saved.stage = "after the last method"
    interrupt.check()
    title = (f"lowrank_ops.compare, preset {args.preset}: {preset.steps} steps, {corpus.source}, "
             f"{doc['machine'].get('gpu') or doc['machine'].get('cpu_model')}")
    png = report.plot(out, rows, title)
    print(f"\nresults: {out / report.RESULTS}" + (f"; plot: {png}" if png else "") +
          f"; this run took {doc['wall_s_this_run']:.0f} s")
    return 0


def compare_main(argv=None, prog: str = "python -m lowrank_ops.compare", on_step=None) -> int:
    try:
        args = compare_parser(prog).parse_args(argv)
        return run_compare(args, on_step=on_step)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return exc.code
    except files.OutputError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before run_compare defers SIGINT: nothing has been read or written yet
        print("interrupted before the run started; nothing was written", file=sys.stderr)
        return 130


def ignore_sigint_outside_the_run() -> None:
    """For the program entry points, not for callers in a process that goes on: SIGINT is ignored except
    where run_compare handles it, i.e. while the arguments are parsed (milliseconds) and while Python exits
    after the run, so that a Ctrl-C there cannot print a traceback. run_compare installs its own handler
    for the run and puts this one back when it returns."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv=None) -> int:
    """The `lowrank-ops` console script: `lowrank-ops compare [options]` (argv None: the program's own
    arguments, and SIGINT handled as in `python -m lowrank_ops.compare`)."""
    if argv is None:
        ignore_sigint_outside_the_run()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: lowrank-ops compare [options]   (lowrank-ops compare --help for the options)")
        return 0 if argv else 2
    if argv[0] != "compare":
        print(f"lowrank-ops: error: unknown command {argv[0]!r}; the command is 'compare'", file=sys.stderr)
        return 2
    return compare_main(argv[1:], prog="lowrank-ops compare")
