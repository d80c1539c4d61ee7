"""Model sizes and training hyper-parameters of the comparison.

The paper's recipe (duality paper §4 and Table 5): AdamW, weight decay 0.1, betas (0.9, 0.95), linear
warm-up over 10% of training (0.5B of 5B tokens) to the peak learning rate 4e-4, cosine decay to 1e-5
(peak / 40), projections refreshed / adapters merged every 200 of 10,000 steps (50 refreshes per run),
rank 256 at hidden 1024 and 512 at hidden 2048 (hidden / 4), bf16. The small presets keep every ratio:
warm-up = steps / 10, refresh gap = steps / 50, rank = hidden / 4, intermediate ~ 2.75 hidden, head dim
hidden / heads, final lr = peak / 40. The peak lr of the small presets is higher (tiny models trained for a
few hundred steps learn nothing at 4e-4; 2e-3 is a usual peak for models of this width); it is the same
for every method, so the comparison between methods is what the presets keep from the paper.

Presets "200m" and "1.3b" are the paper's Table 5 shapes, with the byte vocabulary (256) instead of the
Llama-2 tokenizer and the sequence length capped at 512; they are for a GPU. So is "small" in practice: on
the 2-core development CPU one of its steps takes about 4 s (1000 steps per method). The memory estimates of the
report always use the paper's own configurations (vocabulary 32000), whatever preset is run.
"""

import math
from dataclasses import asdict, dataclass, replace

from .model import ModelConfig

BYTE_VOCAB = 256


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    steps: int
    batch: int
    lr: float
    eval_every: int  # steps between validation evaluations (and the final one)
    eval_tokens: int  # predicted tokens per evaluation (fixed validation windows)
    ckpt_every: int  # steps between checkpoints
    threads: int | None = None  # torch CPU threads (None: torch's default)
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    warmup_frac: float = 0.1  # 0.5B of 5B tokens
    gap_frac: float = 0.02  # 200 of 10,000 steps
    final_lr_frac: float = 1 / 40  # 1e-5 / 4e-4

    @property
    def rank(self) -> int:
        return max(1, self.model.hidden // 4)

    @property
    def warmup(self) -> int:
        return max(1, round(self.steps * self.warmup_frac))

    @property
    def update_gap(self) -> int:
        return max(1, round(self.steps * self.gap_frac))

    def with_steps(self, steps: int) -> "Preset":
        """The preset run for `steps` steps: warm-up, refresh gap and eval/checkpoint intervals scale along."""
        scale = steps / self.steps
        return replace(self, steps=steps, eval_every=max(1, round(self.eval_every * scale)),
                       ckpt_every=max(1, round(self.ckpt_every * scale)))

    def lr_at(self, step: int) -> float:
        """Linear warm-up to `lr` over `warmup` steps, then cosine decay to final_lr_frac * lr at `steps`."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        low = self.lr * self.final_lr_frac
        return low + 0.5 * (self.lr - low) * (1 + math.cos(math.pi * t))

    def describe(self) -> dict:
        out = asdict(self)
        out.update(rank=self.rank, warmup=self.warmup, update_gap=self.update_gap)
        return out


def _model(hidden, layers, heads, intermediate, seq_len) -> ModelConfig:
    return ModelConfig(vocab=BYTE_VOCAB, hidden=hidden, layers=layers, heads=heads, intermediate=intermediate,
                       seq_len=seq_len)


PRESETS = {
    # sized so that every method of the default list finishes in about 30 s on a 2-core CPU (one thread)
    "tiny": Preset(_model(64, 2, 4, 176, 64), steps=250, batch=16, lr=2e-3, eval_every=25, eval_tokens=8192,
                   ckpt_every=50, threads=1),
    "small": Preset(_model(256, 4, 4, 704, 128), steps=1000, batch=32, lr=1e-3, eval_every=100,
                    eval_tokens=32768, ckpt_every=100),
    "200m": Preset(_model(1024, 12, 16, 2816, 512), steps=10000, batch=64, lr=4e-4, eval_every=500,
                   eval_tokens=262144, ckpt_every=250),
    "1.3b": Preset(_model(2048, 24, 16, 5472, 512), steps=10000, batch=64, lr=4e-4, eval_every=500,
                   eval_tokens=262144, ckpt_every=250),
}

# The paper's configurations for the memory estimates (Table 5; vocabulary 32000; rank 256 / 512).
PAPER_CONFIGS = {"200M": {"layers": 12, "hidden": 1024, "intermediate": 2816, "rank": 256},
                 "1.3B": {"layers": 24, "hidden": 2048, "intermediate": 5472, "rank": 512}}
