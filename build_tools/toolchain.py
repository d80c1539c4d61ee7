"""What a build of lowrank_ops._C takes from its surroundings: whether CUDA sources are wanted, the CUDA
toolkit that compiles them, the C++ standard of the installed torch, and the wheel's local version tag.

setup.py uses this before it imports torch.utils.cpp_extension (which reads CUDA_HOME once, at import);
tests/test_build.py tests it without a CUDA build of torch. Nothing here imports torch: the caller passes
torch's version strings and build configuration in.

Every failure is a ToolchainError whose message is one line saying what is missing and what to do.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class ToolchainError(RuntimeError):
    """The build cannot go on: the message says why, in one line."""


# ---------------------------------------------------------------------------------------------------------
# The C++ standard
# ---------------------------------------------------------------------------------------------------------

_CXX_VERSION = re.compile(r"C\+\+ Version:\s*(\d{6})")


def cxx_standard(torch_build_config: str) -> int:
    """The C++ standard torch was compiled with (17, 20, ...), read from `torch.__config__.show()`, whose
    line "C++ Version: 202002" is the value of __cplusplus in torch's build (year 2020 -> C++20). An
    extension includes torch's headers, so it is compiled with the same standard (torch 2.14's headers
    refuse anything older than C++20)."""
    found = _CXX_VERSION.search(torch_build_config)
    if found is None:
        raise ToolchainError("cannot read the C++ standard torch was built with: torch.__config__.show() "
                             "has no 'C++ Version: YYYYMM' line")
    return int(found.group(1)) // 100 % 100


# ---------------------------------------------------------------------------------------------------------
# Whether to build the CUDA sources
# ---------------------------------------------------------------------------------------------------------


def cuda_requested(environ, torch_version: str, torch_cuda: str | None) -> bool:
    """Whether the CUDA sources are built: a CUDA build of torch asks for them (then a missing toolkit is
    an error, not a silent CPU-only build), LOWRANK_OPS_CPU_ONLY=1 leaves them out, and FORCE_CUDA=1
    requires them: with a CPU-only torch, whose missing c10_cuda they cannot link against, an error."""
    force = environ.get("FORCE_CUDA", "0") == "1"
    cpu_only = environ.get("LOWRANK_OPS_CPU_ONLY", "0") == "1"
    if force and cpu_only:
        raise ToolchainError("FORCE_CUDA=1 and LOWRANK_OPS_CPU_ONLY=1 contradict each other: unset one")
    if force and torch_cuda is None:
        raise ToolchainError(f"FORCE_CUDA=1, but the installed torch {torch_version} is a CPU-only build: "
                             "install a CUDA build of torch (e.g. pip install torch==2.14.1) first")
    if cpu_only:
        return False
    return force or torch_cuda is not None


# ---------------------------------------------------------------------------------------------------------
# The CUDA toolkit
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CudaToolkit:
    root: Path  # the folder holding bin/nvcc and include/cuda_runtime.h: what torch calls CUDA_HOME
    version: str  # "13.0", from `nvcc --version`
    found_by: str  # how: "CUDA_HOME", "nvcc on PATH (/usr/local/bin/nvcc)", ...

    @property
    def nvcc(self) -> Path:
        return self.root / "bin" / "nvcc"


_TOP = re.compile(r"^#\$ TOP=(.+)$", re.MULTILINE)
_RELEASE = re.compile(r"release (\d+\.\d+)")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def toolkit_root_of(nvcc: str) -> Path:
    """The toolkit an nvcc belongs to, also when `nvcc` is a wrapper script or a link outside the toolkit:
    nvcc's dry run prints the toolkit folder it runs from (`#$ TOP=<toolkit>/bin/..`)."""
    proc = _run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull])
    found = _TOP.search(proc.stdout + proc.stderr)
    if found is None:
        raise ToolchainError(f"{nvcc} --dryrun does not name its toolkit (no '#$ TOP=' line): set CUDA_HOME "
                             "to the CUDA toolkit folder")
    return Path(os.path.realpath(found.group(1).strip()))


def _usable(root: Path, found_by: str) -> CudaToolkit:
    """The toolkit at `root`, checked: nvcc runs and the runtime headers are there."""
    if not (root / "bin" / "nvcc").is_file():
        raise ToolchainError(f"no usable CUDA toolkit: {root} (from {found_by}) has no bin/nvcc; set "
                             "CUDA_HOME to the toolkit folder (the one holding bin/nvcc and include/)")
    if not (root / "include" / "cuda_runtime.h").is_file():
        raise ToolchainError(f"no usable CUDA toolkit: {root} (from {found_by}) has no "
                             "include/cuda_runtime.h; set CUDA_HOME to the toolkit folder")
    proc = _run([str(root / "bin" / "nvcc"), "--version"])
    release = _RELEASE.search(proc.stdout)
    if proc.returncode != 0 or release is None:
        raise ToolchainError(f"no usable CUDA toolkit: {root / 'bin' / 'nvcc'} --version failed "
                             f"(exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[:200]}")
    return CudaToolkit(root, release.group(1), found_by)


def find_cuda_toolkit(environ, torch_cuda: str | None = None,
                      default_root: Path = Path("/usr/local/cuda")) -> CudaToolkit:
    """The CUDA toolkit to build with: $CUDA_HOME (or $CUDA_PATH) when set, else the toolkit of the nvcc
    on $PATH (resolved through wrappers, unlike torch's guess of the folder above nvcc), else
    `default_root`. With `torch_cuda` given, the toolkit's major version must match torch's CUDA."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(var):
            kit = _usable(Path(environ[var]), f"${var}")
            break
    else:
        nvcc = shutil.which("nvcc", path=environ.get("PATH", os.defpath))
        if nvcc is not None:
            kit = _usable(toolkit_root_of(nvcc), f"nvcc on PATH ({nvcc})")
        elif default_root.is_dir():
            kit = _usable(Path(os.path.realpath(default_root)), str(default_root))
        else:
            raise ToolchainError(f"no usable CUDA toolkit: CUDA_HOME is not set, no nvcc on PATH and no "
                                 f"{default_root}; install the CUDA toolkit or set CUDA_HOME (or build "
                                 "CPU-only with LOWRANK_OPS_CPU_ONLY=1)")
    if torch_cuda is not None and kit.version.split(".")[0] != torch_cuda.split(".")[0]:
        raise ToolchainError(f"the CUDA toolkit at {kit.root} is CUDA {kit.version}, but torch was built "
                             f"with CUDA {torch_cuda}: point CUDA_HOME at a CUDA {torch_cuda} toolkit")
    return kit


# ---------------------------------------------------------------------------------------------------------
# The version's local tag
# ---------------------------------------------------------------------------------------------------------


def local_version_tag(torch_version: str, torch_cuda: str | None, with_cuda: bool) -> str:
    """`cu130torch2.14` for CUDA sources built against torch 2.14 with CUDA 13.0, `cputorch2.13` for a
    CPU-only build against torch 2.13 (the CUDA version is torch's: the extension links its runtime)."""
    torch_major_minor = ".".join(torch_version.split("+")[0].split(".")[:2])
    if not with_cuda:
        return f"cputorch{torch_major_minor}"
    major, minor = torch_cuda.split(".")[:2]
    return f"cu{major}{minor}torch{torch_major_minor}"
