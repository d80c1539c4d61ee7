"""The bad-input suite (issue 16): every public op of lowrank_ops.ops, on every backend that runs here, is
called with bad and edge-case arguments generated from the op's schema (lowrank_ops/_ops.py: the type of
each argument and which ones the op writes); each call must raise a clear error (a ValueError, TypeError
or RuntimeError whose message names the public op and the argument) or return a correct result.

Cases: for every argument, every variant of its kind (VARIANTS: bools for ints, wrong types, NaN/Inf,
wrong dtypes and devices, meta tensors, NumPy and read-only NumPy arrays, expanded, aliased and
overlapping tensors, tensors that require grad, inference tensors, empty and size-1 dims, non-contiguous
views), once on a fixed small problem, then hypothesis-drawn problems (sizes, dtypes, sides, kinds) with
one or two variants each. A case is run on every backend; what counts as correct:
- a variant marked "error" (the contract refuses it) raises a clear error on every backend;
- otherwise every backend raises a clear error or every backend returns; results then agree across
  backends (the pure-torch "reference" is the oracle of the compiled ones), equal the unvaried call's
  where the variant keeps the values (a NumPy array, a transposed layout), are finite where the inputs
  are, and have the shapes and dtypes of the unvaried call where the inputs were meta tensors.

Run by tests/test_bad_inputs.py in a subprocess per family (a segfault then fails that test instead of
killing pytest): `python tests/bad_inputs.py FAMILY EXAMPLES` prints one JSON line with the counts per op
and the failures. `python tests/bad_inputs.py --counts [EXAMPLES]` prints the table of cases per op and
backend, silent acceptances, failures and crashes for every family (the counts of a closing note)."""

import contextlib
import dataclasses
import functools
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if not torch.cuda.is_available():  # Triton kernels run in its interpreter on CPU tensors (as in conftest.py)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lowrank_ops import _ops, backends, ops
from lowrank_ops.ops import Projection, QuantizedWeight

BACKENDS = ("cpu", "reference", "triton")
FAMILIES = ("sketch", "dct", "lowrank_adam", "quant", "range_finder", "apollo")
ERRORS = (ValueError, TypeError, RuntimeError)


# --------------------------------------------------------------------------------------------------------
# The public ops: a valid call per op, drawn from a problem (sizes, dtype, side, kind)
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    m: int
    n: int
    r: int  # a rank <= min(m, n)
    dtype: torch.dtype
    side: str
    kind: str
    seed: int

    @property
    def d(self) -> int:
        return self.m if self.side == "left" else self.n


def _randn(p: Problem, *shape, dtype=None) -> torch.Tensor:
    g = torch.Generator().manual_seed(p.seed + sum(shape))
    return torch.randn(*shape, generator=g).to(dtype or p.dtype)


