"""Tier-3 static GPU checks without a GPU (docs/DESIGN.md §5): every kernels/*.cu compiles with nvcc for sm_80 and
sm_90a, warnings as errors (nvcc's own kinds and the host compiler's -Wall -Wextra), and ptxas reports no
register spills (0 bytes spill stores and loads) for any kernel; and the CUDA bindings csrc/cuda/*.cpp
compile against torch's headers.

Each .cu file is one nvcc call with both -gencode targets (-c into a temporary directory); files compile in
parallel. Skipped, with the reason, only when nvcc is not on PATH."""

import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CU_FILES = sorted((ROOT / "kernels").glob("*.cu"))
BINDINGS = sorted((ROOT / "csrc" / "cuda").glob("*.cpp"))
ARCHS = ("sm_80", "sm_90a")
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(
    NVCC is None, reason="nvcc is not on PATH (the static CUDA checks need the CUDA toolkit)"
)

NVCC_FLAGS = [
    "-c", "-std=c++17", "-O3", "--expt-relaxed-constexpr",
    *(f"-gencode=arch=compute_{a[3:]},code={a}" for a in ARCHS),
    "--threads=0",  # the two targets compile in parallel
    "-Xptxas=-v",
    # nvcc's warning kinds as errors; missing-launch-bounds is left out: nvcc 13 reports it for every
    # templated kernel even when the template carries __launch_bounds__.
    "-Werror=all-warnings,cross-execution-space-call,default-stream-launch,reorder,deprecated-declarations",
    "-Xcompiler=-Wall,-Wextra,-Werror",
]

ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(\S+)'")
SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")


def ptxas_report(log: str):
    """{(kernel, arch): (registers, stack bytes, spill store bytes, spill load bytes)} from `-Xptxas -v`."""
    report, current, frame = {}, None, None
    for line in log.splitlines():
        if m := ENTRY.search(line):
            current, frame = (m.group(1), m.group(2)), None
        elif current and (m := SPILLS.search(line)):
            frame = tuple(int(g) for g in m.groups())
        elif current and frame and (m := REGISTERS.search(line)):
            report[current] = (int(m.group(1)), *frame)
            current = None
    return report


def compile_cu(path: Path, out_dir: str):
    cmd = [NVCC, *NVCC_FLAGS, str(path), "-o", os.path.join(out_dir, path.stem + ".o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    return cmd, proc


@pytest.fixture(scope="module")
def nvcc_results():
    """{path: (command, completed process)} for every kernels/*.cu, compiled in parallel once."""
    with tempfile.TemporaryDirectory() as out_dir:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            futures = {p: pool.submit(compile_cu, p, out_dir) for p in CU_FILES}
            results = {p: f.result() for p, f in futures.items()}
    return results


def test_there_are_cuda_sources():
    assert CU_FILES, f"no kernels/*.cu found under {ROOT / 'kernels'}"


@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_cu_compiles_without_warnings(nvcc_results, path):
    cmd, proc = nvcc_results[path]
    assert proc.returncode == 0, (
        f"nvcc failed on {path.name} (exit {proc.returncode}):\n{' '.join(cmd)}\n{proc.stderr}"
    )


@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_cu_kernels_do_not_spill(nvcc_results, path):
    cmd, proc = nvcc_results[path]
    if proc.returncode != 0:
        pytest.fail(f"nvcc failed on {path.name}; see test_cu_compiles_without_warnings")
    report = ptxas_report(proc.stdout + proc.stderr)
    kernels = {name for name, _ in report}
    assert kernels, f"ptxas reported no kernels for {path.name}:\n{proc.stderr}"
    for name in kernels:
        for arch in ARCHS:
            assert (name, arch) in report, f"{path.name}: no ptxas report for {name} on {arch}"
    spilling = [
        f"{arch} {name}: {regs} registers, {store} bytes spill stores, {load} bytes spill loads"
        for (name, arch), (regs, _stack, store, load) in sorted(report.items())
        if store or load
    ]
    assert not spilling, f"{path.name}: kernels spill registers to local memory:\n" + "\n".join(spilling)


def cuda_include_dir():
    """The include directory nvcc itself uses (nvcc on PATH may be a wrapper script outside the toolkit)."""
    out = subprocess.run([NVCC, "--dryrun", "-x", "cu", "-c", os.devnull], capture_output=True, text=True)
    found = re.search(r'INCLUDES="-I([^"\s]+)', out.stdout + out.stderr)
    return Path(found.group(1)) if found else None


@pytest.mark.parametrize("path", BINDINGS, ids=lambda p: p.name)
def test_cuda_binding_compiles(path, tmp_path):
    """g++ -fsyntax-only of csrc/cuda/*.cpp with -DLOWRANK_OPS_CUDA, torch's and CUDA's headers, warnings
    as errors. A CPU-only torch ships the c10/cuda headers but not the generated header
    c10/cuda/impl/cuda_cmake_macros.h; then a stand-in defining what torch's shared-library build defines
    goes to a temporary include directory."""
    cpp_extension = pytest.importorskip("torch.utils.cpp_extension", reason="the bindings need torch headers")
    import torch

    from build_tools import toolchain

    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no host C++ compiler (c++ or g++) on PATH")
    cuda_include = cuda_include_dir()
    if cuda_include is None or not (cuda_include / "cuda_runtime.h").exists():
        pytest.skip(f"cannot locate the CUDA include directory of {NVCC} (nvcc --dryrun)")
    torch_includes = [Path(p) for p in cpp_extension.include_paths()]
    macros = "c10/cuda/impl/cuda_cmake_macros.h"
    if not any((p / macros).exists() for p in torch_includes):
        (tmp_path / macros).parent.mkdir(parents=True)
        (tmp_path / macros).write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        torch_includes.append(tmp_path)
    standard = toolchain.cxx_standard(torch.__config__.show())  # torch's headers need torch's standard
    cmd = [cxx, f"-std=c++{standard}", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-DLOWRANK_OPS_CUDA",
           *(f"-isystem{p}" for p in [*torch_includes, cuda_include]), str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"{path.name} does not compile:\n{' '.join(cmd)}\n{proc.stderr}"
