"""The training-step comparison users look at (issue 15, item 3): one optimizer step of a HF Llama at the
GaLore paper's sizes, ours against the optimizers a user would pick instead, each in its own process.

    python -m bench.bench_peers --config 60m        # the 60M Llama, rank 128, 2 threads, on CUDA if visible
    python -m bench.bench_peers --config 130m       # 130M, rank 256
    python -m bench.bench_peers --config 1b --device cuda   # 350m and 1b are GPU sizes
    python -m bench.bench_peers --quick             # smoke run: 1 layer, vocab 4096, a few steps
    python -m bench.bench_peers --optimizers galore,lowrank-rademacher   # some rows only
    python -m bench.bench_peers --render bench/results/peers_60m_cpu.json  # README table + PNG from a run

Models (transformers.LlamaConfig, fp32 on CPU, bf16 on CUDA unless --dtype): 60m hidden 512, intermediate
1376, 8 layers, 8 heads; 130m 768/2048/12/12; 350m 1024/2736/24/16; 1b 2048/5461/24/32; vocab 32000.
`--quick` keeps the config's matrix shapes but builds 1 layer and a 4096-token vocab (--layers, --vocab
override), so every config constructs on a CPU. Projected: the weight of every attention and MLP linear
(q, k, v, o, gate, up, down), rank 128 (60m) / 256 (130m, 350m, 1b) as in the GaLore paper (--rank), update
gap 200, lr 1e-3, weight decay 0, eps 1e-8, GaLore's std side (the smaller dimension), scale 0.25 (GaLore's
pre-training setting) for the GaLore-style optimizers. Ours take their param groups from
lowrank_ops.optim.param_groups; the peers from the GaLore repository's recipe (nn.Linear modules whose name
contains "attn" or "mlp"; the rest plain), which selects the same weights (checked).

Rows (--optimizers takes these ids):
  adamw-foreach, adamw-fused   torch.optim.AdamW(foreach=True) / (fused=True): full rank
  galore, galore-8bit          galore-torch GaLoreAdamW / GaLoreAdamW8bit (bitsandbytes; CUDA only)
  apollo, apollo-mini          apollo-torch APOLLOAdamW: random projection, scale_type "channel", scale 1
                               (APOLLO); rank 1, scale_type "tensor", scale 128 (APOLLO-Mini, its README)
  torchao-8bit, bnb-8bit       torchao.optim.AdamW8bit, bitsandbytes.optim.AdamW8bit: full rank, 8-bit states
  lowrank-<kind>               lowrank_ops.optim.LowRankAdamW, every kind of lowrank_ops.projections.names()
                               (two-sided kinds at rank (r, r); "adaptive" at most r)
  lowrank-<kind>-8bit          LowRankAdamW(state_bits=8) for rademacher, gaussian, svd: blockwise 8-bit moments
  ours-galore, ours-galore-8bit  lowrank_ops.optim.GaLoreAdamW / GaLoreAdamW8bit (the galore-torch drop-ins)
  ours-apollo, ours-apollo-mini  lowrank_ops.optim.APOLLO with apollo-torch's rows' settings (seeded Gaussian P)
  per-layer                    LowRankAdamW "rademacher" stepped per parameter (step_param; in training,
                               lowrank_ops.optim.step_in_backward)
An optimizer that is not installed or fails on the device is a row with a note (the error), not a crash.

What each row measures (one subprocess per row; fixed random gradients, seeded, the same for every row):
  step [proj]      median of --steps optimizer steps of an optimizer built over the projected matrices only,
                   after its first step (state allocation + first refresh, `first` in the JSON)
  step [whole]     the same for the whole model (projected + embeddings, LM head, norms)
  refresh          median of the refresh steps (the SVD / new sketch) of an optimizer over the projected
                   matrices rebuilt with update gap --refresh-gap, stepped --refreshes gaps. A step counts as
                   a refresh when the optimizer's state besides its moments and step counters changed in it
                   (a new basis, seed or refresh counter), so the split follows what each optimizer did,
                   not a schedule assumed for it
  state            bytes of the storages the optimizer's state holds (tensors in optimizer.state, inside
                   projector objects too, each storage once; a view holds its whole storage): projected /
                   whole. `state_nominal_bytes_projected`: the tensors' own sizes (the state target uses it)
  peak             one full training step (forward, backward, step) on a fixed batch, after the first:
                   weights + optimizer state at its start + the allocator's peak above the start (CPU:
                   torch.profiler running sum of CPU allocator events, bench/common.peak_memory_cpu; memory
                   outside torch's allocator is not seen. CUDA: max_memory_allocated above the start)
  loss             the LM loss on the fixed batch after --loss-steps training steps (real forward/backward)
  floor            the step's GEMMs alone with P materialized, as plain torch runs them: for each projected
                   matrix R = G P^T and N P (right side) or P G and P^T N (left), fp32; on CUDA bf16 too.
                   `x floor` = step [proj] / floor. On CUDA also the roofline floor (bytes / copy GB/s,
                   FLOPs / bf16 GEMM rate, per matrix), `pct_of_ceiling` = 100 roofline / step
Timing is wall clock around each step (torch.cuda.synchronize on CUDA), --threads torch threads (default 2).

Targets (issue 15; reported as met / missed, never asserted), for LowRankAdamW rademacher, gaussian and svd:
  CPU  step [proj] <= 0.8x galore-torch's and <= 1.15x the floor (60m rank 128, 130m rank 256);
       gaussian <= 1.15x rademacher; step [whole] <= 0.5x galore-torch's (60m); state [proj] of the seeded
       kinds <= 0.8x galore-torch's.
  GPU  >= 70 % of the roofline floor (1b); step [proj] <= 0.5x galore-torch's. ("One launch per group" of the
       Triton path is not measured here.)
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

from bench import common  # noqa: E402

# The GaLore paper's Llama configs (issue 15): hidden, intermediate, layers, heads; and the paper's ranks.
CONFIGS = {
    "60m": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8),
    "130m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12),
    "350m": dict(hidden_size=1024, intermediate_size=2736, num_hidden_layers=24, num_attention_heads=16),
    "1b": dict(hidden_size=2048, intermediate_size=5461, num_hidden_layers=24, num_attention_heads=32),
    # not a paper size: a few-second model for the test (tests/test_bench_peers.py) and smoke runs
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4),
}
RANKS = {"60m": 128, "130m": 256, "350m": 256, "1b": 256, "tiny": 16}
VOCAB = 32000
QUICK_LAYERS, QUICK_VOCAB = 1, 4096
TARGET_MODULES = ("attn", "mlp")  # GaLore's recipe: the linears of attention and MLP blocks
SEED = 20240611
GRAD_SCALE = 1e-3  # fixed gradients ~ N(0, GRAD_SCALE^2)
GALORE_SCALE = 0.25  # GaLore's pre-training scale (alpha)
APOLLO_SCALE, APOLLO_MINI_SCALE = 1.0, 128.0  # apollo-torch README defaults
# State-dict entries that change at every step (moments, counters, quantization scales): the refresh
# detector ignores them; any other change of an optimizer's state within a step marks a refresh.
MOVING_KEYS = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "delta", "scaled_grad",
                         "limiter_norm", "state1", "state2", "absmax1", "absmax2", "exp_avg_absmax",
                         "exp_avg_sq_absmax"})

EIGHT_BIT_KINDS = ("rademacher", "gaussian", "svd")  # LowRankAdamW rows with state_bits=8 (issue 17)

# Targets of issue 15
TARGET_KINDS = ("rademacher", "gaussian", "svd")  # the LowRankAdamW rows the targets speak of
SEEDED_KINDS = ("rademacher", "gaussian")  # "seeded kinds": the basis is regenerated from an int seed
CPU_VS_GALORE, CPU_VS_FLOOR, GAUSS_VS_RADE = 0.8, 1.15, 1.15
CPU_WHOLE_VS_GALORE, CPU_STATE_VS_GALORE = 0.5, 0.8
GPU_ROOFLINE_FRACTION, GPU_VS_GALORE = 0.7, 0.5


# --------------------------------------------------------------------------------------------------------
# The model, the projected set, the fixed gradients and batch
# --------------------------------------------------------------------------------------------------------


def llama_config(args):
    from transformers import LlamaConfig

    sizes = dict(CONFIGS[args.config])
    if args.layers:
        sizes["num_hidden_layers"] = args.layers
    return LlamaConfig(vocab_size=args.vocab, use_cache=False, **sizes)


def build_model(args, device) -> torch.nn.Module:
    """The Llama of args.config, initialized from SEED (the same weights in every process), in args.dtype."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(SEED)
    with torch.device(device):
        model = LlamaForCausalLM(llama_config(args))
    return model.to(getattr(torch, args.dtype))


