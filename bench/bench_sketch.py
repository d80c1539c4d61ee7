"""Benchmark of the sketch family: sketch_project (P G / G P^T without materializing P) against
materializing P and multiplying.

    python -m bench.bench_sketch                  # the issue's case: G 4096x4096 fp32, rank 256, both
                                                  # kinds, left and right, on CUDA if visible else CPU
    python -m bench.bench_sketch --device cpu     # force the CPU
    python -m bench.bench_sketch --quick          # small shapes, few repeats (< 1 min), a smoke run

Variants of every (kind, side) case, all timed round-robin in one process:
  torch            the baseline: P materialized by plain torch (torch.randn / torch.randint as written in
                   the issue), then P @ G (or G @ P.T)
  torch-lean       the same with in-place float RNG (randint(dtype=float32) / randn then in-place scaling):
                   what a careful torch user would write; shown so the baseline is not a straw man
  matmul-only      P @ G with P already materialized (MKL on CPU, cuBLAS on GPU): the GEMM alone, the
                   bound no materialize-then-multiply method can beat, and the 100% of the GPU target
  ops.sketch+mm    lowrank_ops.ops.sketch(..., backend=B) @ G: our generator, then the same matmul
  project[B]       lowrank_ops.ops.sketch_project(G, ..., backend=B): the op under test
  project[reference]  the pure-torch reference backend (materializes P; philox in torch ops)
CPU only, to tell where sketch_project[cpu]'s time goes (the C++ backend generates P in column tiles of
kb = tile_columns(d) columns, at most d/8, and does one addmm per tile):
  diag:gen         ops.sketch(r, d, backend="cpu"): generating all r x d entries, no GEMM
  diag:tiled-gemm  the backend's GEMM sequence alone: zeros + d/kb torch addmm_ on pre-generated tiles
and a sweep of the tiled-GEMM time over tile widths (kind-independent; skipped by --quick).

Targets (issue): CPU: project[cpu] time <= 1.0x torch (Rademacher) / 1.3x (Gaussian) and extra memory
<= 1/8 of P's bytes. GPU: project[cuda] and project[triton] >= 90% of matmul-only (cuBLAS) throughput.
They are reported, never asserted.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from bench import common

KINDS = ("rademacher", "gaussian")
SIDES = ("left", "right")
CPU_TIME_TARGET = {"rademacher": 1.0, "gaussian": 1.3}  # x the torch baseline's time
CPU_MEMORY_TARGET = 1 / 8  # x P's bytes
GPU_THROUGHPUT_TARGET = 0.90  # x matmul-only (cuBLAS) throughput
RADEMACHER_GROUP = 128
SEED = 20240611


def tile_columns(d: int) -> int:
    """Mirror of tile_columns() in csrc/cpu/sketch.cpp: an eighth of d, rounded down to a multiple of the
    Rademacher group (128), at least one group, at most d. Used only to reproduce the backend's GEMM
    sequence in the diagnosis rows; if the C++ changes, this line of the report goes stale."""
    eighth = (d // 8) // RADEMACHER_GROUP * RADEMACHER_GROUP
    return min(d, max(RADEMACHER_GROUP, eighth))


# --------------------------------------------------------------------------------------------------------
# The variants
# --------------------------------------------------------------------------------------------------------


def torch_sketch(r: int, d: int, kind: str, device, generator: torch.Generator) -> torch.Tensor:
    """P with plain torch, written as the issue writes it."""
    generator.manual_seed(SEED)
    if kind == "gaussian":
        return torch.randn(r, d, generator=generator, device=device) / math.sqrt(d)
    return (torch.randint(0, 2, (r, d), generator=generator, device=device) * 2 - 1).float() / math.sqrt(d)


def torch_sketch_lean(r: int, d: int, kind: str, device, generator: torch.Generator) -> torch.Tensor:
    """P with plain torch, no int64 or extra float temporaries: float RNG, in-place scaling."""
    generator.manual_seed(SEED)
    s = 1.0 / math.sqrt(d)
    if kind == "gaussian":
        return torch.randn(r, d, generator=generator, device=device).mul_(s)
    p = torch.randint(0, 2, (r, d), generator=generator, device=device, dtype=torch.float32)
    return p.mul_(2 * s).sub_(s)


def apply(P: torch.Tensor, G: torch.Tensor, side: str) -> torch.Tensor:
    """P G or G P^T in G's dtype (P is cast to it: a no-op for float32)."""
    P = P.to(G.dtype)
    return P @ G if side == "left" else G @ P.T


