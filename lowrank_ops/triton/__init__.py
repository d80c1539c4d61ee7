"""Triton kernels (@triton.jit) of lowrank_ops and their launchers; one module per kernel family."""
