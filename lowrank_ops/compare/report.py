"""The comparison's outputs: the printed table, results.json and the plot of validation loss against step."""

from __future__ import annotations

import json
import math
from pathlib import Path

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


def load(out: Path) -> dict | None:
    path = out / RESULTS
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write(out: Path, doc: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=lambda x: None if isinstance(x, float) else str(x)) + "\n")
    tmp.replace(path)
    return path


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
    path = out / PLOT
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
