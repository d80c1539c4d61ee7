"""The projection-kind interface, the registry of kinds, and the robust refresh shared by the optimizers.

A kind decides, at each refresh of a layer, the basis through which that layer's gradient is projected
(R = L G R^T, lowrank_ops.ops.Projection), and what of it lives in the optimizer state. A kind keeps
its state under keys starting with "proj_" in the parameter's optimizer-state dict, holding only ints
(seeds) and tensors (matrices), so `state_dict()` loads with `torch.load(weights_only=True)`.
A new kind ("dct", "rsvd", "adaptive", ...) is a module that subclasses ProjectionKind and calls
`register(...)`, plus one import line in lowrank_ops/projections/__init__.py.
"""

import math
import operator
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from ..ops.projection import Projection, SideOperator
from .seeds import splitmix64

SIDES = ("auto", "left", "right")


@dataclass(frozen=True)
class Layout:
    """How a parameter of `shape` (m, n) is projected: `left_rank` rows of L (0: identity on the left)
    and `right_rank` rows of R (0: identity on the right)."""

    shape: tuple[int, int]
    left_rank: int
    right_rank: int
    # (index, count): the basis is rows [index r, (index + 1) r) of the kind's basis of rank count r drawn
    # from the same seed (distributed-orthogonal worker blocks, lowrank_ops.distributed); None: rank r.
    block: tuple[int, int] | None = None

    @property
    def projected_shape(self) -> tuple[int, int]:
        m, n = self.shape
        return (self.left_rank or m, self.right_rank or n)

    def sides(self):
        """(side, rank, d) for each projected side: d is the dimension the side operator acts on."""
        m, n = self.shape
        return [
            (side, rank, d)
            for side, rank, d in (("left", self.left_rank, m), ("right", self.right_rank, n))
            if rank
        ]


def side_seeds(seed: int, layout: Layout) -> dict[str, int]:
    """Seed of each projected side: a one-sided projection uses `seed`; a two-sided one uses `seed` on the
    left and the independent splitmix64(seed) on the right (seeds.py)."""
    names = [side for side, _, _ in layout.sides()]
    return {side: seed if i == 0 else splitmix64(seed) for i, side in enumerate(names)}