def peer_split(model) -> tuple[list, list]:
    """(projected, plain) as the GaLore repository's training script selects them: the weight of every
    nn.Linear whose qualified name contains "attn" or "mlp"; every other parameter is plain."""
    projected = [m.weight for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and any(t in name for t in TARGET_MODULES)]
    ids = {id(p) for p in projected}
    return projected, [p for p in model.parameters() if id(p) not in ids]


def check_same_projected_set(model, rank) -> None:
    """Ours (param_groups) and the peers (peer_split) must project the same weights, or rows differ in
    work."""
    from lowrank_ops.optim import param_groups

    ours = {id(p) for p in param_groups(model, rank)[0]["params"]}
    theirs = {id(p) for p in peer_split(model)[0]}
    if ours != theirs:
        raise RuntimeError(f"bench_peers: param_groups projects {len(ours)} weights, the peers' recipe "
                           f"{len(theirs)}; they must be the same set")


def fixed_grads(model, device) -> dict:
    """One N(0, GRAD_SCALE^2) gradient per parameter, drawn from SEED in parameter order: identical in every
    process on one device."""
    gen = torch.Generator(device=device).manual_seed(SEED)
    return {p: (torch.randn(p.shape, generator=gen, device=device) * GRAD_SCALE).to(p.dtype)
            for p in model.parameters()}