def tiled_gemms(P_tiles, G: torch.Tensor, side: str, kb: int) -> torch.Tensor:
    """The C++ backend's GEMM sequence with the tiles given: acc = 0; acc += P[:, k] G[k, :] per tile."""
    r = P_tiles[0].shape[0]
    if side == "left":
        acc = torch.zeros(r, G.shape[1], dtype=G.dtype, device=G.device)
        for t, k0 in enumerate(range(0, G.shape[0], kb)):
            acc.addmm_(P_tiles[t], G.narrow(0, k0, P_tiles[t].shape[1]))
    else:
        acc = torch.zeros(G.shape[0], r, dtype=G.dtype, device=G.device)
        for t, k0 in enumerate(range(0, G.shape[1], kb)):
            acc.addmm_(G.narrow(1, k0, P_tiles[t].shape[1]), P_tiles[t].t())
    return acc



def variants(G, r, kind, side, device, backends, *, diagnose: bool, with_reference: bool):
    """name -> (callable, description, role). Roles: baseline, variant, op, diag."""
    from lowrank_ops import ops

    d = G.shape[0] if side == "left" else G.shape[1]
    gen = torch.Generator(device=device)
    P_given = torch_sketch_lean(r, d, kind, device, gen).to(G.dtype)
    out = {
        "torch": (lambda: apply(torch_sketch(r, d, kind, device, gen), G, side),
                  "torch: randint/randn materialize + matmul", "baseline"),
        "torch-lean": (lambda: apply(torch_sketch_lean(r, d, kind, device, gen), G, side),
                       "torch: in-place float RNG + matmul", "variant"),
        "matmul-only": (lambda: apply(P_given, G, side),
                        f"matmul only, P given ({'MKL' if device.type == 'cpu' else 'cuBLAS'})", "variant"),
    }
    for b in backends:
        out[f"ops.sketch[{b}]+mm"] = (
            lambda b=b: apply(ops.sketch(r, d, SEED, kind, G.dtype, device, backend=b), G, side),
            f"lowrank_ops.sketch[{b}] + matmul", "variant")
    for b in backends:
        out[f"project[{b}]"] = (
            lambda b=b: ops.sketch_project(G, SEED, r, kind, side, backend=b),
            f"lowrank_ops.sketch_project[{b}]", "op")
    if with_reference:
        out["project[reference]"] = (
            lambda: ops.sketch_project(G, SEED, r, kind, side, backend="reference"),
            "lowrank_ops.sketch_project[reference]", "variant")
    if diagnose and "cpu" in backends:
        kb = tile_columns(d)
        P_cpu = ops.sketch(r, d, SEED, kind, G.dtype, device, backend="cpu")
        tiles = [P_cpu[:, k0:k0 + kb].contiguous() for k0 in range(0, d, kb)]
        out["diag:gen"] = (lambda: ops.sketch(r, d, SEED, kind, G.dtype, device, backend="cpu"),
                           "diag: generate all of P (C++), no GEMM", "diag")
        out["diag:tiled-gemm"] = (lambda: tiled_gemms(tiles, G, side, kb),
                                  f"diag: the backend's {len(tiles)} addmm_ (kb={kb}), tiles given", "diag")
    return out


# --------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------


