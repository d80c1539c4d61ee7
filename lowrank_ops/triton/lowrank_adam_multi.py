"""Triton backend of the multi-tensor fused low-rank AdamW step (lowrank_ops/ops/lowrank_adam_multi.py): the
matrices of one call are grouped by (shape, side kinds and ranks, dtypes, weight-decay mode), and each group
runs as grouped GEMMs, one launch per group and GEMM, persistent over the group's problems:

  _grouped_project_kernel     for every problem b: C_b = P_b X_b (left) or X_b P_b^T (right), with the
                              single-matrix kernel's ADAM epilogue (moments, direction) or STORE epilogue
  _grouped_unproject_kernel   for every problem b: C_b = P_b^T Y_b (left) or Y_b P_b (right), with the UPDATE
                              epilogue on W_b or the STORE epilogue

A program walks tiles t = pid, pid + programs, ... of all problems (problem t // tiles, tile t % tiles, in the
single-matrix kernels' tile order). The GEMM and the epilogues are lowrank_ops.triton.lowrank_adam's device
functions (_operator_gemm: P generated (seeded, DCT, SR_DCT) or loaded (matrix) in the K-loop; _adam_epilogue,
_update_epilogue) with that module's block sizes, so each problem's arithmetic is exactly that of
lowrank_adamw_step_ on the Triton backend. Per-problem pointers, seeds and strides come from an int64 table
and the step's scalars from a float64 table (one row per problem), since the problems of a group differ in
tensors, seeds, step counts and hyperparameters but not in shapes or dtypes.
"""

import torch
import triton
import triton.language as tl

from ._common import INTERPRETED as _INTERPRETED
from ._common import tile_of
from .lowrank_adam import (
    ADAM,
    BASIS,
    MATRIX,
    PROJECT_SCALARS,
    STORE,
    UPDATE,
    _adam_epilogue,
    _config,
    _operator_gemm,
    _Side,
    _update_epilogue,
    _working,
    adam_scalars,
    project_dot_type,
    unproject_dot_type,
)
from .sketch import _TRITON_TYPES, AOT_RANK

# Columns of the tables (one row per problem).
SCALARS = PROJECT_SCALARS + ("weight_multiplier", "update_scale")
PROJECT_META = ("x", "p", "exp_avg", "exp_avg_sq", "delta", "seed", "stride_x0", "stride_x1", "stride_p0",
                "stride_p1")
UNPROJECT_META = ("y", "p", "out", "seed", "stride_y0", "stride_y1", "stride_p0", "stride_p1", "stride_o0",
                  "stride_o1")
_TL_TYPES = {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16,
             torch.float16: tl.float16, torch.int32: tl.int32}


# --------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------


@triton.jit
def _meta(meta_ptr, b, column: tl.constexpr, COLUMNS: tl.constexpr):
    return tl.load(meta_ptr + b * COLUMNS + column)


@triton.jit
def _pointer(meta_ptr, b, column: tl.constexpr, COLUMNS: tl.constexpr, DTYPE: tl.constexpr):
    return _meta(meta_ptr, b, column, COLUMNS).to(tl.pointer_type(DTYPE))