def fixed_batch(args, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(SEED + 1)
    return torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(device)


def projected_shapes(args) -> list[tuple[int, int]]:
    """Shapes of the projected weights, from the model built on the meta device (no memory)."""
    with torch.device("meta"):
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM(llama_config(args))
    return [tuple(p.shape) for p in peer_split(model)[0]]


# --------------------------------------------------------------------------------------------------------
# The optimizers: how each is built (its own documented param-group style) and stepped
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One row. `build(model, scope, args, gap)` returns the optimizer over the projected weights only
    (scope "projected") or over the whole model ("whole"); `module` is the package it needs."""

    id: str
    label: str
    family: str  # "torch", "peer" or "ours"
    build: Callable
    module: str | None = None
    lowrank: bool = True
    per_layer: bool = False


def _hyper(args) -> dict:
    return dict(lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay)


def _scoped(model, scope):
    projected, plain = peer_split(model)
    return projected, (plain if scope == "whole" else [])


def _full_rank(factory):
    def build(model, scope, args, gap):
        projected, plain = _scoped(model, scope)
        return factory(projected + plain, args)
    return build


def _galore_torch(cls_name):
    def build(model, scope, args, gap):
        import galore_torch

        projected, plain = _scoped(model, scope)
        groups = [{"params": projected, "rank": args.rank, "update_proj_gap": gap, "scale": GALORE_SCALE,
                   "proj_type": "std"}]
        cls = getattr(galore_torch, cls_name)
        extra = {"no_deprecation_warning": True} if cls_name == "GaLoreAdamW" else {}
        return cls(groups + ([{"params": plain}] if plain else []), **_hyper(args), **extra)
    return build


def _apollo(rank_of, scale_type, scale):
    def build(model, scope, args, gap):
        from apollo_torch import APOLLOAdamW

        projected, plain = _scoped(model, scope)
        groups = [{"params": projected, "rank": rank_of(args), "proj": "random", "scale_type": scale_type,
                   "scale": scale, "update_proj_gap": gap, "proj_type": "std"}]
        return APOLLOAdamW(groups + ([{"params": plain}] if plain else []), **_hyper(args))
    return build


def _ours(cls_name, **keys):
    """Ours through lowrank_ops.optim.param_groups; the projected scope keeps its first (projected) group."""
    def build(model, scope, args, gap):
        from lowrank_ops import optim

        if cls_name.startswith("GaLoreAdamW"):
            groups = optim.param_groups(model, args.rank, update_proj_gap=gap, scale=GALORE_SCALE,
                                        proj_type="std")
        else:
            groups = optim.param_groups(model, args.rank, update_gap=gap, scale=GALORE_SCALE, **keys)
        return getattr(optim, cls_name)(groups if scope == "whole" else groups[:1], **_hyper(args))
    return build


def _ours_apollo(rank_of, scale_type, scale):
    """lowrank_ops.optim.APOLLO with the settings of the apollo-torch row beside it, through param_groups."""
    def build(model, scope, args, gap):
        from lowrank_ops import optim

        groups = optim.param_groups(model, rank_of(args), update_proj_gap=gap, proj="random", scale_type=scale_type,
                                    scale=scale, proj_type="std")
        return optim.APOLLO(groups if scope == "whole" else groups[:1], **_hyper(args))
    return build


def _torchao_8bit(params, args):
    from torchao.optim import AdamW8bit

    return AdamW8bit(params, **_hyper(args))


def _bnb_8bit(params, args):
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(params, **_hyper(args))


def specs() -> dict[str, Spec]:
    """Every row, in table order: full-rank torch, the peers, then ours."""
    from lowrank_ops import projections

    rows = [
        Spec("adamw-foreach", "torch AdamW(foreach)", "torch", lowrank=False,
             build=_full_rank(lambda ps, a: torch.optim.AdamW(ps, **_hyper(a), foreach=True))),
        Spec("adamw-fused", "torch AdamW(fused)", "torch", lowrank=False,
             build=_full_rank(lambda ps, a: torch.optim.AdamW(ps, **_hyper(a), fused=True))),
        Spec("galore", "galore-torch GaLoreAdamW", "peer", _galore_torch("GaLoreAdamW"), "galore_torch"),
        Spec("galore-8bit", "galore-torch GaLoreAdamW8bit", "peer", _galore_torch("GaLoreAdamW8bit"),
             "galore_torch"),
        Spec("apollo", "apollo-torch APOLLO", "peer", _apollo(lambda a: a.rank, "channel", APOLLO_SCALE),
             "apollo_torch"),
        Spec("apollo-mini", "apollo-torch APOLLO-Mini", "peer",
             _apollo(lambda a: 1, "tensor", APOLLO_MINI_SCALE), "apollo_torch"),
        Spec("torchao-8bit", "torchao AdamW8bit", "peer", _full_rank(_torchao_8bit), "torchao",
             lowrank=False),
        Spec("bnb-8bit", "bitsandbytes AdamW8bit", "peer", _full_rank(_bnb_8bit), "bitsandbytes",
             lowrank=False),
    ]
    rows += [Spec(f"lowrank-{kind}", f"ours LowRankAdamW[{kind}]", "ours",
                  _ours("LowRankAdamW", projection=kind)) for kind in projections.names()]
    rows += [Spec(f"lowrank-{kind}-8bit", f"ours LowRankAdamW[{kind}] 8-bit moments", "ours",
                  _ours("LowRankAdamW", projection=kind, state_bits=8)) for kind in EIGHT_BIT_KINDS]
    rows += [Spec("ours-galore", "ours GaLoreAdamW", "ours", _ours("GaLoreAdamW")),
             Spec("ours-galore-8bit", "ours GaLoreAdamW8bit", "ours", _ours("GaLoreAdamW8bit")),
             Spec("ours-apollo", "ours APOLLO", "ours", _ours_apollo(lambda a: a.rank, "channel", APOLLO_SCALE)),
             Spec("ours-apollo-mini", "ours APOLLO-Mini", "ours",
                  _ours_apollo(lambda a: 1, "tensor", APOLLO_MINI_SCALE)),
             Spec("per-layer", "ours per-layer LowRankAdamW[rademacher]", "ours",
                  _ours("LowRankAdamW", projection="rademacher"), per_layer=True)]
    return {s.id: s for s in rows}


def step_fn(spec: Spec, optimizer, params) -> Callable[[], None]:
    """One optimizer step: optimizer.step(), or in per-layer mode step_param of each parameter in turn
    (what lowrank_ops.optim.step_in_backward's hooks call during backward)."""
    if spec.per_layer:
        def step():
            for p in params:
                optimizer.step_param(p)
        return step
    return optimizer.step


# --------------------------------------------------------------------------------------------------------
# What the optimizer state holds, and whether a step refreshed it
# --------------------------------------------------------------------------------------------------------


def _state_tensors(value, depth=0):
    """Tensors reachable from an optimizer-state value: containers, tensor subclasses' inner tensors
    (torchao's OptimState8bit: codes, scale, qmap) and the attributes of objects such as projectors."""
    if isinstance(value, torch.Tensor):
        flatten = getattr(type(value), "__tensor_flatten__", None)
        if flatten is not None and type(value) not in (torch.Tensor, torch.nn.Parameter):
            for name in value.__tensor_flatten__()[0]:
                yield from _state_tensors(getattr(value, name), depth)
        else:
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _state_tensors(v, depth)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _state_tensors(v, depth)
    elif depth < 2 and hasattr(value, "__dict__") and not callable(value):
        yield from _state_tensors(vars(value), depth + 1)


def state_bytes(optimizer, held: bool = True) -> int:
    """Bytes of the optimizer's state. held: of the storages its tensors hold, each storage once (a view of
    a larger tensor holds all of it: galore-torch keeps P as rows of the SVD's full Vh). Else the tensors'
    own sizes (numel x element size), each tensor once."""
    seen, total = set(), 0
    for tensor in _state_tensors(list(optimizer.state.values())):
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), tensor.device) if held else id(tensor)
        if key not in seen and (storage.data_ptr() or not held):
            seen.add(key)
            total += storage.nbytes() if held else tensor.numel() * tensor.element_size()
    return total


