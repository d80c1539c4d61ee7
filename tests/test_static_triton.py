"""Tier-3 static GPU check without a GPU (docs/DESIGN.md §5): every Triton kernel compiles ahead of time for
GPUTarget("cuda", 80, 32) and GPUTarget("cuda", 90, 32) with Triton's bundled ptxas, without register spills,
and the GEMM-shaped kernels on 16-bit inputs use Hopper's warpgroup MMA (wgmma) on sm_90.

The compile runs `python -m lowrank_ops.triton.aot` in a subprocess whose environment has no TRITON_INTERPRET:
tests/conftest.py sets it for the interpreter tests, and the interpreter replaces @triton.jit functions by
Python ones that cannot be compiled. The report table is printed (see it with `pytest -s` or `-rA`)."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRITON_DIR = ROOT / "lowrank_ops" / "triton"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (the AOT check compiles with it)")


def kernel_modules():
    """{module name: [kernel names]} of every kernel module in lowrank_ops/triton/. Kernels are the
    functions named *_kernel (device functions called from kernels are not launched on their own; _common.py
    holds only such shared device functions and launch helpers)."""
    found = {}
    for path in sorted(TRITON_DIR.glob("*.py")):
        if path.name in ("__init__.py", "aot.py", "_common.py"):
            continue
        kernels = re.findall(r"^def (\w+_kernel)\(", path.read_text(), flags=re.MULTILINE)
        found[f"lowrank_ops.triton.{path.stem}"] = kernels
    return found


@pytest.fixture(scope="module")
def aot_rows(tmp_path_factory):
    report = tmp_path_factory.mktemp("triton_aot") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "lowrank_ops.triton.aot", "--json", str(report)], check=False,
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    print(proc.stdout)
    if not report.exists():
        pytest.fail(f"the AOT check wrote no report (exit status {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(report.read_text())


def test_every_kernel_module_is_registered():
    from lowrank_ops.triton import aot

    assert set(kernel_modules()) == set(aot.MODULES), (
        "every kernel module of lowrank_ops/triton must be listed in lowrank_ops.triton.aot.MODULES")


def test_every_kernel_has_entries_on_both_targets(aot_rows):
    for module, kernels in kernel_modules().items():
        assert kernels, f"{module} defines no *_kernel function"
        for kernel in kernels:
            archs = {row["arch"] for row in aot_rows if row["kernel"] == kernel}
            assert archs == {80, 90}, f"{module}.{kernel} is compiled for {sorted(archs)}, not sm_80 and sm_90"


def test_every_entry_compiles(aot_rows):
    failed = [f"{r['label']} sm_{r['arch']}: {r['error']}" for r in aot_rows if not r["ok"]]
    assert not failed, "\n".join(failed)


def test_gemm_kernels_use_wgmma_on_sm90(aot_rows):
    expected = [r for r in aot_rows if r["ok"] and r["expects_wgmma"] and r["arch"] == 90]
    assert expected, "no entry expects wgmma: the GEMM-shaped kernels are not registered"
    missing = [r["label"] for r in expected if not r["wgmma"]]
    assert not missing, "no wgmma.mma_async in the sm_90 PTX of: " + ", ".join(missing)


def test_no_register_spills(aot_rows):
    spilled = [f"{r['label']} sm_{r['arch']}: {r['registers']} registers, {r['spill_store_bytes']} bytes spill "
               f"stores, {r['spill_load_bytes']} bytes spill loads" for r in aot_rows
               if r["ok"] and (r["spill_store_bytes"] or r["spill_load_bytes"])]
    assert not spilled, "\n".join(spilled)