@triton.jit
def _grouped_project_kernel(meta_ptr, scalars_ptr, out_ptr, num_problems, M, N, K, rank, d, X_TYPE: tl.constexpr,
                            P_TYPE: tl.constexpr, STATE_TYPE: tl.constexpr, KIND: tl.constexpr, LEFT: tl.constexpr,
                            EPILOGUE: tl.constexpr, ADAPTER: tl.constexpr, INTERPRETED: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """For each problem b (row b of the tables): C = P X (LEFT; M = r, K = d) or X P^T (M x r, K = d), then the
    epilogue into out[b] (the contiguous [num_problems, M, N] buffer of the compute dtype): STORE (C) or ADAM
    (lowrank_adam._adam_epilogue on problem b's states, with row b of the scalar table, in SCALARS order)."""
    ACC: tl.constexpr = out_ptr.dtype.element_ty
    DOT: tl.constexpr = project_dot_type(X_TYPE, ACC)
    COLUMNS: tl.constexpr = 10  # PROJECT_META
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for t in range(tl.program_id(0), num_problems * tiles, tl.num_programs(0)):
        b = t // tiles
        pid_m, pid_n = tile_of(t % tiles, M, N, BLOCK_M, BLOCK_N, LEFT)
        m0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        acc = _operator_gemm(_pointer(meta_ptr, b, 0, COLUMNS, X_TYPE), _meta(meta_ptr, b, 6, COLUMNS),
                             _meta(meta_ptr, b, 7, COLUMNS), _pointer(meta_ptr, b, 1, COLUMNS, P_TYPE),
                             _meta(meta_ptr, b, 8, COLUMNS), _meta(meta_ptr, b, 9, COLUMNS),
                             _meta(meta_ptr, b, 5, COLUMNS).to(tl.uint64, bitcast=True), M, N, K, rank, d, m0, n0,
                             KIND, LEFT, not LEFT, DOT, ACC, INTERPRETED, BLOCK_M, BLOCK_N, BLOCK_K)
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        idx = (offs_m.to(tl.int64) * N)[:, None] + offs_n[None, :]
        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        if EPILOGUE == 1:
            s = scalars_ptr + b * 10  # SCALARS
            out = _adam_epilogue(acc, idx, mask, _pointer(meta_ptr, b, 2, COLUMNS, STATE_TYPE),
                                 _pointer(meta_ptr, b, 3, COLUMNS, STATE_TYPE),
                                 _pointer(meta_ptr, b, 4, COLUMNS, STATE_TYPE), tl.load(s + 0), tl.load(s + 1),
                                 tl.load(s + 2), tl.load(s + 3), tl.load(s + 4), tl.load(s + 5), tl.load(s + 6),
                                 tl.load(s + 7), ADAPTER)
        else:
            out = acc
        tl.store(out_ptr + b.to(tl.int64) * M * N + idx, out, mask=mask)


@triton.jit
def _grouped_unproject_kernel(meta_ptr, scalars_ptr, num_problems, M, N, K, rank, d, Y_TYPE: tl.constexpr,
                              P_TYPE: tl.constexpr, OUT_TYPE: tl.constexpr, KIND: tl.constexpr, LEFT: tl.constexpr,
                              EPILOGUE: tl.constexpr, INTERPRETED: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """For each problem b: C = P^T Y (LEFT; M = d, K = r) or Y P (N = d, K = r), Y in the compute dtype, then the
    epilogue on problem b's `out` (strides from its table row): STORE (C) or UPDATE (lowrank_adam._update_epilogue,
    W <- W (1 - lr wd) - lr scale C, with row b of the scalar table)."""
    ACC: tl.constexpr = Y_TYPE
    DOT: tl.constexpr = unproject_dot_type(OUT_TYPE, ACC, EPILOGUE)
    COLUMNS: tl.constexpr = 10  # UNPROJECT_META
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for t in range(tl.program_id(0), num_problems * tiles, tl.num_programs(0)):
        b = t // tiles
        pid_m, pid_n = tile_of(t % tiles, M, N, BLOCK_M, BLOCK_N, LEFT)
        m0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        acc = _operator_gemm(_pointer(meta_ptr, b, 0, COLUMNS, Y_TYPE), _meta(meta_ptr, b, 4, COLUMNS),
                             _meta(meta_ptr, b, 5, COLUMNS), _pointer(meta_ptr, b, 1, COLUMNS, P_TYPE),
                             _meta(meta_ptr, b, 6, COLUMNS), _meta(meta_ptr, b, 7, COLUMNS),
                             _meta(meta_ptr, b, 3, COLUMNS).to(tl.uint64, bitcast=True), M, N, K, rank, d, m0, n0,
                             KIND, LEFT, LEFT, DOT, ACC, INTERPRETED, BLOCK_M, BLOCK_N, BLOCK_K)
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        ptrs = (_pointer(meta_ptr, b, 2, COLUMNS, OUT_TYPE)
                + (offs_m.to(tl.int64) * _meta(meta_ptr, b, 8, COLUMNS))[:, None]
                + (offs_n.to(tl.int64) * _meta(meta_ptr, b, 9, COLUMNS))[None, :])
        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        if EPILOGUE == 2:
            s = scalars_ptr + b * 10  # SCALARS
            _update_epilogue(acc, ptrs, mask, tl.load(s + 8), tl.load(s + 9), INTERPRETED)
        else:
            tl.store(ptrs, acc, mask=mask)


# --------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------


def _programs(device: torch.device, tiles: int) -> int:
    """Programs of a persistent launch: a few per SM on a GPU (each walks the tiles of every problem); in the
    interpreter three, so that tests cover programs that take several tiles and several problems."""
    if device.type != "cuda":
        return max(1, min(tiles, 3))
    return max(1, min(tiles, 4 * torch.cuda.get_device_properties(device).multi_processor_count))


def _table(rows: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The per-problem table on the kernels' device (one host-to-device copy per launch on a GPU)."""
    table = torch.tensor(rows, dtype=dtype)
    return table.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else table


def _pointer_args(side: _Side, placeholder: torch.Tensor) -> tuple:
    """(p pointer, stride_p0, stride_p1, P_TYPE) of one problem's side: its matrix or index vector, or (seeded) the
    placeholder, which the kernel never reads."""
    p, sp0, sp1 = side.pointer_args(placeholder)
    return p.data_ptr(), sp0, sp1, _TL_TYPES[p.dtype]


def _grouped_project(xs: list, sides: list, left: bool, out: torch.Tensor, states=None, scalars=None) -> None:
    """out[b] = P_b xs[b] (left) or xs[b] P_b^T (right) for every problem b; with `states` (per problem
    (exp_avg, exp_avg_sq, delta or None)) and `scalars` (the [B, SCALARS] table), the ADAM epilogue instead."""
    B, M, N = out.shape
    if out.numel() == 0:
        return
    side = sides[0]
    rows, p_type = [], None
    for b, x in enumerate(xs):
        p, sp0, sp1, p_type = _pointer_args(sides[b], x)
        m, v, delta = states[b] if states is not None else (out, out, None)
        rows.append([x.data_ptr(), p, m.data_ptr(), v.data_ptr(), (delta if delta is not None else m).data_ptr(),
                     _signed(sides[b].seed), x.stride(0), x.stride(1), sp0, sp1])
    state_type = _TL_TYPES[states[0][0].dtype] if states is not None else _TL_TYPES[out.dtype]
    cfg = _grouped_config("project", left, side.rank, xs[0].dtype, side.kind)
    tiles = triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"])
    _grouped_project_kernel[(_programs(out.device, B * tiles), )](
        _table(rows, torch.int64, out.device), scalars if scalars is not None else out, out, B, M, N, side.dim,
        side.rank, side.dim, X_TYPE=_TL_TYPES[xs[0].dtype], P_TYPE=p_type, STATE_TYPE=state_type, KIND=side.kind,
        LEFT=left, EPILOGUE=ADAM if states is not None else STORE,
        ADAPTER=states is not None and states[0][2] is not None, INTERPRETED=_INTERPRETED, **cfg)


def _grouped_unproject(y: torch.Tensor, sides: list, left: bool, outs: list, scalars=None) -> None:
    """outs[b] = P_b^T y[b] (left) or y[b] P_b (right) for every problem b; with `scalars`, outs are the W_b and
    get the UPDATE epilogue instead."""
    M, N = outs[0].shape
    if outs[0].numel() == 0:
        return
    side = sides[0]
    rows, p_type = [], None
    for b, out in enumerate(outs):
        p, sp0, sp1, p_type = _pointer_args(sides[b], y)
        rows.append([y[b].data_ptr(), p, out.data_ptr(), _signed(sides[b].seed), y.stride(1), y.stride(2), sp0, sp1,
                     out.stride(0), out.stride(1)])
    update = scalars is not None
    cfg = _grouped_config("unproject", left, side.rank, outs[0].dtype if update else y.dtype, side.kind)
    tiles = triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"])
    _grouped_unproject_kernel[(_programs(y.device, len(outs) * tiles), )](
        _table(rows, torch.int64, y.device), scalars if update else y, len(outs), M, N, side.rank, side.rank,
        side.dim, Y_TYPE=_TL_TYPES[y.dtype], P_TYPE=p_type, OUT_TYPE=_TL_TYPES[outs[0].dtype], KIND=side.kind,
        LEFT=left, EPILOGUE=UPDATE if update else STORE, INTERPRETED=_INTERPRETED, **cfg)


def _grouped_config(op: str, left: bool, rank: int, dtype: torch.dtype, kind: int) -> dict:
    """The single-matrix kernel's configuration (lowrank_adam._config) with the output tile capped at 64 x 64:
    the persistent loop keeps the problem's table row (pointers, strides, seed, scalars) live beside the
    accumulator and the state tiles, and with the single kernel's 64 x 128 / 128 x 64 tiles the ADAM epilogue
    spilled 120-200 bytes at the 255-register cap on sm_80 and sm_90 (python -m lowrank_ops.triton.aot).
    BLOCK_K, the dot type and the K loop are unchanged, so every output entry sums its terms in the single
    kernel's order."""
    cfg = _config(op, left, rank, dtype, kind)
    cfg["BLOCK_M"], cfg["BLOCK_N"] = min(cfg["BLOCK_M"], 64), min(cfg["BLOCK_N"], 64)
    if op == "unproject" and left and dtype in (torch.bfloat16, torch.float16):
        cfg["num_warps"] = 4
    elif op == "unproject" and kind in BASIS:
        cfg["num_warps"], cfg["num_stages"] = 8, 1
    return cfg


def _signed(seed: int) -> int:
    """A uint64 seed as the int64 with the same bits (the table's dtype); the kernels bitcast it back."""
    return seed - 2**64 if seed >= 2**63 else seed


def _step_group(problems: list) -> None:
    """One group: problems share W's shape and dtype, G's dtype, each side's kind, rank and tensor dtype, and the
    weight-decay mode. Each problem is (W, G, exp_avg, exp_avg_sq, delta, left _Side or None, right _Side or
    None, scalars dict). Order of the GEMMs as lowrank_adam.lowrank_adamw_step_ (the same rule, which depends
    only on the shapes)."""
    W0 = problems[0][0]
    m, n = W0.shape
    device = W0.device
    compute = torch.float64 if W0.dtype == torch.float64 else torch.float32
    lefts = [p[5] for p in problems]
    rights = [p[6] for p in problems]
    left, right = lefts[0], rights[0]
    r1 = left.rank if left else m
    r2 = right.rank if right else n
    B = len(problems)
    scalars = _table([[p[7][name] for name in SCALARS] for p in problems], torch.float64, device)
    states = [tuple(_working(s) if s is not None else None for s in p[2:5]) for p in problems]
    direction = torch.empty((B, r1, r2), dtype=compute, device=device)
    Gs = [p[1] for p in problems]

    if left and right:
        if m * n * r2 + r1 * m * r2 <= r1 * m * n + r1 * n * r2:
            inner = torch.empty((B, m, r2), dtype=compute, device=device)
            _grouped_project(Gs, rights, False, inner)
            _grouped_project(list(inner), lefts, True, direction, states, scalars)
        else:
            inner = torch.empty((B, r1, n), dtype=compute, device=device)
            _grouped_project(Gs, lefts, True, inner)
            _grouped_project(list(inner), rights, False, direction, states, scalars)
    else:
        _grouped_project(Gs, lefts if left else rights, left is not None, direction, states, scalars)
    for p, work in zip(problems, states):
        for state, w in zip(p[2:5], work):
            if w is not None and w is not state:
                state.copy_(w)

    Ws = [p[0] for p in problems]
    if left and right:
        if r1 * r2 * n + m * n * r1 <= m * r1 * r2 + m * n * r2:
            y = torch.empty((B, r1, n), dtype=compute, device=device)
            _grouped_unproject(direction, rights, False, list(y))
            _grouped_unproject(y, lefts, True, Ws, scalars)
        else:
            y = torch.empty((B, m, r2), dtype=compute, device=device)
            _grouped_unproject(direction, lefts, True, list(y))
            _grouped_unproject(y, rights, False, Ws, scalars)
    else:
        _grouped_unproject(direction, lefts if left else rights, left is not None, Ws, scalars)


def _side_key(side):
    if side is None:
        return None
    return side.kind, side.rank, None if side.matrix is None else side.matrix.dtype


def lowrank_adamw_multi_step_(W, G, exp_avg, exp_avg_sq, delta, left_kind, left_seed, left_rank, left_matrix,
                              right_kind, right_seed, right_rank, right_matrix, lr, beta1, beta2, eps, weight_decay,
                              step, scale, wd_mode) -> None:
    """The multi-tensor step with the schema's arguments (lowrank_ops/_ops.py), in place; `delta` holds the
    adapters of the matrices in wd_mode "adapter", in order. Matrices are grouped, each group runs its grouped
    launches (one per GEMM)."""
    if _INTERPRETED and any(w.dtype == torch.float64 for w in W):
        raise NotImplementedError(
            "lowrank_ops.triton.lowrank_adam_multi: the Triton interpreter passes float arguments as float32, so "
            "a float64 W needs the compiled kernels (a CUDA device) or another backend")
    adapters = iter(delta)
    groups = {}
    for i in range(len(W)):
        m, n = W[i].shape
        adapter = wd_mode[i] == "adapter"
        left = _Side(left_kind[i], left_seed[i], left_rank[i], left_matrix[i], m) if left_kind[i] != "none" else None
        right = (_Side(right_kind[i], right_seed[i], right_rank[i], right_matrix[i], n)
                 if right_kind[i] != "none" else None)
        scalars = adam_scalars(lr[i], beta1[i], beta2[i], eps[i], weight_decay[i], step[i], scale[i], adapter)
        problem = (W[i], G[i], exp_avg[i], exp_avg_sq[i], next(adapters) if adapter else None, left, right, scalars)
        key = ((m, n), W[i].dtype, G[i].dtype, exp_avg[i].dtype, _side_key(left), _side_key(right), adapter)
        groups.setdefault(key, []).append(problem)
    for problems in groups.values():
        _step_group(problems)


# --------------------------------------------------------------------------------------------------------
# Ahead-of-time compile entries (tier-3 check, lowrank_ops.triton.aot)
# --------------------------------------------------------------------------------------------------------


def aot_entries() -> list:
    """The grouped kernels as the launcher runs them: the fused projection (ADAM epilogue) for bfloat16 and
    float32 G and the fused unprojection (UPDATE epilogue) for float32 and bfloat16 W, each side, each kind, and
    the STORE forms of a two-sided projection's first GEMMs (float32). A seeded side's P_TYPE is the data
    matrix's dtype (its pointer is a placeholder), a DCT or SR_DCT side's int32 (the index vector), an explicit one
    float32."""
    from .aot import AotEntry
    from .lowrank_adam import SIDE_KIND_IDS

    def p_type(kind_id, placeholder):
        return tl.int32 if kind_id in BASIS else {MATRIX: tl.float32}.get(kind_id, placeholder)

    sizes = {"M": "i32", "N": "i32", "K": "i32", "rank": "i32", "d": "i32", "num_problems": "i32"}
    entries = []
    for left in (True, False):
        side = "left" if left else "right"
        for kind, kind_id in SIDE_KIND_IDS.items():
            for g_dtype, epilogue in ((torch.bfloat16, ADAM), (torch.float32, ADAM), (torch.float32, STORE)):
                ty = _TRITON_TYPES[g_dtype]
                cfg = _grouped_config("project", left, AOT_RANK, g_dtype, kind_id)
                entries.append(AotEntry(
                    f"lowrank_adam_multi project/{side} {kind} G {ty} {'adam' if epilogue == ADAM else 'store'}",
                    _grouped_project_kernel,
                    signature={"meta_ptr": "*i64", "scalars_ptr": "*fp64", "out_ptr": "*fp32", **sizes},
                    constexprs={"X_TYPE": _TL_TYPES[g_dtype], "P_TYPE": p_type(kind_id, _TL_TYPES[g_dtype]),
                                "STATE_TYPE": tl.float32, "KIND": kind_id, "LEFT": left, "EPILOGUE": epilogue,
                                "ADAPTER": False, "INTERPRETED": False, "BLOCK_M": cfg["BLOCK_M"],
                                "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"]},
                    expects_wgmma=g_dtype == torch.bfloat16, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                    divisible_by_16=("meta_ptr", "scalars_ptr", "out_ptr", "M", "N", "K", "d")))
            for w_dtype, epilogue in ((torch.float32, UPDATE), (torch.bfloat16, UPDATE), (torch.float32, STORE)):
                ty = _TRITON_TYPES[w_dtype]
                cfg = _grouped_config("unproject", left, AOT_RANK, w_dtype, kind_id)
                entries.append(AotEntry(
                    f"lowrank_adam_multi unproject/{side} {kind} W {ty} {'update' if epilogue == UPDATE else 'store'}",
                    _grouped_unproject_kernel, signature={"meta_ptr": "*i64", "scalars_ptr": "*fp64", **sizes},
                    constexprs={"Y_TYPE": tl.float32, "P_TYPE": p_type(kind_id, tl.float32),
                                "OUT_TYPE": _TL_TYPES[w_dtype], "KIND": kind_id, "LEFT": left, "EPILOGUE": epilogue,
                                "INTERPRETED": False, "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"],
                                "BLOCK_K": cfg["BLOCK_K"]},
                    expects_wgmma=w_dtype == torch.bfloat16, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                    divisible_by_16=("meta_ptr", "scalars_ptr", "M", "N", "K", "d")))
    return entries