def _fingerprint(value, depth=0):
    """What must stay the same between steps that do not refresh: tensors by identity and version counter
    (the tensor object itself is kept, so a replaced tensor cannot be mistaken for a new one at the same
    address), numbers by value, projector objects by their attributes."""
    if isinstance(value, torch.Tensor):
        return (value, value._version)
    if isinstance(value, dict):
        return tuple((k, _fingerprint(v, depth)) for k, v in value.items() if k not in MOVING_KEYS)
    if isinstance(value, (list, tuple)):
        return tuple(_fingerprint(v, depth) for v in value)
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    if depth < 2 and hasattr(value, "__dict__") and not callable(value):
        return (type(value).__name__, _fingerprint(vars(value), depth + 1))
    return type(value).__name__


def _same(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        if len(a) == 2 and isinstance(a[0], torch.Tensor):
            return isinstance(b[0], torch.Tensor) and a[0] is b[0] and a[1] == b[1]
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def state_fingerprint(optimizer):
    return tuple((i, _fingerprint(st)) for i, st in enumerate(optimizer.state.values()))


# --------------------------------------------------------------------------------------------------------
# Measuring one optimizer (in its own process; in-process in tests)
# --------------------------------------------------------------------------------------------------------


def _median_iqr(xs):
    if not xs:
        return None, None
    if len(xs) == 1:
        return xs[0], 0.0
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[1], q[2] - q[0]


def time_phase(spec, model, scope, grads, args, device, *, gap, steps) -> dict:
    """Builds the optimizer for `scope` with update gap `gap`, runs 1 + `steps` steps on the fixed
    gradients, timing each, and splits them into the first step, refresh steps and the others (full-rank
    optimizers have no refresh: all their steps after the first are the others)."""
    optimizer = spec.build(model, scope, args, gap)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    step = step_fn(spec, optimizer, params)
    times, refreshed = [], []
    for i in range(1 + steps):
        for p in params:  # galore-torch's 8-bit step replaces p.grad by the projected one
            p.grad = grads[p]
        before = state_fingerprint(optimizer) if i and spec.lowrank else None
        common.synchronize(device)
        t0 = time.perf_counter()
        step()
        common.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if before is not None and not _same(before, state_fingerprint(optimizer)):
            refreshed.append(i)
    steady = [t for i, t in enumerate(times) if i and i not in refreshed]
    med, iqr = _median_iqr(steady)
    refresh_med, _ = _median_iqr([times[i] for i in refreshed])
    out = dict(scope=scope, update_gap=gap, params=len(params), first_ms=times[0], steps_ms=times,
               refresh_steps=refreshed, median_ms=med, iqr_ms=iqr, min_ms=min(steady) if steady else None,
               refresh_ms=refresh_med, state_bytes=state_bytes(optimizer),
               state_nominal_bytes=state_bytes(optimizer, held=False))
    for p in params:
        p.grad = None
    del optimizer, step
    gc.collect()
    return out


def train_phase(spec, args, device) -> dict:
    """--loss-steps training steps (forward, backward, step) of a freshly initialized model on the fixed
    batch: the loss after them, the median step time (steps 2.., the profiled one excluded) and the peak
    memory of step 1 (weights + optimizer state at its start + the allocator's peak above the start)."""
    from lowrank_ops.optim import step_in_backward

    model = build_model(args, device)
    optimizer = spec.build(model, "whole", args, args.gap)
    stepper = step_in_backward(model, optimizer, track_grad_norm=False) if spec.per_layer else None
    batch = fixed_batch(args, device)
    losses = []

    def train_step():
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        if stepper is None:
            optimizer.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())

    times, memory, resident = [], None, None
    for i in range(args.loss_steps):
        if i == 1:
            resident = sum(p.numel() * p.element_size() for p in model.parameters()) + state_bytes(optimizer)
            memory = common.peak_memory(train_step, device, warmup=False)
            continue
        common.synchronize(device)
        t0 = time.perf_counter()
        train_step()
        common.synchronize(device)
        if i:
            times.append((time.perf_counter() - t0) * 1e3)
    with torch.no_grad():
        final = model(input_ids=batch, labels=batch).loss.item()
    if stepper is not None:
        stepper.remove()
    med, _ = _median_iqr(times)
    out = dict(loss_steps=args.loss_steps, loss_first=losses[0], loss_final=final, losses=losses + [final],
               train_step_ms=med)
    if memory is not None:
        out.update(peak_bytes=resident + memory.peak_bytes, peak_above_start_bytes=memory.peak_bytes,
                   resident_bytes=resident, memory_method=memory.method + "; plus weights and optimizer "
                   "state held at the start of the step")
    return out


def _frame(f) -> str:
    parts = Path(f.filename).parts
    short = "/".join(parts[parts.index("site-packages") + 1:]) if "site-packages" in parts else f.filename
    return f"{short}:{f.lineno} in {f.name}"


def _describe(exc: BaseException) -> str:
    """The error, the innermost frame outside torch (the peer's line that called it) and, when different,
    the innermost frame, for a row's note."""
    frames = traceback.extract_tb(exc.__traceback__)
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    torch_dir = str(Path(torch.__file__).parent)
    caller = next((f for f in reversed(frames) if not f.filename.startswith(torch_dir)), None)
    where = list(dict.fromkeys(_frame(f) for f in (caller, frames[-1] if frames else None) if f))
    return f"{type(exc).__name__}: {message}" + (f" ({' -> '.join(where)})" if where else "")


def measure_optimizer(spec_id: str, args, device) -> dict:
    """Everything one row reports, measured in this process. A failure becomes the row's note."""
    spec = specs()[spec_id]
    out = dict(variant=spec.id, label=spec.label, family=spec.family, lowrank=spec.lowrank,
               per_layer=spec.per_layer, note=None)
    if spec.module and importlib.util.find_spec(spec.module) is None:
        out["note"] = f"not installed ({spec.module}; scripts/install.sh installs it)"
        return out
    phase = "setup"
    try:
        model = build_model(args, device)
        check_same_projected_set(model, args.rank)
        grads = fixed_grads(model, device)
        phase = "projected step"
        timed = dict(args=args, device=device, gap=args.gap, steps=args.steps)
        out["projected"] = time_phase(spec, model, "projected", grads, **timed)
        phase = "whole-model step"
        out["whole"] = time_phase(spec, model, "whole", grads, **timed)
        if spec.lowrank:
            phase = "refresh steps"
            timed.update(gap=args.refresh_gap, steps=args.refresh_gap * args.refreshes)
            out["refresh"] = time_phase(spec, model, "projected", grads, **timed)
        del grads, model
        gc.collect()
        phase = "training steps"
        out["train"] = train_phase(spec, args, device)
    except Exception as exc:  # a peer that does not run here is a row with a note, not a crash
        out["note"] = f"does not run on {device.type} ({phase}): {_describe(exc)}"
        out["traceback"] = traceback.format_exc()[-4000:]
    return out


