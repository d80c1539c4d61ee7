"""param_groups: the usual split of a model's parameters for low-rank training.

GaLore and its relatives project the gradients of the attention and MLP weight matrices only; embeddings,
norms, biases and the LM head keep full-rank AdamW (GaLore's recipe, and the duality paper's). This helper
builds that split for a Hugging Face transformers model (Llama-style names `...self_attn.q_proj`,
`...mlp.gate_proj`; GPT-2's `...attn.c_attn`, `...mlp.c_fc` likewise) or any nn.Module whose module names
contain the target substrings.
"""

import torch

DEFAULT_TARGET = ("attn", "mlp")
_EXCLUDED_TYPES = (torch.nn.Embedding, torch.nn.EmbeddingBag)


def _target_tuple(target) -> tuple[str, ...]:
    if isinstance(target, str):
        target = (target,)
    target = tuple(target)
    if not target or not all(isinstance(t, str) and t for t in target):
        raise ValueError(
            "lowrank_ops.optim.param_groups: 'target' must be a non-empty string or a non-empty sequence "
            f"of non-empty strings, got {target!r}"
        )
    return target


def param_groups(
    model: torch.nn.Module, rank, projection=None, target=DEFAULT_TARGET, **group_keys
) -> list[dict]:
    """[projected group, plain group] for `model`.

    The projected group holds the 2-D `weight` of every module whose qualified name contains one of the
    `target` substrings (embeddings excluded; norms and biases are never 2-D weights, and a module named
    like `lm_head` does not match the default target). Its keys: `rank`, `projection` (omitted when None,
    e.g. for GaLoreAdamW, which has no such key) and `group_keys` (e.g. `update_gap=...` for LowRankAdamW,
    `update_proj_gap=...`, `proj_type=...` for GaLoreAdamW; `lr`, `weight_decay`, ...).

    The plain group holds every other trainable parameter and carries no keys: it takes the optimizer's
    defaults, so the optimizer's own `rank` must be None (LowRankAdamW's default; GaLoreAdamW treats a
    group without a "rank" key as plain). The plain group is left out when it would be empty.

    Each parameter appears once (tied weights, e.g. an LM head sharing the embedding, are one parameter);
    frozen parameters (requires_grad False) are left out. ValueError when no weight matches `target`.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"lowrank_ops.optim.param_groups: 'model' must be a torch.nn.Module, got {type(model).__name__}"
        )
    target = _target_tuple(target)
    projected, seen = [], set()
    for name, module in model.named_modules():
        if isinstance(module, _EXCLUDED_TYPES) or not any(t in name for t in target):
            continue
        weight = getattr(module, "weight", None)
        if (
            isinstance(weight, torch.nn.Parameter)
            and weight.requires_grad
            and weight.dim() == 2
            and id(weight) not in seen
        ):
            seen.add(id(weight))
            projected.append(weight)
    if not projected:
        names = [name for name, m in model.named_modules() if name and getattr(m, "weight", None) is not None]
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(
            f"lowrank_ops.optim.param_groups: no 2-D module weight matches target {target!r} "
            f"(a match: a module whose qualified name contains one of them); modules with weights: "
            f"[{shown}]"
        )
    plain = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    group = {"params": projected, "rank": rank, **group_keys}
    if projection is not None:
        group["projection"] = projection
    return [group] + ([{"params": plain}] if plain else [])