class ProjectionKind:
    """Base of the projection kinds. Subclasses set `name` and `two_sided` and implement `refresh` and
    `projection`; kinds whose refresh reads the gradient and can fail (SVD) set `uses_gradient` and
    implement `fallback`."""

    name: str = ""
    two_sided: bool = False
    uses_gradient: bool = False
    persists_matrix: bool = False
    supports_block: bool = False  # honors Layout.block (row blocks of one larger basis)

    # -- layout --------------------------------------------------------------------------------------
    def max_rank(self, shape, side: str) -> int:
        """The largest useful rank on `side`: the dimension it acts on (a rank above it only adds state)."""
        return shape[0] if side == "left" else shape[1]

    def check_settings(self, rank, side, where: str) -> None:
        """Raises a clear error for a bad `rank` / `side` of a param group (`where` names it)."""
        ranks = rank if self.two_sided and isinstance(rank, (tuple, list)) else (rank,)
        if self.two_sided and len(ranks) not in (1, 2):
            raise ValueError(
                f"{where}: 'rank' of projection {self.name!r} must be an int or a pair "
                f"(left_rank, right_rank), got {rank!r}"
            )
        for r in ranks:
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise ValueError(
                    f"{where}: 'rank' must be an int >= 1"
                    f"{' or a pair of them' if self.two_sided else ''}, got {rank!r}"
                )
        if side not in SIDES:
            raise ValueError(f"{where}: 'side' must be one of {SIDES}, got {side!r}")
        if self.two_sided and side != "auto":
            raise ValueError(
                f"{where}: projection {self.name!r} projects both sides; 'side' must be 'auto', got {side!r}"
            )

    def layout(self, shape, rank, side: str = "auto", block=None) -> Layout:
        """Layout of a 2-D parameter: side "auto" projects the smaller dimension (right when m >= n, GaLore's
        "std"); ranks are capped at max_rank. `block` (index, count) selects a row block of a count x rank
        basis (kinds with supports_block); count x rank must not exceed the projected dimension."""
        if block is not None:
            return with_block(self.layout(shape, rank, side), block, self.name)
        m, n = (operator.index(s) for s in shape)
        if self.two_sided:
            r_left, r_right = (rank, rank) if isinstance(rank, int) else rank
            return Layout(
                (m, n),
                min(r_left, self.max_rank((m, n), "left")),
                min(r_right, self.max_rank((m, n), "right")),
            )
        if side == "auto":
            side = "right" if m >= n else "left"
        r = min(rank, self.max_rank((m, n), side))
        return Layout((m, n), r, 0) if side == "left" else Layout((m, n), 0, r)

    # -- basis -----------------------------------------------------------------------------------------
    def refresh(self, state: dict, G: torch.Tensor, layout: Layout, seed: int) -> bool:
        """Writes the new basis for refresh seed `seed` into `state`. Returns False when G gives no basis
        (only kinds with `uses_gradient`); G is finite here."""
        raise NotImplementedError

    def fallback(self, state: dict, G: torch.Tensor, layout: Layout, seed: int) -> None:
        """A seeded basis for the first refresh of a kind whose refresh failed (no previous basis)."""
        raise NotImplementedError(f"projection {self.name!r} cannot fail to refresh")

    def has_basis(self, state: dict) -> bool:
        return "proj_seed" in state

    # -- hooks of the optimizers; the defaults are the fixed-rank, fixed-clock behaviour -------------------
    # Kinds with their own param-group keys ("adaptive") declare them here, {key: default}; the optimizer
    # accepts them as constructor keywords and `check_options` validates a group's values.
    options: ClassVar[dict] = {}
    # Tensors of the projected shape (in the moments' dtype) the kind keeps in the state besides the moments
    # (lowrank_ops.memory counts them).
    projected_buffers: int = 0
    # True when the rank changes during training (the group's rank is an upper bound).
    variable_rank: bool = False

    def check_options(self, group: dict, where: str) -> None:
        """Raises a clear error for a bad value of one of `options` in a param group."""

    def current_layout(self, state: dict, layout: Layout, group) -> Layout:
        """The layout now in use, given the param group's `layout` (its rank) and the kind's state."""
        return layout

    def due(self, state: dict, G: torch.Tensor, layout: Layout, gap: int, group) -> bool:
        """Whether to refresh before this step: at steps 0, gap, 2 gap, ... (counted before the increment,
        as galore-torch). Must not change `state` when it returns True (a refresh that fails keeps it)."""
        return state["step"] % gap == 0

    def refresh_for(self, state: dict, G: torch.Tensor, layout: Layout, seed: int, group) -> bool:
        """`refresh` with the param group at hand (kinds whose basis depends on group keys)."""
        return self.refresh(state, G, layout, seed)

    def transform_moments(self, state: dict, previous: dict, layout: Layout) -> None:
        """Called after a refresh with `previous`, the state's "proj_*" entries before it: carries the Adam
        moments state["exp_avg"] / ["exp_avg_sq"] over to the new basis. Default: kept as they are
        (galore-torch)."""

    def projection(self, state: dict, layout: Layout) -> Projection:
        """The current basis as the fused op's Projection argument."""
        raise NotImplementedError

    def persisted_bytes(self, layout: Layout, dtype: torch.dtype) -> int:
        """Bytes this kind persists per layer: matrices in `dtype`, or the 8-byte seed of seeded kinds."""
        if self.persists_matrix:
            itemsize = torch.empty((), dtype=dtype).element_size()
            return sum(rank * d for _, rank, d in layout.sides()) * itemsize
        return 8