def measure_floor(args, device) -> dict:
    """The GEMMs of one step of every projected matrix with P materialized (fp32; bf16 too on CUDA) and, on
    CUDA, the roofline floor from the measured copy bandwidth and bf16 GEMM rate."""
    shapes = projected_shapes(args)
    gen = torch.Generator(device=device).manual_seed(SEED)
    out = dict(matrices=len(shapes), flops=0, bytes=0)

    def operands(dtype):
        ops = []
        for m, n in shapes:
            side = "right" if m >= n else "left"  # GaLore's std: project the smaller dimension
            d, other = (n, m) if side == "right" else (m, n)
            r = min(args.rank, d)
            G = torch.randn(m, n, generator=gen, device=device).to(dtype)
            P = torch.randn(r, d, generator=gen, device=device).to(dtype)
            n_shape = (other, r) if side == "right" else (r, other)
            N = torch.randn(n_shape, generator=gen, device=device).to(dtype)
            ops.append((side, G, P, N))
        return ops

    def gemms(ops):
        def run():
            for side, G, P, N in ops:
                if side == "right":
                    G @ P.T, N @ P
                else:
                    P @ G, P.T @ N
        return run

    for dtype in (["float32", "bfloat16"] if device.type == "cuda" else ["float32"]):
        ops = operands(getattr(torch, dtype))
        t = common.time_fn(gemms(ops), device, quick=args.quick)
        out[f"{dtype}_ms"], out[f"{dtype}_iqr_ms"], out["method"] = t.median_ms, t.iqr_ms, t.method
        del ops
    elem = torch.finfo(getattr(torch, args.dtype)).bits // 8
    per_matrix = []
    for m, n in shapes:
        r = min(args.rank, min(m, n))
        flops = 4 * m * n * r  # two GEMMs of 2 m n r
        nbytes = 3 * m * n * elem + 4 * r * max(m, n) * 4  # W read + write, G read; fp32 moments read + write
        out["flops"] += flops
        out["bytes"] += nbytes
        per_matrix.append((flops, nbytes))
    if device.type == "cuda":
        ceil = common.ceilings(device, quick=args.quick)
        out["ceilings"] = ceil
        bw, rate = ceil["copy"]["gbps"] * 1e9, ceil["gemm_bf16"]["tflops"] * 1e12
        out["roofline_ms"] = sum(max(b / bw, f / rate) for f, b in per_matrix) * 1e3
    return out


# --------------------------------------------------------------------------------------------------------
# The parent: one subprocess per row, then rows, targets, table, files, plot
# --------------------------------------------------------------------------------------------------------


def run_worker(job: str, argv: list[str], timeout: float) -> dict:
    """Runs this module with --worker `job` in a fresh Python process and returns the JSON it wrote."""
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        path = Path(tmp) / "out.json"
        cmd = [sys.executable, "-m", "bench.bench_peers", *argv, "--worker", job, "--worker-out", str(path)]
        try:
            proc = subprocess.run(cmd, cwd=common.REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                                  check=False)
            rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-3000:]
        except subprocess.TimeoutExpired:
            rc, tail = "timeout", f"stopped after {timeout:.0f} s"
        if path.exists():
            return json.loads(path.read_text())
    return {"variant": job, "note": f"worker process failed (exit {rc})", "traceback": tail}


def _ms(d, key="median_ms"):
    return d.get(key) if isinstance(d, dict) else None


def _target(text: str, value, limit: float, higher_is_better=False) -> dict:
    met = None if value is None else (value >= limit if higher_is_better else value <= limit)
    return {"target": text, "value": value, "met": met}


def off_setting(args, device) -> str | None:
    """How this run differs from the setting issue 15's targets are stated for (the config's full model
    and paper rank, 2 threads on CPU, the median of 10 steps, no --quick), or None."""
    off = [name for name, differs in (
        ("--quick", args.quick),
        (f"median of {args.steps} steps", args.steps != 10),
        (f"rank {args.rank}", args.rank != RANKS[args.config]),
        (f"{args.threads} threads", device.type == "cpu" and args.threads != 2),
        (f"{args.layers} layers", args.layers not in (None, CONFIGS[args.config]["num_hidden_layers"])),
        (f"vocab {args.vocab}", args.vocab != VOCAB)) if differs]
    return ", ".join(off) or None


