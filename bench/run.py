"""The benchmark suite: runs every bench/bench_*.py (each in its own process, `--quick` by default here),
then prints ONE table of all their rows and writes it with the machine, versions and commit.

    python -m bench                    # every benchmark with --quick (a few minutes on a 2-core CPU)
    python -m bench --full             # every benchmark's full run (long on a CPU)
    python -m bench --only sketch,dct  # some benchmarks
    python bench/run.py --quick        # the same as `python -m bench`

Each benchmark writes its own <name>.json/.csv (bench/common.Results) into a temporary folder; the suite
collects them and writes, into --out (default bench/results), suite_<device>[_quick].json/.csv (every row
of every benchmark with the speed-ups below; each benchmark's command, exit status, wall time and meta)
and suite_<device>[_quick]_speedup.png. A benchmark's own result files stay those of its own runs.

Table columns: op, shape, backend (the variant timed), time, rate (GB/s or GFLOP/s / TFLOP/s, whichever
the benchmark computed), % of the measured device ceiling (GPU runs; the benchmark's own `pct_of_ceiling`)
and the speed-up over each baseline: for a row R, every row B of the same benchmark, shape and dtype that
is a baseline (role "baseline", or a variant some row names in its `baseline` column) of the same op, or
the variant R names as its baseline, or a role-"baseline" row when R is an op row (role "op"), and whose
parameters agree with R's on their common keys (rank, side, kind, format, ...; not the keys that name the
variant: method, backend); speed-up = time(B) / time(R).
Diagnosis rows (role "diag") are kept in the files, not in the printed table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from . import common


def discover() -> list[str]:
    return sorted(p.stem[len("bench_"):] for p in common.BENCH_DIR.glob("bench_*.py"))


def _takes_device(name: str) -> bool:
    return '"--device"' in (common.BENCH_DIR / f"bench_{name}.py").read_text()


def run_one(name: str, quick: bool, device: str, staging: Path, timeout: float) -> dict:
    """Runs bench_<name> in a subprocess writing into its own staging folder; returns how it went and the
    result documents it wrote."""
    out = staging / name
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", f"bench.bench_{name}", "--out", str(out)] + (["--quick"] if quick else [])
    if device != "auto" and _takes_device(name):
        cmd += ["--device", device]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=common.REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                              check=False)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-2000:]
    except subprocess.TimeoutExpired:
        rc, tail = "timeout", f"stopped after {timeout:.0f} s"
    docs = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    return {"bench": name, "command": " ".join(cmd[1:]), "rc": rc, "wall_s": time.perf_counter() - t0,
            "docs": docs, "tail": tail if rc != 0 else ""}


def _params(row) -> dict:
    p = row.get("params")
    return p if isinstance(p, dict) else {}


# parameters that name the variant itself (e.g. dct_scores' method "gemm" vs its baseline's "fft")
_VARIANT_KEYS = {"method", "backend", "variant"}


def _agree(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in set(a) & set(b) - _VARIANT_KEYS)


def _applies(b: dict, r: dict) -> bool:
    """Baseline row b is a baseline of row r: the same op, or the variant r names as its baseline, or a
    benchmark-wide baseline (role "baseline") of an op row (role "op")."""
    return (b.get("op") == r.get("op") or b.get("variant") == r.get("baseline")
            or (b.get("role") == "baseline" and r.get("role") == "op"))


def speedups(rows: list[dict]) -> None:
    """Adds `speedups` {baseline variant: time(B) / time(R)} to every non-baseline row of one benchmark."""
    named = {r.get("baseline") for r in rows if r.get("baseline")}
    baselines = [r for r in rows if r.get("time_ms") and (r.get("role") == "baseline" or r.get("variant") in named)]
    for r in rows:
        r["speedups"], r["is_baseline"] = {}, any(r is b for b in baselines)
        if not r.get("time_ms") or r["is_baseline"] or r.get("role") == "diag":
            continue
        for b in baselines:
            same = (b.get("shape"), b.get("dtype")) == (r.get("shape"), r.get("dtype"))
            if same and _applies(b, r) and _agree(_params(b), _params(r)):
                r["speedups"].setdefault(str(b["variant"]), b["time_ms"] / r["time_ms"])


def _rate(row, device: str) -> str:
    if row.get("gbps"):
        return f"{row['gbps']:.3g} GB/s"
    if row.get("gflops"):
        return f"{row['gflops'] / 1e3:.3g} TFLOP/s" if device == "cuda" else f"{row['gflops']:.3g} GFLOP/s"
    return "-"


def _shape(row) -> str:
    shape = row.get("shape")
    return "x".join(map(str, shape)) if isinstance(shape, list) else str(shape)


def _backend(row) -> str:
    p = _params(row)
    extra = ",".join(f"{k}={p[k]}" for k in ("kind", "side", "rank", "format") if k in p)
    return f"{row.get('variant')}" + (f" [{extra}]" if extra else "")


def table(rows: list[dict], device: str) -> str:
    header = ["bench", "op", "shape", "dtype", "backend [params]", "time ms", "rate", "% ceil",
              "speed-up over baselines"]
    body = []
    for r in rows:
        if r.get("role") == "diag" or r.get("time_ms") is None:
            continue
        ups = ", ".join(f"{v:.3g}x vs {k}" for k, v in r["speedups"].items())
        ups = ups or ("(baseline)" if r.get("is_baseline") else "-")
        pct = r.get("pct_of_ceiling")
        body.append([r["bench"], r.get("op"), _shape(r), r.get("dtype"), _backend(r), f"{r['time_ms']:.3g}",
                     _rate(r, device),
                     "-" if pct is None else f"{pct:.0f}%", ups])
    return common.format_table(header, body, align="lllllrrrl")


def plot(rows: list[dict], path: Path, title: str) -> Path | None:
    """Horizontal bars: each timed variant's speed-up over the baseline its row names (log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    bars = []
    for r in rows:
        ups = r.get("speedups") or {}
        base = r.get("baseline") if r.get("baseline") in ups else next(iter(ups), None)
        if base is not None:
            bars.append((f"{r['bench']}: {r.get('op')} {_backend(r)} {_shape(r)} {r.get('dtype')} vs {base}",
                         ups[base]))
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(11, 1.0 + 0.22 * len(bars)))
    labels, values = zip(*bars)
    colors = ["tab:green" if v >= 1 else "tab:red" for v in values]
    ax.barh(range(len(bars)), values, color=colors)
    ax.set_yticks(range(len(bars)), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", linewidth=0.8)
    ax.set_xlabel("speed-up over the row's baseline (time baseline / time variant; > 1 is faster)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", default=True, help="every benchmark with --quick (default)")
    mode.add_argument("--full", dest="quick", action="store_false", help="the benchmarks' full runs")
    ap.add_argument("--only", default=None, help=f"comma-separated benchmarks (default all: {','.join(discover())})")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="passed to the benchmarks that take it (default auto: cuda when visible)")
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed per benchmark (default 600)")
    args = ap.parse_args(argv)
    names = discover()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            ap.error(f"--only: unknown benchmark(s) {unknown}; known: {names}")
        names = wanted
    device = common.resolve_device(args.device)
    out = Path(args.out) if args.out else common.RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    suite = common.Results("suite", device, meta={"quick": args.quick, "benches": {}})
    print(f"bench suite ({'--quick' if args.quick else 'full'}) on {common.machine_label(suite.info)}; torch "
          f"{suite.info['torch']}, triton {suite.info['triton']}, CUDA {suite.info['torch_cuda']}, commit "
          f"{suite.info['commit']}, load average {suite.info['load_average_1_5_15']}", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_suite_") as staging:
        for name in names:
            print(f"  running bench_{name} ...", end=" ", flush=True)
            res = run_one(name, args.quick, args.device, Path(staging), args.timeout)
            print(f"{res['wall_s']:.0f} s" + ("" if res["rc"] == 0 else f"  FAILED ({res['rc']})"), flush=True)
            if res["rc"] != 0:
                print("    " + res["tail"].strip().replace("\n", "\n    "), flush=True)
            suite.meta["benches"][name] = {k: res[k] for k in ("command", "rc", "wall_s")}
            suite.meta["benches"][name]["meta"] = {stem: doc.get("meta") for stem, doc in res["docs"].items()}
            for stem, doc in res["docs"].items():
                rows = doc.get("rows", [])
                speedups(rows)
                for r in rows:
                    suite.add(**{**r, "bench": name, "source_file": stem})
    suite.meta["wall_s"] = time.perf_counter() - t0
    stem = f"suite_{device.type}{'_quick' if args.quick else ''}"
    print()
    print(table(suite.rows, device.type))
    json_path, csv_path = suite.write(stem, out)
    png = plot(suite.rows, out / f"{stem}_speedup.png",
               f"bench suite{' --quick' if args.quick else ''}: {common.machine_label(suite.info)}, "
               f"commit {suite.info['commit'][:12]}")
    failed = [n for n, b in suite.meta["benches"].items() if b["rc"] != 0]
    print(f"\nwrote {json_path}, {csv_path}" + (f", {png}" if png else "") +
          f" ({suite.meta['wall_s']:.0f} s){'; FAILED: ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
