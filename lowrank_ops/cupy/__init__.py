"""lowrank_ops.cupy: the sketch family on CuPy arrays without a compiled extension or a CUDA build of torch.

For a CPU-only lowrank_ops wheel on a GPU box, or CuPy/JAX users without torch's CUDA: the CUDA sources of
kernels/ are compiled at first use with NVRTC (`cupy.RawModule`, options -std=c++17, kernels/ and the CUDA
headers on the include path, the architecture of the current device chosen by CuPy), cached per process
(and on disk by CuPy), and launched on CuPy arrays. The kernels are the very ones the torch CUDA backend
launches (kernels/sketch.cu), so results follow spec v1 (docs/DESIGN.md §3) like every other backend.

    philox4x32(counters, seed, rounds=10)                  int64 [..., 4] -> int64 [..., 4]
    sketch(rows, cols, seed, kind, dtype)                  P (rows x cols)
    sketch_project(G, seed, rank, kind, side)              P G  (left) | G P^T (right)
    sketch_unproject(R, seed, dim, kind, side)             P^T R (left) | R P (right)

float32, float64 and float16 arrays (NumPy has no bfloat16); products accumulate in float32 (float64 for
float64 inputs) and the result has the input's dtype, as torch.ops.lowrank_ops.sketch_project on CUDA.
JAX arrays: `cupy.from_dlpack(x)` in, `jax.dlpack.from_dlpack(y)` out (zero-copy).

`import lowrank_ops` never imports CuPy; this module imports it at first use and raises ImportError then
if it is missing.
"""

import math
import threading

import numpy as np

from . import _nvrtc

KINDS = {"rademacher": 0, "gaussian": 1}  # enum SketchKind (kernels/sketch.h)
SIDES = ("left", "right")
# Launch geometry of kernels/sketch.cu (its kThreads, kFillRows/kFillCols, kBM/kBN); the NVRTC test checks
# these against the source.
THREADS = 256
FILL_ROWS, FILL_COLS = 32, 64
TILE_M, TILE_N = 64, 64
PHILOX_MAX_BLOCKS = 1 << 20
MAX_GRID_Y = 65535
MAX_GRID_X = 2**31 - 1
MAX_SKETCH_ROWS, MAX_SKETCH_COLS = 2**32, 4 * 2**32
# SketchProduct (kernels/sketch.cuh)
PRODUCTS = {
    ("project", "left"): "kProjectLeft",
    ("project", "right"): "kProjectRight",
    ("unproject", "left"): "kUnprojectLeft",
    ("unproject", "right"): "kUnprojectRight",
}
_CXX_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double", np.dtype(np.float16): "__half"}
# The C layouts of the structs the kernels take by value (kernels/sketch.cuh; test_nvrtc checks them with
# static_asserts compiled by NVRTC): struct SketchSpec {SketchKind kind; uint64_t seed; int64_t rank, dim;}
# and struct StridedMatrix<T> {const T* data; int64_t rows, cols, stride_row, stride_col;}.
SPEC_DTYPE = np.dtype(
    [("kind", np.int32), ("seed", np.uint64), ("rank", np.int64), ("dim", np.int64)], align=True
)
STRIDED_DTYPE = np.dtype(
    [
        ("data", np.uint64),
        ("rows", np.int64),
        ("cols", np.int64),
        ("stride_row", np.int64),
        ("stride_col", np.int64),
    ],
    align=True,
)

_lock = threading.Lock()
_modules: dict = {}


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise ImportError("lowrank_ops.cupy needs CuPy (pip install cupy-cuda12x or cupy-cuda13x)") from exc
    return cupy


def _compute(dtype: np.dtype) -> str:
    return "double" if dtype == np.float64 else "float"


def name_expressions() -> list[str]:
    """Every kernel instance this module launches (NVRTC instantiates exactly these)."""
    names = ["lro::philox4x32_kernel"]
    for kind in KINDS:
        names += [_fill_name(compute, kind) for compute in ("float", "double")]
        names += [_gemm_name(dtype, product, kind) for product in PRODUCTS.values() for dtype in _CXX_TYPES]
    return names


def _fill_name(compute: str, kind: str) -> str:
    return f"lro::sketch_fill_kernel<{compute}, lro::k{kind.capitalize()}>"


def _gemm_name(dtype: np.dtype, product: str, kind: str) -> str:
    return (
        f"lro::sketch_gemm_kernel<{_compute(dtype)}, {_CXX_TYPES[dtype]}, lro::SketchProduct::{product}, "
        f"lro::k{kind.capitalize()}>"
    )


