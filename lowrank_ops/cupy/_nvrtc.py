"""What lowrank_ops.cupy and the NVRTC compile test share: where the CUDA sources are, the compile options,
the include directory holding cuda_fp16.h / cuda_bf16.h, and a minimal ctypes binding of NVRTC itself
(compile one source to PTX, with its log and the lowered names of name expressions). NVRTC needs no GPU.

No cupy import here: the test uses this module on machines without CuPy or a GPU."""

import ctypes
import glob
import hashlib
import os
import site
import sys
import threading
from pathlib import Path

STD = "-std=c++17"
_lock = threading.Lock()
_cache: dict = {}


def kernels_dir() -> Path:
    """The CUDA sources: $LOWRANK_OPS_KERNELS, else the copy a wheel ships in lowrank_ops/_kernels (setup.py),
    else kernels/ of the source tree this package runs from (an editable install)."""
    env = os.environ.get("LOWRANK_OPS_KERNELS")
    shipped = Path(__file__).resolve().parents[1] / "_kernels"
    path = Path(env) if env else shipped if shipped.is_dir() else Path(__file__).resolve().parents[2] / "kernels"
    if not (path / "common.h").is_file():
        raise FileNotFoundError(
            f"lowrank_ops.cupy: the CUDA sources (kernels/*.cu, *.cuh, *.h) are not at {path}; set "
            "LOWRANK_OPS_KERNELS to the kernels/ directory of the lowrank_ops source tree"
        )
    return path


def sources_digest() -> str:
    """A hash of every header and source in kernels/: part of the code CuPy compiles, so that its on-disk
    kernel cache (keyed by the code string, not by the included headers) never serves stale binaries."""
    h = hashlib.sha256()
    root = kernels_dir()
    for path in sorted(list(root.glob("*.h")) + list(root.glob("*.cuh")) + list(root.glob("*.cu"))):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _library_candidates():
    env = os.environ.get("LOWRANK_OPS_NVRTC")
    if env:
        yield env
    roots = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
    for root in roots:  # the nvidia-cuda-nvrtc wheels: nvidia/cu13/lib (CUDA 13), nvidia/cuda_nvrtc/lib (12)
        for pattern in ("nvidia/cu*/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*"):
            yield from sorted(p for p in glob.glob(os.path.join(root, pattern)) if "builtins" not in p)
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            yield from sorted(glob.glob(os.path.join(home, "lib64", "libnvrtc.so*")))


def library() -> ctypes.CDLL:
    """libnvrtc (the nvidia-cuda-nvrtc wheel first, then a CUDA toolkit), loaded once."""
    with _lock:
        if "lib" not in _cache:
            tried = []
            for candidate in _library_candidates():
                tried.append(candidate)
                try:
                    lib = ctypes.CDLL(candidate)
                except OSError:
                    continue
                lib.nvrtcGetErrorString.restype = ctypes.c_char_p
                _cache["lib"], _cache["lib_path"] = lib, candidate
                break
            else:
                raise OSError(
                    "lowrank_ops: libnvrtc not found (install nvidia-cuda-nvrtc, or set LOWRANK_OPS_NVRTC to "
                    f"libnvrtc.so); tried: {tried or 'nothing'}"
                )
        return _cache["lib"]


def version() -> tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(library().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def _check(code: int, what: str, log: str = "") -> None:
    if code != 0:
        name = library().nvrtcGetErrorString(code).decode()
        raise RuntimeError(f"lowrank_ops: {what} failed: {name}" + (f"\n{log}" if log else ""))


def include_dir() -> Path:
    """A directory with cuda_fp16.h and cuda_bf16.h (NVRTC has no default include path): the CUDA
    toolkit's ($CUDA_HOME, $CUDA_PATH, /usr/local/cuda), else the headers bundled in libnvrtc-builtins,
    extracted once by nvrtcInstallBundledHeaders (NVRTC >= 13.1) into ~/.cache/lowrank_ops."""
    with _lock:
        if "include" in _cache:
            return _cache["include"]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_fp16.h").is_file():
            found = Path(home) / "include"
            break
    else:
        lib = library()
        if not hasattr(lib, "nvrtcInstallBundledHeaders"):
            raise OSError(
                f"lowrank_ops: no CUDA toolkit include directory (cuda_fp16.h) found and NVRTC {version()} "
                "cannot extract its bundled headers (needs NVRTC >= 13.1); set CUDA_HOME"
            )
        major, minor = version()
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        found = cache / "lowrank_ops" / f"nvrtc-headers-{major}.{minor}"
        error = ctypes.c_char_p()
        code = lib.nvrtcInstallBundledHeaders(str(found).encode(), 0, ctypes.byref(error))
        _check(code, f"nvrtcInstallBundledHeaders({found})", (error.value or b"").decode())
    with _lock:
        _cache["include"] = found
    return found


def options(arch: str | None = None) -> list[str]:
    """The NVRTC options of every kernels/*.cu compile: C++17, kernels/ and the CUDA headers on the include
    path, and `--gpu-architecture=arch` when given (CuPy adds the current device's own)."""
    opts = [STD, f"-I{kernels_dir()}", f"-I{include_dir()}"]
    return opts + ([f"--gpu-architecture={arch}"] if arch else [])


def compile_ptx(source: str, name: str, opts: list[str], name_expressions=()) -> tuple[str, str, dict]:
    """NVRTC `source` -> (PTX, compile log, {name expression: lowered name}). RuntimeError with the log when
    the compile fails."""
    lib = library()
    prog = ctypes.c_void_p()
    _check(
        lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
        "nvrtcCreateProgram",
    )
    try:
        for expr in name_expressions:
            _check(lib.nvrtcAddNameExpression(prog, expr.encode()), f"nvrtcAddNameExpression({expr!r})")
        encoded = [o.encode() for o in opts]
        code = lib.nvrtcCompileProgram(prog, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded))
        size = ctypes.c_size_t()
        _check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        buf = ctypes.create_string_buffer(size.value)
        _check(lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        log = buf.value.decode(errors="replace")
        _check(code, f"NVRTC compile of {name} with {' '.join(opts)}", log)
        lowered = {}
        for expr in name_expressions:
            out = ctypes.c_char_p()
            _check(
                lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(out)),
                f"nvrtcGetLoweredName({expr!r})",
            )
            lowered[expr] = out.value.decode()
        _check(lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
        ptx = ctypes.create_string_buffer(size.value)
        _check(lib.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
        return ptx.value.decode(), log, lowered
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