def targets_for(r: dict, by_id: dict, floor: dict, args, device) -> list[dict]:
    """Issue 15's targets that apply to row r: LowRankAdamW rademacher / gaussian / svd; on CPU the 60m and
    130m configs (the whole-model one: 60m), on GPU every config (the roofline one: 1b). Each carries
    `off_setting` when the run is not the setting the issue states them for."""
    kind = r["variant"].removeprefix("lowrank-")
    if not r["variant"].startswith("lowrank-") or kind not in TARGET_KINDS or r.get("time_ms") is None:
        return []
    galore = by_id.get("galore", {})
    out = []

    def ratio(a, b):
        return None if a is None or not b else a / b

    vs_galore = ratio(r["time_ms"], galore.get("time_ms"))
    if device.type == "cpu" and args.config in ("60m", "130m"):
        out.append(_target(f"step [proj] <= {CPU_VS_GALORE}x galore-torch", vs_galore, CPU_VS_GALORE))
        out.append(_target(f"step [proj] <= {CPU_VS_FLOOR}x the fp32 GEMM floor", r.get("x_floor"),
                           CPU_VS_FLOOR))
        if kind == "gaussian":
            rademacher = by_id.get("lowrank-rademacher", {}).get("time_ms")
            out.append(_target(f"gaussian <= {GAUSS_VS_RADE}x rademacher", ratio(r["time_ms"], rademacher),
                               GAUSS_VS_RADE))
        if args.config == "60m":
            out.append(_target(f"step [whole] <= {CPU_WHOLE_VS_GALORE}x galore-torch's",
                               ratio(r.get("whole_ms"), galore.get("whole_ms")), CPU_WHOLE_VS_GALORE))
        if kind in SEEDED_KINDS:
            # tensor sizes, not held storages: galore-torch's P would count as its whole SVD factor
            out.append(_target(f"state [proj] (tensor bytes) <= {CPU_STATE_VS_GALORE}x galore-torch's",
                               ratio(r.get("state_nominal_bytes_projected"),
                                     galore.get("state_nominal_bytes_projected")),
                               CPU_STATE_VS_GALORE))
    elif device.type == "cuda":
        if args.config == "1b" and floor.get("roofline_ms"):
            out.append(_target(f">= {GPU_ROOFLINE_FRACTION:.0%} of the roofline floor",
                               floor["roofline_ms"] / r["time_ms"], GPU_ROOFLINE_FRACTION,
                               higher_is_better=True))
        out.append(_target(f"step [proj] <= {GPU_VS_GALORE}x galore-torch", vs_galore, GPU_VS_GALORE))
    off = off_setting(args, device)
    return [dict(t, off_setting=off) for t in out]


def make_rows(res, results: list[dict], floor: dict, args, device) -> list[dict]:
    """One result row per optimizer (bench/common.COLUMNS plus this benchmark's columns)."""
    floor_ms = floor.get("float32_ms")
    rows = []
    for m in results:
        proj, whole, refresh, train = (m.get(k) or {} for k in ("projected", "whole", "refresh", "train"))
        t = _ms(proj)
        role = "baseline" if m["variant"] == "galore" else "op" if m.get("family") == "ours" else "variant"
        row = dict(op="train_step", variant=m["variant"], label=m.get("label"), family=m.get("family"),
                   role=role, backend=m["variant"], shape=args.config, dtype=args.dtype,
                   params={"rank": 1 if m["variant"] == "apollo-mini" else args.rank, "update_gap": args.gap,
                           "lr": args.lr, "threads": args.threads, "layers": args.layers,
                           "vocab": args.vocab},
                   time_ms=t, time_iqr_ms=_ms(proj, "iqr_ms"), time_min_ms=_ms(proj, "min_ms"),
                   runs=args.steps if t is not None else None,
                   flops=floor.get("flops"), bytes=floor.get("bytes"),
                   gflops=floor["flops"] / (t * 1e-3) / 1e9 if t and floor.get("flops") else None,
                   whole_ms=_ms(whole), whole_iqr_ms=_ms(whole, "iqr_ms"),
                   first_step_ms=_ms(proj, "first_ms"), refresh_ms=_ms(refresh, "refresh_ms"),
                   refresh_steady_ms=_ms(refresh), refresh_steps=refresh.get("refresh_steps"),
                   steady_refresh_steps=(proj.get("refresh_steps", []) + whole.get("refresh_steps", []))
                   or None,
                   state_bytes_projected=proj.get("state_bytes"), state_bytes_whole=whole.get("state_bytes"),
                   state_nominal_bytes_projected=proj.get("state_nominal_bytes"),
                   peak_bytes=train.get("peak_bytes"),
                   peak_above_start_bytes=train.get("peak_above_start_bytes"),
                   memory_method=train.get("memory_method"), train_step_ms=train.get("train_step_ms"),
                   loss_first=train.get("loss_first"), loss_final=train.get("loss_final"),
                   loss_steps=train.get("loss_steps"), floor_ms=floor_ms,
                   x_floor=t / floor_ms if t and floor_ms else None,
                   x_floor_bf16=t / floor["bfloat16_ms"] if t and floor.get("bfloat16_ms") else None,
                   baseline="galore", timing_method="time.perf_counter around each step"
                   + (" with torch.cuda.synchronize" if device.type == "cuda" else "")
                   + f", median of {args.steps} steps after the first", note=m.get("note"))
        if floor.get("roofline_ms") and t:
            row.update(pct_of_ceiling=100 * floor["roofline_ms"] / t,
                       ceiling=f"roofline floor {floor['roofline_ms']:.3f} ms (bytes / copy GB/s, "
                       "FLOPs / bf16 GEMM rate)")
        rows.append(row)
    by_id = {r["variant"]: r for r in rows}
    galore = by_id.get("galore", {})
    for r in rows:
        if r["time_ms"] and galore.get("time_ms"):
            r["ratio_to_baseline"] = r["time_ms"] / galore["time_ms"]
        if r["whole_ms"] and galore.get("whole_ms"):
            r["whole_ratio_to_baseline"] = r["whole_ms"] / galore["whole_ms"]
        r["targets"] = targets_for(r, by_id, floor, args, device)
        if r["targets"]:
            met = [t["met"] for t in r["targets"]]
            r["target"] = "; ".join(t["target"] for t in r["targets"])
            r["target_met"] = None if None in met else all(met)
    return [res.add(**r) for r in rows]


def check_refresh_split(results: list[dict], args) -> list[str]:
    """Warnings where a phase's refresh steps are not where the fixed-clock schedule puts them (refresh at
    steps gap, 2 gap, ... counted from 0): none within --steps < gap, every gap in the refresh phase.
    Only kinds whose clock is their own ("adaptive") may differ."""
    warns = []
    for m in results:
        if not m.get("lowrank") or m.get("note"):
            continue
        for key in ("projected", "whole"):
            got = (m.get(key) or {}).get("refresh_steps", [])
            want = [i for i in range(1, args.steps + 1) if i % args.gap == 0]
            if got != want:
                warns.append(f"{m['variant']} {key}: refresh at steps {got}, expected {want}")
        got = (m.get("refresh") or {}).get("refresh_steps", [])
        want = [k * args.refresh_gap for k in range(1, args.refreshes + 1)]
        if got != want:
            why = " (adaptive refreshes on convergence)" if m["variant"] == "lowrank-adaptive" else ""
            warns.append(f"{m['variant']} refresh phase: refresh at steps {got}, expected {want}{why}")
    return warns


