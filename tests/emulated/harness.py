"""Build and run the CUDA emulation (test-only): every kernels/*.cu compiled as C++ against the shim
include/lro_emu.h, with the drivers under drivers/ and the fiber scheduler under runtime/, into one
executable built with AddressSanitizer and UndefinedBehaviorSanitizer.

Why a separate executable fed through files, rather than a shared library loaded with ctypes: a sanitized
library inside the Python process would need libasan preloaded into the interpreter (and reports leaks
and errors of CPython itself), an ASan report or a deadlock would take the whole pytest process down, and
the arrays would live in allocations ASan does not track (NumPy's), so an out-of-bounds access of a kernel
would go unseen. A child process per launcher call owns its sanitizer runtime, allocates every device
array itself at exactly its extent (drivers/driver.h), reports a failure as an exit status plus stderr, and
is killed by a timeout if all else fails. Raw little-endian files are the simplest exchange that keeps
every bit (float16, bfloat16, int64 and uint64 seeds included); a call costs a few milliseconds of
process start-up, small next to the emulated kernel.

Objects are cached per source under build/emulated/ (key: compiler version, flags, the source and every
header it may include), so that after an edit only what changed is recompiled; all objects compile in
parallel."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KERNELS = ROOT / "kernels"
BUILD_DIR = ROOT / "build" / "emulated"

CXX = os.environ.get("CXX") or shutil.which("g++")
SANITIZERS = ["-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all"]
FLAGS = [
    "-std=c++17",
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    *SANITIZERS,
    "-ffp-contract=off",  # no FMA contraction: the host's rounding is the plain IEEE one (include/lro_emu.h)
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wno-unknown-pragmas",  # #pragma unroll is for nvcc
    f"-I{HERE / 'include'}",
    f"-I{KERNELS}",
    "-include",
    "lro_emu.h",
]
EXIT_KERNEL_ERROR = 86  # runtime/scheduler.cpp: a deadlock or a timeout
DEFAULT_TIMEOUT = 300  # seconds; the driver's watchdog, and the child is killed 30 s after it


def sources() -> list[tuple[Path, list[str], list[Path]]]:
    """(source, extra flags, folders of the headers it may include) of every object of the driver."""
    shim, drivers = HERE / "include", HERE / "drivers"
    return (
        [(p, ["-x", "c++"], [KERNELS, shim]) for p in sorted(KERNELS.glob("*.cu"))]
        + [(p, [], [KERNELS, shim, drivers]) for p in sorted(drivers.glob("*.cpp"))]
        + [(p, [], [shim]) for p in sorted((HERE / "runtime").glob("*.cpp"))]
    )


def _headers_digest(folders: list[Path]) -> bytes:
    """Of every header in `folders` (*.h, *.cuh)."""
    digest = hashlib.sha256()
    for h in sorted(p for folder in folders for pattern in ("*.h", "*.cuh") for p in folder.glob(pattern)):
        digest.update(str(h.relative_to(ROOT)).encode() + b"\0" + h.read_bytes() + b"\0")
    return digest.digest()


@functools.cache
def _compiler_version() -> str:
    return subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True).stdout


def toolchain_problem() -> str | None:
    """Why the emulation cannot be built here (a reason to skip), or None."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return (
            f"the emulation's fiber switch is written for x86-64 Linux (this is {platform.system()} "
            f"{platform.machine()})"
        )
    if CXX is None:
        return "no C++ compiler (g++ or $CXX) on PATH"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text("int main() { return 0; }\n")
        proc = subprocess.run(
            [CXX, *SANITIZERS, str(src), "-o", str(Path(tmp) / "probe")],
            check=False,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            return f"{CXX} cannot link with -fsanitize=address,undefined:\n{proc.stderr[-2000:]}"
    return None


def _compile(source: Path, extra: list[str], header_folders: list[Path]) -> Path:
    key = hashlib.sha256()
    for part in (_compiler_version(), " ".join(FLAGS + extra), str(source.relative_to(ROOT))):
        key.update(part.encode() + b"\0")
    key.update(source.read_bytes() + b"\0" + _headers_digest(header_folders))
    obj = BUILD_DIR / "obj" / f"{source.parent.name}_{source.stem}-{key.hexdigest()[:16]}.o"
    if obj.exists():
        return obj
    obj.parent.mkdir(parents=True, exist_ok=True)
    tmp = obj.with_suffix(f".{os.getpid()}.tmp")
    cmd = [CXX, *FLAGS, *extra, "-c", str(source), "-o", str(tmp)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"compiling {source.relative_to(ROOT)} for the emulation failed:\n{' '.join(cmd)}\n"
            f"{proc.stderr[-6000:]}"
        )
    tmp.replace(obj)
    return obj


def build() -> Path:
    """The driver executable, built (or taken from the cache) for the current sources."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        objects = list(pool.map(lambda s: _compile(*s), sources()))
    key = hashlib.sha256("".join(o.name for o in objects).encode()).hexdigest()[:16]
    exe = BUILD_DIR / f"lro_emu-{key}"
    if not exe.exists():
        tmp = exe.with_suffix(f".{os.getpid()}.tmp")
        cmd = [CXX, *SANITIZERS, *map(str, objects), "-o", str(tmp)]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(
                f"linking the emulation driver failed:\n{' '.join(cmd)}\n{proc.stderr[-6000:]}"
            )
        tmp.replace(exe)
    _remove_stale(set(objects) | {exe})
    return exe


def _remove_stale(current: set[Path]) -> None:
    """Objects and executables of earlier sources (the cache keeps only the current build)."""
    for p in [*BUILD_DIR.glob("lro_emu-*"), *(BUILD_DIR / "obj").glob("*.o")]:
        if p not in current and not p.name.endswith(".tmp"):  # not another session's build in progress
            p.unlink(missing_ok=True)


_driver: Path | BaseException | None = None


def driver() -> Path:
    """The built driver; skips the calling test (with the reason) where the toolchain is missing, and fails
    it where the build fails. Built once per test session."""
    global _driver
    if _driver is None:
        problem = toolchain_problem()
        try:
            _driver = pytest.skip.Exception(problem) if problem else build()
        except RuntimeError as exc:
            _driver = exc
    if isinstance(_driver, pytest.skip.Exception):
        pytest.skip(str(_driver))
    if isinstance(_driver, BaseException):
        pytest.fail(str(_driver), pytrace=False)
    return _driver


# ---------------------------------------------------------------------------------------------------------
# Running a driver command
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    instance: str  # e.g. "lro::{anonymous}::dct_rows_kernel<float, __half>"
    grid: tuple[int, int, int]
    block: tuple[int, int, int]

    @property
    def kernel(self) -> str:
        """The __global__ function's name: "dct_rows_kernel"."""
        return self.instance.split("<")[0].split("::")[-1]


@dataclass
class Result:
    outputs: dict[str, torch.Tensor]
    launches: list[Launch]
    status: int  # the launcher's cudaError_t


class EmulationFailed(AssertionError):
    """The driver failed: a sanitizer report, a deadlock, a timeout or a usage error (the message has its
    command line and the end of its stderr)."""


LAUNCHES: list[Launch] = []  # every launch of this test session, in order (coverage checks read it)


def _to_file(t: torch.Tensor, path: Path) -> None:
    t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tofile(path)


def _from_file(path: Path, dtype: torch.dtype, shape) -> torch.Tensor:
    raw = np.fromfile(path, dtype=np.uint8)
    out = torch.from_numpy(raw).view(dtype)
    return out.reshape(shape)


def _text(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return value.hex()  # exact
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return str(value)


def run(
    command: str,
    inputs: dict[str, torch.Tensor] | None = None,
    outputs: dict[str, tuple[torch.dtype, tuple]] | None = None,
    *,
    expect_status: int = 0,
    timeout: int = DEFAULT_TIMEOUT,
    **scalars,
) -> Result:
    """Runs `command` of the driver: `inputs` written to files, scalars as key=value arguments (floats
    exactly, dtypes by name), and the `outputs` (name -> (dtype, shape)) read back. Raises EmulationFailed
    when the driver fails or the launcher returns another status than `expect_status`."""
    exe = driver()
    inputs, outputs = inputs or {}, outputs or {}
    with tempfile.TemporaryDirectory(prefix="lro_emu_") as tmp:
        argv = [str(exe), command]
        for name, tensor in inputs.items():
            path = Path(tmp) / f"{name}.in"
            _to_file(tensor, path)
            argv.append(f"{name}={path}")
        argv += [f"{name}={Path(tmp) / (name + '.out')}" for name in outputs]
        argv += [f"{key}={_text(value)}" for key, value in scalars.items()]
        argv.append(f"timeout={timeout}")
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        try:
            proc = subprocess.run(
                argv, check=False, capture_output=True, text=True, timeout=timeout + 30, env=env
            )
        except subprocess.TimeoutExpired as exc:
            raise EmulationFailed(f"{' '.join(argv)}: killed after {timeout + 30} s\n{exc.stderr}") from None
        if proc.returncode != 0:
            raise EmulationFailed(
                f"{' '.join(argv)}\nexit status {proc.returncode}; stderr:\n{proc.stderr[-8000:]}"
            )
        launches, statuses = _parse_log(proc.stdout)
        LAUNCHES.extend(launches)
        status = statuses[-1] if statuses else 0
        if status != expect_status:
            raise EmulationFailed(
                f"{' '.join(argv)}\nthe launcher returned status {status}, expected "
                f"{expect_status}\n{proc.stderr[-4000:]}"
            )
        got = {}
        if status == 0:
            for name, (dtype, shape) in outputs.items():
                got[name] = _from_file(Path(tmp) / f"{name}.out", dtype, shape)
        return Result(got, launches, status)


def _parse_log(stdout: str):
    launches, statuses = [], []
    for line in stdout.splitlines():
        fields = line.split("\t")
        if fields[0] == "launch" and len(fields) == 4:
            grid, block = (tuple(int(v) for v in f.split(",")) for f in fields[2:])
            launches.append(Launch(fields[1], grid, block))
        elif fields[0] == "status" and len(fields) == 2:
            statuses.append(int(fields[1]))
    return launches, statuses


def run_failing(command: str, **kwargs) -> str:
    """Runs a driver command that must fail (a deliberately broken kernel); returns its message."""
    with pytest.raises(EmulationFailed) as info:
        run(command, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------------------------------------------------
# Coverage: which tests launch which __global__ kernels
# ---------------------------------------------------------------------------------------------------------

GLOBAL_KERNEL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(")

COVERAGE: dict[str, list[str]] = {}  # kernel name -> the tests declaring (and checking) that they launch it


def global_kernels() -> dict[str, str]:
    """{kernel name: file name} of every __global__ function in kernels/*.cu (comments stripped first)."""
    found = {}
    for path in sorted(KERNELS.glob("*.cu")):
        text = re.sub(r"//[^\n]*|/\*.*?\*/", "", path.read_text(), flags=re.DOTALL)
        for name in GLOBAL_KERNEL.findall(text):
            found[name] = path.name
    return found


def covers(*kernels: str):
    """Decorates an emulated test that launches `kernels` (names of __global__ functions): registers it for
    the coverage test, and fails the test when one of them was not launched while it ran."""

    def decorate(test):
        for kernel in kernels:
            COVERAGE.setdefault(kernel, []).append(f"{test.__module__}::{test.__name__}")

        @functools.wraps(test)
        def checked(*args, **kwargs):
            start = len(LAUNCHES)
            test(*args, **kwargs)
            launched = {launch.kernel for launch in LAUNCHES[start:]}
            missing = sorted(set(kernels) - launched)
            assert not missing, f"{test.__name__} declares that it launches {missing}, but never did"

        return checked

    return decorate


# ---------------------------------------------------------------------------------------------------------
# Shared by the family tests
# ---------------------------------------------------------------------------------------------------------

KIND_CODES = {"rademacher": 0, "gaussian": 1}  # lro::SketchKind
COMPUTE = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
}  # the kernels' compute type of an element type
SEED = 2**63 + 11  # a seed whose key words both have high bits set
BIG_STRIDE = 2**29 + 3  # elements: a float32 offset of one such stride is past 2^31 bytes


def assert_entries_close(
    got: torch.Tensor, want: torch.Tensor, ulps: float, what: str, floor: float = 0.0
) -> None:
    """|got - want| <= ulps * eps(compute) * max(|want|, floor) per entry, plus one rounding of got's dtype
    where it is 16-bit (two compute-type values a few ulp apart may round to neighbouring 16-bit numbers).
    `floor` is the magnitude below which the error is absolute (an entry near a zero of cos carries the
    absolute error of the cos)."""
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    w = want.double()
    tol = ulps * torch.finfo(COMPUTE[got.dtype]).eps * w.abs().clamp_min(floor)
    if got.dtype in (torch.float16, torch.bfloat16):
        tol = tol + torch.finfo(got.dtype).eps * w.abs()
    err = (got.double() - w).abs()
    bad = ~(err <= tol)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {got.numel()} entries off by more than {ulps} ulp; "
        f"first at {tuple(bad.nonzero()[0].tolist())}: got {got[bad][0].item()!r}, want "
        f"{want[bad][0].item()!r}"
    )
