"""LowRankLinear: the adapter view of a low-rank-projected linear layer (duality paper, Thm. 1, Prop. 2,
Cor. 3): the effective weight is

    W = deq(W0) + L^T A R          (DESIGN.md §3 shapes: W, W0 [out, in] = m x n)

with W0 frozen (dense, or INT8/NF4 through lowrank_ops.ops.quantize), L (r1 x m) and R (r2 x n) the sides
of a frozen projection of any kind of lowrank_ops.projections (a one-sided "left" kind has R = I: W0 + P^T A
with A r x n; "right" has L = I: W0 + A P with A m x r), and only A trainable, initialized to 0.
Training A with an optimizer is training W with the gradient projected by the same P (GaLore is one-sided
LoRA, Cor. 3; lowrank_ops.duality checks it step by step against LowRankAdamW).

Forward, for x [..., n] flattened to [T, n]:
    y = x deq(W0)^T + b  +  ((x R^T) A^T) L
the base term by lowrank_ops.ops.dequant_matmul (quantized W0, never decoded in full) or F.linear, the
low-rank term in the low-rank space: [T, n] -> [T, r2] -> [T, r1] -> [T, m]. Seeded kinds apply L and R
through the sketch ops (P regenerated tile by tile from its seed, never stored); matrix kinds ("orthogonal",
"svd") keep P as a buffer. Backward (autograd of those ops): dx through the adjoints, and
dA = (dY L^T)^T (x R^T), an r1 x r2 product of two T-row matrices, so no m x n gradient is formed and
gradient accumulation over micro-batches happens in the r1 x r2 space (the paper's App. D).

Persisted (state_dict, loadable with torch.load(weights_only=True)): A, the bias, the base (`weight` for a
dense W0, or the buffers base_codes / base_scales [/ base_scales_scale / base_scales_offset] of a
QuantizedWeight), P's buffers proj_left / proj_right for matrix kinds, and an extra-state dict of ints and
strings (projection, ranks, base format, seeds and refresh count). A seeded kind persists no tensor for P.

Casting a module holding a quantized base with .to(dtype) / .half() / .bfloat16() would round its float32
scales (nn.Module casts every floating buffer): cast the model before converting it; forward raises a clear
error otherwise.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .. import projections
from ..ops import quant
from ..ops.projection import SEEDED_KINDS, Projection, SideOperator
from ..ops.sketch import sketch_project, sketch_unproject
from ..projections.base import Layout
from ..reference.lowrank_adam import side_matrix

BASE_FORMATS = (None,) + tuple(quant.FORMATS)
_QUANT_BUFFERS = ("codes", "scales", "scales_scale", "scales_offset")


# Seeded sides go through the sketch ops (P regenerated in the kernels); other sides (a stored matrix, DCT rows)
# are the r x d matrix of the reference's side_matrix, small next to the activations.
def _apply_right(u: torch.Tensor, op: SideOperator, backend) -> torch.Tensor:
    """u R^T for u [T, n] and the side operator R (r2 x n)."""
    if op.kind in SEEDED_KINDS:
        return sketch_project(u, op.seed, op.rank, op.kind, "right", backend=backend)
    return u @ side_matrix(op, u.shape[1], u.dtype, u.device).T


def _apply_left_adjoint(u: torch.Tensor, op: SideOperator, dim: int, backend) -> torch.Tensor:
    """u L for u [T, r1] and the side operator L (r1 x dim)."""
    if op.kind in SEEDED_KINDS:
        return sketch_unproject(u, op.seed, dim, op.kind, "right", backend=backend)
    return u @ side_matrix(op, dim, u.dtype, u.device)


def unproject(projection: Projection, A: torch.Tensor, shape, backend=None) -> torch.Tensor:
    """L^T A R (shape m x n) of the projected A: the dense adapter delta, formed only at a merge."""
    m, n = shape
    D = A
    if projection.left is not None:
        op = projection.left
        D = (sketch_unproject(D, op.seed, m, op.kind, "left", backend=backend) if op.kind in SEEDED_KINDS
             else side_matrix(op, m, D.dtype, D.device).T @ D)
    if projection.right is not None:
        D = _apply_left_adjoint(D, projection.right, n, backend)
    return D


class LowRankLinear(torch.nn.Module):
    """y = x (deq(W0) + L^T A R)^T + b with only A (and the bias, if it requires grad) trainable.

    Build it from an nn.Linear with `from_linear` (what lowrank_ops.nn.convert does). Arguments:
    `rank` (int; a (left, right) pair for two-sided kinds), `projection` (a name of
    lowrank_ops.projections.names()), `side` ("auto": project the smaller dimension, right when
    out >= in, as LowRankAdamW), `base` (None: dense W0 in the Linear's dtype; "int8" / "nf4"),
    `group_size` / `double_quant` (lowrank_ops.ops.quantize), `seed` and `layer` (P's seed at refresh k is
    derive_seed(seed, layer, k), as LowRankAdamW's for the parameter with index `layer`), `grad` (the
    gradient of W, needed by kinds that read it: "svd", "two_sided_svd"), `backend` (of the ops)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rank, *, projection: str = "rademacher",
                 side: str = "auto", base: str | None = None, group_size: int | None = None,
                 double_quant: bool = False, seed: int = 0, layer: int = 0, grad: torch.Tensor | None = None,
                 backend=None):
        super().__init__()
        where = "lowrank_ops.nn.LowRankLinear"
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError(f"{where}: 'weight' must be a floating 2-D tensor [out, in], got "
                             f"{getattr(weight, 'shape', type(weight).__name__)}")
        if base not in BASE_FORMATS:
            raise ValueError(f"{where}: 'base' must be one of {BASE_FORMATS}, got {base!r}")
        self.kind = projections.get(projection, where)
        self.kind.check_settings(rank, side, where)
        if getattr(self.kind, "variable_rank", False):
            raise ValueError(f"{where}: projection {projection!r} changes its rank during training; an adapter "
                             "A of fixed shape needs a fixed-rank kind")
        self.out_features, self.in_features = weight.shape
        self.layout: Layout = self.kind.layout(tuple(weight.shape), rank, side)
        self.projection_name, self.seed, self.layer, self.refreshes = projection, seed, layer, 0
        self.base = base
        self.backend = backend
        self.merged_at = None
        W = weight.detach()
        if base is None:
            self.weight = torch.nn.Parameter(W.clone(), requires_grad=False)
        else:
            self._set_base(quant.quantize(W, base, group_size, double_quant, backend=backend))
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(),
                                                                 requires_grad=bias.requires_grad)
        self.A = torch.nn.Parameter(torch.zeros(self.layout.projected_shape, dtype=W.dtype, device=W.device))
        self._proj: dict = {}
        self._refresh(grad)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, rank, **kwargs) -> LowRankLinear:
        return cls(linear.weight, linear.bias, rank, **kwargs)

    @property
    def dtype(self) -> torch.dtype:
        """The layer's dtype: A's (that of the converted Linear's weight, or what .to(dtype) made it)."""
        return self.A.dtype

    # -- base weight ---------------------------------------------------------------------------------
    def _set_base(self, qw: quant.QuantizedWeight) -> None:
        self.base_format, self.base_group_size = qw.format, qw.group_size
        for name in _QUANT_BUFFERS:
            tensor = getattr(qw, name)
            if tensor is not None or hasattr(self, f"base_{name}"):
                self.register_buffer(f"base_{name}", tensor)

    def quantized_weight(self) -> quant.QuantizedWeight:
        """The base as a QuantizedWeight (views of this module's buffers)."""
        return quant.QuantizedWeight(
            format=self.base_format, shape=(self.out_features, self.in_features), group_size=self.base_group_size,
            **{name: getattr(self, f"base_{name}", None) for name in _QUANT_BUFFERS})

    def base_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """deq(W0) (or W0) in `dtype` (default: the layer's dtype)."""
        dtype = dtype or self.dtype
        if self.base is None:
            return self.weight.detach().to(dtype)
        return quant.dequantize(self.quantized_weight(), dtype, backend=self.backend)

    # -- projection ----------------------------------------------------------------------------------
    def projection(self) -> Projection:
        """The current P (a lowrank_ops.ops.Projection, as LowRankAdamW passes it to its fused step)."""
        state = dict(self._proj)
        for side in ("left", "right"):
            if f"proj_{side}" in self._buffers:
                state[f"proj_{side}"] = self._buffers[f"proj_{side}"]
        return self.kind.projection(state, self.layout)

    def _refresh(self, grad: torch.Tensor | None) -> None:
        """P for refresh number self.refreshes, seed derive_seed(seed, layer, refreshes); kinds that read the
        gradient take `grad` (W's gradient, m x n) through the robust projections.refresh."""
        seed = projections.derive_seed(self.seed, self.layer, self.refreshes)
        state: dict = {}
        if self.kind.uses_gradient:
            if grad is None or tuple(grad.shape) != (self.out_features, self.in_features):
                raise ValueError(
                    f"lowrank_ops.nn.LowRankLinear: projection {self.projection_name!r} reads the gradient of W; "
                    f"pass grad= (a tensor [{self.out_features}, {self.in_features}]) when building or merging "
                    f"this layer, got {None if grad is None else list(grad.shape)}")
            for side in ("left", "right"):  # the previous basis, kept when the SVD fails
                if f"proj_{side}" in self._buffers:
                    state[f"proj_{side}"] = self._buffers[f"proj_{side}"]
            if "proj_seed" in self._proj:
                state["proj_seed"] = self._proj["proj_seed"]
            projections.refresh(self.kind, state, grad.detach().to(self.dtype), self.layout, seed, _warn)
        else:
            # Seeded kinds and "orthogonal" read only the dtype and device of the gradient argument.
            self.kind.refresh(state, torch.empty(0, dtype=self.dtype, device=self.A.device), self.layout, seed)
        for side in ("left", "right"):
            if f"proj_{side}" in state:
                self.register_buffer(f"proj_{side}", state.pop(f"proj_{side}"))
        self._proj = state

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"lowrank_ops.nn.LowRankLinear: input must be [..., {self.in_features}], "
                             f"got {list(x.shape)}")
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.base is None:
            y = F.linear(x, self.weight.to(x.dtype), bias)
        else:
            y = quant.dequant_matmul(x, self.quantized_weight(), bias, backend=self.backend)
        return y + self.lowrank(x)

    def lowrank(self, x: torch.Tensor) -> torch.Tensor:
        """x (L^T A R)^T = ((x R^T) A^T) L, evaluated in the low-rank space."""
        projection = self.projection()
        u = x.reshape(-1, self.in_features)
        if projection.right is not None:
            u = _apply_right(u, projection.right, self.backend)
        u = u @ self.A.to(x.dtype).T
        if projection.left is not None:
            u = _apply_left_adjoint(u, projection.left, self.out_features, self.backend)
        return u.reshape(*x.shape[:-1], self.out_features)

    # -- merge ---------------------------------------------------------------------------------------
    def delta(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """L^T A R (m x n) in `dtype` (default: float32, float64 for a float64 layer)."""
        dtype = dtype or (torch.float64 if self.dtype == torch.float64 else torch.float32)
        with torch.no_grad():
            return unproject(self.projection(), self.A.detach().to(dtype), (self.out_features, self.in_features),
                             self.backend)

    def merged_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """deq(W0) + L^T A R, summed in float32 (float64 for a float64 layer), in `dtype` (default: the layer's)."""
        compute = torch.float64 if self.dtype == torch.float64 else torch.float32
        return (self.base_weight(compute) + self.delta(compute)).to(dtype or self.dtype)

    @torch.no_grad()
    def merge_and_reset(self, step: int | None = None, grad: torch.Tensor | None = None) -> None:
        """W0 <- quant(deq(W0) + L^T A R) (no quantization for a dense base), A <- 0, and P refreshed with the
        next seed derive_seed(seed, layer, refreshes + 1) (or from `grad` for gradient kinds): the ReLoRA-style
        restart, the adapter-view counterpart of LowRankAdamW's refresh in wd_mode "adapter". `step` (the
        training step of the merge) is recorded in the extra state as `merged_at`. The optimizer state of A is
        the caller's (lowrank_ops.nn.reset_optimizer_state)."""
        W = self.merged_weight(torch.float64 if self.dtype == torch.float64 else torch.float32)
        if self.base is None:
            self.weight.copy_(W)
        else:
            qw = self.quantized_weight()
            self._set_base(quant.quantize(W, self.base, qw.group_size, qw.double_quant, backend=self.backend))
        self.A.zero_()
        self.refreshes += 1
        self.merged_at = step
        self._refresh(grad)

    def to_linear(self) -> torch.nn.Linear:
        """A plain nn.Linear holding deq(W0) + L^T A R (not requantized) in the layer's dtype, and the bias."""
        linear = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                                 device=self.A.device, dtype=self.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.merged_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
                linear.bias.requires_grad_(self.bias.requires_grad)
        return linear

    # -- persistence ---------------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        """Ints and strings only (weights_only-loadable)."""
        return {
            "projection": self.projection_name,
            "left_rank": self.layout.left_rank,
            "right_rank": self.layout.right_rank,
            "base": self.base,
            "group_size": getattr(self, "base_group_size", None),
            "seed": self.seed,
            "layer": self.layer,
            "refreshes": self.refreshes,
            "proj_seed": self._proj.get("proj_seed"),
            "merged_at": self.merged_at,
        }

    def set_extra_state(self, state: dict) -> None:
        mine = self.get_extra_state()
        for key in ("projection", "left_rank", "right_rank", "base", "group_size"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"lowrank_ops.nn.LowRankLinear.load_state_dict: the saved layer has {key}={state.get(key)!r}, "
                    f"this one {mine[key]!r}; build the module with the saved configuration")
        self.seed, self.layer, self.refreshes = state["seed"], state["layer"], state["refreshes"]
        self.merged_at = state.get("merged_at")
        if state.get("proj_seed") is not None:
            self._proj["proj_seed"] = state["proj_seed"]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"projection={self.projection_name!r}, ranks=({self.layout.left_rank}, {self.layout.right_rank}), "
                f"base={self.base!r}, bias={self.bias is not None}")


def _warn(key: str, message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
