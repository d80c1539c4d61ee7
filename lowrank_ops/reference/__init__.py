"""The test oracle: every op family written again, independently, from its definition in
lowrank_ops/spec.py and docs/DESIGN.md §3 (elementwise formulas, float64 transcendentals, NumPy integer
arithmetic, plain loops where they are clearest). Only the tests (and the benchmarks, as a baseline) use it:
no production module imports it, so a parity test compares two implementations, not one with itself.
Precision follows each op's contract (float64 in, float64 out), so the tests also run it in an op's own
precision as the "plain torch" error baseline of the tolerance rule (docs/DESIGN.md §5)."""
