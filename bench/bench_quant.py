"""Benchmark of the quant family: dequantize throughput and dequant_matmul against dequantize-then-matmul
and a plain matmul with a full-precision weight.

    python -m bench.bench_quant                  # on CUDA if visible, else CPU (CPU: a trimmed set, below)
    python -m bench.bench_quant --device cpu     # force the CPU
    python -m bench.bench_quant --quick          # small shapes, few repeats (< 1 min), a smoke run
    python -m bench.bench_quant --tokens 2048 4096 8192 --weights 4096x4096 4096x11008   # pick the cases

Weights are W [out, in] = nn.Linear layout: 4096x4096 (attention), 4096x11008 (the down projection of a
LLaMA-7B MLP: in = 11008), and for the GPU dequantize target 4096x14336. Formats int8 (groups of 256) and
nf4 (blocks of 64). X [tokens, in] in float32 or bfloat16.

dequantize rows (per format, weight and output dtype):
  dequantize[B]      ops.dequantize(qw, dtype, backend=B)
  bitsandbytes       bitsandbytes.functional.dequantize_4bit (nf4, where bitsandbytes is installed)
  GB/s counts the codes and scales read plus the output written.
dequant_matmul rows (per format, weight, tokens and dtype), all timed round-robin in one process:
  matmul             X @ W.T with W already in X's dtype: the baseline, no quantization at all
  dequantize+matmul  ops.dequantize(qw, X.dtype) then X @ W.T: materializes deq(W)
  dequant_matmul[B]  ops.dequant_matmul(X, qw, backend=B): the op under test (never materializes deq(W))
  extra MiB (first token count of each case): the peak allocator bytes of one call beyond its result:
  dequantize+matmul holds all of deq(W), dequant_matmul one tile of it.

Targets (issue 6): CPU dequant_matmul time <= 1.3x matmul. GPU: NF4 dequantize of 4096x14336 to bf16 under
58 us; dequant_matmul >= 90% of the matmul's (cuBLAS bf16) throughput at 8192 tokens. Reported, never
asserted.

The default CPU run is trimmed to W 4096x4096, 2048 tokens and 3 timing rounds: on a 2-core machine the
issue's 4096x11008 weight and 4096/8192 tokens (which scale the GEMM, not the decode overhead) take the run
far past ~8 minutes. Pass --weights 4096x4096 4096x11008 and --tokens 2048 4096 8192 to measure them.
bench/results/quant_cpu.json was run with --weights 4096x4096 4096x11008 (its meta.weights; 21 minutes at a
load average of ~11 from other work on the machine).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from bench import common

FORMATS = ("int8", "nf4")
CPU_TIME_TARGET = 1.3  # x the matmul's time
GPU_DEQUANT_TARGET_US = 58.0  # NF4 4096x14336 -> bf16
GPU_DEQUANT_TARGET_SHAPE = (4096, 14336)
GPU_THROUGHPUT_TARGET = 0.90  # x the matmul's (cuBLAS) throughput
GPU_TARGET_TOKENS = 8192


def parse_shape(text: str) -> tuple:
    out, cols = text.lower().split("x")
    return int(out), int(cols)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (default)")
    p.add_argument("--quick", action="store_true", help="small shapes, few repeats: a smoke run")
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    p.add_argument("--weights", nargs="+", type=parse_shape, default=None,
                   help="W shapes OUTxIN (default: 4096x4096 on CPU, 4096x4096 4096x11008 on CUDA)")
    p.add_argument("--tokens", nargs="+", type=int, default=None,
                   help="token counts (default: 2048 on CPU, 2048 4096 8192 on CUDA)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved timing rounds (default 3 on CPU and with --quick, else 5)")
    p.add_argument("--block-s", type=float, default=None,
                   help="seconds per timed block of one variant (CPU; default 0.25, quick 0.05)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (CPU; default: torch's)")
    p.add_argument("--out", default=None, help="directory for the result files (default bench/results)")
    p.add_argument("--name", default=None, help="result file name (default quant_<device>[_quick])")
    p.add_argument("--no-write", action="store_true", help="print only")
    return p.parse_args(argv)



def bitsandbytes_functional():
    try:
        import bitsandbytes.functional as bnb
    except ImportError:
        return None
    return bnb


def dequantize_cases(res, args, device, backends):
    """Throughput of dequantize (and bitsandbytes' dequantize_4bit) per format, weight and output dtype."""
    from lowrank_ops import ops

    bnb = bitsandbytes_functional()
    weights = list(args.weights)
    if device.type == "cuda" and GPU_DEQUANT_TARGET_SHAPE not in weights and not args.quick:
        weights.append(GPU_DEQUANT_TARGET_SHAPE)
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    for shape in weights:
        W = torch.randn(*shape, generator=gen, device=device)
        for fmt in args.formats:
            qw = ops.quantize(W, fmt)
            stored = qw.nbytes
            for dtype in args.dtypes:
                dt = getattr(torch, dtype)
                fns = {f"dequantize[{b}]": (lambda b=b, qw=qw, dt=dt: ops.dequantize(qw, dt, backend=b))
                       for b in [*backends, "reference"]}
                if fmt == "nf4" and bnb is not None:
                    codes, state = bnb.quantize_4bit(W, blocksize=qw.group_size, quant_type="nf4",
                                                     compress_statistics=False)
                    state.dtype = dt
                    fns["bitsandbytes"] = lambda codes=codes, state=state: bnb.dequantize_4bit(codes, state)
                times = common.time_interleaved(fns, device, rounds=args.rounds, block_s=args.block_s)
                moved = stored + W.numel() * dt.itemsize
                for name, t in times.items():
                    target = met = None
                    if (device.type == "cuda" and fmt == "nf4" and dt == torch.bfloat16
                            and shape == GPU_DEQUANT_TARGET_SHAPE and name.startswith("dequantize[")):
                        target = f"< {GPU_DEQUANT_TARGET_US} us"
                        met = t.median_ms * 1e3 < GPU_DEQUANT_TARGET_US
                    row = res.add(op="dequantize", variant=name, backend=name.split("[")[-1].rstrip("]"),
                                  shape=list(shape), dtype=dtype, params={"format": fmt, "group_size": qw.group_size},
                                  time_ms=t.median_ms, time_iqr_ms=t.iqr_ms, time_min_ms=t.min_ms, runs=t.runs,
                                  bytes=moved, gbps=moved / (t.median_ms * 1e-3) / 1e9,
                                  baseline="bitsandbytes" if "bitsandbytes" in fns else None,
                                  ratio_to_baseline=(t.median_ms / times["bitsandbytes"].median_ms
                                                     if "bitsandbytes" in times else None),
                                  target=target, target_met=met)
                    rows.append(row)
                print(f"  dequantize {fmt} {shape[0]}x{shape[1]} -> {dtype}: " + ", ".join(
                    f"{n} {t.median_ms:.2f} ms" for n, t in times.items()), flush=True)
    return rows


def matmul_cases(res, args, device, backends):
    """dequant_matmul against dequantize-then-matmul and a plain matmul, per format/weight/tokens/dtype."""
    from lowrank_ops import ops

    rows = []
    gen = torch.Generator(device=device).manual_seed(1)
    for shape in args.weights:
        out_f, in_f = shape
        W = torch.randn(*shape, generator=gen, device=device) / in_f**0.5
        for fmt in args.formats:
            qw = ops.quantize(W, fmt)
            for dtype in args.dtypes:
                dt = getattr(torch, dtype)
                Wd = ops.dequantize(qw, dt)  # the baseline's full-precision weight
                for n_tok, tokens in enumerate(args.tokens):
                    X = torch.randn(tokens, in_f, generator=gen, device=device).to(dt)
                    fns = {"matmul": lambda X=X, Wd=Wd: X @ Wd.T,
                           "dequantize+matmul": lambda X=X, qw=qw, dt=dt: X @ ops.dequantize(qw, dt).T}
                    for b in backends:
                        fns[f"dequant_matmul[{b}]"] = lambda X=X, qw=qw, b=b: ops.dequant_matmul(X, qw, backend=b)
                    times = common.time_interleaved(fns, device, rounds=args.rounds, block_s=args.block_s)
                    memory = {}
                    if not args.no_memory and n_tok == 0:
                        memory = {n: common.peak_memory(f, device, warmup=False) for n, f in fns.items()}
                    flops = 2 * tokens * in_f * out_f
                    base = times["matmul"].median_ms
                    for name, t in times.items():
                        ratio = t.median_ms / base
                        target = met = None
                        if name.startswith("dequant_matmul["):
                            if device.type == "cpu":
                                target, met = f"<= {CPU_TIME_TARGET}x matmul", ratio <= CPU_TIME_TARGET
                            elif tokens == GPU_TARGET_TOKENS and dt == torch.bfloat16:
                                target = f">= {GPU_THROUGHPUT_TARGET:.0%} of matmul throughput"
                                met = 1 / ratio >= GPU_THROUGHPUT_TARGET
                        mem = memory.get(name)
                        row = res.add(op="dequant_matmul", variant=name,
                                      backend=name.split("[")[-1].rstrip("]") if "[" in name else "torch",
                                      shape=[tokens, in_f, out_f], dtype=dtype,
                                      params={"format": fmt, "group_size": qw.group_size, "tokens": tokens,
                                              "weight": list(shape)},
                                      time_ms=t.median_ms, time_iqr_ms=t.iqr_ms, time_min_ms=t.min_ms, runs=t.runs,
                                      flops=flops, gflops=flops / (t.median_ms * 1e-3) / 1e9,
                                      pct_of_ceiling=100 * base / t.median_ms if device.type == "cuda" else None,
                                      ceiling="matmul" if device.type == "cuda" else None,
                                      peak_bytes=mem.peak_bytes if mem else None,
                                      result_bytes=mem.result_bytes if mem else None,
                                      extra_bytes=mem.extra_bytes if mem else None,
                                      extra_frac=(mem.extra_bytes / (Wd.numel() * dt.itemsize)) if mem else None,
                                      extra_frac_of="deq(W) bytes in X's dtype" if mem else None,
                                      baseline="matmul", ratio_to_baseline=ratio, target=target, target_met=met)
                        rows.append(row)
                    print(f"  dequant_matmul {fmt} W {out_f}x{in_f} tokens {tokens} {dtype}: " + ", ".join(
                        f"{n} {t.median_ms:.1f} ms ({t.median_ms / base:.2f}x)" for n, t in times.items()), flush=True)
    return rows


def print_rows(dequant_rows, matmul_rows):
    if dequant_rows:
        print("\ndequantize")
        print(common.format_table(
            ["format", "W", "dtype", "variant", "time ms", "IQR ms", "GB/s", "vs bnb", "target", "met"],
            [[r["params"]["format"], f"{r['shape'][0]}x{r['shape'][1]}", r["dtype"], r["variant"],
              common.fmt(r["time_ms"], ".3f"), common.fmt(r["time_iqr_ms"], ".3f"), common.fmt(r["gbps"], ".2f"),
              common.fmt(r["ratio_to_baseline"], ".2f"), r["target"] or "", "" if r["target_met"] is None
              else ("yes" if r["target_met"] else "NO")] for r in dequant_rows], align="lllllrrrrl" + "l"))
    if matmul_rows:
        print("\ndequant_matmul (vs matmul: time / the plain matmul's; extra: peak bytes beyond the result)")
        print(common.format_table(
            ["format", "tokens x in x out", "dtype", "variant", "time ms", "IQR ms", "GFLOP/s", "vs matmul",
             "extra MiB", "target", "met"],
            [[r["params"]["format"], "x".join(str(s) for s in r["shape"]), r["dtype"], r["variant"],
              common.fmt(r["time_ms"], ".1f"), common.fmt(r["time_iqr_ms"], ".1f"), common.fmt(r["gflops"], ".1f"),
              common.fmt(r["ratio_to_baseline"], ".3f"),
              common.fmt(r["extra_bytes"] / common.MiB if r["extra_bytes"] is not None else None, ".1f"),
              r["target"] or "", "" if r["target_met"] is None else ("yes" if r["target_met"] else "NO")]
             for r in matmul_rows], align="lllllrrrrll"))


def main(argv=None) -> int:
    args = parse_args(argv)
    device = common.prepare(args)

    if args.weights is None:
        args.weights = ([(256, 512)] if args.quick else [(4096, 4096)] if device.type == "cpu" else
                        [(4096, 4096), (4096, 11008)])
    if args.tokens is None:
        args.tokens = [256] if args.quick else ([2048] if device.type == "cpu" else [2048, 4096, 8192])
    if args.rounds is None:  # a CPU call at the shapes takes seconds: three blocks each suffice
        args.rounds = 3 if args.quick or device.type == "cpu" else 5
    if args.block_s is None:
        args.block_s = 0.05 if args.quick else 0.25
    res = common.Results("quant", device)
    common.print_machine(res)
    backends = common.compiled_backends("dequant_matmul", device)
    bnb = bitsandbytes_functional()
    print(f"backends measured: {backends}; bitsandbytes: {'installed' if bnb is not None else 'not installed'}")
    t_start = time.perf_counter()
    print("measuring ceilings ...", flush=True)
    ceil = common.ceilings(device, quick=args.quick)
    res.meta.update(command=" ".join([sys.executable, "-m", "bench.bench_quant"] + (argv or sys.argv[1:])),
                    quick=args.quick, ceilings=ceil, backends=backends, tokens=args.tokens,
                    weights=[list(w) for w in args.weights], rounds=args.rounds, block_s=args.block_s,
                    bitsandbytes=getattr(sys.modules.get("bitsandbytes"), "__version__", None),
                    targets={"cpu_time_x_matmul": CPU_TIME_TARGET, "gpu_nf4_dequant_us": GPU_DEQUANT_TARGET_US,
                             "gpu_x_matmul_throughput_at_8192": GPU_THROUGHPUT_TARGET},
                    allow_tf32=torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None)
    for k, v in ceil.items():
        rate = (f"{v['gflops']:.1f} GFLOP/s" if "gflops" in v else f"{v['tflops']:.1f} TFLOP/s"
                if "tflops" in v else f"{v['gbps']:.1f} GB/s")
        print(f"  ceiling {k}: {v['what']}: {v['time_ms']:.2f} ms, {rate}")
    dequant_rows = dequantize_cases(res, args, device, backends)
    matmul_rows = matmul_cases(res, args, device, backends)
    res.meta["wall_s"] = time.perf_counter() - t_start
    common.print_results_header(res)
    print_rows(dequant_rows, matmul_rows)
    common.write_run(res, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
