"""Shared machinery of the microbenchmarks (docs/DESIGN.md §6): timing, peak extra memory, the machine a
result came from, device ceilings, and the writer of bench/results/<name>.json and .csv.

Benchmarks measure; they never assert and never gate CI. Every row a benchmark writes names the machine,
the torch/triton/CUDA versions and the git commit it was measured on, so a number is never separated from
where it came from.

Timing
  CPU:  torch.utils.benchmark.Timer with torch's current thread count (Timer defaults to ONE thread, which
        would misstate every multi-threaded op), after a warm-up call; the median of blocks of calls.
        `time_interleaved` runs the variants of one comparison round-robin, block by block, so load from
        other processes on a shared machine lands on all of them alike instead of on whichever ran last.
  CUDA: triton.testing.do_bench (median; it flushes L2 between calls), CUDA events if triton is missing.

Peak extra memory of one call
  CPU:  torch.profiler with profile_memory=True records every allocation and free of torch's CPU
        allocator; summing the signed sizes in time order gives the bytes held above the starting point
        after each event, and the peak is their maximum. Memory that does not go through torch's allocator
        (MKL/oneDNN scratch, the Python heap) is not seen, for the op and its baselines alike.
  CUDA: torch.cuda.reset_peak_memory_stats(); max_memory_allocated() after the call minus
        memory_allocated() before it (the caching allocator's exact high-water mark).
  Both report `peak_bytes` (everything allocated at the high-water mark, the result included),
  `result_bytes` (the storage of what the call returned) and `extra_bytes = max(0, peak - result)`: the
  workspace a call needs beyond its own output, which every implementation has to allocate anyway.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent

MiB = 1024 * 1024


# --------------------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when a GPU is visible, else cpu. Asking for cuda without one is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to this torch "
                         f"({torch.__version__}, torch.version.cuda={torch.version.cuda})")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------


@dataclass
class Timing:
    median_ms: float
    iqr_ms: float  # interquartile range of the per-call times: the spread a reader should expect
    runs: int  # calls timed in total (not counting warm-up)
    method: str
    min_ms: float | None = None  # fastest block (CPU) or 25% quantile (CUDA): the least disturbed time

    def as_dict(self) -> dict:
        return asdict(self)


def compiled_backends(op: str, device: torch.device) -> list[str]:
    """The compiled and Triton backends of lowrank_ops that can run `op` on `device` here, in the order
    the benchmarks report them ("cpu" on a CPU; "cuda", "triton" on a GPU); the pure-torch one is apart."""
    from lowrank_ops import backends

    names = ("cpu",) if device.type == "cpu" else ("cuda", "triton")
    return [b for b in names if backends.unavailable_reason(b, op, device) is None]


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[1], q[2]


def _cpu_timer(fn: Callable[[], Any]):
    from torch.utils import benchmark

    return benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())


def time_cpu(fn: Callable[[], Any], *, min_run_time: float = 1.0, warmup: int = 1) -> Timing:
    """Median time of `fn()` on CPU: warm-up calls, then Timer.blocked_autorange(min_run_time)."""
    for _ in range(warmup):
        fn()
    m = _cpu_timer(fn).blocked_autorange(min_run_time=min_run_time)
    q1, med, q3 = _quartiles(list(m.times))
    return Timing(med * 1e3, (q3 - q1) * 1e3, int(m.number_per_run * len(m.times)),
                  f"torch.utils.benchmark blocked_autorange(min_run_time={min_run_time}), "
                  f"{torch.get_num_threads()} threads", min(m.times) * 1e3)


def time_cuda(fn: Callable[[], Any], *, warmup_ms: float = 25, rep_ms: float = 100) -> Timing:
    """Median time of `fn()` on the current CUDA device: triton.testing.do_bench, else CUDA events."""
    fn()
    torch.cuda.synchronize()
    try:
        from triton.testing import do_bench

        q1, med, q3 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.25, 0.5, 0.75])
        # do_bench runs as many calls as fit in rep_ms (at least one)
        return Timing(med, q3 - q1, max(1, int(rep_ms / max(med, 1e-6))),
                      f"triton.testing.do_bench(warmup={warmup_ms}, rep={rep_ms}), median", q1)
    except ImportError:
        times = []
        for _ in range(max(3, int(warmup_ms / 5))):
            fn()
        torch.cuda.synchronize()
        n = 0
        while sum(times) < rep_ms or n < 5:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
            n += 1
        q1, med, q3 = _quartiles(times)
        return Timing(med, q3 - q1, n, "CUDA events, median (triton not installed)", min(times))


def time_fn(fn: Callable[[], Any], device: torch.device, *, quick: bool = False) -> Timing:
    """Median time of one call on `device`, with the repeat budget of a full or a --quick run."""
    if device.type == "cuda":
        return time_cuda(fn, warmup_ms=10 if quick else 25, rep_ms=30 if quick else 100)
    return time_cpu(fn, min_run_time=0.1 if quick else 1.0)


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, *, rounds: int = 7,
                     block_s: float = 0.25, warmup: int = 1) -> dict[str, Timing]:
    """Median times of several variants measured round-robin.

    CPU: every variant is warmed up and calibrated (calls per block so that a block takes about
    `block_s`), then `rounds` rounds each time one block of every variant with
    torch.utils.benchmark.Timer.timeit. The median is over all blocks of a variant. On a machine shared
    with other work, interleaving makes the ratios between variants fair even when absolute times drift.
    CUDA: the GPU is not shared the same way; each variant gets time_cuda in turn."""
    if device.type == "cuda":
        return {name: time_cuda(fn) for name, fn in fns.items()}
    timers, numbers = {}, {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        timer = _cpu_timer(fn)
        one = timer.timeit(number=1).median
        numbers[name] = max(1, int(block_s / max(one, 1e-9)))
        timers[name] = timer
    per_call: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, timer in timers.items():
            per_call[name].append(timer.timeit(number=numbers[name]).median)
    out = {}
    for name, xs in per_call.items():
        q1, med, q3 = _quartiles(xs)
        out[name] = Timing(med * 1e3, (q3 - q1) * 1e3, rounds * numbers[name],
                           f"torch.utils.benchmark Timer, {rounds} interleaved rounds x "
                           f"{numbers[name]} calls, {torch.get_num_threads()} threads, median",
                           min(xs) * 1e3)
    return out


# --------------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------------


@dataclass
class Memory:
    peak_bytes: int  # high-water mark above the starting point, the result included
    result_bytes: int  # bytes of the storages the call returned
    extra_bytes: int  # max(0, peak - result): workspace beyond the call's own output
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


def _tensors(obj) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)


def _result_bytes(result) -> int:
    seen, total = set(), 0
    for t in _tensors(result):
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


@contextlib.contextmanager
def _quiet_stderr():
    """Silences file descriptor 2 (C++ logging included) for the duration of the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_cpu(fn: Callable[[], Any], *, warmup: bool = True) -> Memory:
    """Peak bytes of torch's CPU allocator above the starting point during one call (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    if warmup:  # lazy initialization is not the op's memory
        fn()
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # kineto logs a line to stderr at every start and stop
        prof.start()
    try:
        result = fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    deltas = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    deltas.sort(key=lambda x: x[0])
    held = peak = 0
    for _, nbytes in deltas:
        held += nbytes
        peak = max(peak, held)
    rb = _result_bytes(result)
    del result
    return Memory(peak, rb, max(0, peak - rb),
                  "torch.profiler(profile_memory=True): running sum of CPU allocator events")


def peak_memory_cuda(fn: Callable[[], Any], *, warmup: bool = True) -> Memory:
    """Peak bytes of the CUDA caching allocator above what was allocated before the call."""
    if warmup:
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    rb = _result_bytes(result)
    del result
    return Memory(peak, rb, max(0, peak - rb),
                  "torch.cuda.max_memory_allocated() - memory_allocated() before the call")


def peak_memory(fn: Callable[[], Any], device: torch.device, *, warmup: bool = True) -> Memory:
    """Peak extra memory of one call of `fn` (warmup=False when `fn` has run already, e.g. timed)."""
    if device.type == "cuda":
        return peak_memory_cuda(fn, warmup=warmup)
    return peak_memory_cpu(fn, warmup=warmup)


# --------------------------------------------------------------------------------------------------------
# Where a number came from
# --------------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def git_dirty_files() -> list[str]:
    """Tracked files that differ from the commit (the code measured may not be the commit's)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return [line[3:] for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def git_commit() -> str:
    """The commit of the tree the benchmark ran from, '+dirty' when tracked files differ from it,
    'unknown' outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if git_dirty_files() else "")


def _load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: torch.device) -> dict:
    """The machine, software and commit a result was measured on."""
    info = {
        "device": device.type,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "mem_total_gib": _mem_total_gib(),
        "load_average_1_5_15": _load_average(),
        "gpu_name": None,
        "gpu_count": 0,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": None,
        "lowrank_ops_build": None,
        "commit": git_commit(),
        "dirty_files": git_dirty_files()[:50],
    }
    if torch.cuda.is_available():
        info["gpu_count"] = torch.cuda.device_count()
        index = device.index if device.type == "cuda" and device.index is not None else 0
        info["gpu_name"] = torch.cuda.get_device_name(index)
        props = torch.cuda.get_device_properties(index)
        info["gpu_memory_gib"] = round(props.total_memory / 1024**3, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        import lowrank_ops

        info["lowrank_ops_build"] = lowrank_ops.build_info()
    except (ImportError, RuntimeError, AttributeError, OSError) as exc:  # still record the rest
        info["lowrank_ops_build"] = f"unavailable: {exc!r}"
    return info


def machine_label(info: dict) -> str:
    """One short line naming the machine, for tables and CSV rows."""
    if info.get("device") == "cuda" and info.get("gpu_name"):
        return f"{info['gpu_name']} (host {info['cpu_model']}, {info['cpu_count']} cores)"
    return f"{info['cpu_model']}, {info['cpu_count']} cores, {info['torch_threads']} torch threads"


# --------------------------------------------------------------------------------------------------------
# Ceilings: what the device can do at best, measured here, so rows can say how close they get
# --------------------------------------------------------------------------------------------------------


def cpu_gemm_gflops(n: int = 2048, *, quick: bool = False) -> dict:
    """torch.mm fp32 n x n x n on CPU: the GEMM rate this CPU delivers through torch, for context."""
    n = 1024 if quick else n
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = time_cpu(lambda: torch.mm(a, b), min_run_time=0.2 if quick else 1.0)
    return {"what": f"torch.mm fp32 {n}x{n}x{n}", "time_ms": t.median_ms,
            "gflops": 2 * n**3 / (t.median_ms * 1e-3) / 1e9}


def cpu_copy_gbps(nbytes: int = 256 * MiB, *, quick: bool = False) -> dict:
    """Tensor.copy_ of a large fp32 buffer on CPU (bytes read + written per second), for context."""
    nbytes = 32 * MiB if quick else nbytes
    src = torch.randn(nbytes // 4)
    dst = torch.empty_like(src)
    t = time_cpu(lambda: dst.copy_(src), min_run_time=0.2 if quick else 1.0)
    return {"what": f"copy_ of {nbytes // MiB} MiB fp32", "time_ms": t.median_ms,
            "gbps": 2 * nbytes / (t.median_ms * 1e-3) / 1e9}


def cuda_copy_gbps(nbytes: int = 1024 * MiB, *, quick: bool = False) -> dict:
    """Device-to-device copy of a large buffer: the practical memory-bandwidth ceiling (read + write)."""
    nbytes = 256 * MiB if quick else nbytes
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = time_cuda(lambda: dst.copy_(src))
    return {"what": f"device copy_ of {nbytes // MiB} MiB", "time_ms": t.median_ms,
            "gbps": 2 * nbytes / (t.median_ms * 1e-3) / 1e9}


def cuda_gemm_tflops(n: int = 8192, dtype=torch.bfloat16, *, quick: bool = False) -> dict:
    """A large square GEMM through cuBLAS: the practical tensor-core ceiling."""
    n = 4096 if quick else n
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    t = time_cuda(lambda: torch.mm(a, b))
    return {"what": f"torch.mm {str(dtype).replace('torch.', '')} {n}x{n}x{n}", "time_ms": t.median_ms,
            "tflops": 2 * n**3 / (t.median_ms * 1e-3) / 1e12}


def ceilings(device: torch.device, *, quick: bool = False) -> dict:
    """Measured ceilings of `device`: on CUDA a large copy (GB/s) and bf16 and fp32 GEMMs (TFLOP/s);
    on CPU torch's fp32 GEMM rate and a large copy, for context."""
    if device.type == "cuda":
        return {"copy": cuda_copy_gbps(quick=quick),
                "gemm_bf16": cuda_gemm_tflops(quick=quick),
                "gemm_fp32": cuda_gemm_tflops(dtype=torch.float32, quick=quick)}
    return {"gemm_fp32": cpu_gemm_gflops(quick=quick), "copy": cpu_copy_gbps(quick=quick)}


# --------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------

# The columns every row has, in CSV order; a benchmark may add more after them.
COLUMNS = (
    "bench", "op", "variant", "backend", "shape", "dtype", "params",
    "time_ms", "time_iqr_ms", "runs", "flops", "bytes", "gflops", "gbps", "pct_of_ceiling", "ceiling",
    "peak_bytes", "result_bytes", "extra_bytes", "extra_frac", "extra_frac_of",
    "baseline", "ratio_to_baseline", "target", "target_met",
    "device", "machine", "torch", "triton", "cuda", "commit", "timestamp_utc",
)


@dataclass
class Results:
    """Rows of one benchmark run plus the description of where it ran."""

    bench: str
    device: torch.device
    meta: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)

    def __post_init__(self):
        self.info = machine_info(self.device)
        self.timestamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def add(self, **row) -> dict:
        full = {c: None for c in COLUMNS}
        full.update(bench=self.bench, device=self.device.type, machine=machine_label(self.info),
                    torch=self.info["torch"], triton=self.info["triton"], cuda=self.info["torch_cuda"],
                    commit=self.info["commit"], timestamp_utc=self.timestamp)
        full.update(row)
        self.rows.append(full)
        return full

    def write(self, name: str, out_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
        """Writes <out_dir>/<name>.json (machine, meta and rows) and <name>.csv (one row per
        measurement, machine columns included). Returns the two paths."""
        out = Path(out_dir) if out_dir is not None else RESULTS_DIR
        out.mkdir(parents=True, exist_ok=True)
        self.info["load_average_1_5_15_at_end"] = _load_average()
        doc = {"bench": self.bench, "timestamp_utc": self.timestamp, "machine": self.info,
               "meta": self.meta, "rows": self.rows}
        json_path, csv_path = out / f"{name}.json", out / f"{name}.csv"
        json_path.write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n")
        keys = list(COLUMNS) + sorted({k for r in self.rows for k in r} - set(COLUMNS))
        with csv_path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: _csv_cell(r.get(k)) for k in keys})
        return json_path, csv_path


