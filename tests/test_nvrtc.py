"""The CUDA sources stay NVRTC-compilable (the path of lowrank_ops.cupy), checked on CPU: every kernels/*.cu
compiles with NVRTC (the nvidia-cuda-nvrtc wheel, called through ctypes; no GPU needed) for compute_80 and
compute_90, with every kernel template instance that the host launchers (compiled out under NVRTC) would
launch requested as a name expression, so that template bodies are instantiated and code-generated, not
only parsed. A failed compile shows NVRTC's log.

Also: the launch geometry lowrank_ops.cupy hard-codes matches kernels/sketch.cu, `import lowrank_ops` does
not import CuPy, and the CuPy path itself (marked gpu) against the torch ops."""

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from lowrank_ops import cupy as lro_cupy
from lowrank_ops.cupy import _nvrtc

from helpers import GAUSSIAN_ENTRY_TOL, assert_within_torch_error

try:
    _nvrtc.library()
    NVRTC_ERROR = None
except OSError as exc:
    NVRTC_ERROR = str(exc)
needs_nvrtc = pytest.mark.skipif(NVRTC_ERROR is not None, reason=f"no NVRTC: {NVRTC_ERROR}")

KERNELS = _nvrtc.kernels_dir()
CU_FILES = sorted(KERNELS.glob("*.cu"))
ARCHS = ("compute_80", "compute_90")
FLOATS = ("float", "double", "__half", "__nv_bfloat16")


def _compute(t):
    return "double" if t == "double" else "float"


# The kernel instances each launcher of kernels/<family>.cu launches (read off its <<<...>>> lines).
INSTANCES = {
    "sketch": lro_cupy.name_expressions()
    + [
        f"lro::sketch_gemm_kernel<float, __nv_bfloat16, lro::SketchProduct::{p}, lro::{k}>"
        for p in lro_cupy.PRODUCTS.values()
        for k in ("kRademacher", "kGaussian")
    ],
    "dct": [f"lro::dct_rows_kernel<{_compute(t)}, {t}>" for t in FLOATS],
    "quant": [f"lro::quantize_{f}_kernel<{t}>" for f in ("int8", "nf4") for t in FLOATS]
    + [
        f"lro::dequantize_kernel<lro::{f}, {_compute(t)}, {t}>"
        for f in ("kQuantNF4", "kQuantInt8")
        for t in FLOATS
    ],
    "blockwise8": [f"lro::q8_adam_moments_kernel<{t}>" for t in ("float", "double")],
    "lowrank_adam": [
        f"lro::sketch_window_kernel<{t}, lro::{k}>"
        for t in ("float", "double")
        for k in ("kRademacher", "kGaussian")
    ]
    + [f"lro::dct_window_kernel<{t}>" for t in ("float", "double")]
    + [f"lro::adam_moments_kernel<{t}, {a}>" for t in ("float", "double") for a in ("true", "false")]
    + [
        f"lro::weight_update_kernel<{w}, {u}>"
        for w, u in (("float", "float"), ("__nv_bfloat16", "float"), ("double", "double"))
    ],
    "apollo": [f"lro::apollo_sq_norms_kernel<{t}, {c}>" for t in FLOATS for c in (1, 32)]
    + [f"lro::apollo_moments_kernel<{t}, {c}>" for t in ("float", "double") for c in (1, 32)]
    + [f"lro::apollo_scales_kernel<{t}, {n}>" for t, n in (("float", "float"), ("double", "float"), ("double", "double"))]
    + [
        f"lro::apollo_weight_update_kernel<{w}, {g}, {_compute(w)}>"
        for w in ("float", "__nv_bfloat16", "double")
        for g in FLOATS
    ],
}


def compile_cu(path, arch):
    names = INSTANCES.get(path.stem, [])
    return _nvrtc.compile_ptx(path.read_text(), path.name, _nvrtc.options(arch), names)


@pytest.fixture(scope="module")
def compiled():
    """{(file, arch): (ptx, log, lowered) or the exception}, compiled in parallel (ctypes releases the GIL)."""

    def run(key):
        try:
            return key, compile_cu(*key)
        except (RuntimeError, OSError) as exc:  # reported by the test of that file, with NVRTC's log
            return key, exc

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, [(p, a) for p in CU_FILES for a in ARCHS]))


def test_there_are_cuda_sources_and_instances_for_each():
    assert CU_FILES
    assert {p.stem for p in CU_FILES} <= set(INSTANCES), "a new kernels/*.cu needs its instances listed here"


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_cu_compiles_with_nvrtc(compiled, path, arch):
    result = compiled[path, arch]
    if isinstance(result, Exception):
        pytest.fail(f"NVRTC {_nvrtc.version()} failed on {path.name} for {arch}:\n{result}")
    ptx, log, lowered = result
    assert f".target sm_{arch[-2:]}" in ptx
    assert " error" not in log, log
    entries = set(re.findall(r"\.entry\s+(\S+)\(", ptx))
    for expr in INSTANCES[path.stem]:
        assert lowered[expr] in entries, (
            f"{expr} ({lowered[expr]}) has no kernel entry in the PTX of {path.name}"
        )