# --------------------------------------------------------------------------------------------------------
# Rendering: the README table (markdown) and the plot, from a result JSON
# --------------------------------------------------------------------------------------------------------


def _f(x, spec=".3g", suffix=""):
    return "-" if x is None else format(x, spec) + suffix


def _mib(x):
    return None if x is None else x / common.MiB


def render_markdown(doc: dict) -> str:
    """The README table of one run: a header naming the machine and settings, one line per optimizer, and
    the targets met / missed."""
    meta, rows = doc["meta"], doc["rows"]
    s = meta["settings"]
    info = doc["machine"]
    floor = meta.get("floor", {})
    gpu_floor = (f", {_f(floor.get('bfloat16_ms'), '.2f')} ms bf16, roofline "
                 f"{_f(floor.get('roofline_ms'), '.2f')} ms" if floor.get("bfloat16_ms") else "")
    quick = ", --quick" if s["quick"] else ""
    lines = [f"**bench_peers {s['config']}** ({s['matrices']} projected matrices, rank {s['rank']}, "
             f"update gap {s['gap']}, {s['dtype']}, {s['threads']} threads, median of {s['steps']} steps"
             f"{quick}) on "
             f"{common.machine_label(info)}; torch {info['torch']}, commit {info['commit'][:12]}, "
             f"load average {info['load_average_1_5_15']}. GEMM floor "
             f"{_f(floor.get('float32_ms'), '.1f')} ms fp32{gpu_floor}.", "",
             "| optimizer | step ms [proj] | x floor | x galore-torch | refresh ms | step ms [whole] | "
             "state MiB [proj / whole] | peak MiB | loss after " + str(s["loss_steps"]) + " | note |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        state = "-" if r.get("state_bytes_whole") is None else (
            f"{_f(_mib(r.get('state_bytes_projected')), '.1f')} / {_f(_mib(r['state_bytes_whole']), '.1f')}")
        lines.append(f"| {r['label']} | {_f(r.get('time_ms'), '.1f')} | {_f(r.get('x_floor'), '.2f', 'x')} | "
                     f"{_f(r.get('ratio_to_baseline'), '.2f', 'x')} | {_f(r.get('refresh_ms'), '.1f')} | "
                     f"{_f(r.get('whole_ms'), '.1f')} | {state} | {_f(_mib(r.get('peak_bytes')), '.0f')} | "
                     f"{_f(r.get('loss_final'), '.3f')} | {(r.get('note') or '').replace('|', '/')} |")
    targets = render_targets(rows)
    return "\n".join(lines + (["", *targets] if targets else []))


def render_targets(rows: list[dict]) -> list[str]:
    """Issue 15's targets, one markdown bullet each, with the measured value and met / MISSED."""
    out = []
    for r in rows:
        for t in r.get("targets") or []:
            verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
            off = f" (not the issue's setting: {t['off_setting']})" if t.get("off_setting") else ""
            out.append(f"- {r['label']}: {t['target']}: {_f(t['value'], '.2f')} — {verdict}{off}")
    return ["Targets (issue 15; measured, never enforced):", "", *out] if out else []


