"""Per-layer, per-refresh seeds derived from one user seed (docs/DESIGN.md §3).

splitmix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014; the
finalizer of Java's SplittableRandom) of x, all arithmetic mod 2^64:
    z = x + 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)
A layer's seed for its refresh number k is
    derive_seed(base, layer, k) = splitmix64(splitmix64(splitmix64(base) ^ layer) ^ k)
and a second, independent seed for the other side of a two-sided projection is splitmix64(seed). Only
these integers are persisted; the sketches are regenerated from them (lowrank_ops.ops.sketch).
"""

MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15


def splitmix64(x: int) -> int:
    z = (x + GOLDEN_GAMMA) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def derive_seed(base_seed: int, layer_index: int, refresh_index: int) -> int:
    """The uint64 seed of layer `layer_index` at its `refresh_index`-th refresh (0 = the first)."""
    for name, value in (
        ("base_seed", base_seed),
        ("layer_index", layer_index),
        ("refresh_index", refresh_index),
    ):
        if not isinstance(value, int) or not 0 <= value <= MASK64:
            raise ValueError(
                f"lowrank_ops.projections.derive_seed: argument '{name}' must be an int in "
                f"[0, 2^64), got {value!r}"
            )
    return splitmix64(splitmix64(splitmix64(base_seed) ^ layer_index) ^ refresh_index)
