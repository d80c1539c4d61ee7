"""The methods of the comparison (the duality paper's Table 2 rows, plus the kinds this library adds) and
how each one is set up: the model it trains, its optimizer, what it does between steps, and its memory
estimate at the paper's 200M / 1.3B configurations.

Views:
  "full"       torch.optim.AdamW on every parameter.
  "optimizer"  LowRankAdamW (the gradient view): attention and MLP matrices get the projection kind, the rest
               plain AdamW; wd_mode "adapter" (weight decay of the adapter since the last refresh, as in the
               paper's adapter-trained Table 2 runs, App. B), so it equals the adapter view step for step.
               "<kind>+8bit": the same with blockwise 8-bit moments (state_bits=8; the estimate counts the
               codes and float32 block absmax, the adapter delta in bf16).
  "relora"     two-sided LoRA with merges (relora.py).
  "apollo"     lowrank_ops.optim.APOLLO (Zhu et al. 2024) on the attention and MLP matrices, plain AdamW on
               the rest: "apollo" with channel-wise scaling at the preset's rank and scale 1, "apollo_mini"
               with tensor-wise scaling at rank 1 and scale 128 (the APOLLO paper's settings); the seeded
               Gaussian P, refreshed every gap.
  "adapter"    lowrank_ops.nn.convert with an INT8 / NF4 base (the QLoRA-style rows of Table 2): frozen
               quantized W0, frozen P, trainable A, torch.optim.AdamW, merge_and_reset every refresh gap
               (A's moments kept: LowRankAdamW's rule).
A method whose dependency is missing (a projection kind not registered, lowrank_ops.nn not importable) is
listed as unavailable with the reason; it is picked up as soon as the dependency is there.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import torch

from .. import memory, projections
from . import relora
from .model import TARGETS
from .presets import PAPER_CONFIGS

QUANT_GROUP = 256  # the paper's quantization group size (INT8 and NF4 alike)
# APOLLO's param-group settings per method (the APOLLO paper: rank = the preset's, scale 1; Mini: rank 1,
# scale 128, tensor-wise); rank None: the preset's.
APOLLO_SETTINGS = {"apollo": dict(rank=None, scale_type="channel", scale=1.0),
                   "apollo_mini": dict(rank=1, scale_type="tensor", scale=128.0)}


@dataclass(frozen=True)
class Method:
    name: str  # the --methods name
    label: str  # the table row, the paper's name where it has one
    view: str  # "full" | "optimizer" | "relora" | "apollo" | "adapter"
    projection: str | None = None
    base: str | None = None  # adapter view: "int8" | "nf4"
    state_bits: int = 32  # optimizer view: LowRankAdamW's moments, float32 or blockwise 8-bit (issue 17)

    def unavailable(self) -> str | None:
        """Why the method cannot run here, or None."""
        if self.projection is not None and self.projection not in projections.names():
            return f"projection kind {self.projection!r} is not registered in lowrank_ops.projections"
        if self.view == "adapter":
            try:
                nn = importlib.import_module("lowrank_ops.nn")
            except ImportError as exc:
                return f"lowrank_ops.nn is not importable ({exc})"
            if self.base not in getattr(nn, "BASE_FORMATS", ()):
                return f"lowrank_ops.nn has no base format {self.base!r}"
        return None


METHODS: list[Method] = [
    Method("full", "Full pretraining (AdamW)", "full"),
    Method("relora", "ReLoRA", "relora"),
    Method("galore", "Gradient SVD (GaLore)", "optimizer", "svd"),
    Method("rsvd", "Randomized SVD", "optimizer", "rsvd"),
    Method("gaussian", "Gaussian (Flora)", "optimizer", "gaussian"),
    Method("rademacher", "Rademacher", "optimizer", "rademacher"),
    Method("orthogonal", "Random semi-orthogonal", "optimizer", "orthogonal"),
    Method("two_sided_gaussian", "Two-sided Gaussian", "optimizer", "two_sided_gaussian"),
    Method("two_sided_svd", "Two-sided gradient SVD", "optimizer", "two_sided_svd"),
    Method("dct", "DCT columns", "optimizer", "dct"),
    Method("sr_dct", "Subsampled randomized DCT", "optimizer", "sr_dct"),
    Method("adaptive", "Adaptive rank (AdaRankGrad)", "optimizer", "adaptive"),
    Method("galore+8bit", "Gradient SVD (GaLore) + 8-bit moments", "optimizer", "svd", state_bits=8),
    Method("rademacher+8bit", "Rademacher + 8-bit moments", "optimizer", "rademacher", state_bits=8),
    Method("apollo", "APOLLO (channel-wise)", "apollo", "gaussian"),
    Method("apollo_mini", "APOLLO-Mini (tensor-wise, rank 1)", "apollo", "gaussian"),
] + [
    Method(f"{name}+{base}", f"{label} + {base.upper()}", "adapter", kind, base)
    for kind, name, label in (("svd", "galore", "GaLore"), ("gaussian", "gaussian", "Gaussian"),
                              ("rademacher", "rademacher", "Rademacher"),
                              ("orthogonal", "orthogonal", "Random semi-orthogonal"),
                              ("sr_dct", "sr_dct", "Subsampled randomized DCT"))
    for base in ("int8", "nf4")
]
BY_NAME = {m.name: m for m in METHODS}


def rank_for(kind: str, shape, rank: int):
    """The rank of a target matrix: `rank` for one-sided kinds; for two-sided kinds r1 = r2 =
    round(sqrt(rank * max(m, n))), the trainable count of the one-sided projection (the paper's matching,
    Table 2 footnote)."""
    if projections.get(kind).two_sided:
        r = max(1, round(math.sqrt(rank * max(shape))))
        return (r, r)
    return rank


def _is_target(name: str) -> bool:
    return any(t in name for t in TARGETS)


class Runner:
    """A method set up on a model: `model`, `optimizer`, and `before_step(step, batch)` for the merges.
    `lr_scale(step)` multiplies the schedule (ReLoRA's re-warm-up)."""

    def __init__(self, method: Method, model: torch.nn.Module, preset, seed: int, init_batch, loss_fn):
        self.method, self.model, self.preset = method, model, preset
        self.loss_fn = loss_fn
        self.gap = preset.update_gap
        adamw = {"lr": preset.lr, "betas": preset.betas, "weight_decay": preset.weight_decay}
        self.lora = []
        if method.view == "full":
            self.optimizer = torch.optim.AdamW(model.parameters(), **adamw)
        elif method.view == "optimizer":
            self.optimizer = self._lowrank_adamw(model, preset, seed, adamw)
        elif method.view == "apollo":
            self.optimizer = self._apollo(model, preset, seed, adamw)
        elif method.view == "relora":
            self.lora = relora.convert(model, TARGETS, preset.rank, seed)
            self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **adamw)
        else:
            nn = importlib.import_module("lowrank_ops.nn")
            kind = projections.get(method.projection)
            grads = self._dense_grads(init_batch) if kind.uses_gradient else None
            nn.convert(model, preset.rank, method.projection, base=method.base, target=TARGETS, seed=seed,
                       group_size=QUANT_GROUP, grads=grads)
            self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **adamw)

    def _lowrank_adamw(self, model, preset, seed, adamw):
        """LowRankAdamW with one param group per target-matrix shape (two-sided ranks depend on the shape)
        and one plain-AdamW group for the rest."""
        from ..optim import LowRankAdamW

        kind = self.method.projection
        by_shape, rest = {}, []
        for name, p in model.named_parameters():
            if _is_target(name) and p.dim() == 2:
                by_shape.setdefault(tuple(p.shape), []).append(p)
            else:
                rest.append(p)
        groups = [{"params": ps, "rank": rank_for(kind, shape, preset.rank)} for shape, ps in by_shape.items()]
        options = {}
        if kind == "adaptive":  # its minimum refresh window, scaled like the gap (20 of 200 steps)
            options["min_gap"] = max(1, round(self.gap / 10))
        return LowRankAdamW(groups + [{"params": rest, "rank": None}], projection=kind, update_gap=self.gap,
                            wd_mode="adapter", seed=seed, state_bits=self.method.state_bits, **adamw, **options)

    def _apollo(self, model, preset, seed, adamw):
        """APOLLO / APOLLO-Mini (APOLLO_SETTINGS) on the target matrices, plain AdamW on the rest."""
        from ..optim import APOLLO

        settings = dict(APOLLO_SETTINGS[self.method.name])
        settings["rank"] = settings["rank"] or preset.rank
        targets = [p for name, p in model.named_parameters() if _is_target(name) and p.dim() == 2]
        rest = [p for name, p in model.named_parameters() if not (_is_target(name) and p.dim() == 2)]
        return APOLLO([{"params": targets, "update_proj_gap": self.gap, "proj": "random", **settings},
                       {"params": rest}], seed=seed, **adamw)

    def lr_scale(self, step: int) -> float:
        if self.method.view != "relora" or step < self.gap:
            return 1.0
        rewarmup = max(1, self.gap // 10)
        return min(1.0, (step % self.gap + 1) / rewarmup)

    def before_step(self, step: int, batch) -> None:
        """The merges of the adapter views, at steps gap, 2 gap, ... (LowRankAdamW refreshes at the same
        steps, before their update)."""
        if step == 0 or step % self.gap:
            return
        if self.method.view == "relora":
            relora.merge_all(self.lora, self.optimizer)
        elif self.method.view == "adapter":
            nn = importlib.import_module("lowrank_ops.nn")
            kind = projections.get(self.method.projection)
            grads = self._dense_grads(batch) if kind.uses_gradient else None
            nn.merge_and_reset(self.model, step, self.optimizer, grads=grads)

    def _dense_grads(self, batch) -> dict:
        """{module name: dL/dW} of the target linear layers on `batch`, for kinds that read the gradient
        (GaLore's SVD): from each layer's input x and output gradient dy, dL/dW = dy^T x, so no dense
        weight needs a .grad (the base may be quantized)."""
        inputs, grads, hooks = {}, {}, []
        modules = [(n, m) for n, m in self.model.named_modules() if n.rpartition(".")[2] in TARGETS]

        def save_input(name):
            return lambda module, args: inputs.__setitem__(name, args[0].detach())

        def save_grad(name):
            def hook(module, grad_input, grad_output):
                x, dy = inputs[name], grad_output[0]
                grads[name] = dy.reshape(-1, dy.shape[-1]).float().T @ x.reshape(-1, x.shape[-1]).float()
            return hook

        for name, m in modules:
            hooks.append(m.register_forward_pre_hook(save_input(name)))
            hooks.append(m.register_full_backward_hook(save_grad(name)))
        try:
            with torch.enable_grad():
                self.loss_fn(self.model, batch).backward()
        finally:
            for h in hooks:
                h.remove()
            self.model.zero_grad(set_to_none=True)
        return grads


def estimate_gb(method: Method, paper_config: str) -> float | None:
    """Estimated persisted memory (weights + optimizer state + projections, GB = 1e9 bytes; the paper's
    Table 2 column: bf16 weights and state, vocabulary 32000) of `method` at one of PAPER_CONFIGS, by
    lowrank_ops.memory.estimate. APOLLO: the optimizer view's moments in the projected shape on the smaller
    side (proj_type "std") with a seeded P, without the adapter delta (its 0-dim limiter norm per matrix is
    not counted: 4 bytes). Adapter views: the target weights in the quantized format (codes + one
    fp32 scale per group of 256). ReLoRA: frozen bf16 target weights plus A and B trained by AdamW.
    None for an unavailable method."""
    if method.unavailable() is not None:
        return None
    cfg = PAPER_CONFIGS[paper_config]
    shapes = memory.llama_shapes(cfg["layers"], cfg["hidden"], cfg["intermediate"])
    targets = [(n, s) for n, s in shapes if _is_target(n)]
    others = [(n, s) for n, s in shapes if not _is_target(n)]
    bf16 = {"dtype": torch.bfloat16}
    if method.view == "full":
        total = memory.estimate(shapes, None, **bf16).persisted
    elif method.view == "relora":
        r = cfg["rank"]
        adapters = [shape for _, (m, n) in targets for shape in ((r, n), (m, r))]
        frozen = sum(m * n for _, (m, n) in targets) * 2
        total = (memory.estimate(others, None, **bf16).persisted
                 + memory.estimate(adapters, None, **bf16).persisted + frozen)
    elif method.view == "apollo":
        rank = APOLLO_SETTINGS[method.name]["rank"] or cfg["rank"]
        config = {"rank": rank, "projection": method.projection, "wd_mode": "full", "state_dtype": torch.bfloat16,
                  "targets": TARGETS}
        total = memory.estimate(shapes, config, **bf16).persisted
    else:
        # the optimizer view with wd_mode "adapter" (moments + adapter delta) and the adapter view (A + its
        # moments, base_bytes of the frozen W0) hold the same bytes for a dense base
        config = {"rank": lambda shape: rank_for(method.projection, shape, cfg["rank"]),
                  "projection": method.projection, "wd_mode": "adapter", "state_dtype": torch.bfloat16,
                  "targets": TARGETS, "state_bits": method.state_bits}
        if method.base is not None:
            config.update(view="adapter", base=method.base, group_size=QUANT_GROUP)
        total = memory.estimate(shapes, config, **bf16).persisted
    return total / 1e9
