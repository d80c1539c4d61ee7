"""GaLoreAdamW8bit: a drop-in for galore-torch's `GaLoreAdamW8bit` (param-group keys rank, update_proj_gap,
scale, proj_type; constructor of bitsandbytes' AdamW8bit) with our blockwise 8-bit moments
(docs/DESIGN.md §3 "8-bit optimizer moments") on the fused low-rank step, on any device (galore-torch's
needs CUDA and bitsandbytes).

galore-torch 1.0's GaLoreAdamW8bit (jiaweizzhao/GaLore), per low-rank param at step t (after the increment):
  the projection and its refresh as galore-torch's GaLoreAdamW (lowrank_ops.optim.galore);
  bitsandbytes' Adam on the projected gradient R in place of the weight (a zero tensor of R's shape):
      m <- b1 m + (1 - b1) R;  v <- b2 v + (1 - b2) R^2
      u = -lr (m / bc1) / (sqrt(v) / sqrt(bc2) + eps),   bc_i = 1 - b_i^t   (torch.optim.AdamW's form)
  W <- W + scale unproject(u);  then W <- W - lr wd W (only if wd > 0, on the updated W)
with the moments in bitsandbytes' blockwise 8-bit state once the projected shape has >= min_8bit_size
elements. The fused op computes W <- W (1 - lr wd) - lr scale' unproject(N), N = (m / bc1) / (sqrt(v) /
sqrt(bc2) + eps), which equals it for scale' = scale (1 - lr wd): no eps folding (bitsandbytes' update is
torch's), always bias-corrected (bitsandbytes has no correct_bias).

Params of groups without a rank (and non-matrix params of rank groups) get torch.optim.AdamW's step
(plain_adamw.py; bitsandbytes' AdamW has its decoupled weight decay and update) with float32 states:
bitsandbytes would keep 8-bit states for those of >= min_8bit_size elements; we have no 8-bit plain AdamW.

Arguments of bitsandbytes' AdamW8bit that change nothing here are accepted and checked: `amsgrad` must be
False, `percentile_clipping` 100 (off), `block_wise` True (our moments are always blockwise); `optim_bits`
and `args` are ignored as galore-torch ignores them (it always asks for 8 bits), `is_paged` has no effect
(paged memory is a CUDA unified-memory feature of bitsandbytes). `min_8bit_size` (default 4096, as
bitsandbytes): projected moments with fewer elements stay float32. Our block size is the keyword-only
`state_block_size` (default 256; bitsandbytes uses 256 on CUDA too).

What differs from galore-torch otherwise is what GaLoreAdamW documents (float moments of bf16 weights
where 32-bit, the side fixed from the weight's shape, the rank capped, failed SVDs, a state of tensors and
ints only), plus the 8-bit format itself: ours is our own blockwise dynamic tree code, not bitsandbytes'
bytes (docs/DESIGN.md §3).
"""

from ..spec import STATE_BLOCK_SIZE
from . import plain_adamw
from ._base import check_state_bits, is_matrix
from .galore import GaLoreAdamW


class GaLoreAdamW8bit(GaLoreAdamW):
    """galore-torch's GaLoreAdamW8bit on the fused low-rank step with blockwise 8-bit moments (module
    docstring). Param-group keys as GaLoreAdamW's (rank, update_proj_gap, scale, proj_type), plus
    `min_8bit_size` and `state_block_size` (defaults from the constructor). `foreach`, `fused`,
    `skip_nonfinite`, `backend`, `multi_tensor`: as GaLoreAdamW's."""

    LAYOUT_KEYS = ("rank", "proj_type", "state_bits", "state_block_size", "min_8bit_size")

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        amsgrad=False,
        optim_bits=32,
        args=None,
        min_8bit_size=4096,
        percentile_clipping=100,
        block_wise=True,
        is_paged=False,
        *,
        state_block_size=STATE_BLOCK_SIZE,
        foreach=None,
        fused=None,
        skip_nonfinite=False,
        backend=None,
        multi_tensor=True,
    ):
        where = "lowrank_ops.optim.GaLoreAdamW8bit"
        for name, value, expected in (("amsgrad", amsgrad, False), ("percentile_clipping", percentile_clipping, 100),
                                      ("block_wise", block_wise, True)):
            if value != expected or isinstance(value, bool) != isinstance(expected, bool):
                raise ValueError(f"{where}: argument {name!r} must be {expected!r} (the only setting supported), "
                                 f"got {value!r}")
        self._backend = backend
        self._multi_tensor = bool(multi_tensor)
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "state_bits": 8,
                    "state_block_size": state_block_size, "min_8bit_size": min_8bit_size}
        super(GaLoreAdamW, self).__init__(
            params, {**defaults, "foreach": foreach, "fused": fused, "skip_nonfinite": skip_nonfinite}
        )
        plain_adamw.check_not_both(foreach, fused, where)

    def _check_group(self, group, where):
        check_state_bits(group, where)
        super()._check_group(group, where)

    def _step_group(self, group, params):
        lowrank = "rank" in group
        plain = [p for p in params if not (lowrank and is_matrix(p))]
        if plain:
            where = self._where(self._group_index[plain[0]])
            chosen, states = plain_adamw.adam_states(self.state, group, plain, where)
            plain_adamw.adamw_step(group, plain, states, chosen)
        if lowrank:
            for p in params:
                if is_matrix(p):
                    self._step_lowrank(p, group)

    def _folded(self, group, t: int, wd: float) -> tuple[float, float]:
        """(eps, scale) of the fused op: bitsandbytes' Adam is torch's form (no folding), the weight decay
        applied after the update folds into the scale."""
        return group["eps"], group["scale"] * (1.0 - group["lr"] * wd)
