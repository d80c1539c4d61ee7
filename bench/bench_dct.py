"""Benchmark of the DCT family: dct_topk (the SVD-free projection of arXiv:2505.17967: one DCT scoring of the
gradient plus a selection) against the SVD-based ways to get a rank-r projection, and the bytes each
persists per layer.

    python -m bench.bench_dct                 # the issue's cases: G 4096x4096 and 4096x11008 fp32, ranks
                                              # 128/256/512, on CUDA if visible else CPU
    python -m bench.bench_dct --quick         # 512x512 and 512x1376, ranks 16/32/64, few repeats (< 1 min)
    python -m bench.bench_dct --device cpu --threads 1

Variants per shape (side = GaLore's "std": right when m >= n, else left; d = the projected dimension):
  dct_topk[B]       lowrank_ops.ops.dct_topk(G, r, side, backend=B): the op under test
  svd               torch.linalg.svd(G, full_matrices=False) in fp32, what GaLore runs at every refresh; its
                    cost does not depend on r, so it is timed once per shape and compared with every rank
  svd_lowrank       torch.svd_lowrank(G, q=r) (Halko et al.; niter=2, torch's default)
CPU only, the two scoring methods of the C++ backend (torch.ops.lowrank_ops.dct_scores(..., method)):
  scores:gemm       basis tiles generated into cache, one float64 GEMM per tile: O(m n d)
  scores:fft        Makhoul's DCT through torch.fft.rfft, float64: O(m n log d)
at the issue's shapes and over a sweep of d (other dimension 4096), which is where the crossover that
csrc/cpu/dct.cpp's "auto" uses (kGemmMaxDim) comes from.
CPU only, the two ways of dct_project / dct_unproject (the sr_dct projection P = S C D: r signed DCT rows),
over a sweep of d and r, both sides (right: G 4096 x d, left: G d x 4096; --quick: 1024 instead of 4096):
  project:gemm / unproject:gemm   tiles of P generated into cache, one float32 GEMM per tile: O(r d (other))
  project:fft / unproject:fft     Makhoul's DCT through torch.fft (rfft / irfft), float32: O(d log d (other))
which is where csrc/cpu/dct_transform.cpp's "auto" rule (kFftRankPerLog2) comes from.
    python -m bench.bench_dct --device cpu --threads 1 --transform-only   # that sweep alone
GPU only: dct_scores[B] in bfloat16 as TFLOP/s of its GEMM (2 d^2 (other) flops) against the measured bf16
cuBLAS rate.

Persisted bytes per layer: the DCT projection stores its r indices (int16 when d <= 32767, else int32); an
SVD projection stores the r x d fp32 matrix.

Targets (issue): CPU dct_topk >= 10x faster than torch.linalg.svd; GPU scoring >= 70% of the bf16 GEMM
rate. Reported, never asserted. Slow calls (the SVDs: minutes on a small CPU) are timed over --slow-repeats
calls, the median reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from bench import common

CPU_SPEEDUP_TARGET = 10.0  # dct_topk at least this many times faster than torch.linalg.svd
GPU_GEMM_TARGET = 0.70  # scoring at least this fraction of the measured bf16 GEMM rate
INT16_MAX_DIM = 32767
SWEEP_DIMS = (16, 32, 48, 64, 96, 128, 256, 1024)
SWEEP_OTHER = 4096


def std_side(m: int, n: int) -> str:
    """GaLore's "std": project the smaller dimension (right, d = n, when m >= n)."""
    return "right" if m >= n else "left"


