"""Microbenchmarks of lowrank_ops (see bench/README.md). They measure; they never assert or gate CI."""