def render_plot(doc: dict, path: Path) -> Path | None:
    """Bars per optimizer: the step time of the projected matrices and of the whole model (with the GEMM
    floor as a line), and the optimizer-state MiB of both. None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in doc["rows"] if r.get("time_ms") is not None]
    if not rows:
        return None
    s = doc["meta"]["settings"]
    labels = [r["label"] for r in rows]
    y = range(len(rows))
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(13, 1.2 + 0.32 * len(rows)), sharey=True)
    h = 0.4
    ax_t.barh([i - h / 2 for i in y], [r["time_ms"] for r in rows], h, label="projected matrices")
    ax_t.barh([i + h / 2 for i in y], [r.get("whole_ms") or 0 for r in rows], h, label="whole model")
    floor = doc["meta"].get("floor", {}).get("float32_ms")
    if floor:
        ax_t.axvline(floor, color="k", linewidth=0.8, linestyle="--", label="fp32 GEMM floor")
    ax_t.set_yticks(list(y), labels, fontsize=7)
    ax_t.invert_yaxis()
    ax_t.set_xlabel("optimizer step, ms (median)")
    ax_t.legend(fontsize=7)
    for shift, key, label in ((-h / 2, "state_bytes_projected", "projected"),
                              (h / 2, "state_bytes_whole", "whole model")):
        ax_s.barh([i + shift for i in y], [_mib(r.get(key)) or 0 for r in rows], h, label=label)
    ax_s.set_xlabel("optimizer state, MiB")
    ax_s.legend(fontsize=7)
    quick = " --quick" if s["quick"] else ""
    machine = doc["machine"]
    fig.suptitle(f"bench_peers {s['config']} rank {s['rank']}, {s['threads']} threads{quick}: "
                 f"{common.machine_label(machine)}, commit {machine['commit'][:12]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def print_table(rows: list[dict]) -> None:
    header = ["optimizer", "proj ms", "IQR", "x floor", "x galore", "refresh ms", "whole ms", "state MiB p/w",
              "peak MiB", "loss", "note"]
    body = [[r["variant"], _f(r["time_ms"], ".1f"), _f(r["time_iqr_ms"], ".1f"), _f(r["x_floor"], ".2f"),
             _f(r.get("ratio_to_baseline"), ".2f"), _f(r["refresh_ms"], ".1f"), _f(r["whole_ms"], ".1f"),
             f"{_f(_mib(r['state_bytes_projected']), '.1f')}/{_f(_mib(r['state_bytes_whole']), '.1f')}",
             _f(_mib(r["peak_bytes"]), ".0f"), _f(r["loss_final"], ".3f"), (r.get("note") or "")[:90]]
            for r in rows]
    print(common.format_table(header, body, "l" + "r" * 9 + "l"))


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=tuple(CONFIGS), default="60m")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 layer, vocab 4096, 2 steps per phase")
    ap.add_argument("--rank", type=int, default=None, help="default: 128 (60m), 256 (130m, 350m, 1b)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2, the issue's setting)")
    ap.add_argument("--optimizers", default=None, help="comma-separated row ids (default: every row)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps after the first (default 10; 2 --quick)")
    ap.add_argument("--gap", type=int, default=200, help="update gap of the timed phases (default 200)")
    ap.add_argument("--refresh-gap", type=int, default=None,
                    help="update gap of the refresh phase (default 4; 2 --quick)")
    ap.add_argument("--refreshes", type=int, default=None, help="refreshes timed (default 3; 1 --quick)")
    ap.add_argument("--loss-steps", type=int, default=None,
                    help="training steps for the loss (default 10; 3 --quick)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--layers", type=int, default=None, help="the config's layer count (1 with --quick)")
    ap.add_argument("--vocab", type=int, default=None,
                    help=f"vocabulary (default {VOCAB}; {QUICK_VOCAB} with --quick)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="model weights and gradients (default float32 on CPU, bfloat16 on CUDA)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds allowed per row's process")
    ap.add_argument("--out", default=None, help="directory for <name>.json/.csv/.png (default bench/results)")
    ap.add_argument("--name", default=None,
                    help="results file stem (default peers_<config>_<device>[_quick])")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--render", default=None, metavar="JSON", help="print the README table and write the PNG "
                    "of a result file; measures nothing")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.rank = args.rank or RANKS[args.config]
    args.steps = args.steps or (2 if args.quick else 10)
    args.refresh_gap = args.refresh_gap or (2 if args.quick else 4)
    args.refreshes = args.refreshes or (1 if args.quick else 3)
    args.loss_steps = args.loss_steps or (3 if args.quick else 10)
    args.layers = args.layers or (QUICK_LAYERS if args.quick else None)
    args.vocab = args.vocab or (QUICK_VOCAB if args.quick else VOCAB)
    return args


def run_settings(args, matrices: int) -> dict:
    """The settings a run records (meta.settings) and the table header names."""
    return dict(config=args.config, rank=args.rank, gap=args.gap, refresh_gap=args.refresh_gap,
                refreshes=args.refreshes, steps=args.steps, loss_steps=args.loss_steps, batch=args.batch,
                seq=args.seq, lr=args.lr, weight_decay=args.weight_decay, threads=args.threads,
                dtype=args.dtype, layers=args.layers or CONFIGS[args.config]["num_hidden_layers"],
                vocab=args.vocab, quick=args.quick, matrices=matrices, grad_scale=GRAD_SCALE,
                galore_scale=GALORE_SCALE, seed=SEED)


def worker_main(args) -> int:
    device = common.prepare(args)
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    if args.worker == "floor":
        result = measure_floor(args, device)
    else:
        result = measure_optimizer(args.worker, args, device)
    Path(args.worker_out).write_text(json.dumps(result, default=common._jsonable))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render:
        doc = json.loads(Path(args.render).read_text())
        print(render_markdown(doc))
        png = render_plot(doc, Path(args.render).with_suffix(".png"))
        print(f"\nwrote {png}" if png else "\n(matplotlib missing: no plot)")
        return 0
    if args.worker:
        return worker_main(args)
    device = common.prepare(args)
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    table = specs()
    ids = [s.strip() for s in args.optimizers.split(",")] if args.optimizers else list(table)
    unknown = sorted(set(ids) - set(table))
    if unknown:
        raise SystemExit(f"--optimizers: unknown {unknown}; known: {list(table)}")
    res = common.Results("peers", device)
    common.print_machine(res)
    shapes = projected_shapes(args)
    settings = run_settings(args, len(shapes))
    print(f"{args.config}: {settings['layers']} layers, vocab {args.vocab}, {len(shapes)} projected "
          f"matrices, rank {args.rank}, {args.dtype}, {args.threads} threads; {len(ids)} rows, each in its "
          "own process")
    t_start = time.perf_counter()
    print("  GEMM floor ...", end=" ", flush=True)
    t0 = time.perf_counter()
    floor = run_worker("floor", argv, args.timeout)
    print(f"{time.perf_counter() - t0:.0f} s" + (f"  NOTE: {floor['note']}" if floor.get("note") else ""),
          flush=True)
    results = []
    for job in ids:
        print(f"  {job} ...", end=" ", flush=True)
        t0 = time.perf_counter()
        m = run_worker(job, argv, args.timeout)
        m.setdefault("label", table[job].label)
        m.setdefault("family", table[job].family)
        m["wall_s"] = time.perf_counter() - t0
        results.append(m)
        print(f"{m['wall_s']:.0f} s" + (f"  NOTE: {m['note']}" if m.get("note") else ""), flush=True)
    warns = check_refresh_split(results, args)
    res.meta.update(command=" ".join([sys.executable, "-m", "bench.bench_peers"] + argv), quick=args.quick,
                    settings=settings, floor=floor, refresh_split_warnings=warns,
                    processes={m["variant"]: {k: m.get(k) for k in ("wall_s", "note", "traceback")}
                               for m in results},
                    phases={m["variant"]: {k: m.get(k) for k in ("projected", "whole", "refresh", "train")}
                            for m in results},
                    targets_not_measured=["GPU: one launch per group for the Triton path"])
    rows = make_rows(res, results, floor, args, device)
    res.meta["wall_s"] = time.perf_counter() - t_start
    common.print_results_header(res)
    gpu_floor = (f"; bf16 {_f(floor.get('bfloat16_ms'), '.2f')} ms; roofline "
                 f"{_f(floor.get('roofline_ms'), '.2f')} ms" if device.type == "cuda" else "")
    print(f"GEMM floor (fp32): {_f(floor.get('float32_ms'), '.2f')} ms{gpu_floor}")
    print_table(rows)
    for w in warns:
        print(f"WARNING refresh split: {w}")
    doc = {"bench": res.bench, "machine": res.info, "meta": res.meta, "rows": rows}
    print("\n" + "\n".join(render_targets(rows)))
    if not args.no_write:
        name = args.name or f"peers_{args.config}_{device.type}{'_quick' if args.quick else ''}"
        common.write_run(res, args, name)
        png = render_plot(doc, Path(args.out or common.RESULTS_DIR) / f"{name}.png")
        if png:
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