def source(family: str = "sketch") -> str:
    """The code handed to NVRTC for kernels/<family>.cu: the file, preceded by a digest of all of kernels/
    (CuPy's disk cache is keyed by this string, and the included headers would otherwise not count)."""
    path = _nvrtc.kernels_dir() / f"{family}.cu"
    # #line keeps NVRTC's messages pointing at the file's own lines
    return (
        f'// lowrank_ops kernels digest {_nvrtc.sources_digest()}\n#line 1 "{path.name}"\n' + path.read_text()
    )


def module(family: str = "sketch"):
    """The cupy.RawModule of kernels/<family>.cu for the current device, compiled once per process."""
    cupy = _cupy()
    device = cupy.cuda.Device()
    key = (family, device.id)
    with _lock:
        if key not in _modules:
            names = name_expressions() if family == "sketch" else ()
            _modules[key] = cupy.RawModule(
                code=source(family), options=tuple(_nvrtc.options()), name_expressions=names
            )
        return _modules[key]


def _kernel(name: str):
    return module("sketch").get_function(name)


def _error(op, arg, expected, got):
    return ValueError(f"lowrank_ops.cupy.{op}: argument '{arg}' must be {expected}, got {got}")


def _check_seed(op, seed) -> np.uint64:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
        raise _error(op, "seed", "an int in [0, 2^64)", repr(seed))
    return np.uint64(int(seed))


def _check_choice(op, arg, value, options):
    if value not in options:
        raise _error(op, arg, " or ".join(repr(o) for o in options), repr(value))