@needs_nvrtc
def test_bundled_headers_suffice(tmp_path, monkeypatch):
    """Without a CUDA toolkit (CUDA_HOME unset and no /usr/local/cuda), the headers bundled in NVRTC are
    enough: lowrank_ops.cupy's include directory then comes from nvrtcInstallBundledHeaders."""
    if not hasattr(_nvrtc.library(), "nvrtcInstallBundledHeaders"):
        pytest.skip(f"NVRTC {_nvrtc.version()} has no bundled headers (needs >= 13.1)")
    import ctypes

    error = ctypes.c_char_p()
    assert _nvrtc.library().nvrtcInstallBundledHeaders(str(tmp_path).encode(), 0, ctypes.byref(error)) == 0, (
        error.value
    )
    assert (tmp_path / "cuda_fp16.h").is_file() and (tmp_path / "cuda_bf16.h").is_file()
    opts = [_nvrtc.STD, f"-I{KERNELS}", f"-I{tmp_path}", "--gpu-architecture=compute_80"]
    path = KERNELS / "sketch.cu"
    ptx, _, lowered = _nvrtc.compile_ptx(path.read_text(), path.name, opts, ["lro::philox4x32_kernel"])
    assert lowered["lro::philox4x32_kernel"] in ptx


def test_nvrtc_compile_errors_show_the_log():
    if NVRTC_ERROR is not None:
        pytest.skip(NVRTC_ERROR)
    with pytest.raises(
        RuntimeError, match=r"NVRTC_ERROR_COMPILATION[\s\S]*identifier \"undefined_name\" is undefined"
    ):
        _nvrtc.compile_ptx(
            "__global__ void k(int* x) { x[0] = undefined_name; }", "bad.cu", _nvrtc.options("compute_80")
        )


def test_cupy_launch_geometry_matches_the_source():
    src = (KERNELS / "sketch.cu").read_text()

    def const(name):
        return int(re.search(rf"\b{name} = (\d+)", src).group(1))

    assert (const("kThreads"), const("kFillRows"), const("kFillCols"), const("kBM"), const("kBN")) == (
        lro_cupy.THREADS,
        lro_cupy.FILL_ROWS,
        lro_cupy.FILL_COLS,
        lro_cupy.TILE_M,
        lro_cupy.TILE_N,
    )
    assert "blocks < (1 << 20)" in src and lro_cupy.PHILOX_MAX_BLOCKS == 1 << 20
    assert "kMaxSketchRows = int64_t{1} << 32" in src and lro_cupy.MAX_SKETCH_ROWS == 2**32
    assert "kMaxSketchCols = int64_t{kGaussianGroup} << 32" in src and lro_cupy.MAX_SKETCH_COLS == 4 * 2**32
    assert re.search(
        r"enum SketchKind : int \{ kRademacher = 0, kGaussian = 1 \}", (KERNELS / "sketch.h").read_text()
    )


@needs_nvrtc
def test_cupy_struct_layouts_match_the_kernels():
    """The NumPy records lowrank_ops.cupy passes by value have the size and field offsets that the device
    compiler gives SketchSpec and StridedMatrix<T> (static_asserts compiled by NVRTC)."""
    checks = []
    for cxx, dtype in (
        ("lro::SketchSpec", lro_cupy.SPEC_DTYPE),
        *((f"lro::StridedMatrix<{t}>", lro_cupy.STRIDED_DTYPE) for t in ("float", "double", "__half")),
    ):
        checks.append(f'static_assert(sizeof({cxx}) == {dtype.itemsize}, "size of {cxx}");')
        for field, (_, offset) in dtype.fields.items():
            checks.append(f'static_assert(__builtin_offsetof({cxx}, {field}) == {offset}, "{cxx}::{field}");')
    source = '#include "sketch.cuh"\n' + "\n".join(checks) + "\n"
    _nvrtc.compile_ptx(source, "layouts.cu", _nvrtc.options("compute_80"))
    bad = source.replace(f"== {lro_cupy.SPEC_DTYPE.itemsize}", f"== {lro_cupy.SPEC_DTYPE.itemsize + 8}", 1)
    with pytest.raises(RuntimeError, match="size of lro::SketchSpec"):  # the check can fail
        _nvrtc.compile_ptx(bad, "layouts.cu", _nvrtc.options("compute_80"))


