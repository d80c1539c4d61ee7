"""The comparison's outputs: the printed table, results.json and the plot of validation loss against step."""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import files
from .methods import BY_NAME

RESULTS = "results.json"
PLOT = "val_loss.png"


def _fmt(x, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def table(rows: list[dict]) -> str:
    """One line per method: finished ones with their numbers, unavailable ones with the reason."""
    header = ["method", "val ppl", "measured MB (weights+opt)", "est. GB 200M", "est. GB 1.3B", "step ms"]
    lines = []
    for r in rows:
        if r.get("status") == "unavailable":
            lines.append([r["method"], "unavailable: " + r["reason"], "", "", "", ""])
            continue
        mem = r.get("memory_bytes")
        measured = (f"{mem['total'] / 2**20:.2f} ({mem['weights'] / 2**20:.2f}+{mem['optimizer_state'] / 2**20:.2f})"
                    if mem else "-")
        lines.append([r["method"], _fmt(r.get("val_ppl"), ".2f"), measured, _fmt(r.get("est_gb_200M"), ".2f"),
                      _fmt(r.get("est_gb_1.3B"), ".2f"), _fmt(r.get("step_time_ms"), ".1f")])
    measured_lines = [x for x in [header] + lines if not x[1].startswith("unavailable")]
    widths = [max(len(str(x[i])) for x in measured_lines) for i in range(len(header))]
    out = []
    for i, line in enumerate([header] + lines):
        if line[1].startswith("unavailable"):
            out.append(f"{line[0]:<{widths[0]}}  {line[1]}")
        else:
            out.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(line, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def load(out: Path, discard=()) -> dict | None:
    """The results.json of an earlier run in `out` (None if there is none), without the entries of the
    methods named in `discard`; raises files.OutputError naming the file, or the known method whose entry
    is malformed, and the one-line fix."""
    path = out / RESULTS
    if not (path.exists() or path.is_symlink()):
        return None
    files.file_slot(path)
    try:
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise _foreign(path, exc.strerror or str(exc)) from None
    except ValueError as exc:  # not UTF-8 or not JSON
        raise _foreign(path, f"not JSON: {exc}" if path.stat().st_size else "empty") from None
    if not isinstance(doc, dict):
        raise _foreign(path, f"a JSON {type(doc).__name__}, not an object")
    if not isinstance(doc.get("fingerprint"), str) or not isinstance(doc.get("methods"), dict):
        raise _foreign(path, "no 'fingerprint' string or no 'methods' object")
    for name in discard:
        doc["methods"].pop(name, None)
    for name, row in doc["methods"].items():
        if name not in BY_NAME:
            continue  # a method this version does not know: never read, kept as it is
        why = _row_problem(name, row)
        if why is not None:
            raise files.OutputError(f"error: {path}: the entry of method {name!r} is malformed ({why}); "
                                    f"add --fresh-method {name} to run it again (the other methods' results "
                                    "are kept)")
    return doc


def _foreign(path: Path, why: str) -> files.OutputError:
    return files.OutputError(f"error: {path} is not a results file of lowrank_ops.compare ({why}); move it "
                             "aside (its finished methods then run again) or pass another --out")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _row_problem(name: str, row) -> str | None:
    """What is wrong with one method's entry (None: nothing), checked on the fields the table, the plot and
    a resumed run read."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    status = row.get("status")
    if status == "unavailable":
        return None  # never reused: a later run asks the method again
    if status != "finished":
        return f"status {status!r}, expected 'finished' or 'unavailable'"
    if row.get("method") != name:
        return f"'method' is {row.get('method')!r}"
    for key in ("val_loss", "val_ppl", "step_time_ms"):
        if not _number(row.get(key)):
            return f"{key!r} is not a number"
    for key in ("est_gb_200M", "est_gb_1.3B"):
        if row.get(key) is not None and not _number(row.get(key)):
            return f"{key!r} is not a number"
    memory = row.get("memory_bytes")
    if not isinstance(memory, dict) or not all(_number(memory.get(k))
                                               for k in ("weights", "optimizer_state", "total")):
        return "'memory_bytes' is not an object of weights, optimizer_state and total"
    curve = row.get("curve")
    if (not isinstance(curve, dict) or not isinstance(curve.get("step"), list)
            or not isinstance(curve.get("val_loss"), list) or len(curve["step"]) != len(curve["val_loss"])
            or not all(_number(x) for x in curve["step"] + curve["val_loss"])):
        return "'curve' is not an object of two number lists of one length, step and val_loss"
    return None


def write(out: Path, doc: dict) -> Path:
    """Writes results.json atomically (files.atomic_write)."""
    text = json.dumps(doc, indent=2, default=lambda x: None if isinstance(x, float) else str(x)) + "\n"
    return files.atomic_write(out / RESULTS, lambda f: f.write(text.encode()))


def plot(out: Path, rows: list[dict], title: str) -> Path | None:
    """Validation loss against step for every finished method, one PNG (matplotlib, Agg backend); None
    when matplotlib is not installed (the table and results.json do not need it)."""
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = [r for r in rows if r.get("curve") and r["curve"]["step"]]
    if not finished:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    styles = {"full": "-", "optimizer": "-", "relora": "--", "adapter": ":"}
    for i, r in enumerate(finished):
        ax.plot(r["curve"]["step"], r["curve"]["val_loss"], styles.get(r.get("view"), "-"),
                color=plt.cm.tab20(i % 20), label=r["method"], linewidth=1.4)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats per byte)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    losses = [v for r in finished for v in r["curve"]["val_loss"] if math.isfinite(v)]
    if losses:  # the early warm-up losses would squash the interesting end of the curves
        low, end = min(losses), max(r["curve"]["val_loss"][-1] for r in finished)
        ax.set_ylim(low - 0.05, max(end, low) + 0.6 * (max(end, low) - low + 0.2))
    fig.tight_layout()
    try:
        return files.atomic_write(out / PLOT, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
