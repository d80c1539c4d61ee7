"""Ahead-of-time compile check of the Triton kernels (docs/DESIGN.md §5, tier 3): no GPU needed.

Every kernel module of lowrank_ops/triton is listed in MODULES and defines `aot_entries()`, a list of
AotEntry: one specialization of a kernel as its launcher would run it (argument types, constexprs, warps,
stages). Kernels are the functions named *_kernel; tests/test_static_triton.py checks that every module is
listed and every kernel has entries for both targets. A new kernel family adds its module to MODULES.

Each entry is compiled with triton.compile for the CUDA targets (sm_80, sm_90 by default) down to PTX and a
cubin, using the ptxas that ships with Triton. The report gives, per entry and target: the shared memory
Triton allocated, the registers and spill bytes that `ptxas -v` reports for the PTX, and whether the PTX holds
Hopper warpgroup MMAs (`wgmma.mma_async`), which GEMM-shaped kernels are expected to use on sm_90.

Run it in a process where TRITON_INTERPRET is not set (the interpreter replaces @triton.jit functions by
Python ones that cannot be compiled):
    python -m lowrank_ops.triton.aot [--arch 80 90] [--json PATH]
The exit status is 0 when every entry compiled without spills and every wgmma expectation held.
"""

import argparse
import functools
import importlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

MODULES = ("lowrank_ops.triton.sketch", "lowrank_ops.triton.lowrank_adam", "lowrank_ops.triton.lowrank_adam_multi",
           "lowrank_ops.triton.quant", "lowrank_ops.triton.dct", "lowrank_ops.triton.apollo",
           "lowrank_ops.triton.blockwise8")
DEFAULT_ARCHS = (80, 90)


@dataclass(frozen=True)
class AotEntry:
    """One kernel specialization to compile.

    signature: type of every non-constexpr argument ("*bf16", "i32", "u64", ...), keyed by name.
    constexprs: value of every constexpr argument and of any argument fixed at launch (an int specialized to 1).
    divisible_by_16: arguments Triton's launcher would mark 16-divisible (aligned pointers, sizes and strides
    that are multiples of 16), which enables vectorized and asynchronous copies as at run time.
    expects_wgmma: the kernel is GEMM-shaped on 16-bit inputs, so its sm_90 code should use wgmma."""
    label: str
    kernel: object
    signature: dict
    constexprs: dict
    expects_wgmma: bool
    num_warps: int = 4
    num_stages: int = 3
    divisible_by_16: tuple = ()


def collect_entries(modules=MODULES) -> list:
    """All entries registered by the kernel modules."""
    from triton.runtime import JITFunction

    entries = []
    for name in modules:
        entries.extend(importlib.import_module(name).aot_entries())
    interpreted = sorted({e.kernel.__name__ for e in entries if not isinstance(e.kernel, JITFunction)})
    if interpreted:
        raise RuntimeError(f"lowrank_ops.triton.aot: {', '.join(interpreted)} are interpreter functions "
                           "(TRITON_INTERPRET was set when they were defined) and cannot be compiled; run the "
                           "check in a process without TRITON_INTERPRET")
    return entries