def run_case(res: common.Results, G, r, kind, side, device, backends, args) -> list[dict]:
    m, n = G.shape
    d = m if side == "left" else n
    other = n if side == "left" else m
    flops = 2 * r * d * other
    elem = G.element_size()
    p_bytes = r * d * (8 if G.dtype == torch.float64 else 4)  # P in the compute dtype
    io_bytes = (m * n + r * other) * elem  # read G once, write the result once
    fns = variants(G, r, kind, side, device, backends, diagnose=device.type == "cpu" and not args.no_diag,
                   with_reference=not args.no_reference)
    print(f"  {kind}/{side}: timing {len(fns)} variants ...", flush=True)
    t0 = time.perf_counter()
    timings = common.time_interleaved({k: v[0] for k, v in fns.items()}, device,
                                      rounds=args.rounds, block_s=args.block_s)
    mems = {k: common.peak_memory(v[0], device, warmup=False) for k, v in fns.items() if v[2] != "diag"}
    print(f"    done in {time.perf_counter() - t0:.1f} s", flush=True)

    base_ms = timings["torch"].median_ms
    mm_ms = timings["matmul-only"].median_ms
    rows = []
    for name, (fn, desc, role) in fns.items():
        t = timings[name]
        mem = mems.get(name)
        row = {
            "op": "sketch_project" if name.startswith("project") else "P@G" if side == "left" else "G@P^T",
            "variant": name, "backend": name[name.find("[") + 1:name.find("]")] if "[" in name else "torch",
            "shape": f"{m}x{n}", "dtype": str(G.dtype).replace("torch.", ""),
            "params": {"rank": r, "kind": kind, "side": side, "d": d, "seed": SEED},
            "time_ms": t.median_ms, "time_iqr_ms": t.iqr_ms, "time_min_ms": t.min_ms, "runs": t.runs,
            "flops": flops, "bytes": io_bytes, "gflops": flops / (t.median_ms * 1e-3) / 1e9,
            "gbps": io_bytes / (t.median_ms * 1e-3) / 1e9,
            "baseline": "torch", "ratio_to_baseline": t.median_ms / base_ms,
            "description": desc, "role": role, "timing_method": t.method,
        }
        if mem is not None:
            row.update(peak_bytes=mem.peak_bytes, result_bytes=mem.result_bytes, extra_bytes=mem.extra_bytes,
                       extra_frac=mem.extra_bytes / p_bytes, extra_frac_of="P bytes (r*d*4)",
                       memory_method=mem.method)
        if device.type == "cuda":
            row.update(pct_of_ceiling=100 * mm_ms / t.median_ms, ceiling="matmul-only (cuBLAS, P given)")
            if role == "op":
                ok = mm_ms / t.median_ms >= GPU_THROUGHPUT_TARGET
                row.update(target=f">= {GPU_THROUGHPUT_TARGET:.0%} of cuBLAS throughput", target_met=ok)
        elif role == "op":
            time_ok = t.median_ms / base_ms <= CPU_TIME_TARGET[kind]
            mem_ok = mem is not None and mem.extra_bytes <= CPU_MEMORY_TARGET * p_bytes
            row.update(target=f"time <= {CPU_TIME_TARGET[kind]}x torch; extra <= 1/8 P",
                       target_met=time_ok and mem_ok, target_time_met=time_ok, target_memory_met=mem_ok,
                       ratio_to_torch_lean=t.median_ms / timings["torch-lean"].median_ms)
        rows.append(res.add(**row))
    return rows