def with_block(layout: Layout, block, kind_name: str) -> Layout:
    """`layout` with its basis taken as row block `block` = (index, count) of a count x r basis; raises a
    clear error when count x r exceeds the projected dimension d (the blocks could not be orthogonal)."""
    side, rank, d = layout.sides()[0]  # block-capable kinds are one-sided
    index, count = block
    if count * rank > d:
        m, n = layout.shape
        raise ValueError(
            f"lowrank_ops.projections: projection {kind_name!r} split into {count} row blocks of rank {rank} "
            f"needs {count} x {rank} = {count * rank} rows, more than the projected dimension d = {d} of a "
            f"[{m}, {n}] parameter (side {side!r}); use rank <= {d // count} or fewer blocks (workers)"
        )
    return replace(layout, block=(index, count))


def matrix_projection(state: dict, layout: Layout) -> Projection:
    """Projection of the matrices a kind keeps in state["proj_left"] / state["proj_right"]."""
    ops = {
        side: SideOperator("matrix", rank, matrix=state[f"proj_{side}"]) for side, rank, _ in layout.sides()
    }
    return Projection(**ops)


_REGISTRY: dict[str, ProjectionKind] = {}


def register(kind: ProjectionKind) -> ProjectionKind:
    if not kind.name or kind.name in _REGISTRY:
        raise ValueError(
            f"lowrank_ops.projections.register: name {kind.name!r} is empty or already registered"
        )
    _REGISTRY[kind.name] = kind
    return kind


def get(name: str, where: str = "lowrank_ops.projections") -> ProjectionKind:
    """The kind registered as `name`; `where` prefixes the error (e.g. the optimizer and param group)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"{where}: unknown projection {name!r}; registered kinds are {names()}") from None


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def option_names() -> tuple[str, ...]:
    """The param-group keys declared by the registered kinds (ProjectionKind.options), sorted."""
    return tuple(sorted({key for kind in _REGISTRY.values() for key in kind.options}))


def refresh(
    kind: ProjectionKind, state: dict, G: torch.Tensor, layout: Layout, seed: int, warn, group=None
) -> bool:
    """Refreshes the basis in `state` from the gradient G with the refresh seed `seed`, robustly.

    - G with a NaN/Inf: the basis is kept and False is returned; the caller skips this parameter's step
      (writing it would put NaN into the weight and the moments).
    - A zero gradient, or an SVD that fails or returns non-finite vectors (an ill-conditioned G), for a
      kind that reads G: the previous basis is kept, or at the first refresh the kind's seeded fallback
      is used; the step goes ahead.
    `warn(key, message)` is called for each event and should warn once per key; `group` (the param group)
    is passed to kind.refresh_for. One inf-norm reduction of G (and a host sync) per refresh."""
    gmax = float(torch.linalg.vector_norm(G, math.inf))  # max |G|: exact in any dtype
    if not math.isfinite(gmax):
        warn(
            "nonfinite",
            f"lowrank_ops: a gradient of shape {list(G.shape)} has NaN/Inf at a projection refresh; "
            "the basis is kept and this parameter's step is skipped (warned once)",
        )
        return False
    if not kind.uses_gradient:
        return kind.refresh_for(state, G, layout, seed, group)
    if gmax > 0 and kind.refresh_for(state, G, layout, seed, group):
        return True
    reason = "is zero" if gmax == 0 else "gave no usable SVD (ill-conditioned)"
    if kind.has_basis(state):
        warn(
            "refresh_failed",
            f"lowrank_ops: a gradient of shape {list(G.shape)} {reason} at a refresh of "
            f"projection {kind.name!r}; the previous basis is kept (warned once)",
        )
    else:
        warn(
            "refresh_failed",
            f"lowrank_ops: a gradient of shape {list(G.shape)} {reason} at the first refresh "
            f"of projection {kind.name!r}; a seeded random semi-orthogonal basis is used "
            "instead (warned once)",
        )
        kind.fallback(state, G, layout, seed)
    return True