def time_slow(fn, device: torch.device, repeats: int) -> common.Timing:
    """Median of `repeats` single calls (no warm-up call of the same size: these take seconds to minutes;
    main() warms the libraries up on a small matrix first)."""
    times = []
    for _ in range(repeats):
        common.synchronize(device)
        t0 = time.perf_counter()
        fn()
        common.synchronize(device)
        times.append(time.perf_counter() - t0)
    q = sorted(times)
    iqr = (q[(3 * len(q)) // 4] - q[len(q) // 4]) if len(q) > 1 else 0.0
    return common.Timing(statistics.median(times) * 1e3, iqr * 1e3, repeats,
                         f"time.perf_counter over {repeats} single call(s), median", min(times) * 1e3)



def persisted_bytes(rank: int, d: int) -> dict:
    index_bytes = rank * (2 if d <= INT16_MAX_DIM else 4)
    return {"indices_bytes": index_bytes, "index_dtype": "int16" if d <= INT16_MAX_DIM else "int32",
            "matrix_bytes": rank * d * 4, "matrix_over_indices": rank * d * 4 / index_bytes}


def run_shape(res: common.Results, G: torch.Tensor, ranks, device, args) -> list[dict]:
    from lowrank_ops import ops

    m, n = G.shape
    side = std_side(m, n)
    d = m if side == "left" else n
    shape = f"{m}x{n}"
    rows = []
    print(f"\nG {shape} fp32, side {side} (d = {d}): timing torch.linalg.svd ({args.slow_repeats} call(s)) ...",
          flush=True)
    svd = time_slow(lambda: torch.linalg.svd(G, full_matrices=False), device, args.slow_repeats)
    print(f"  svd: {svd.median_ms / 1e3:.2f} s", flush=True)
    rows.append(res.add(op="torch.linalg.svd", variant="svd", backend="torch", shape=shape, dtype="float32",
                        params={"side": side, "d": d, "full_matrices": False}, time_ms=svd.median_ms,
                        time_iqr_ms=svd.iqr_ms, time_min_ms=svd.min_ms, runs=svd.runs, timing_method=svd.method,
                        role="baseline"))
    for r in ranks:
        lowrank = time_slow(lambda r=r: torch.svd_lowrank(G, q=r), device, args.slow_repeats)
        fns = {f"dct_topk[{b}]": (lambda b=b, r=r: ops.dct_topk(G, r, side, backend=b))
               for b in common.compiled_backends("dct_topk", device)}
        timings = common.time_interleaved(fns, device, rounds=args.rounds, block_s=args.block_s)
        print(f"  rank {r}: svd_lowrank {lowrank.median_ms / 1e3:.2f} s, "
              + ", ".join(f"{k} {t.median_ms:.1f} ms" for k, t in timings.items()), flush=True)
        pb = persisted_bytes(r, d)
        rows.append(res.add(op="torch.svd_lowrank", variant="svd_lowrank", backend="torch", shape=shape,
                            dtype="float32", params={"side": side, "d": d, "rank": r, "q": r, "niter": 2},
                            time_ms=lowrank.median_ms, time_iqr_ms=lowrank.iqr_ms, time_min_ms=lowrank.min_ms,
                            runs=lowrank.runs, timing_method=lowrank.method, role="baseline",
                            persisted_bytes=pb["matrix_bytes"]))
        for name, t in timings.items():
            speedup = svd.median_ms / t.median_ms
            row = dict(op="dct_topk", variant=name, backend=name[name.find("[") + 1:-1], shape=shape,
                       dtype="float32", params={"side": side, "d": d, "rank": r, "norm": "l1"},
                       time_ms=t.median_ms, time_iqr_ms=t.iqr_ms, time_min_ms=t.min_ms, runs=t.runs,
                       timing_method=t.method, role="op", baseline="svd", ratio_to_baseline=t.median_ms / svd.median_ms,
                       speedup_vs_svd=speedup, speedup_vs_svd_lowrank=lowrank.median_ms / t.median_ms,
                       persisted_bytes=pb["indices_bytes"], **pb)
            if device.type == "cpu":
                row.update(target=f">= {CPU_SPEEDUP_TARGET:.0f}x faster than torch.linalg.svd",
                           target_met=speedup >= CPU_SPEEDUP_TARGET)
            rows.append(res.add(**row))
    return rows


def run_methods(res: common.Results, cases, args) -> list[dict]:
    """CPU scoring by GEMM vs FFT on the same G, interleaved (fast cases) or single-shot (slow GEMMs)."""
    rows = []
    device = torch.device("cpu")
    for (m, n), side in cases:
        G = torch.randn(m, n)
        d = m if side == "left" else n
        fns = {meth: (lambda meth=meth, G=G, side=side: torch.ops.lowrank_ops.dct_scores(G, side, "l1", meth))
               for meth in ("gemm", "fft")}
        t0 = time.perf_counter()
        fns["fft"]()
        fns["gemm"]()
        if time.perf_counter() - t0 > 2.0:
            timings = {k: time_slow(f, device, args.slow_repeats) for k, f in fns.items()}
        else:
            timings = common.time_interleaved(fns, device, rounds=args.rounds, block_s=args.block_s)
        print(f"  scores {m}x{n} {side} (d = {d}): "
              + ", ".join(f"{k} {t.median_ms:.3f} ms" for k, t in timings.items()), flush=True)
        for meth, t in timings.items():
            rows.append(res.add(op="dct_scores", variant=f"scores:{meth}", backend="cpu", shape=f"{m}x{n}",
                                dtype="float32", params={"side": side, "d": d, "method": meth}, time_ms=t.median_ms,
                                time_iqr_ms=t.iqr_ms, time_min_ms=t.min_ms, runs=t.runs, timing_method=t.method,
                                role="method", ratio_to_baseline=t.median_ms / timings["fft"].median_ms,
                                baseline="scores:fft"))
    return rows


TRANSFORM_DIMS = (64, 128, 256, 1024, 4096)
TRANSFORM_RANKS = (16, 32, 64, 128, 256, 512)


def transform_call(ops, which: str, X, idx, d: int, side: str, signs, method: str):
    """A call of dct_project (X = G) or dct_unproject (X = R) on `side`."""
    if which == "project":
        return lambda: ops.dct_project(X, idx, side, signs, method=method)
    return lambda: ops.dct_unproject(X, idx, d, side, signs, method=method)


def run_transform_methods(res: common.Results, args) -> list[dict]:
    """CPU dct_project / dct_unproject by GEMM vs FFT, both sides, on the sr_dct P of one seed, interleaved."""
    from lowrank_ops import ops
    from lowrank_ops.projections import sr_dct

    rows = []
    device = torch.device("cpu")
    other = 1024 if args.quick else SWEEP_OTHER
    gen = torch.Generator().manual_seed(18)
    for side, d in ((side, d) for d in TRANSFORM_DIMS for side in ("right", "left")):
        G = torch.randn((other, d) if side == "right" else (d, other), generator=gen)
        signs = sr_dct.signs(d, 18, torch.float32)
        for r in (r for r in TRANSFORM_RANKS if r <= d):
            idx = sr_dct.rows(r, d, 18)
            R = torch.randn((other, r) if side == "right" else (r, other), generator=gen)
            for which in ("project", "unproject"):
                X = G if which == "project" else R
                fns = {meth: transform_call(ops, which, X, idx, d, side, signs, meth) for meth in ("gemm", "fft")}
                timings = common.time_interleaved(fns, device, rounds=args.rounds, block_s=args.block_s)
                print(f"  {which} {side} {list(G.shape)} r={r}: "
                      + ", ".join(f"{k} {t.median_ms:.3f} ms" for k, t in timings.items()), flush=True)
                for meth, t in timings.items():
                    rows.append(res.add(op=f"dct_{which}", variant=f"{which}:{meth}", backend="cpu",
                                        shape="x".join(map(str, G.shape)), dtype="float32",
                                        params={"side": side, "d": d, "rank": r, "method": meth},
                                        time_ms=t.median_ms, time_iqr_ms=t.iqr_ms, time_min_ms=t.min_ms, runs=t.runs,
                                        timing_method=t.method, role="method",
                                        ratio_to_baseline=t.median_ms / timings["fft"].median_ms,
                                        baseline=f"{which}:fft"))
    return rows


def run_gpu_scoring(res: common.Results, shapes, ceiling: dict, args) -> list[dict]:
    """bf16 dct_scores per GPU backend as GEMM throughput, against the measured bf16 cuBLAS rate."""
    from lowrank_ops import ops

    device = torch.device("cuda")
    rows = []
    for m, n in shapes:
        side = std_side(m, n)
        d, other = (m, n) if side == "left" else (n, m)
        G = torch.randn(m, n, device=device, dtype=torch.bfloat16)
        flops = 2 * d * d * other
        for b in common.compiled_backends("dct_topk", device):
            t = common.time_cuda(lambda b=b, G=G, side=side: ops.dct_scores(G, side, backend=b))
            tflops = flops / (t.median_ms * 1e-3) / 1e12
            frac = tflops / ceiling["tflops"]
            rows.append(res.add(op="dct_scores", variant=f"dct_scores[{b}]", backend=b, shape=f"{m}x{n}",
                                dtype="bfloat16", params={"side": side, "d": d}, time_ms=t.median_ms,
                                time_iqr_ms=t.iqr_ms, runs=t.runs, flops=flops, gflops=tflops * 1e3,
                                pct_of_ceiling=100 * frac, ceiling=ceiling["what"], timing_method=t.method,
                                target=f">= {GPU_GEMM_TARGET:.0%} of the bf16 GEMM rate",
                                target_met=frac >= GPU_GEMM_TARGET, role="op"))
            print(f"  dct_scores[{b}] bf16 {m}x{n}: {t.median_ms:.3f} ms, {tflops:.0f} TFLOP/s "
                  f"({100 * frac:.0f}% of {ceiling['what']})", flush=True)
    return rows


def print_summary(rows: list[dict]) -> None:
    body = []
    for r in rows:
        if r["op"] != "dct_topk":
            continue
        p = r["params"]
        body.append([r["shape"], p["side"], p["rank"], r["variant"], common.fmt(r["time_ms"], ".1f"),
                     common.fmt(r["speedup_vs_svd"], ".0f") + "x", common.fmt(r["speedup_vs_svd_lowrank"], ".1f") + "x",
                     f"{r['indices_bytes']} B ({r['index_dtype']})", f"{r['matrix_bytes'] / common.MiB:.2f} MiB",
                     "" if r["target_met"] is None else ("MET" if r["target_met"] else "MISSED")])
    print("\n" + common.format_table(["G", "side", "rank", "variant", "time ms", "vs svd", "vs svd_lowrank",
                                      "persisted (DCT)", "persisted (r x d fp32)", "target"], body, "llrlrrrrrl"))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="512x512 and 512x1376, ranks 16/32/64, few repeats")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) before measuring")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7; 3 with --quick)")
    ap.add_argument("--block-s", type=float, default=None, help="seconds per timed CPU block (0.25; 0.05 quick)")
    ap.add_argument("--slow-repeats", type=int, default=None,
                    help="calls timed for the SVDs and GEMM-method rows over 2 s (default 1; 3 with --quick)")
    ap.add_argument("--no-methods", action="store_true", help="skip the CPU GEMM-vs-FFT rows")
    ap.add_argument("--transform-only", action="store_true",
                    help="only the CPU GEMM-vs-FFT rows of dct_project / dct_unproject")
    ap.add_argument("--out", default=None, help="directory for <name>.json/.csv (default bench/results)")
    ap.add_argument("--name", default=None, help="results file stem (default dct_<device>[_quick][_t<N>])")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.block_s = args.block_s or (0.05 if args.quick else 0.25)
    args.slow_repeats = args.slow_repeats or (3 if args.quick else 1)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = common.prepare(args)

    shapes = [(512, 512), (512, 1376)] if args.quick else [(4096, 4096), (4096, 11008)]
    ranks = (16, 32, 64) if args.quick else (128, 256, 512)
    res = common.Results("dct", device, meta={"quick": args.quick, "shapes": shapes, "ranks": ranks})
    print(f"bench_dct on {common.machine_label(res.info)}; load average {res.info['load_average_1_5_15']}")
    gen = torch.Generator().manual_seed(20250523)
    # Warm-up: the first LAPACK/FFT calls of a process load libraries and build plans; not the ops' cost.
    warm = torch.randn(64, 48, generator=gen).to(device)
    torch.linalg.svd(warm, full_matrices=False)
    torch.svd_lowrank(warm, q=8)
    torch.fft.rfft(warm.double())
    rows = []
    if args.transform_only:
        if device.type != "cpu":
            raise SystemExit("bench_dct: --transform-only measures the CPU kernels; pass --device cpu")
        print("\nCPU projection methods (GEMM vs FFT):", flush=True)
        run_transform_methods(res, args)
        common.write_run(res, args)
        return 0
    for m, n in shapes:
        G = torch.randn(m, n, generator=gen).to(device)
        rows += run_shape(res, G, ranks, device, args)
    if device.type == "cpu" and not args.no_methods:
        print("\nCPU scoring methods (GEMM vs FFT):", flush=True)
        sweep = [((d, SWEEP_OTHER // 4 if args.quick else SWEEP_OTHER), "left") for d in SWEEP_DIMS]
        sweep += [((SWEEP_OTHER // 4 if args.quick else SWEEP_OTHER, d), "right") for d in SWEEP_DIMS]
        rows += run_methods(res, sweep + [((m, n), std_side(m, n)) for m, n in shapes], args)
        print("\nCPU projection methods (GEMM vs FFT):", flush=True)
        rows += run_transform_methods(res, args)
    if device.type == "cuda":
        ceiling = common.cuda_gemm_tflops(quick=args.quick)
        res.meta["ceiling_gemm_bf16"] = ceiling
        rows += run_gpu_scoring(res, shapes, ceiling, args)
    print_summary(rows)
    common.write_run(res, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