def tile_sweep(res: common.Results, G, r, device, args) -> list[dict]:
    """Tiled-GEMM time (the C++ backend's addmm_ sequence, tiles given) against the tile width kb."""
    from lowrank_ops import ops

    rows = []
    for side in SIDES:
        d = G.shape[0] if side == "left" else G.shape[1]
        other = G.shape[1] if side == "left" else G.shape[0]
        P = ops.sketch(r, d, SEED, "rademacher", G.dtype, device, backend="cpu")
        widths = sorted({w for w in (128, 256, 512, 1024, 2048, d) if w <= d} | {tile_columns(d)})
        fns = {}
        for kb in widths:
            tiles = [P[:, k0:k0 + kb].contiguous() for k0 in range(0, d, kb)]
            fns[kb] = (lambda tiles=tiles, kb=kb, side=side: tiled_gemms(tiles, G, side, kb))
        print(f"  tile sweep {side}: {widths} ...", flush=True)
        timings = common.time_interleaved({str(k): f for k, f in fns.items()}, device,
                                          rounds=args.rounds, block_s=args.block_s)
        for kb in widths:
            t = timings[str(kb)]
            flops = 2 * r * d * other
            rows.append(res.add(
                op="tiled addmm_ (diagnosis)", variant=f"diag:tiled-gemm kb={kb}", backend="torch",
                shape=f"{G.shape[0]}x{G.shape[1]}", dtype=str(G.dtype).replace("torch.", ""),
                params={"rank": r, "side": side, "d": d, "kb": kb, "tiles": -(-d // kb),
                        "backend_kb": kb == tile_columns(d)},
                time_ms=t.median_ms, time_iqr_ms=t.iqr_ms, time_min_ms=t.min_ms, runs=t.runs, flops=flops,
                gflops=flops / (t.median_ms * 1e-3) / 1e9, role="diag", timing_method=t.method,
                description="zeros + addmm_ per column tile of P (tiles pre-generated)"))
    return rows


# --------------------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------------------


def print_case(rows: list[dict], device: torch.device) -> None:
    p = rows[0]["params"]
    print(f"\n{p['kind']}, side {p['side']}: G {rows[0]['shape']} {rows[0]['dtype']}, rank {p['rank']} "
          f"(P is {p['rank']}x{p['d']})")
    header = ["variant", "time ms", "IQR ms", "GFLOP/s", "extra MiB", "extra/P", "vs torch"]
    if device.type == "cuda":
        header.append("% cuBLAS")
    header.append("target")
    body = []
    for r in rows:
        line = [r["variant"], common.fmt(r["time_ms"], ".2f"), common.fmt(r["time_iqr_ms"], ".2f"),
                common.fmt(r["gflops"], ".1f"),
                common.fmt(None if r["extra_bytes"] is None else r["extra_bytes"] / common.MiB, ".2f"),
                common.fmt(r["extra_frac"], ".3f"), common.fmt(r["ratio_to_baseline"], ".2f") + "x"]
        if device.type == "cuda":
            line.append(common.fmt(r["pct_of_ceiling"], ".0f"))
        if r.get("target") is None:
            line.append("")
        elif device.type == "cuda":
            line.append(("MET" if r["target_met"] else "MISSED") + " (>= 90% cuBLAS)")
        else:
            line.append(f"time {'ok' if r['target_time_met'] else 'MISSED'} "
                        f"(<= {CPU_TIME_TARGET[p['kind']]}x), "
                        f"mem {'ok' if r['target_memory_met'] else 'MISSED'} (<= 1/8 P)")
        body.append(line)
    print(common.format_table(header, body, "l" + "r" * (len(header) - 2) + "l"))


def print_sweep(rows: list[dict]) -> None:
    print("\nDiagnosis: the C++ backend's GEMM sequence alone (zeros + one addmm_ per tile, tiles given) "
          "against the tile width kb; * = the width the backend uses")
    body = [[r["params"]["side"], f"{r['params']['kb']}{' *' if r['params']['backend_kb'] else ''}",
             r["params"]["tiles"], common.fmt(r["time_ms"], ".2f"), common.fmt(r["time_iqr_ms"], ".2f"),
             common.fmt(r["gflops"], ".1f")] for r in rows]
    print(common.format_table(["side", "kb", "tiles", "time ms", "IQR ms", "GFLOP/s"], body, "lrrrrr"))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small shapes (1024x1024, rank 64), few repeats, no tile sweep: a smoke run < 1 min")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto = cuda when a GPU is visible, else cpu")
    ap.add_argument("--out", default=None,
                    help="directory for <name>.json/.csv (default bench/results)")
    ap.add_argument("--name", default=None,
                    help="results file stem (default sketch_<device>, plus _quick with --quick and _t<N> "
                         "with --threads N)")
    ap.add_argument("--shape", default=None, help="MxN of G (default 4096x4096; 1024x1024 with --quick)")
    ap.add_argument("--rank", type=int, default=None, help="rank r (default 256; 64 with --quick)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "float64"))
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved timing rounds per variant (default 7; 3 with --quick)")
    ap.add_argument("--block-s", type=float, default=None,
                    help="seconds per timed block on CPU (default 0.25; 0.05 with --quick)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads(N) before measuring (default: torch's own choice)")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference backend")
    ap.add_argument("--no-diag", action="store_true", help="skip the CPU diagnosis rows and tile sweep")
    ap.add_argument("--no-write", action="store_true", help="print only, write no result files")
    args = ap.parse_args(argv)
    shape = args.shape or ("1024x1024" if args.quick else "4096x4096")
    args.shape = tuple(int(x) for x in shape.split("x"))
    args.rank = args.rank or (64 if args.quick else 256)
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.block_s = args.block_s or (0.05 if args.quick else 0.25)
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.sides = [s for s in args.sides.split(",") if s]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = common.prepare(args)

    dtype = getattr(torch, args.dtype)
    res = common.Results("sketch", device)
    common.print_machine(res)
    backends = common.compiled_backends("sketch_project", device)
    print(f"backends measured: {backends + ([] if args.no_reference else ['reference'])}")
    if device.type == "cuda":
        print(f"torch.backends.cuda.matmul.allow_tf32 = {torch.backends.cuda.matmul.allow_tf32}")

    t_start = time.perf_counter()
    print("measuring ceilings ...", flush=True)
    ceil = common.ceilings(device, quick=args.quick)
    res.meta.update(command=" ".join([sys.executable, "-m", "bench.bench_sketch"] + (argv or sys.argv[1:])),
                    quick=args.quick, ceilings=ceil, backends=backends,
                    targets={"cpu_time_x_torch": CPU_TIME_TARGET, "cpu_extra_x_P_bytes": CPU_MEMORY_TARGET,
                             "gpu_x_cublas_throughput": GPU_THROUGHPUT_TARGET},
                    cpu_tile_columns={"left": tile_columns(args.shape[0]),
                                      "right": tile_columns(args.shape[1])},
                    allow_tf32=torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None)
    for k, v in ceil.items():
        rate = (f"{v['gflops']:.1f} GFLOP/s" if "gflops" in v else f"{v['tflops']:.1f} TFLOP/s"
                if "tflops" in v else f"{v['gbps']:.1f} GB/s")
        print(f"  ceiling {k}: {v['what']}: {v['time_ms']:.2f} ms, {rate}")

    gen = torch.Generator(device=device).manual_seed(0)
    G = torch.randn(*args.shape, generator=gen, device=device).to(dtype)
    cases = []
    for kind in args.kinds:
        for side in args.sides:
            cases.append(run_case(res, G, args.rank, kind, side, device, backends, args))
    sweep = []
    if device.type == "cpu" and not args.quick and not args.no_diag:
        sweep = tile_sweep(res, G, args.rank, device, args)
    res.meta["wall_s"] = time.perf_counter() - t_start

    common.print_results_header(res)
    print("time: median; IQR: spread of the timed blocks; extra: peak allocator bytes during one call minus "
          "the bytes of its result; extra/P: that over P's bytes; vs torch: time / the torch baseline's")
    for rows in cases:
        print_case(rows, device)
    if sweep:
        print_sweep(sweep)
    common.write_run(res, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
