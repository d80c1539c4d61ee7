"""Memory estimate of training with LowRankAdamW (or plain AdamW): bytes of weights, gradients, optimizer
state and persisted projections, the accounting of the duality paper's Table 2 memory column.

Accounting, per parameter of `dtype` with N elements (projected shape k = r x n, m x r or r1 x r2):
  weights           N x itemsize(dtype)
  gradients         N x itemsize(dtype) (full-size gradients of the optimizer view; with per_layer only the
                    largest single gradient is alive at a time, lowrank_ops.optim.step_in_backward)
  optimizer_state   plain AdamW params: 2 N x itemsize(state dtype); low-rank params: 2 k (moments) plus
                    k in wd_mode "adapter" (the adapter delta, the paper's trained A), x itemsize(state dtype)
                    plus, for kinds that keep them, further buffers of the projected shape
                    (ProjectionKind.projected_buffers: 1 for "adaptive", its convergence-window copy of m);
                    with state_bits 8 each moment is k uint8 codes plus 4 bytes (float32 absmax) per block
                    of B elements of a row of the projected shape: k + 4 rows ceil(cols / B)
                    (docs/DESIGN.md §3 "8-bit optimizer moments"; GaLoreAdamW8bit: only moments of at
                    least min_8bit_size elements)
  projections       the kind's persisted basis (lowrank_ops.projections): r x d matrices in `dtype` for
                    "svd" / "rsvd" / "adaptive" / "orthogonal" / "two_sided_svd", an 8-byte seed for
                    seeded kinds
Kinds whose rank changes during training ("adaptive") are counted at their largest rank, config "max_rank"
(default "rank", as the optimizer's group key): the bound that holds at every step; at a given step the
memory is that of the ranks then in use (LowRankAdamW.ranks()).
State dtype: `state_dtype` if given, else what LowRankAdamW allocates (fp32 moments of low-rank params,
the parameter's dtype for plain AdamW params). Ints (step counts, seeds) other than the seeds are ignored.

Against the paper (Table 5 Llama configs, vocab 32000, untied embeddings, attention and MLP projected at
rank 256 / 512, everything bf16): the paper's column is `persisted` (weights + optimizer state +
projections; no gradients, no activations) with wd_mode "adapter" (the adapter view persists A) and
state_dtype bf16, in GB = 1e9 bytes. That reproduces full training (1.32 / 8.04 GB) and the seeded
one-sided methods (0.93 / 5.02 GB) to the printed digits. For SVD and random semi-orthogonal we count every
projected matrix's P (r x min(m, n) in bf16) and get 0.98 / 5.37 GB against the paper's 0.96 / 5.27
(+2%); the paper does not say how it counts P, and its difference to the seeded rows (0.03 / 0.25 GB) is
what about 5 of the 7 matrices per layer would take. Two-sided: with ranks r1 = r2 = round(sqrt(r max(m, n)))
(matching the one-sided trainable count, as the paper does) two-sided Gaussian gives the paper's 0.93 /
5.02 GB; two-sided SVD, counting L (r1 x m) and R (r2 x n) in bf16, gives 1.27 / 7.64 GB against 1.13 /
6.55 (+12% / +17%), again an unstated count of the persisted L and R.
"""

import math
from dataclasses import dataclass

import torch

from . import _checks, projections
from .spec import DEFAULT_GROUP_SIZE, FLOAT_DTYPES, STATE_BITS, STATE_BLOCK_SIZE

OP = "memory.estimate"

CONFIG_KEYS = ("rank", "projection", "side", "wd_mode", "state_dtype", "targets", "per_layer", "view", "base",
               "group_size", "max_rank", "state_bits", "state_block_size", "min_8bit_size")
VIEWS = ("optimizer", "adapter")


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer_state: int
    projections: int

    @property
    def persisted(self) -> int:
        """What lives between steps (the paper's Table 2 column): weights, optimizer state, projections."""
        return self.weights + self.optimizer_state + self.projections

    @property
    def total(self) -> int:
        """`persisted` plus the gradients."""
        return self.persisted + self.gradients