def _step_kwargs(p: Problem) -> dict:
    W = _randn(p, p.m, p.n, dtype=p.dtype if p.dtype != torch.float16 else torch.float32)
    if p.kind == "matrix":
        projection = Projection.from_matrix(_randn(p, p.r, p.d, dtype=torch.float32), p.side)
    elif p.kind == "dct":
        projection = Projection.from_dct_indices(torch.arange(p.r, dtype=torch.int64) * (p.d // p.r), p.side)
    else:
        projection = Projection.seeded(p.kind, p.seed, p.r, p.side)
    shape = projection.projected_shape(W.shape)
    state = torch.float64 if W.dtype == torch.float64 else torch.float32
    return dict(W=W, G=_randn(p, p.m, p.n, dtype=p.dtype), exp_avg=torch.zeros(shape, dtype=state),
                exp_avg_sq=torch.zeros(shape, dtype=state), projection=projection, lr=1e-2, beta1=0.9, beta2=0.999,
                eps=1e-8, weight_decay=0.1, step=3, scale=1.0, wd_mode="full", delta=None)


def _apollo_kwargs(p: Problem) -> dict:
    W = _randn(p, p.m, p.n, dtype=p.dtype if p.dtype != torch.float16 else torch.float32)
    if p.kind in ("rademacher", "gaussian"):
        projection = Projection.seeded(p.kind, p.seed, p.r, p.side)
    else:
        projection = Projection.from_matrix(_randn(p, p.r, p.d, dtype=torch.float32), p.side)
    shape = projection.projected_shape(W.shape)
    state = torch.float64 if W.dtype == torch.float64 else torch.float32
    return dict(W=W, G=_randn(p, p.m, p.n, dtype=p.dtype), exp_avg=torch.zeros(shape, dtype=state),
                exp_avg_sq=torch.zeros(shape, dtype=state), limiter_norm=torch.tensor(1.5, dtype=state),
                projection=projection, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.1, step=3, scale=2.0,
                scale_type="tensor" if p.side == "left" else "channel", limiter=True, correct_bias=True,
                proj_scale=1.5)


def _multi_step_kwargs(p: Problem) -> dict:
    """Two matrices in one call: the problem's step, and one of W's transposed shape through a Rademacher sketch
    on the other side (a second group)."""
    other = dataclasses.replace(p, m=p.n, n=p.m, side="right" if p.side == "left" else "left", kind="rademacher",
                                seed=p.seed + 1)
    first, second = _step_kwargs(p), _step_kwargs(other)
    lists = {name: [first[name], second[name]] for name in ("W", "G", "exp_avg", "exp_avg_sq")}
    return dict(**lists, projections=[first["projection"], second["projection"]], lr=1e-2, beta1=0.9, beta2=0.999,
                eps=1e-8, weight_decay=0.1, step=3, scale=1.0, wd_mode="full", delta=None)


def _apollo_multi_kwargs(p: Problem) -> dict:
    """Two matrices in one call: the problem's step, and one of W's transposed shape through a Rademacher sketch
    on the other side."""
    other = dataclasses.replace(p, m=p.n, n=p.m, side="right" if p.side == "left" else "left", kind="rademacher",
                                seed=p.seed + 1)
    first, second = _apollo_kwargs(p), _apollo_kwargs(other)
    lists = {name: [first[name], second[name]] for name in ("W", "G", "exp_avg", "exp_avg_sq", "limiter_norm")}
    return dict(**lists, projections=[first["projection"], second["projection"]], lr=1e-2, beta1=0.9, beta2=0.999,
                eps=1e-6, weight_decay=0.1, step=3, scale=2.0, scale_type="channel", limiter=True, correct_bias=True,
                proj_scale=1.5)


def _qw(p: Problem, fmt: str = "int8") -> QuantizedWeight:
    return ops.quantize(_randn(p, p.m, p.n, dtype=torch.float32), fmt, 4, backend="reference")


@dataclasses.dataclass(frozen=True)
class Spec:
    """A public op: `build(problem)` gives valid keyword arguments; `outputs(result, kwargs)` the tensors
    the call produced (results, or the arguments it wrote); `compared` which of them must agree across
    backends (None: all); `costly` the int arguments that size an allocation or a loop (no huge values);
    `aliases` other names an error may give an argument."""

    name: str
    family: str
    schema: str
    build: Callable
    outputs: Callable = lambda result, kwargs: list(result) if isinstance(result, tuple) else [result]
    compared: tuple | None = None
    costly: tuple = ()
    aliases: dict = dataclasses.field(default_factory=dict)
    kinds: dict = dataclasses.field(default_factory=dict)  # argument kinds the schema does not give


def _selected_scores(idx, kw):
    """The scores of the rows dct_topk selected, ascending: what must agree across backends (the indices
    may differ where scores tie up to rounding, e.g. for a G with equal rows)."""
    idx, G = _as_tensor(idx), _as_tensor(kw["G"])
    if idx.device.type == "meta":
        return idx.float()
    scores = ops.dct_scores(G.float(), kw["side"], kw["norm"], backend="reference")
    return scores[idx.long()].sort().values


def _dct_rows(p: Problem) -> torch.Tensor:
    """r distinct basis rows of [0, d), spread over the spectrum (int64)."""
    return torch.arange(p.r) * (p.d // p.r)


def _dct_signs(p: Problem):
    """The sr_dct signs (+-1, one per entry of the projected dimension) for the seeded kinds, else None (the
    plain "dct" rows), so that both forms of dct_project / dct_unproject are drawn."""
    if p.kind not in ("rademacher", "gaussian"):
        return None
    g = torch.Generator().manual_seed(p.seed)
    return torch.where(torch.rand(p.d, generator=g) < 0.5, -1.0, 1.0).to(p.dtype)


def _quant_outputs(qw, kwargs):
    return [getattr(qw, f.name) for f in dataclasses.fields(qw) if isinstance(getattr(qw, f.name), torch.Tensor)]


SPECS = [
    Spec("philox4x32", "sketch", "philox4x32",
         lambda p: dict(counters=torch.randint(0, 2**32, (p.m, 4), generator=torch.Generator().manual_seed(p.seed)),
                        seed=p.seed, rounds=10)),
    Spec("sketch", "sketch", "sketch_fill_",
         lambda p: dict(rows=p.r, cols=p.n, seed=p.seed, kind=p.kind if p.kind in ("rademacher", "gaussian")
                        else "gaussian", dtype=p.dtype, device=None),
         costly=("rows", "cols"), kinds={"device": "device", "rows": "int", "cols": "int"}),
    Spec("sketch_project", "sketch", "sketch_project",
         lambda p: dict(G=_randn(p, p.m, p.n), seed=p.seed, rank=p.r, kind="rademacher", side=p.side,
                        out_dtype=None), costly=("rank",)),
    Spec("sketch_unproject", "sketch", "sketch_unproject",
         lambda p: dict(R=_randn(p, *((p.r, p.n) if p.side == "left" else (p.m, p.r))), seed=p.seed, dim=p.d,
                        kind="gaussian", side=p.side, out_dtype=None), costly=("dim",)),
    Spec("dct_scores", "dct", "dct_scores", lambda p: dict(G=_randn(p, p.m, p.n), side=p.side, norm="l1")),
    Spec("dct_topk", "dct", "dct_topk", lambda p: dict(G=_randn(p, p.m, p.n), rank=p.r, side=p.side, norm="l2"),
         outputs=lambda idx, kw: [idx, _selected_scores(idx, kw)], compared=(1, )),
    Spec("dct_basis", "dct", "dct_basis",
         lambda p: dict(dim=p.d, indices=_dct_rows(p), dtype=p.dtype, device=None),
         costly=("dim",), kinds={"device": "device", "indices": "indices"}),
    Spec("dct_project", "dct", "dct_project",
         lambda p: dict(G=_randn(p, p.m, p.n), indices=_dct_rows(p), side=p.side, signs=_dct_signs(p), out_dtype=None,
                        method="auto"), kinds={"indices": "indices"}),
    Spec("dct_unproject", "dct", "dct_unproject",
         lambda p: dict(R=_randn(p, *((p.r, p.n) if p.side == "left" else (p.m, p.r))), indices=_dct_rows(p), dim=p.d,
                        side=p.side, signs=_dct_signs(p), out_dtype=None, method="auto"),
         costly=("dim",), kinds={"indices": "indices"}),
    Spec("lowrank_adamw_step_", "lowrank_adam", "lowrank_adamw_step_", _step_kwargs,
         outputs=lambda result, kw: [kw["W"], kw["exp_avg"], kw["exp_avg_sq"]],
         aliases={"projection": ("left_matrix", "right_matrix", "projection")}),
    Spec("lowrank_apollo_step_", "apollo", "lowrank_apollo_step_", _apollo_kwargs,
         outputs=lambda result, kw: [kw["W"], kw["exp_avg"], kw["exp_avg_sq"], kw["limiter_norm"]],
         aliases={"projection": ("matrix", "projection")}),
    Spec("lowrank_apollo_multi_step_", "apollo", "lowrank_apollo_multi_step_", _apollo_multi_kwargs,
         outputs=lambda result, kw: [*kw["W"], *kw["exp_avg"], *kw["exp_avg_sq"], *kw["limiter_norm"]],
         aliases={"projections": ("projection", "matrix")},
         kinds={"W": "written tensor list", "G": "tensor list", "exp_avg": "written tensor list",
                "exp_avg_sq": "written tensor list", "limiter_norm": "written tensor list",
                "projections": "projection list",
                **dict.fromkeys(("lr", "beta1", "beta2", "eps", "weight_decay", "scale", "proj_scale"), "float"),
                "step": "int", "scale_type": "str", "limiter": "bool", "correct_bias": "bool"}),
    Spec("lowrank_adamw_multi_step_", "lowrank_adam", "lowrank_adamw_multi_step_", _multi_step_kwargs,
         outputs=lambda result, kw: [*kw["W"], *kw["exp_avg"], *kw["exp_avg_sq"]],
         aliases={"projections": ("projection", "left_matrix", "right_matrix")},
         kinds={"W": "written tensor list", "G": "tensor list", "exp_avg": "written tensor list",
                "exp_avg_sq": "written tensor list", "delta": "written tensor list", "projections": "projection list",
                **dict.fromkeys(("lr", "beta1", "beta2", "eps", "weight_decay", "scale"), "float"), "step": "int",
                "wd_mode": "str"}),
    Spec("quantize", "quant", "quantize_weight",
         lambda p: dict(W=_randn(p, p.m, p.n), format="nf4" if p.kind == "dct" else "int8", group_size=4,
                        double_quant=p.kind == "gaussian"), outputs=_quant_outputs, costly=("group_size",)),
    Spec("dequantize", "quant", "dequantize_weight", lambda p: dict(qw=_qw(p, "nf4" if p.side == "left" else "int8"),
                                                                     dtype=p.dtype)),
    Spec("dequant_matmul", "quant", "dequant_matmul",
         lambda p: dict(X=_randn(p, 3, p.n, dtype=torch.float32), qw=_qw(p),
                        bias=_randn(p, p.m, dtype=torch.float32) if p.side == "left" else None),
         aliases={"qw": ("codes", "scales", "qw")}),
    Spec("range_finder", "range_finder", "range_finder",
         lambda p: dict(G=_randn(p, p.m, p.n), rank=p.r, oversample=2, power_iters=1, seed=p.seed, side=p.side),
         compared=(1,), costly=("oversample", "power_iters")),
    Spec("adaptive_rank", "range_finder", "range_finder",
         lambda p: dict(G=_randn(p, p.m, p.n), energy=0.5, max_rank=p.r, min_rank=1, oversample=2, power_iters=1,
                        seed=p.seed, side=p.side),
         outputs=lambda result, kw: [torch.tensor(result[0]), result[1], result[2]], compared=(0, 2),
         costly=("oversample", "power_iters"), kinds={"energy": "float"}),
]


def _kind(spec: Spec, name: str, value) -> tuple[str, bool]:
    """(kind, optional) of an argument, from the op's schema (lowrank_ops/_ops.py) where the public argument
    is a schema argument, else from the public function's annotation; optional: None is a valid value."""
    if name in spec.kinds:
        return spec.kinds[name], True
    if name == "backend":
        return "backend", True
    rules = _ops.RULES[spec.schema]
    schema = getattr(torch.ops.lowrank_ops, spec.schema).default._schema
    types = {a.name: str(a.type) for a in schema.arguments}
    public = inspect.signature(getattr(ops, spec.name).__wrapped__, eval_str=True).parameters.get(name)
    if name in types:
        optional = types[name].startswith("Optional[") or (public is not None and public.default is None)
        t = types[name].removeprefix("Optional[").removesuffix("]") if optional else types[name]
        written = name in {rules.names[i] for i in rules.mutated}
        return {"Tensor": "written tensor" if written else "tensor", "ScalarType": "dtype"}.get(t, t), optional
    parameter = inspect.signature(getattr(ops, spec.name).__wrapped__, eval_str=True).parameters[name]
    args = getattr(parameter.annotation, "__args__", (parameter.annotation, ))
    by_annotation = {int: "int", float: "float", bool: "bool", str: "str", torch.dtype: "dtype",
                     Projection: "projection", QuantizedWeight: "qw", torch.Tensor: "tensor"}
    for t, kind in by_annotation.items():
        if t in args:
            return kind, type(None) in args
    return ("tensor" if isinstance(value, torch.Tensor) else type(value).__name__), True


# --------------------------------------------------------------------------------------------------------
# Variants per kind of argument
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Variant:
    """`apply(kwargs, name)` changes argument `name` of fresh valid kwargs (returns False where it does not
    apply). expect "error": the contract refuses it; "either": a clear error or a correct result.
    same_values: the result must equal the unvaried call's (only the layout or the container changed)."""

    name: str
    expect: str
    apply: Callable
    same_values: bool = False
    device_change: bool = False  # run with backend None: a named CPU backend cannot run meta tensors


def _set(value):
    def apply(kw, name):
        kw[name] = value(kw[name]) if callable(value) else value

    return apply


def _tensor_variant(make, only=lambda t: True):
    def apply(kw, name):
        t = kw[name]
        if not isinstance(t, torch.Tensor) or not only(t):
            return False
        kw[name] = make(t)

    return apply


def _readonly(t):
    a = t.numpy().copy()
    a.setflags(write=False)
    return a


def _transposed_layout(t):
    return t.mT.contiguous().mT if t.dim() == 2 else t.flip(0).contiguous().flip(0)


def _nonfinite(value):
    def make(t):
        t = t.clone()
        t.view(-1)[t.numel() // 2] = value
        return t

    return make


def _inference(t):
    with torch.inference_mode():
        return t.clone()


def _shares_memory_with(kw, name):
    """`name` rewritten as a view that overlaps another tensor argument by one element."""
    t = kw[name]
    if not isinstance(t, torch.Tensor) or not t.numel():
        return False
    others = [k for k, v in kw.items() if k != name and isinstance(v, torch.Tensor) and v.dtype == t.dtype and v.numel()]
    if not others:
        return False
    other = kw[others[0]]
    buffer = torch.zeros(other.numel() + t.numel() - 1, dtype=t.dtype)
    kw[others[0]] = buffer[:other.numel()].view(other.shape)
    kw[others[0]].copy_(other)
    kw[name] = buffer[other.numel() - 1:].view(t.shape)


def _same_object_as_other(kw, name):
    t = kw[name]
    others = [k for k, v in kw.items() if k != name and isinstance(v, torch.Tensor) and isinstance(t, torch.Tensor)
              and v.shape == t.shape and v.dtype == t.dtype]
    if not others:
        return False
    kw[name] = kw[others[0]]


def _self_overlapping(t):
    if t.dim() != 2 or t.shape[1] < 2:
        return None
    return torch.zeros(t.numel()).to(t.dtype).as_strided(t.shape, (1, 1))


def _expanded(t):
    return t[:1].expand(t.shape) if t.dim() >= 1 and t.shape[0] > 1 else None


def _empty_dim(dim):
    return lambda t: t.narrow(dim, 0, 0) if t.dim() > dim else None


def _one_dim(dim):
    return lambda t: t.narrow(dim, 0, 1) if t.dim() > dim and t.shape[dim] > 0 else None


def _meta_beside_cpu(kw, name):
    """`name` on the meta device while another tensor argument stays on the CPU."""
    others = [v for k, v in kw.items() if k != name and isinstance(v, (torch.Tensor, QuantizedWeight))]
    if not isinstance(kw[name], torch.Tensor) or not others:
        return False
    kw[name] = kw[name].to("meta")


def _grad_leaf(t):
    return t.detach().clone().requires_grad_(True) if t.is_floating_point() else None


def _skip_none(make):
    def apply(kw, name):
        t = kw[name]
        if not isinstance(t, torch.Tensor):
            return False
        made = make(t)
        if made is None:
            return False
        kw[name] = made

    return apply


READ_TENSOR = [
    Variant("a list", "error", _tensor_variant(lambda t: t.tolist())),
    Variant("a string", "error", _set("tensor")),
    Variant("bool dtype", "error", _tensor_variant(lambda t: t != 0)),
    Variant("complex dtype", "error", _tensor_variant(lambda t: t.to(torch.complex64))),
    Variant("int64 dtype", "either", _tensor_variant(lambda t: t.to(torch.int64))),
    Variant("float64 dtype", "either", _tensor_variant(lambda t: t.to(torch.float64))),
    Variant("bfloat16 dtype", "either", _tensor_variant(lambda t: t.to(torch.bfloat16))),
    Variant("0-dim", "error", _tensor_variant(lambda t: t.reshape(-1)[0].clone(), lambda t: t.dim() > 0)),
    Variant("one more dim", "either", _tensor_variant(lambda t: t.unsqueeze(0))),
    Variant("empty dim 0", "either", _skip_none(_empty_dim(0))),
    Variant("empty dim 1", "either", _skip_none(_empty_dim(1))),
    Variant("size-1 dim 0", "either", _skip_none(_one_dim(0))),
    Variant("size-1 dim 1", "either", _skip_none(_one_dim(1))),
    Variant("non-contiguous", "either", _tensor_variant(_transposed_layout), same_values=True),
    Variant("strided view", "either", _tensor_variant(
        lambda t: torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)[..., ::2].copy_(t),
        lambda t: t.dim() >= 1), same_values=True),
    Variant("expanded", "either", _skip_none(_expanded)),
    Variant("NumPy", "either", _tensor_variant(lambda t: t.numpy(), lambda t: t.dtype != torch.bfloat16),
            same_values=True),
    Variant("read-only NumPy", "either", _tensor_variant(_readonly, lambda t: t.dtype != torch.bfloat16),
            same_values=True),
    Variant("requires grad", "either", _skip_none(_grad_leaf), same_values=True),
    Variant("meta, the rest on CPU", "error", _meta_beside_cpu, device_change=True),
    Variant("sparse", "error", _tensor_variant(lambda t: t.to_sparse(), lambda t: t.dim() >= 1)),
    Variant("NaN entry", "either", _tensor_variant(_nonfinite(float("nan")), lambda t: t.is_floating_point())),
    Variant("Inf entry", "either", _tensor_variant(_nonfinite(float("inf")), lambda t: t.is_floating_point())),
    Variant("shares memory with another argument", "either", _shares_memory_with),
]

WRITTEN_TENSOR = [v for v in READ_TENSOR if v.name not in ("read-only NumPy", "requires grad", "expanded")] + [
    Variant("read-only NumPy", "error", _tensor_variant(_readonly, lambda t: t.dtype != torch.bfloat16)),
    Variant("requires grad", "error", _skip_none(_grad_leaf)),
    Variant("inference tensor", "error", _tensor_variant(_inference)),
    Variant("expanded", "error", _skip_none(_expanded)),
    Variant("overlapping itself", "error", _skip_none(_self_overlapping)),
    Variant("the same tensor as another argument", "error", _same_object_as_other),
]
WRITTEN_TENSOR = [Variant(v.name, "error", v.apply) if v.name == "shares memory with another argument" else v
                  for v in WRITTEN_TENSOR]

INT = [
    Variant("True", "error", _set(True)),
    Variant("a float", "error", _set(lambda v: v + 0.5 if isinstance(v, int) else 1.5)),
    Variant("a string", "error", _set(lambda v: str(v))),
    Variant("-1", "either", _set(-1)),
    Variant("0", "either", _set(0)),
    Variant("a NumPy int", "either", _set(lambda v: np.int64(v) if isinstance(v, int) else v), same_values=True),
    Variant("a 0-dim tensor", "either", _set(lambda v: torch.tensor(v) if isinstance(v, int) else v),
            same_values=True),
]
BIG_INT = [Variant("2^31 + 1", "either", _set(2**31 + 1)), Variant("2^64", "either", _set(2**64))]
FLOAT = [
    Variant("True", "error", _set(True)),
    Variant("a string", "error", _set(lambda v: str(v))),
    Variant("NaN", "error", _set(float("nan"))),
    Variant("Inf", "error", _set(float("inf"))),
    Variant("-Inf", "error", _set(float("-inf"))),
    Variant("-1.0", "either", _set(-1.0)),
    Variant("0.0", "either", _set(0.0)),
    Variant("1.0", "either", _set(1.0)),
    Variant("a 0-dim tensor", "either", _set(lambda v: torch.tensor(v) if isinstance(v, float) else v),
            same_values=True),
]
SEEDED = ("rademacher", "gaussian")


def _matrix_is_w(kw, name):
    """The projection's matrix a view of W (square W, so that shapes fit)."""
    p = kw[name]
    side = "left" if p.left is not None else "right"
    if getattr(p, side).kind != "matrix" or getattr(p, side).matrix.shape != kw["W"].shape:
        return False
    kw[name] = _side_changed(("matrix",), matrix=lambda M: kw["W"])(p)


def _side_changed(kinds, **changes):
    """A Projection whose one side, when of one of `kinds`, has fields replaced (a value, or a function of the
    old value), built without the dataclasses' own checks: the op has to refuse what they would."""

    def change(p: Projection) -> Projection:
        side = "left" if p.left is not None else "right"
        op = getattr(p, side)
        if op.kind not in kinds:
            raise LookupError("the variant does not apply to this projection kind")
        changed = object.__new__(type(op))
        for f in dataclasses.fields(op):
            old = getattr(op, f.name)
            new = changes.get(f.name, old)
            object.__setattr__(changed, f.name, new(old) if callable(new) and f.name in changes else new)
        projection = object.__new__(Projection)
        object.__setattr__(projection, "left", changed if side == "left" else None)
        object.__setattr__(projection, "right", changed if side == "right" else None)
        return projection

    return change


STR = [Variant("an int", "error", _set(1)), Variant("an unknown name", "error", _set("bogus")),
       Variant("empty", "error", _set(""))]
DTYPE = [Variant("int32", "error", _set(torch.int32)), Variant("bool", "error", _set(torch.bool)),
         Variant("a string", "error", _set("float32")), Variant("float16", "either", _set(torch.float16))]
VARIANTS = {
    "tensor": READ_TENSOR,
    "indices": [v for v in READ_TENSOR if v.name != "a list"] + [
        Variant("a list of ints", "either", _tensor_variant(lambda t: t.tolist()), same_values=True),
        Variant("a list of floats", "error", _tensor_variant(lambda t: (t + 0.5).tolist())),
        Variant("a list with a bool", "error", _tensor_variant(lambda t: [True, *t.tolist()[1:]])),
        Variant("a float tensor", "error", _tensor_variant(lambda t: t.float())),
        Variant("out of range", "error", _tensor_variant(lambda t: t + 10**6)),
        Variant("negative", "error", _tensor_variant(lambda t: t - 10**6)),
    ],
    "written tensor": WRITTEN_TENSOR,
    "int": INT,
    "float": FLOAT,
    "str": STR,
    "dtype": DTYPE,
    "bool": [Variant("an int", "error", _set(1)), Variant("a string", "error", _set("yes"))],
    "device": [Variant("an unknown device", "error", _set("nonsense")), Variant("a float", "error", _set(1.5)),
               Variant("meta", "either", _set("meta"), device_change=True)],
    "backend": [Variant("an unknown name", "error", _set("gpu")), Variant("an int", "error", _set(1)),
                Variant("cuda on CPU tensors", "error", _set("cuda")),
                Variant("triton", "either", _set("triton"))],  # a clear error where the op has no Triton kernel
    "projection": [
        Variant("a string", "error", _set("gaussian")),
        Variant("a rank of True", "error", _set(_side_changed(SEEDED, rank=lambda r: True))),
        Variant("a seed of -1", "error", _set(_side_changed(SEEDED, seed=lambda s: -1))),
        Variant("an int64 matrix", "error", _set(_side_changed(("matrix",), matrix=lambda M: M.to(torch.int64)))),
        Variant("a meta matrix", "error", _set(_side_changed(("matrix",), matrix=lambda M: M.to("meta"))),
                device_change=True),
        Variant("a NaN matrix", "either", _set(_side_changed(("matrix",), matrix=_nonfinite(float("nan"))))),
        Variant("a non-contiguous matrix", "either", _set(_side_changed(("matrix",), matrix=_transposed_layout)),
                same_values=True),
        Variant("the matrix is W", "error", _matrix_is_w),
        Variant("out-of-range DCT rows", "error", _set(_side_changed(("dct",), indices=lambda i: i + 10**6))),
        Variant("negative DCT rows", "error", _set(_side_changed(("dct",), indices=lambda i: i - 10**6))),
        Variant("float DCT rows", "error", _set(_side_changed(("dct",), indices=lambda i: i.float()))),
    ],
    "qw": [
        Variant("a tensor", "error", _set(torch.zeros(2, 2))),
        Variant("int16 codes", "error", _set(lambda q: dataclasses.replace(q, codes=q.codes.to(torch.int16)))),
        Variant("meta tensors", "either", _set(lambda q: q.to("meta")), device_change=True),
        Variant("codes on meta", "error", _set(lambda q: dataclasses.replace(q, codes=q.codes.to("meta"))),
                device_change=True),
        Variant("a shape of bools", "error", _set(lambda q: dataclasses.replace(q, shape=(True, q.shape[1])))),
        Variant("a group size of 0", "error", _set(lambda q: dataclasses.replace(q, group_size=0))),
        Variant("a group size of True", "error", _set(lambda q: dataclasses.replace(q, group_size=True))),
        Variant("a NaN scale", "either", _set(lambda q: dataclasses.replace(q, scales=_nonfinite(float("nan"))(q.scales)))),
        Variant("non-contiguous scales", "either", _set(lambda q: dataclasses.replace(
            q, scales=_transposed_layout(q.scales))), same_values=True),
    ],
}


def _in_entry(apply):
    """`apply` on entry 0 of a list argument, with the entries of every list argument visible to it by name
    (W[1], G[0], ...: the variants that alias another argument pick among them)."""

    def wrapped(kw, name):
        if not isinstance(kw[name], (list, tuple)) or not kw[name]:
            return False
        flat = {}
        for k, v in kw.items():
            flat.update({f"{k}[{i}]": x for i, x in enumerate(v)} if isinstance(v, (list, tuple)) else {k: v})
        if apply(flat, f"{name}[0]") is False:
            return False
        for k, v in kw.items():
            kw[k] = [flat[f"{k}[{i}]"] for i in range(len(v))] if isinstance(v, (list, tuple)) else flat[k]

    return wrapped


def _list_of(kind: str) -> list:
    """The variants of a list argument (a multi-tensor op's one entry per matrix): each variant of `kind` on
    its first entry, and the list itself replaced."""
    return [Variant(f"{v.name} in entry 0", v.expect, _in_entry(v.apply), v.same_values, v.device_change)
            for v in VARIANTS[kind]] + [
        Variant("one entry short", "error", _set(lambda v: v[:1])),
        Variant("not a list", "error", _set(lambda v: v[0])),
        Variant("a tuple", "either", _set(tuple), same_values=True),
    ]


VARIANTS.update({f"{kind} list": _list_of(kind) for kind in ("tensor", "written tensor", "projection")})

NONE = Variant("None", "error", _set(None))


def variants_of(spec: Spec, name: str, value):
    kind, optional = _kind(spec, name, value)
    found = list(VARIANTS.get(kind, ()))
    if kind == "int" and name not in spec.costly:
        found += BIG_INT
    if not optional and kind != "written tensor":
        found.append(NONE)
    return found


# --------------------------------------------------------------------------------------------------------
# Running a case
# --------------------------------------------------------------------------------------------------------


def available_backends(spec: Spec, with_triton: bool) -> list:
    cpu = torch.device("cpu")
    return [b for b in BACKENDS if (b != "triton" or with_triton)
            and backends.unavailable_reason(b, spec.schema, cpu) is None]


def _as_tensor(x):
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.array(x))
    return x.detach() if isinstance(x, torch.Tensor) else x


def _tensors_in(value) -> list:
    """The tensors an argument holds: itself, those of a QuantizedWeight or a Projection, or (a multi-tensor
    op's list) those of its entries."""
    if isinstance(value, (list, tuple)):
        return [t for entry in value for t in _tensors_in(entry)]
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, QuantizedWeight):
        return list(value._tensors().values())
    if isinstance(value, Projection):
        sides = [s for s in (value.left, value.right) if s is not None]
        return [t for s in sides for t in (s.matrix, s.indices) if isinstance(t, torch.Tensor)]
    return []


def _call(spec: Spec, problem: Problem, changes, backend):
    """("ok", outputs, inputs_finite, rtol), ("error" or "unclear", exception), ("skip", why) or None (the variant
    does not apply)."""
    try:
        kw = spec.build(problem)
        for variant, name in changes:
            if variant.apply(kw, name) is False:
                return None
        tensors = [t for v in kw.values() for t in _tensors_in(v)]
        finite = all(bool(torch.isfinite(t).all()) for t in tensors
                     if t.device.type != "meta" and (t.is_floating_point() or t.is_complex()) and t.layout == torch.strided)
    except (LookupError, TypeError, RuntimeError) as exc:  # a variant that does not apply to this problem
        return ("skip", exc)
    if "backend" not in {n for _, n in changes}:
        kw["backend"] = None if any(v.device_change for v, _ in changes) else backend
    try:
        result = getattr(ops, spec.name)(**kw)
    except ERRORS as exc:
        return ("error", exc)
    except Exception as exc:  # noqa: BLE001 (any other exception is what the suite reports as unclear)
        return ("unclear", exc)
    outputs = [_as_tensor(x) for x in spec.outputs(result, kw)]
    low = any(t.dtype in (torch.float16, torch.bfloat16) for t in tensors + outputs if isinstance(t, torch.Tensor))
    return ("ok", outputs, finite, 5e-2 if low else 2e-3)


def _clear(spec: Spec, exc: Exception, names) -> str | None:
    """None if exc is a clear error of spec's op naming one of `names` (or their aliases), else why not."""
    message = str(exc)
    if not isinstance(exc, ERRORS):
        return f"{type(exc).__name__}, not ValueError/TypeError/RuntimeError: {message[:300]}"
    named = re.findall(r"lowrank_ops\.([\w.]+?)[:(]", message)
    if spec.name not in named and "Projection" not in named:
        return f"does not name lowrank_ops.{spec.name}: {message[:300]}"
    words = set(names)
    for n in names:
        words.update(spec.aliases.get(n, ()))
    if not any(re.search(rf"(?<![\w]){re.escape(w)}(?![\w])", message) for w in words):
        return f"does not name the argument ({'/'.join(sorted(words))}): {message[:300]}"
    return None


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    """Same shape and dtype; integers equal; floats non-finite (NaN or Inf: which one may depend on the
    order of a sum) at the same entries and within rtol of b's largest finite magnitude elsewhere."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    a, b = a.double(), b.double()
    ok = torch.isfinite(a)
    if not torch.equal(ok, torch.isfinite(b)):
        return False
    scale = float(b[ok].abs().max()) if bool(ok.any()) else 0.0
    return bool(((a[ok] - b[ok]).abs() <= rtol * scale + 1e-30).all())


def evaluate(spec: Spec, problem: Problem, changes, backend_names, ran: list | None = None) -> tuple[str, str | None]:
    """(outcome, failure): outcome "error", "ok" or "skip" (the variant does not apply to this problem); the
    backends that ran the case are appended to `ran`."""
    names = [n for _, n in changes]
    if "*" in names:  # a change of every tensor: any argument may be named
        names = list(spec.build(problem)) + [n for a in spec.aliases.values() for n in a]
    expect = "error" if any(v.expect == "error" for v, _ in changes) else "either"
    what = f"{spec.name}({', '.join(f'{n}: {v.name}' for v, n in changes)}) on {problem}"
    results = {}
    for backend in backend_names:
        out = _call(spec, problem, changes, backend)
        if out is None or out[0] == "skip":
            return "skip", None
        if backend == "triton" and out[0] == "error" and "Triton interpreter" in str(out[1]):
            continue  # what the interpreter cannot run (float64 scalars), not what Triton on a GPU does
        results[backend] = out
        if ran is not None:
            ran.append(backend)
        if out[0] == "unclear":
            return "fail", f"{what} [{backend}]: unclear error {type(out[1]).__name__}: {str(out[1])[:300]}"
        if out[0] == "error":
            why = _clear(spec, out[1], names + (["backend"] if "backend" in names else []))
            if why:
                return "fail", f"{what} [{backend}]: unclear error: {why}"
        elif expect == "error":
            return "fail", f"{what} [{backend}]: silently accepted"
    kinds = {b: r[0] for b, r in results.items()}
    if len(set(kinds.values())) > 1:
        detail = {b: (str(r[1])[:200] if r[0] == "error" else "returned") for b, r in results.items()}
        return "fail", f"{what}: backends disagree on accepting it: {detail}"
    if "error" in kinds.values():
        return "error", None
    return "ok", _check_results(spec, problem, changes, results, what)


def _check_results(spec, problem, changes, results, what) -> str | None:
    """The checks of returned results (module docstring); None when they hold."""
    for backend, (_, outputs, finite, rtol) in results.items():
        if any(t.device.type == "meta" for t in outputs):
            if not all(v.device_change for v, _ in changes):
                continue
            base = _call(spec, problem, [], "reference")[1]
            if [(tuple(t.shape), t.dtype, t.device.type) for t in outputs] != [(tuple(t.shape), t.dtype, "meta")
                                                                                for t in base]:
                return f"{what} [{backend}]: meta result shapes/dtypes differ from the real call's"
            return None
        if finite and not all(bool(torch.isfinite(t).all()) for t in outputs if t.is_floating_point()):
            return f"{what} [{backend}]: non-finite result from finite inputs"
        if all(v.same_values for v, _ in changes):
            plain = _call(spec, problem, [], backend)[1]
            if not all(_close(a, b, rtol) for a, b in zip(outputs, plain)):
                return f"{what} [{backend}]: result differs from the same values passed plainly"
    first, *others = results
    ref, rtol = results[first][1], results[first][3]
    for backend in others:
        outputs = results[backend][1]
        if not all(_close(outputs[i], ref[i], rtol) for i in spec.compared or range(len(ref))):
            return f"{what}: {backend} and {first} results differ"
    return None


# --------------------------------------------------------------------------------------------------------
# The cases: every single variant on a fixed problem, then hypothesis-drawn problems and variant pairs
# --------------------------------------------------------------------------------------------------------

FIXED = [Problem(7, 5, 2, torch.float32, "left", "rademacher", 11), Problem(6, 9, 3, torch.float32, "right", "dct", 3)]
BIG_SEED = 2**63 + 12345


def single_cases(spec: Spec, problem: Problem):
    kw = spec.build(problem)
    kw["backend"] = None
    for name, value in kw.items():
        for variant in variants_of(spec, name, value):
            yield [(variant, name)]
    yield [(Variant("all tensors meta", "either", _all_meta, device_change=True), "*")]


def _all_meta(kw, name):
    """Every tensor (also those of a QuantizedWeight) and the device argument on the meta device."""
    moved = False
    for k, v in kw.items():
        if isinstance(v, (torch.Tensor, QuantizedWeight)):
            kw[k], moved = v.to("meta"), True
        elif k == "device":
            kw[k], moved = "meta", True
    return None if moved else False


def _drawn_cases(spec: Spec, examples: int, check: Callable):
    """A hypothesis test: a drawn problem with up to two variants from the pool of spec's arguments, passed
    to check(problem, changes), which returns a failure or None."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    fixed_kw = spec.build(FIXED[0])
    fixed_kw["backend"] = None
    pool = [(v, n) for n, value in fixed_kw.items() for v in variants_of(spec, n, value)]

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.shrink))
    @given(data=st.data())
    def drawn(data):
        m, n = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
        problem = Problem(m, n, data.draw(st.integers(1, min(m, n))),
                          data.draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])),
                          data.draw(st.sampled_from(["left", "right"])),
                          data.draw(st.sampled_from(["rademacher", "gaussian", "matrix", "dct"])),
                          data.draw(st.sampled_from([0, 1, 2**32 + 7, BIG_SEED])))
        picked = data.draw(st.lists(st.sampled_from(range(len(pool))), max_size=2, unique=True))
        changes = [pool[i] for i in picked]
        if len({name for _, name in changes}) == len(changes):
            failure = check(problem, changes)
            assert failure is None, failure

    return drawn


