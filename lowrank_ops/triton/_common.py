"""Pieces shared by the Triton kernel modules (sketch, dct, lowrank_adam, quant): the compute dtype, the
program -> output tile mapping and the accumulating tl.dot of the GEMM-shaped kernels, and the launchers'
device check. No kernels here: the device functions are compiled into the kernels that call them (which
aot.py registers and compiles)."""

import torch
import triton
import triton.language as tl


@triton.constexpr_function
def compute_type(dtype):
    """The dtype arithmetic on `dtype` data runs in: float64 for float64, float32 for every other dtype."""
    return tl.float64 if dtype == tl.float64 else tl.float32


@triton.jit
def tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, M_FASTEST: tl.constexpr):
    """(pid_m, pid_n): the [BLOCK_M, BLOCK_N] tile of an M x N output that this program of a 1-D grid of
    cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N) programs computes. M_FASTEST: the row-block index runs fastest,
    else the column-block index. The GEMM kernels make the index along their generated operand (sketch,
    basis, projection) run fastest, so programs that read the same block of the data matrix run together."""
    return tile_of(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, M_FASTEST)


@triton.jit
def tile_of(tile, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, M_FASTEST: tl.constexpr):
    """(pid_m, pid_n) of tile number `tile` of an M x N output in the order of tile_ids (the persistent
    kernels, which walk the tiles of several problems, number them themselves)."""
    if M_FASTEST:
        num_m = tl.cdiv(M, BLOCK_M)
        pid_m = tile % num_m
        pid_n = tile // num_m
    else:
        num_n = tl.cdiv(N, BLOCK_N)
        pid_n = tile % num_n
        pid_m = tile // num_n
    return pid_m, pid_n


@triton.jit
def dot_acc(a, b, acc, DTYPE: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a b for DTYPE operand tiles, accumulated in acc's dtype. float32/float64 products use IEEE
    FMAs (no TF32), so results match torch's at that precision. UPCAST (bfloat16 in Triton's interpreter):
    the tiles are multiplied as float32, the exact same products (a bfloat16 product is exact in float32),
    because the interpreter's tl.dot would multiply the raw bfloat16 bit patterns (triton-lang/triton#11584)."""
    if UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee", out_dtype=acc.dtype)
    elif DTYPE == tl.float32 or DTYPE == tl.float64:
        acc = tl.dot(a, b, acc, input_precision="ieee", out_dtype=acc.dtype)
    else:
        acc = tl.dot(a, b, acc, out_dtype=acc.dtype)
    return acc


# With TRITON_INTERPRET=1 set before triton.jit ran, the functions above are the interpreter's Python ones.
INTERPRETED = not isinstance(dot_acc, triton.runtime.JITFunction)


def check_device(device, module: str, name: str) -> None:
    """The kernels reach CUDA memory, or CPU memory when they run in the interpreter."""
    if torch.device(device).type != "cuda" and not INTERPRETED:
        raise RuntimeError(f"lowrank_ops.triton.{module}: {name} is on {device}; the Triton kernels need a CUDA "
                           f"device, or TRITON_INTERPRET=1 set before lowrank_ops.triton.{module} is imported")
