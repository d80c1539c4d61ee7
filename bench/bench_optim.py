"""Benchmark of one low-rank AdamW step of a weight matrix: the fused op (lowrank_ops.ops.lowrank_adamw_step_)
against the eager chain and against full-rank AdamW, with the optimizer-state bytes of each.

    python -m bench.bench_optim                 # 4096x4096 and 4096x11008 layers, ranks 128/256/512, seeded
                                                # (rademacher, gaussian), DCT rows ("dct") and explicit
                                                # ("matrix") projections
    python -m bench.bench_optim --quick         # 1024x2816 layer, rank 64: a smoke run
    python -m bench.bench_optim --device cpu    # force the CPU (default: CUDA when visible)
    python -m bench.bench_optim --threads 1     # one torch thread (less sensitive to a busy machine)

The projected side is GaLore's "std" choice: the smaller dimension (right, G P^T, when m >= n; else left,
P G). W, G and the moments are float32 (--dtype sets W and G). Variants of one (layer, rank, kind) case, all
timed round-robin in one process:
  fused[B]          ops.lowrank_adamw_step_(backend=B): the op under test (B = cpu; cuda and triton on a GPU)
  eager             ops.lowrank_adamw_step_(backend="reference"): the eager chain of torch ops in float32
                    (P materialized, P G, the moment ops, P^T N as an m x n tensor, the weight-update ops)
  eager+ops.sketch  the same chain with P from ops.sketch (the C++/CUDA generator) instead of the reference's
                    torch-op Philox: tells how much of the eager time is generating P
  adamw             torch.optim.AdamW(foreach=True) step on the full matrix (the full-rank baseline)
  galore-torch      galore_torch.GaLoreAdamW step (when installed; it is not a dependency)
CPU diagnosis rows (where the fused op's time goes):
  diag:gemms        the two GEMMs alone with P given: P G (or G P^T) and P^T N (or N P) by MKL, no tiling
  diag:project      ops.sketch_project(backend="cpu"): the fused op's tiled projection phase alone

Targets (issue 3): CPU: fused[cpu] <= 0.7x eager for projections regenerated in the kernels (seeded, dct). GPU (H100): >= 70% of the roofline
floor max(bytes of W, G and states / measured copy bandwidth, GEMM FLOPs / measured bf16 GEMM rate).
They are reported, never asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from bench import common  # noqa: E402

LAYERS = ((4096, 4096), (4096, 11008))
RANKS = (128, 256, 512)
SEEDED = ("rademacher", "gaussian")
KINDS = SEEDED + ("dct", "matrix")
SEED = 20240611
HYPER = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
CPU_TARGET = 0.7  # fused time <= this x the eager chain's, seeded kinds
GPU_TARGET = 0.7  # fraction of the roofline floor


def galore_available() -> bool:
    return importlib.util.find_spec("galore_torch") is not None


def make_projection(kind: str, shape, rank: int, device):
    """GaLore's "std" side (project the smaller dimension) with a seeded sketch, `rank` DCT-II rows (sorted
    random indices, int16 as the "dct" projection persists them) or an explicit P with orthonormal rows (the
    shape of an SVD basis)."""
    from lowrank_ops.ops import Projection

    m, n = shape
    side = "right" if m >= n else "left"
    d = n if side == "right" else m
    gen = torch.Generator().manual_seed(SEED)
    if kind == "matrix":
        q, _ = torch.linalg.qr(torch.randn(d, rank, generator=gen))
        return Projection.from_matrix(q.T.contiguous().to(device), side), side
    if kind == "dct":
        indices = torch.randperm(d, generator=gen)[:rank].sort().values.to(device=device, dtype=torch.int16)
        return Projection.from_dct_indices(indices, side), side
    return Projection.seeded(kind, SEED, rank, side), side


def eager_with_ops_sketch(W, G, m, v, projection, step):
    """The reference chain with P from ops.sketch (compiled generator) instead of the torch-op Philox."""
    from lowrank_ops import ops
    from lowrank_ops.ops import Projection, SideOperator
    from lowrank_ops.reference import lowrank_adam as reference

    def explicit(op, dim):
        if op is None or op.kind == "matrix":
            return op
        return SideOperator("matrix", op.rank, matrix=ops.sketch(op.rank, dim, op.seed, op.kind, device=W.device))

    p = Projection(explicit(projection.left, W.shape[0]), explicit(projection.right, W.shape[1]))
    reference.lowrank_adamw_step_(W, G, m, v, p, step=step, **HYPER)


def state_bytes(kind: str, shape, rank: int, side: str) -> dict:
    """Optimizer state per method: the two moments, plus what each persists of its projection."""
    m, n = shape
    other = n if side == "left" else m
    d = m if side == "left" else n
    moments = 2 * rank * other * 4
    persisted = {"matrix": rank * d * 4, "dct": rank * 2 + 8}.get(kind, 16)  # P, indices + seed, seed + index
    fused = moments + persisted
    return {"fused": fused, "eager": fused, "adamw": 2 * m * n * 4,
            "galore-torch": moments + rank * d * 4}  # GaLore keeps its SVD basis



def variants(shape, rank, kind, device, dtype, backends, args) -> dict:
    """name -> (callable, role, state key). Every variant owns its W, G and state."""
    from lowrank_ops import ops

    gen = torch.Generator(device=device).manual_seed(SEED)
    W0 = torch.randn(*shape, generator=gen, device=device).to(dtype)
    G = (torch.randn(*shape, generator=gen, device=device) * 1e-2).to(dtype)
    projection, side = make_projection(kind, shape, rank, device)
    r_shape = projection.projected_shape(shape)
    out = {}

    def step_variant(fn):
        W = W0.clone()
        m = torch.zeros(r_shape, device=device)
        v = torch.zeros(r_shape, device=device)
        return lambda: fn(W, G, m, v, projection, step=10)

    for b in backends:
        out[f"fused[{b}]"] = (step_variant(lambda W, G, m, v, p, step, b=b: ops.lowrank_adamw_step_(
            W, G, m, v, p, step=step, **HYPER, backend=b)), "op", "fused")
    out["eager"] = (step_variant(lambda W, G, m, v, p, step: ops.lowrank_adamw_step_(
        W, G, m, v, p, step=step, **HYPER, backend="reference")), "baseline", "eager")
    if kind in SEEDED:
        out["eager+ops.sketch"] = (step_variant(eager_with_ops_sketch), "variant", "eager")

    W_full = torch.nn.Parameter(W0.clone())
    W_full.grad = G.clone()
    adamw = torch.optim.AdamW([W_full], lr=HYPER["lr"], betas=(HYPER["beta1"], HYPER["beta2"]), eps=HYPER["eps"],
                              weight_decay=HYPER["weight_decay"], foreach=True)
    out["adamw"] = (adamw.step, "variant", "adamw")
    if galore_available() and kind in SEEDED:
        import galore_torch

        W_g = torch.nn.Parameter(W0.clone())
        W_g.grad = G.clone()
        opt = galore_torch.GaLoreAdamW([{"params": [W_g], "rank": rank, "update_proj_gap": 10**9, "scale": 1.0,
                                          "proj_type": "std"}], lr=HYPER["lr"], weight_decay=HYPER["weight_decay"])
        opt.step()  # the first step computes the SVD basis; later steps reuse it, like ours
        out["galore-torch"] = (opt.step, "variant", "galore-torch")

    if device.type == "cpu" and not args.no_diag:
        d = shape[0] if side == "left" else shape[1]
        op = projection.left or projection.right
        P = {"matrix": lambda: op.matrix, "dct": lambda: ops.dct_basis(d, op.indices)}.get(
            kind, lambda: ops.sketch(rank, d, SEED, kind))()
        N = torch.randn(r_shape, generator=gen)
        if side == "left":
            gemms = (lambda: (P @ G, P.T @ N))
        else:
            gemms = (lambda: (G @ P.T, N @ P))
        out["diag:gemms"] = (gemms, "diag", None)
        if kind in SEEDED:
            out["diag:project"] = (lambda: ops.sketch_project(G, SEED, rank, kind, side, backend="cpu"), "diag", None)
    return out, side


def run_case(res, shape, rank, kind, device, dtype, backends, ceil, args) -> list[dict]:
    m, n = shape
    fns, side = variants(shape, rank, kind, device, dtype, backends, args)
    other = n if side == "left" else m
    flops = 4 * m * n * rank  # project + unproject GEMMs
    elem = torch.finfo(dtype).bits // 8
    io_bytes = 2 * m * n * elem + m * n * elem + 4 * rank * other * 4  # W r/w, G read, moments r/w
    print(f"  {m}x{n} rank {rank} {kind} (side {side}): timing {len(fns)} variants ...", flush=True)
    t0 = time.perf_counter()
    timings = common.time_interleaved({k: v[0] for k, v in fns.items()}, device, rounds=args.rounds,
                                      block_s=args.block_s)
    mems = {k: common.peak_memory(v[0], device) for k, v in fns.items() if v[1] != "diag"} if args.memory else {}
    print(f"    done in {time.perf_counter() - t0:.1f} s", flush=True)
    states = state_bytes(kind, shape, rank, side)
    base = timings["eager"].median_ms
    floor_ms = None
    if device.type == "cuda":
        floor_ms = max(io_bytes / (ceil["copy"]["gbps"] * 1e9), flops / (ceil["gemm_bf16"]["tflops"] * 1e12)) * 1e3
    rows = []
    for name, (fn, role, state_key) in fns.items():
        t = timings[name]
        row = dict(op="lowrank_adamw_step_", variant=name, role=role,
                   backend=name[name.find("[") + 1:name.find("]")] if "[" in name else name,
                   shape=f"{m}x{n}", dtype=str(dtype).replace("torch.", ""),
                   params={"rank": rank, "kind": kind, "side": side, "seed": SEED, **HYPER},
                   time_ms=t.median_ms, time_iqr_ms=t.iqr_ms, time_min_ms=t.min_ms, runs=t.runs, flops=flops,
                   bytes=io_bytes, gflops=flops / (t.median_ms * 1e-3) / 1e9,
                   gbps=io_bytes / (t.median_ms * 1e-3) / 1e9, baseline="eager",
                   ratio_to_baseline=t.median_ms / base, timing_method=t.method,
                   state_bytes=states.get(state_key) if state_key else None)
        mem = mems.get(name)
        if mem is not None:
            row.update(peak_bytes=mem.peak_bytes, result_bytes=mem.result_bytes, extra_bytes=mem.extra_bytes,
                       extra_frac=mem.extra_bytes / (m * n * elem), extra_frac_of="W bytes",
                       memory_method=mem.method)
        if floor_ms is not None:
            row.update(pct_of_ceiling=100 * floor_ms / t.median_ms,
                       ceiling=f"roofline floor {floor_ms:.3f} ms (bytes / copy GB/s, FLOPs / bf16 GEMM rate)")
            if role == "op":
                row.update(target=f">= {GPU_TARGET:.0%} of the roofline floor",
                           target_met=floor_ms / t.median_ms >= GPU_TARGET)
        elif role == "op" and kind != "matrix":
            row.update(target=f"<= {CPU_TARGET}x eager", target_met=t.median_ms / base <= CPU_TARGET)
        rows.append(res.add(**row))
    return rows


def print_case(rows: list[dict], device: torch.device) -> None:
    p = rows[0]["params"]
    print(f"\n{rows[0]['shape']} {rows[0]['dtype']}, rank {p['rank']}, {p['kind']} (side {p['side']})")
    header = ["variant", "time ms", "IQR ms", "vs eager", "state MiB", "extra MiB"]
    if device.type == "cuda":
        header.append("% floor")
    header.append("target")
    body = []
    for r in rows:
        line = [r["variant"], common.fmt(r["time_ms"], ".1f"), common.fmt(r["time_iqr_ms"], ".1f"),
                common.fmt(r["ratio_to_baseline"], ".2f") + "x",
                common.fmt(None if r.get("state_bytes") is None else r["state_bytes"] / common.MiB, ".1f"),
                common.fmt(None if r.get("extra_bytes") is None else r["extra_bytes"] / common.MiB, ".1f")]
        if device.type == "cuda":
            line.append(common.fmt(r.get("pct_of_ceiling"), ".0f"))
        line.append("" if r.get("target") is None else ("MET" if r["target_met"] else "MISSED") + f" ({r['target']})")
        body.append(line)
    print(common.format_table(header, body, "l" + "r" * (len(header) - 2) + "l"))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one 1024x2816 layer, rank 64, few repeats")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--out", default=None, help="directory for <name>.json/.csv (default bench/results)")
    ap.add_argument("--name", default=None, help="results file stem (default optim_<device>[_quick])")
    ap.add_argument("--layers", default=None, help="comma-separated MxN (default 4096x4096,4096x11008)")
    ap.add_argument("--ranks", default=None, help="comma-separated ranks (default 128,256,512)")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="W and G dtype")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; 3 with --quick)")
    ap.add_argument("--block-s", type=float, default=None, help="seconds per CPU block (default 0.25)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads(N) before measuring (default: torch's own choice)")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    ap.add_argument("--no-diag", action="store_true", help="skip the CPU diagnosis rows")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    layers = args.layers or ("1024x2816" if args.quick else ",".join(f"{m}x{n}" for m, n in LAYERS))
    args.layers = [tuple(int(x) for x in s.split("x")) for s in layers.split(",")]
    args.ranks = [int(r) for r in (args.ranks or ("64" if args.quick else ",".join(map(str, RANKS)))).split(",")]
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.block_s = args.block_s or (0.05 if args.quick else 0.25)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = common.prepare(args)

    dtype = getattr(torch, args.dtype)
    res = common.Results("optim", device)
    common.print_machine(res)
    backends = common.compiled_backends("lowrank_adamw_step_", device)
    print(f"fused backends measured: {backends}")
    galore = galore_available()
    print("galore-torch: " + ("installed, measured" if galore else "not installed (pip install galore-torch); "
                              "its rows are absent"))
    t_start = time.perf_counter()
    ceil = common.ceilings(device, quick=args.quick)
    res.meta.update(command=" ".join([sys.executable, "-m", "bench.bench_optim"] + (argv or sys.argv[1:])),
                    quick=args.quick, ceilings=ceil, backends=backends, galore_torch_installed=galore,
                    targets={"cpu_fused_x_eager_seeded": CPU_TARGET, "gpu_fraction_of_roofline": GPU_TARGET})
    cases = []
    for shape in args.layers:
        for rank in args.ranks:
            for kind in args.kinds:
                cases.append(run_case(res, shape, rank, kind, device, dtype, backends, ceil, args))
    res.meta["wall_s"] = time.perf_counter() - t_start
    common.print_results_header(res)
    print("time: median of interleaved blocks; vs eager: time / the eager chain's; state: optimizer-state "
          "bytes of the method (moments + what it persists of the projection); extra: peak allocator bytes "
          "of one call above the start")
    for rows in cases:
        print_case(rows, device)
    common.write_run(res, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