def run_family(family: str, examples: int, with_triton: bool, progress: Path | None) -> dict:
    """Counts per op {cases, errors, results, skipped, failures, silent (failures that accepted what the
    contract refuses), runs (per backend: the cases it ran)} and the failures."""
    counts, failures = {}, []

    def record(spec, backend_names, problem, changes):
        if progress is not None:
            progress.write_text(f"{spec.name} {[(v.name, n) for v, n in changes]} {problem}\n")
        ran = []
        outcome, failure = evaluate(spec, problem, changes, backend_names, ran)
        c = counts.setdefault(spec.name, {"cases": 0, "errors": 0, "results": 0, "skipped": 0, "failures": 0,
                                          "silent": 0, "runs": dict.fromkeys(backend_names, 0)})
        if outcome == "skip":
            c["skipped"] += 1
            return None
        c["cases"] += 1
        c["errors" if outcome == "error" else "results" if outcome == "ok" else "failures"] += 1
        c["silent"] += failure is not None and failure.endswith("silently accepted")
        for backend in ran:
            c["runs"][backend] += 1
        return failure

    for spec in (s for s in SPECS if s.family == family):
        backend_names = available_backends(spec, with_triton)
        for problem in FIXED:
            for changes in single_cases(spec, problem):
                failure = record(spec, backend_names, problem, changes)
                if failure:
                    failures.append(failure)
        check = functools.partial(record, spec, backend_names)
        try:
            _drawn_cases(spec, examples, check)()
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    return {"counts": counts, "failures": failures}


