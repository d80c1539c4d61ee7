"""Seeded sketches, regenerated from their seed by the kernels (never stored): "gaussian" (Flora),
"rademacher" and "two_sided_gaussian" of the duality paper's Table 1. Persisted: the refresh seed
state["proj_seed"] (an int); entries follow sketch spec v1 with E[P P^T] = I_r."""

from ..ops.projection import Projection, SideOperator
from .base import Layout, ProjectionKind, register, side_seeds


class SeededSketch(ProjectionKind):
    def __init__(self, name: str, sketch_kind: str, two_sided: bool):
        self.name, self.sketch_kind, self.two_sided = name, sketch_kind, two_sided

    def refresh(self, state, G, layout, seed):
        state["proj_seed"] = seed
        return True

    def projection(self, state, layout: Layout) -> Projection:
        seeds = side_seeds(state["proj_seed"], layout)
        return Projection(
            **{
                side: SideOperator(self.sketch_kind, rank, seed=seeds[side])
                for side, rank, _ in layout.sides()
            }
        )


register(SeededSketch("gaussian", "gaussian", two_sided=False))
register(SeededSketch("rademacher", "rademacher", two_sided=False))
register(SeededSketch("two_sided_gaussian", "gaussian", two_sided=True))
