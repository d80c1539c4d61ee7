"""The main job: pretrain a small Llama-style decoder with each method of the duality paper's Table 2 (and the
kinds this library adds) and compare validation perplexity, memory and step time.

    python -m lowrank_ops.compare                  # every method, preset "tiny" (< 10 min on a 2-core CPU)
    lowrank-ops compare --methods full,rademacher,galore --steps 100

Modules: cli (arguments, the run), presets (sizes, hyper-parameters), model (the decoder), data (corpus,
batches), methods (the method table), relora (two-sided LoRA with merges), train (loop, checkpoints),
report (table, results.json, plot).
"""

from .cli import compare_main, main

__all__ = ["compare_main", "main"]