def run_in_subprocess(family: str, examples: int, with_triton: bool, timeout: float) -> dict:
    """run_family in a fresh interpreter; a crash (a signal), an exception or a hang becomes a failure that
    names the case the worker was running (it writes each case to a progress file before running it)."""
    with tempfile.TemporaryDirectory() as tmp:
        progress = Path(tmp) / "case"
        progress.write_text("(before the first case)")
        cmd = [sys.executable, str(Path(__file__)), family, str(examples), "triton" if with_triton else "no-triton",
               str(progress)]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"counts": {}, "failures": [f"{family}: hung past {timeout} s at case: {progress.read_text()}"]}
        if proc.returncode != 0:
            died = f"{family}: the worker died (exit {proc.returncode}) at case: {progress.read_text()}\n"
            return {"counts": {}, "failures": [died + proc.stderr[-3000:]]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_counts(examples: int) -> None:
    """The table for a closing note: per op, the cases and how many of them each backend ran, the clear
    errors and checked results, the silent acceptances and other failures; per family, crashes (a worker
    that died or hung)."""
    total = dict.fromkeys(("cases", "errors", "results", "silent", "failures", "crashes"), 0)
    runs = dict.fromkeys(BACKENDS, 0)
    print(f"{'op':22} {'cases':>6} {'cpu':>5} {'ref':>5} {'triton':>6} {'errors':>7} {'results':>8} {'silent':>7} "
          f"{'failures':>9}")
    for family in FAMILIES:
        out = run_in_subprocess(family, examples, True, 3600)
        crashes = [f for f in out["failures"] if f.startswith(f"{family}: the worker died") or
                   f.startswith(f"{family}: hung")]
        total["crashes"] += len(crashes)
        for op, c in out["counts"].items():
            r = [c["runs"].get(b, 0) for b in BACKENDS]
            print(f"{op:22} {c['cases']:6} {r[0]:5} {r[1]:5} {r[2]:6} {c['errors']:7} {c['results']:8} "
                  f"{c['silent']:7} {c['failures']:9}")
            for key in ("cases", "errors", "results", "silent", "failures"):
                total[key] += c[key]
            for b in BACKENDS:
                runs[b] += c["runs"].get(b, 0)
        for f in out["failures"]:
            print("FAILURE:", f[:1000])
    print(f"{'total':22} {total['cases']:6} {runs['cpu']:5} {runs['reference']:5} {runs['triton']:6} "
          f"{total['errors']:7} {total['results']:8} {total['silent']:7} {total['failures']:9}")
    print(f"crashes (a worker that died or hung): {total['crashes']}")


def main(argv) -> None:
    if argv[:1] == ["--counts"]:
        print_counts(int(argv[1]) if len(argv) > 1 else 40)
        return
    family, examples, triton, progress = argv
    if family == "selftest-crash":  # tests/test_bad_inputs.py: a segfault must fail the family's test
        Path(progress).write_text("selftest-crash")
        os.kill(os.getpid(), signal.SIGSEGV)
    with contextlib.redirect_stdout(sys.stderr):
        out = run_family(family, int(examples), triton == "triton", Path(progress))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