def prepare(args) -> torch.device:
    """The device a benchmark measures on (`args.device`), after torch's CPU thread count is set
    (`args.threads`, when given) and lowrank_ops is imported (loading its extension, or warning once)."""
    device = resolve_device(args.device)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    import lowrank_ops  # noqa: F401

    return device


def print_machine(res: Results) -> None:
    """The machine, versions, commit and load average a run starts on, with a note when the machine is busy."""
    info = res.info
    print(f"bench_{res.bench} on {machine_label(info)}")
    print(f"torch {info['torch']} (cuda {info['torch_cuda']}), triton {info['triton']}, commit {info['commit']}, "
          f"load average {info['load_average_1_5_15']}")
    load = info["load_average_1_5_15"]
    if load and load[0] > 0.5:
        print(f"NOTE: the machine is busy (1-min load average {load[0]} on {info['cpu_count']} cores); "
              "other processes competing for the cores distort multi-threaded timings")


def print_results_header(res: Results) -> None:
    print(f"\nResults on {machine_label(res.info)}; torch {res.info['torch']}, commit "
          f"{res.info['commit']}; load average at start {res.info['load_average_1_5_15']}")


def write_run(res: Results, args, name: str | None = None) -> None:
    """Writes `res` (unless --no-write) as `args.name`, else `name`, else <bench>_<device>[_quick][_t<threads>],
    into `args.out`, and prints the paths and the run's wall time."""
    if args.no_write:
        return
    threads = getattr(args, "threads", None)
    default = f"{res.bench}_{res.device.type}{'_quick' if args.quick else ''}{f'_t{threads}' if threads else ''}"
    paths = res.write(getattr(args, "name", None) or name or default, args.out)
    wall = res.meta.get("wall_s")
    print(f"\nwrote {paths[0]} and {paths[1]}" + (f" ({wall:.0f} s)" if wall is not None else ""))


def _jsonable(x):
    if isinstance(x, (torch.dtype, torch.device)):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return repr(x)


def _csv_cell(x):
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.6g}"
    if isinstance(x, (dict, list, tuple)):
        return json.dumps(x, default=_jsonable)
    return str(x)


# --------------------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------------------


def format_table(header: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A plain-text table; `align` is one character per column, 'l' or 'r' (default: first column
    left, the others right)."""
    cells = [[str(h) for h in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)

    def line(r):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def fmt(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)