def _check_positive(op, arg, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise _error(op, arg, "an int >= 1", repr(value))
    return int(value)


def _check_matrix(op, arg, x):
    cupy = _cupy()
    if not isinstance(x, cupy.ndarray):
        raise TypeError(
            f"lowrank_ops.cupy.{op}: argument '{arg}' must be a cupy.ndarray, got {type(x).__name__}"
        )
    if x.ndim != 2:
        raise _error(op, arg, "a 2-D array", f"shape {x.shape}")
    if x.dtype not in _CXX_TYPES:
        raise _error(op, arg, "float32, float64 or float16", x.dtype)
    if x.device.id != cupy.cuda.Device().id:
        raise _error(op, arg, f"on the current device ({cupy.cuda.Device().id})", f"device {x.device.id}")


def _spec(kind: str, seed: np.uint64, rank: int, dim: int):
    """A SketchSpec kernel argument: a NumPy record of SPEC_DTYPE (CuPy passes structured scalars by value)."""
    return np.array((KINDS[kind], seed, rank, dim), dtype=SPEC_DTYPE)[()]


def _strided(x):
    """A StridedMatrix<T> kernel argument for the CuPy array x (strides in elements, as the kernels index)."""
    s0, s1 = (s // x.itemsize for s in x.strides)
    return np.array((x.data.ptr, x.shape[0], x.shape[1], s0, s1), dtype=STRIDED_DTYPE)[()]


def _check_sketch_size(op, rank: int, dim: int) -> None:
    """The launchers' limits (kernels/sketch.cu, valid_sketch): Philox counters hold P's row and column group
    as uint32."""
    if rank > MAX_SKETCH_ROWS or dim > MAX_SKETCH_COLS:
        raise _error(op, "rank x dim", f"at most {MAX_SKETCH_ROWS} x {MAX_SKETCH_COLS}", f"{rank} x {dim}")


def _scale(dim: int, compute: str):
    """1 / sqrt(dim) rounded to the compute type, as the launchers compute it."""
    value = 1.0 / math.sqrt(dim)
    return np.float64(value) if compute == "double" else np.float32(value)


def philox4x32(counters, seed: int, rounds: int = 10):
    """Philox4x32-`rounds` of int64 counters [..., 4] (uint32 values) -> the four words as int64 [..., 4]."""
    cupy, op = _cupy(), "philox4x32"
    seed64 = _check_seed(op, seed)
    if (
        not isinstance(counters, cupy.ndarray)
        or counters.dtype != np.int64
        or counters.ndim < 1
        or counters.shape[-1] != 4
    ):
        got = f"{type(counters).__name__} {getattr(counters, 'dtype', '')} {getattr(counters, 'shape', '')}"
        raise _error(op, "counters", "an int64 cupy.ndarray [..., 4]", got)
    if not 1 <= rounds <= 16:
        raise _error(op, "rounds", "in [1, 16]", rounds)
    c = cupy.ascontiguousarray(counters)
    words = cupy.empty_like(c)
    n = c.size // 4
    if n:
        blocks = min((n + THREADS - 1) // THREADS, PHILOX_MAX_BLOCKS)
        _kernel("lro::philox4x32_kernel")(
            (blocks,), (THREADS,), (c, words, np.int64(n), seed64, np.int32(rounds))
        )
    return words


def sketch(rows: int, cols: int, seed: int, kind: str = "rademacher", dtype=np.float32):
    """P (rows x cols) of spec v1, computed in float32 (float64 for dtype float64) and cast to `dtype`."""
    cupy, op = _cupy(), "sketch"
    rows, cols = _check_positive(op, "rows", rows), _check_positive(op, "cols", cols)
    seed64 = _check_seed(op, seed)
    _check_choice(op, "kind", kind, tuple(KINDS))
    dtype = np.dtype(dtype)
    if dtype not in _CXX_TYPES:
        raise _error(op, "dtype", "float32, float64 or float16", dtype)
    _check_sketch_size(op, rows, cols)
    compute = _compute(dtype)
    out = cupy.empty((rows, cols), dtype=np.float64 if compute == "double" else np.float32)
    grid = ((cols + FILL_COLS - 1) // FILL_COLS, min((rows + FILL_ROWS - 1) // FILL_ROWS, MAX_GRID_Y))
    kernel = _kernel(_fill_name(compute, kind))
    kernel(grid, (THREADS,), (out, np.int64(cols), _spec(kind, seed64, rows, cols), _scale(cols, compute)))
    return out.astype(dtype, copy=False)


def _gemm(op, direction, x, seed, size, kind, side):
    """The fused sketch GEMM (kernels/sketch.cu, sketch_gemm_kernel): project (size = rank) or unproject
    (size = dim) x, result in x's dtype."""
    cupy = _cupy()
    arg = "G" if direction == "project" else "R"
    _check_matrix(op, arg, x)
    seed64 = _check_seed(op, seed)
    size = _check_positive(op, "rank" if direction == "project" else "dim", size)
    _check_choice(op, "kind", kind, tuple(KINDS))
    _check_choice(op, "side", side, SIDES)
    inner = x.shape[0] if side == "left" else x.shape[1]
    other = x.shape[1] if side == "left" else x.shape[0]
    if inner < 1:
        raise _error(
            op,
            arg,
            f"non-empty along the {'projected' if direction == 'project' else 'rank'} dimension "
            f"(side {side!r})",
            f"shape {x.shape}",
        )
    rank, dim = (size, inner) if direction == "project" else (inner, size)
    _check_sketch_size(op, rank, dim)
    # C[M, N] = A[M, K] B[K, N] (kernels/sketch.cu's file comment)
    M, N, K = {
        ("project", "left"): (rank, other, dim),
        ("project", "right"): (other, rank, dim),
        ("unproject", "left"): (dim, other, rank),
        ("unproject", "right"): (other, dim, rank),
    }[direction, side]
    compute = _compute(x.dtype)
    out = cupy.empty((M, N), dtype=np.float64 if compute == "double" else np.float32)
    if M and N:
        rows_fast = x.shape[1] == 1 or (x.shape[0] > 1 and x.strides[0] < x.strides[1])
        tiles = ((M + TILE_M - 1) // TILE_M) * ((N + TILE_N - 1) // TILE_N)
        if tiles > MAX_GRID_X:
            raise _error(
                op,
                arg,
                f"small enough for at most {MAX_GRID_X} output tiles of {TILE_M} x {TILE_N}",
                f"an output of {M} x {N}",
            )
        _kernel(_gemm_name(x.dtype, PRODUCTS[direction, side], kind))(
            (tiles,),
            (THREADS,),
            (
                _spec(kind, seed64, rank, dim),
                _strided(x),
                _scale(dim, compute),
                out,
                np.int64(M),
                np.int64(N),
                np.int64(K),
                np.bool_(rows_fast),
            ),
        )
    return out.astype(x.dtype, copy=False)


def sketch_project(G, seed: int, rank: int, kind: str = "rademacher", side: str = "left"):
    """P G (side "left", d = G.shape[0]) or G P^T (side "right", d = G.shape[1]) without materializing P."""
    return _gemm("sketch_project", "project", G, seed, rank, kind, side)


def sketch_unproject(R, seed: int, dim: int, kind: str = "rademacher", side: str = "left"):
    """P^T R (side "left", result dim x n) or R P (side "right", result m x dim) without materializing P."""
    return _gemm("sketch_unproject", "unproject", R, seed, dim, kind, side)


__all__ = [
    "module",
    "name_expressions",
    "philox4x32",
    "sketch",
    "sketch_project",
    "sketch_unproject",
    "source",
]