def llama_shapes(layers: int, hidden: int, intermediate: int, vocab: int = 32000, tied: bool = False):
    """(name, shape) of a Llama model's parameters (the duality paper's Table 5 settings): untied
    embedding and LM head unless `tied`, q/k/v/o and gate/up/down per layer, RMSNorm weights."""
    out = [("embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        block = f"layers.{i}."
        out += [(block + f"self_attn.{p}_proj.weight", (hidden, hidden)) for p in "qkvo"]
        out += [(block + f"mlp.{p}_proj.weight", (intermediate, hidden)) for p in ("gate", "up")]
        out += [
            (block + "mlp.down_proj.weight", (hidden, intermediate)),
            (block + "input_layernorm.weight", (hidden,)),
            (block + "post_attention_layernorm.weight", (hidden,)),
        ]
    out.append(("norm.weight", (hidden,)))
    if not tied:
        out.append(("lm_head.weight", (vocab, hidden)))
    return out


def _shape(name: str, shape) -> tuple:
    """A parameter's shape: a sequence of ints >= 0 (no bools, no floats)."""
    try:
        dims = tuple(_checks.int_at_least(OP, "shape", s, 0) for s in shape)
    except (TypeError, ValueError):
        dims = None
    if dims is None:
        raise _checks.error(OP, "model_or_shapes", "shapes made of ints >= 0",
                            f"{shape!r} for parameter {name!r}")
    return dims


def _named_shapes(model_or_shapes):
    if isinstance(model_or_shapes, torch.nn.Module):
        return [(name, tuple(p.shape)) for name, p in model_or_shapes.named_parameters() if p.requires_grad]
    if isinstance(model_or_shapes, (str, bytes)) or not hasattr(model_or_shapes, "__iter__"):
        raise _checks.type_error(OP, "model_or_shapes", "an nn.Module, a dict {name: shape} or a list of shapes",
                                 model_or_shapes)
    items = model_or_shapes.items() if isinstance(model_or_shapes, dict) else model_or_shapes
    out = []
    for i, item in enumerate(items):
        named = isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
        name, shape = item if named else (str(i), item)
        out.append((name, _shape(name, shape)))
    return out


def _dtype(arg: str, dtype, optional: bool = False):
    """A floating torch.dtype (or None where optional): what weights and optimizer states are stored in."""
    if dtype is None and optional:
        return None
    if not isinstance(dtype, torch.dtype) or dtype not in FLOAT_DTYPES:
        raise _checks.error(OP, arg, f"float32, float64, float16 or bfloat16{' or None' if optional else ''}",
                            repr(dtype))
    return dtype


def _is_target(targets, name, shape) -> bool:
    if len(shape) != 2:
        return False
    if targets is None:
        return True
    if callable(targets):
        return bool(targets(name, shape))
    return any(t in name for t in targets)


def _itemsize(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def base_bytes(shape, base=None, group_size=None, width: int = 2) -> int:
    """Bytes of a frozen base weight W0 [m, n] of the adapter view: dense m n x width; or a QuantizedWeight
    (lowrank_ops.ops.quant, group_size default 256 / 64): "int8" m n codes + m ceil(n / g) float32 scales,
    "nf4" ceil(m n / 2) code bytes + ceil(m n / g) float32 absmax values."""
    m, n = shape
    if base is None:
        return m * n * width
    if base not in DEFAULT_GROUP_SIZE:
        raise ValueError(f"lowrank_ops.memory: 'base' must be None, 'int8' or 'nf4', got {base!r}")
    g = DEFAULT_GROUP_SIZE[base] if group_size is None else _checks.positive_int("memory", "group_size", group_size)
    if base == "int8":
        return m * n + m * -(-n // g) * 4
    return -(-(m * n) // 2) + -(-(m * n) // g) * 4


def estimate(model_or_shapes, optimizer_config=None, dtype: torch.dtype = torch.bfloat16) -> MemoryEstimate:
    """Bytes of training `model_or_shapes` (an nn.Module: its trainable parameters; or (name, shape) pairs,
    a {name: shape} dict, or bare shapes) with weights in `dtype`.

    optimizer_config (a dict; None or no "rank": plain AdamW): "rank" (int, a (left, right) pair, or a
    callable shape -> rank), "projection" (default "rademacher"), "side" ("auto"), "wd_mode" ("full"),
    "state_dtype" (None), "targets" (which 2-D params are projected: a callable (name, shape) -> bool or
    substrings of the name; default all 2-D params), "per_layer" (False), "view" ("optimizer"; "adapter": the
    targets converted by lowrank_ops.nn.convert and trained by torch.optim.AdamW, see below), "base" (adapter
    view: None, "int8" or "nf4"), "group_size" (of the quantized base; None: the format's default) and
    "max_rank" (int or callable shape -> int, only for kinds of variable rank, "adaptive": the rank counted;
    default "rank"), "state_bits" (32, or 8: LowRankAdamW(state_bits=8) and GaLoreAdamW8bit's blockwise 8-bit
    moments of the low-rank params, which "state_dtype" then does not apply to), "state_block_size" (B, default
    256) and "min_8bit_size" (default 0; GaLoreAdamW8bit's 4096: smaller projected moments stay float32).

    Adapter view, per target of shape m x n with A of k elements: weights = base_bytes(W0) + k x itemsize
    (A in `dtype`), gradients = k x itemsize (A's only; the frozen W0 has none), optimizer_state = 2 k x
    itemsize(state_dtype or dtype) (AdamW's moments of A), projections as in the optimizer view (8 bytes for a
    seeded kind, which LowRankLinear keeps as an int in its extra state rather than in a tensor)."""
    config = dict(optimizer_config or {})
    unknown = set(config) - set(CONFIG_KEYS)
    if unknown:
        raise ValueError(
            f"lowrank_ops.memory.estimate: unknown optimizer_config keys {sorted(unknown)}; "
            f"expected some of {CONFIG_KEYS}"
        )
    rank = config.get("rank")
    kind = (
        projections.get(config.get("projection", "rademacher"), "lowrank_ops.memory.estimate")
        if rank is not None
        else None
    )
    side, wd_mode = config.get("side", "auto"), config.get("wd_mode", "full")
    if wd_mode not in ("full", "adapter"):
        raise ValueError(
            f"lowrank_ops.memory.estimate: 'wd_mode' must be 'full' or 'adapter', got {wd_mode!r}"
        )
    view = config.get("view", "optimizer")
    if view not in VIEWS:
        raise ValueError(f"lowrank_ops.memory.estimate: 'view' must be one of {VIEWS}, got {view!r}")
    dtype = _dtype("dtype", dtype)
    state_dtype = _dtype("state_dtype", config.get("state_dtype"), optional=True)
    if not isinstance(config.get("per_layer", False), bool):
        raise _checks.type_error(OP, "per_layer", "a bool", config["per_layer"])
    if config.get("group_size") is not None:
        _checks.positive_int(OP, "group_size", config["group_size"])
    state_bits = config.get("state_bits", 32)
    if state_bits not in STATE_BITS or isinstance(state_bits, bool):
        raise _checks.error(OP, "state_bits", f"one of {STATE_BITS}", repr(state_bits))
    block = _checks.positive_int(OP, "state_block_size", config.get("state_block_size", STATE_BLOCK_SIZE))
    min_8bit = _checks.int_at_least(OP, "min_8bit_size", config.get("min_8bit_size", 0), 0)
    width = _itemsize(dtype)
    lowrank_width = _itemsize(state_dtype or (torch.float64 if dtype == torch.float64 else torch.float32))
    plain_width = _itemsize(state_dtype or dtype)
    weights = state = persisted_projections = grad_sum = grad_max = 0
    for name, shape in _named_shapes(model_or_shapes):
        numel = math.prod(shape)
        weight_bytes = grad_bytes = numel * width
        if kind is not None and _is_target(config.get("targets"), name, shape):
            r = rank(shape) if callable(rank) else rank
            if config.get("max_rank") is not None:
                if not kind.variable_rank:
                    raise ValueError(
                        "lowrank_ops.memory.estimate: 'max_rank' applies to projections of variable rank "
                        f"('adaptive'), got projection {kind.name!r}"
                    )
                r = config["max_rank"](shape) if callable(config["max_rank"]) else config["max_rank"]
            kind.check_settings(r, side, "lowrank_ops.memory.estimate")
            layout = kind.layout(shape, r, side)
            k = math.prod(layout.projected_shape)
            if view == "adapter":
                weight_bytes = base_bytes(shape, config.get("base"), config.get("group_size"), width) + k * width
                grad_bytes = k * width
                state += 2 * k * plain_width
            else:
                buffers = (1 if wd_mode == "adapter" else 0) + kind.projected_buffers
                if state_bits == 8 and k >= min_8bit:
                    rows, cols = layout.projected_shape
                    state += 2 * (k + 4 * rows * -(-cols // block)) + buffers * k * lowrank_width
                else:
                    state += (2 + buffers) * k * lowrank_width
            persisted_projections += kind.persisted_bytes(layout, dtype)
        else:
            state += 2 * numel * plain_width
        weights += weight_bytes
        grad_sum, grad_max = grad_sum + grad_bytes, max(grad_max, grad_bytes)
    gradients = grad_max if config.get("per_layer", False) else grad_sum
    return MemoryEstimate(weights, gradients, state, persisted_projections)