def _full_signature(entry: AotEntry) -> tuple:
    """(signature with "constexpr" for fixed arguments, constexprs), checked against the kernel's arguments."""
    names = entry.kernel.arg_names
    given = set(entry.signature) | set(entry.constexprs)
    missing, unknown = [n for n in names if n not in given], sorted(given - set(names))
    if missing or unknown or set(entry.signature) & set(entry.constexprs):
        raise ValueError(f"lowrank_ops.triton.aot: entry {entry.label!r} does not describe the arguments of "
                         f"{entry.kernel.__name__}: missing {missing}, unknown {unknown}, typed and fixed both "
                         f"{sorted(set(entry.signature) & set(entry.constexprs))}")
    signature = {n: ("constexpr" if n in entry.constexprs else entry.signature[n]) for n in names}
    return signature, dict(entry.constexprs)


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_usage(ptx: str, arch: int) -> dict:
    """Registers, stack frame and spill bytes of the PTX's kernel, from the bundled ptxas's -v report."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    ptxas = get_ptxas(arch).path  # the assembler Triton itself picks for this target
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, "-v", f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o",
                               os.path.join(tmp, "kernel.cubin")], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed on the PTX Triton produced:\n{proc.stderr}")
    regs, spills = _PTXAS_REGS.search(proc.stderr), _PTXAS_SPILLS.search(proc.stderr)
    if regs is None or spills is None:
        raise RuntimeError(f"unexpected ptxas -v report:\n{proc.stderr}")
    stack, stores, loads = (int(x) for x in spills.groups())
    return {"registers": int(regs.group(1)), "stack_bytes": stack, "spill_store_bytes": stores,
            "spill_load_bytes": loads}


def compile_entry(entry: AotEntry, arch: int) -> dict:
    """Compiles one entry for GPUTarget("cuda", arch, 32); returns its report row (never raises on a
    compile failure: the row says ok=False and why)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    row = {"label": entry.label, "kernel": entry.kernel.__name__, "arch": arch, "num_warps": entry.num_warps,
           "num_stages": entry.num_stages, "expects_wgmma": entry.expects_wgmma}
    try:
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        signature, constexprs = _full_signature(entry)
        attrs = {(entry.kernel.arg_names.index(n), ): backend.parse_attr("D") for n in entry.divisible_by_16}
        src = ASTSource(fn=entry.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=target,
                                  options={"num_warps": entry.num_warps, "num_stages": entry.num_stages})
        ptx = compiled.asm["ptx"]
        row.update(ok=True, error=None, shared_bytes=compiled.metadata.shared,
                   wgmma="wgmma.mma_async" in ptx, mma_sync="mma.sync" in ptx, **ptxas_usage(ptx, arch))
    except Exception as e:  # noqa: BLE001  (any failure is reported per entry; one must not hide the others)
        row.update(ok=False, error=f"{type(e).__name__}: {e}")
    return row


def row_problems(row: dict) -> list:
    """What is wrong with one report row: a failed compile, register spills, a GEMM without wgmma on sm_90."""
    where = f"{row['label']} sm_{row['arch']}"
    if not row["ok"]:
        return [f"{where}: did not compile: {row['error']}"]
    problems = []
    if row["spill_store_bytes"] or row["spill_load_bytes"]:
        problems.append(f"{where}: spills ({row['spill_store_bytes']} bytes stored, {row['spill_load_bytes']} "
                        f"loaded) at {row['registers']} registers")
    if row["expects_wgmma"] and row["arch"] >= 90 and not row["wgmma"]:
        problems.append(f"{where}: no wgmma.mma_async in the PTX")
    return problems


@functools.cache
def _cached_entries(modules: tuple) -> list:
    return collect_entries(modules)


def _compile_job(job: tuple) -> dict:
    """Worker side of run(): entries are rebuilt in each worker process, since kernels do not pickle."""
    modules, index, arch = job
    return compile_entry(_cached_entries(modules)[index], arch)


def run(archs=DEFAULT_ARCHS, modules=MODULES, jobs=None) -> list:
    """Report rows of every registered entry on every target, compiled by `jobs` worker processes
    (default: one per CPU)."""
    count = len(collect_entries(modules))
    work = [(tuple(modules), i, arch) for i in range(count) for arch in archs]
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1:
        return [_compile_job(job) for job in work]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_compile_job, work))


def format_table(rows: list) -> str:
    """One line per report row: entry, target, compiled, registers, spill bytes, shared memory, wgmma."""
    w = max([len("entry")] + [len(r["label"]) for r in rows])
    header = f"{'entry':<{w}} {'sm':>3} {'ok':>3} {'regs':>5} {'spill st/ld':>12} {'smem':>7} {'wgmma':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        if r["ok"]:
            lines.append(f"{r['label']:<{w}} {r['arch']:>3} {'yes':>3} {r['registers']:>5} "
                         f"{r['spill_store_bytes']:>5}/{r['spill_load_bytes']:<6} {r['shared_bytes']:>7} "
                         f"{'yes' if r['wgmma'] else 'no':>6}")
        else:
            lines.append(f"{r['label']:<{w}} {r['arch']:>3} {'NO':>3}  {r['error']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHS),
                        help="CUDA compute capabilities to compile for (default: 80 90)")
    parser.add_argument("--json", metavar="PATH", help="also write the report rows as JSON to PATH")
    parser.add_argument("--jobs", type=int, default=None, help="compiler processes (default: one per CPU)")
    args = parser.parse_args(argv)
    rows = run(args.arch, jobs=args.jobs)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    problems = [p for r in rows for p in row_problems(r)]
    for p in problems:
        print("PROBLEM:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
