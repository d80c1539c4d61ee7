"""The pure-torch implementation of every op: production code, registered as each op's default kernel
(lowrank_ops/_kernels.py), so torch.ops.lowrank_ops.* runs on any device without a compiled or Triton
kernel, and what `backend="reference"` runs. One module per kernel family; each function takes the op's
schema arguments (seeds as the schema's int64, two's complement of the uint64 seed).

Not the test oracle: lowrank_ops/reference is written independently from docs/DESIGN.md §3 and checks this
code like every other backend."""
