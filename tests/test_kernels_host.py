"""The host unit tests of kernels/ (kernels/tests/*.cpp: Philox known answers, sketch segment == entry,
Rademacher +-1, Gaussian moments; the 8-bit bucket encode == the midpoint count at every change point),
built with CMake without torch and run with ctest in a temporary build directory. Skipped, with the reason,
when cmake or ctest is not on PATH."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CMAKE, CTEST = shutil.which("cmake"), shutil.which("ctest")


@pytest.mark.skipif(CMAKE is None or CTEST is None, reason="cmake or ctest is not on PATH")
def test_kernels_host_ctest(tmp_path):
    build = tmp_path / "build"
    steps = [
        [CMAKE, "-S", str(ROOT), "-B", str(build), "-DLOWRANK_OPS_BUILD_TORCH=OFF",
         "-DLOWRANK_OPS_WITH_CUDA=OFF"],
        [CMAKE, "--build", str(build), "--parallel"],
        [CTEST, "--output-on-failure"],
    ]
    for cmd in steps:
        cwd = build if cmd[0] == CTEST else ROOT
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)
        assert proc.returncode == 0, (
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