IMPORT_WITHOUT_CUPY = """
import importlib.abc, sys

attempts = []


class Guard(importlib.abc.MetaPathFinder):  # every import of cupy is recorded (and fails, as if absent)
    def find_spec(self, name, path=None, target=None):
        if name == "cupy" or name.startswith("cupy."):
            attempts.append(name)
            raise ModuleNotFoundError(name)


sys.meta_path.insert(0, Guard())
sys.modules.pop("cupy", None)
import lowrank_ops, lowrank_ops.cupy, lowrank_ops.ops
assert not attempts, f"import lowrank_ops tried to import {attempts}"
try:
    lowrank_ops.cupy.sketch(4, 8, 0)
except ImportError as exc:
    assert "lowrank_ops.cupy needs CuPy" in str(exc)
assert attempts == ["cupy"], attempts  # the guard sees imports: first use is where cupy is imported
"""


def test_import_lowrank_ops_does_not_import_cupy():
    subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_CUPY], check=True, timeout=300)


def test_missing_cupy_is_a_clear_import_error():
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=r"lowrank_ops.cupy needs CuPy"):
        lro_cupy.sketch(4, 8, 0)


# ---------------------------------------------------------------------------------------------------
# GPU: the NVRTC-compiled kernels on CuPy arrays against the torch ops (the compiled extension, or the
# reference when torch has no CUDA: both follow spec v1).


@pytest.fixture
def cp():
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.runtime.getDeviceCount() < 1:
        pytest.skip("no CUDA device for CuPy")
    return cupy


def _torch(a):
    """The CuPy array as a torch tensor: on the GPU when torch has CUDA, else a CPU copy."""
    return torch.from_dlpack(a) if torch.cuda.is_available() else torch.from_numpy(a.get())


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_cupy_sketch_and_philox_match_torch(cp, kind):
    from lowrank_ops import ops

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for rows, cols, dtype in (
        (1, 1, np.float32),
        (37, 301, np.float32),
        (65, 130, np.float64),
        (3, 129, np.float16),
    ):
        got = lro_cupy.sketch(rows, cols, 2**63 + 11, kind, dtype)
        want = ops.sketch(
            rows, cols, 2**63 + 11, kind, dtype=getattr(torch, np.dtype(dtype).name), device=device
        )
        if kind == "rademacher":
            assert torch.equal(_torch(got), want)
        else:  # transcendental functions differ by a few ulp between backends (spec v1)
            torch.testing.assert_close(_torch(got), want, rtol=4 * torch.finfo(want.dtype).eps, atol=0)
    counters = cp.asarray(np.random.default_rng(0).integers(0, 2**32, (1000, 4), dtype=np.int64))
    assert torch.equal(_torch(lro_cupy.philox4x32(counters, 42)), ops.philox4x32(_torch(counters), 42))


def _check_gemm(got, x, direction, seed, size, kind, side):
    """The CuPy result against the torch op: bit-identical when torch's CUDA backend runs (the same kernel
    instance), and always within the tolerance rule against the float64 reference."""
    import lowrank_ops
    from lowrank_ops import ops

    fn = ops.sketch_project if direction == "project" else ops.sketch_unproject
    xt = _torch(x)
    assert got.dtype == x.dtype and tuple(got.shape) == tuple(fn(xt, seed, size, kind, side).shape)
    if xt.is_cuda and lowrank_ops.build_info()["cuda"]:
        assert torch.equal(_torch(got), fn(xt, seed, size, kind, side, backend="cuda"))
    ref64 = fn(xt.double(), seed, size, kind, side, backend="reference")
    plain = fn(
        xt, seed, size, kind, side, backend="reference"
    )  # plain torch: P in xt's compute dtype, matmul
    inner = x.shape[0] if side == "left" else x.shape[1]
    assert_within_torch_error(
        _torch(got),
        ref64,
        plain,
        f"cupy {direction} {kind} {side} {x.dtype}",
        k=inner,
        entry_tol=GAUSSIAN_ENTRY_TOL if kind == "gaussian" else 0.0,
    )


@pytest.mark.gpu
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_cupy_sketch_project_unproject_match_torch(cp, side, dtype):
    rng = np.random.default_rng(5)
    G = cp.asarray(rng.standard_normal((67, 45)).astype(dtype))[:, 1:]  # odd sizes, non-contiguous
    for kind in ("rademacher", "gaussian"):
        R = lro_cupy.sketch_project(G, 9, 7, kind, side)
        _check_gemm(R, G, "project", 9, 7, kind, side)
        d = G.shape[0] if side == "left" else G.shape[1]
        _check_gemm(lro_cupy.sketch_unproject(R, 9, d, kind, side), R, "unproject", 9, d, kind, side)
