"""DiLoCo with low-rank workers and worker-aware projections (duality paper §4.2, Tables 3-4; DiLoCo:
Douillard et al. 2024).

K workers (the ranks of a process group) each hold the model. Round g:
  1. every worker starts from the global weights W^(g) and takes H = sync_every inner steps with its own
     data and inner optimizer. With LowRankAdamW the update of a low-rank weight stays in the range of its
     projection P_k (fixed for the round: DiLoCo sets update_gap = H, so the basis is refreshed at the first
     inner step of each round), so W_k = f_k W^(g) + P_k^T A_k (side "left"; right: A_k P_k), where
     f_k = prod_t (1 - lr_t wd) is the decoupled weight decay of wd_mode "full" (1 in wd_mode "adapter").
  2. sync: the pseudo-gradient Delta = mean_k (W_k - W^(g)) is all-reduced. For a low-rank weight the
     worker sends A_k = (P_k P_k^T)^-1 P_k (W_k - f_k W^(g)) (r x n: exact, the least-squares coefficients
     of a vector in range(P_k^T)) and f_k, and every worker rebuilds
         Delta = (mean_k f_k - 1) W^(g) + (1/K) sum_k P_k^T A_k
     regenerating the other workers' P_j from seeds: nothing m x n travels for these weights.
       identical    P_k = P for all k: all-reduce of A_k, then P^T (sum A_k) / K.
       independent  P_k drawn from a per-worker seed: all-gather of the A_k, each P_j regenerated.
       distributed  P_k = rows [k r, (k+1) r) of one (K r) x d semi-orthogonal basis of the global seed, so
                    P_i P_j^T = 0: all-gather of the A_k, and sum_k P_k^T A_k = P_all^T [A_1; ...; A_K].
                    With "orthogonal" that basis is an orthonormalized (K r) x d sketch (a QR per round);
                    with "sr_dct" it is S C D of one seed (projections/sr_dct.py): every worker has the
                    same signs D and takes the rows at positions [k r, (k+1) r) of the seed's random
                    order, so P_i P_j^T = S_i S_j^T = 0 exactly, with no QR.
     Other parameters (plain-AdamW ones, any inner optimizer other than LowRankAdamW) send W_k - W^(g).
  3. outer step: the outer optimizer, SGD with Nesterov momentum (DiLoCo's), gets the gradient
     W^(g) - (W^(g) + Delta) = -Delta, and every worker resets to the new global weights W^(g+1).
The projections of round g+1 follow from the global seed, the layer and the round (the per-layer,
per-refresh seeds of lowrank_ops.projections): only seeds and row-block indices define them.

Restrictions (clear errors): low-rank groups need a one-sided projection drawn from seeds ("orthogonal",
the paper's; "sr_dct", "gaussian", "rademacher"; "distributed" needs a kind with mutually orthogonal row
blocks: "orthogonal" or "sr_dct"); K r must not exceed the
projected dimension in "distributed"; a low-rank parameter must be stepped at every inner step or never
(otherwise its basis would change mid-round).
"""

import math

import torch
import torch.distributed as dist

from .. import projections
from ..optim import LowRankAdamW

MODES = ("distributed", "independent", "identical")
WHERE = "lowrank_ops.distributed.DiLoCo"


def worker_seed(global_seed: int, projection_init: str, worker: int) -> int:
    """The base projection seed of `worker`: the global seed for "identical" and "distributed" (there the
    row block tells workers apart), derive_seed(global_seed, worker, 0) for "independent"."""
    if projection_init == "independent":
        return projections.derive_seed(global_seed, worker, 0)
    return global_seed


def _basis(kind, layout, seed: int, like: torch.Tensor) -> torch.Tensor:
    """The dense r x d basis the inner optimizer uses for refresh seed `seed` (kinds that do not read the
    gradient: `like` gives only dtype and device), as the kind's own refresh computes it."""
    tmp = {}
    kind.refresh(tmp, like, layout, seed)
    ((side, _, d),) = layout.sides()
    return projections.side_matrix(getattr(kind.projection(tmp, layout), side), d, like.dtype, like.device)


def _block_kinds() -> str:
    """The registered kinds with mutually orthogonal row blocks, for messages: 'orthogonal' or 'sr_dct'."""
    return " or ".join(repr(name) for name in projections.names() if projections.get(name).supports_block)


class _LowRank:
    """What DiLoCo knows of one low-rank parameter: its group, kind, layout (block included) and layer."""

    def __init__(self, group_index, kind, layout, layer):
        self.group_index, self.kind, self.layout, self.layer = group_index, kind, layout, layer
        self.side, self.rank, self.dim = layout.sides()[0]

    def coefficients(self, P, X):
        """A with P^T A = X (left) or A P = X (right) for X in the range: the least-squares solution."""
        gram = P @ P.T
        if self.side == "left":
            return torch.linalg.solve(gram, P @ X)
        return torch.linalg.solve(gram, P @ X.T).T

    def expand(self, P, A):
        return P.T @ A if self.side == "left" else A @ P

    def coefficient_shape(self):
        m, n = self.layout.shape
        return (self.rank, n) if self.side == "left" else (m, self.rank)


class DiLoCo:
    """The DiLoCo outer loop over the ranks of `process_group` (default: the world).

    `inner_optimizer_factory(params)` builds each worker's inner optimizer over the model's trainable
    parameters: LowRankAdamW (its low-rank groups get DiLoCo's projections; DiLoCo sets their keys `seed`,
    `update_gap` = sync_every and `block`) or any torch optimizer (full pseudo-gradients: plain DiLoCo).
    Drive training with `step()` (an inner step; every `sync_every` of them a sync) and `zero_grad()`.
    `seed` is the global projection seed and must be equal on all ranks. Initial weights are broadcast from
    the group's rank 0. `last_sync` holds the bytes of the last sync (`allreduce_bytes`,
    `allgather_bytes`: what this worker handed to each collective; `dense_allreduce_bytes`: a full-weight
    all-reduce of the same pseudo-gradients).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        inner_optimizer_factory,
        *,
        sync_every: int = 500,
        outer_lr: float = 0.7,
        outer_momentum: float = 0.9,
        nesterov: bool = True,
        projection_init: str = "distributed",
        process_group=None,
        seed: int = 0,
    ):
        if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
            raise ValueError(f"{WHERE}: 'sync_every' must be an int >= 1, got {sync_every!r}")
        if projection_init not in MODES:
            raise ValueError(f"{WHERE}: 'projection_init' must be one of {MODES}, got {projection_init!r}")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                f"{WHERE}: torch.distributed is not initialized (init_process_group, or torchrun)"
            )
        projections.derive_seed(seed, 0, 0)  # validates the seed: an int in [0, 2^64)
        self.model, self.sync_every, self.projection_init = model, sync_every, projection_init
        self.group = process_group
        self.world_size, self.rank = dist.get_world_size(process_group), dist.get_rank(process_group)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._src = dist.get_global_rank(process_group, 0) if process_group is not None else 0
        self._check_same_seed(seed)
        self.seed = seed
        with torch.no_grad():
            for p in self.params:
                dist.broadcast(p.data, src=self._src, group=process_group)
        self.inner_optimizer = inner_optimizer_factory(self.params)
        self._lowrank = self._configure_inner()
        self._anchor = [p.detach().clone() for p in self.params]  # the global weights W^(g)
        self.outer_optimizer = torch.optim.SGD(
            self._anchor, lr=outer_lr, momentum=outer_momentum, nesterov=nesterov
        )
        self.inner_steps, self.rounds = 0, 0
        self._decay = [1.0] * len(self.inner_optimizer.param_groups)
        self.last_sync = None

    # -- set-up ---------------------------------------------------------------------------------------------
    def _check_same_seed(self, seed):
        words = torch.tensor([seed >> 32, seed & 0xFFFFFFFF], dtype=torch.int64)
        theirs = words.clone()
        dist.broadcast(theirs, src=self._src, group=self.group)
        if not torch.equal(words, theirs):
            got = (int(theirs[0]) << 32) | int(theirs[1])
            raise ValueError(
                f"{WHERE}: 'seed' must be equal on all ranks; rank {self.rank} has {seed}, rank 0 has {got}"
            )

    def _configure_inner(self):
        """Sets the projection keys of the inner LowRankAdamW's low-rank groups; returns param -> _LowRank."""
        lowrank = {}
        if not isinstance(self.inner_optimizer, LowRankAdamW):
            return lowrank
        names = {p: name for name, p in self.model.named_parameters()}
        for gi, group in enumerate(self.inner_optimizer.param_groups):
            if group["rank"] is None:
                continue
            kind = projections.get(group["projection"])
            if kind.two_sided or kind.uses_gradient:
                raise ValueError(
                    f"{WHERE}: param group {gi} uses projection {kind.name!r}; DiLoCo redraws every worker's "
                    "projection from seeds and needs a one-sided seeded kind: 'orthogonal' (the paper's), "
                    "'sr_dct', 'gaussian' or 'rademacher'"
                )
            if self.projection_init == "distributed" and not kind.supports_block:
                raise ValueError(
                    f"{WHERE}: projection_init='distributed' needs mutually orthogonal worker blocks, "
                    f"i.e. projection {_block_kinds()}; param group {gi} uses {kind.name!r}"
                )
            group["seed"] = worker_seed(self.seed, self.projection_init, self.rank)
            group["update_gap"] = self.sync_every
            group["block"] = (self.rank, self.world_size) if self.projection_init == "distributed" else None
            for p in group["params"]:
                if not self.inner_optimizer.is_lowrank(p):
                    continue
                try:
                    layout = kind.layout(p.shape, group["rank"], group["side"], group["block"])
                except ValueError as e:
                    raise ValueError(f"{WHERE}: parameter {names.get(p, '?')!r}: {e}") from None
                lowrank[p] = _LowRank(gi, kind, layout, self.inner_optimizer.layer_index(p))
        return lowrank

    # -- training -------------------------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner_optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        """One inner step; after every `sync_every` inner steps, a sync (outer step)."""
        for gi, group in enumerate(self.inner_optimizer.param_groups):
            if group.get("rank") is not None and group.get("wd_mode") == "full":
                self._decay[gi] *= 1.0 - float(group["lr"]) * group["weight_decay"]
        loss = self.inner_optimizer.step(closure)
        self.inner_steps += 1
        if self.inner_steps % self.sync_every == 0:
            self.sync()
        return loss

    def _round_seed(self, info: _LowRank, worker: int) -> int:
        return projections.derive_seed(
            worker_seed(self.seed, self.projection_init, worker), info.layer, self.rounds
        )

    def _own_state(self, p, info: _LowRank):
        """The inner optimizer's state of p if p was stepped at every inner step so far; None if never."""
        state = self.inner_optimizer.state.get(p)
        if not state:
            return None
        if state["step"] != self.inner_steps or state["proj_seed"] != self._round_seed(info, self.rank):
            raise RuntimeError(
                f"{WHERE}: a low-rank parameter of shape {list(p.shape)} was stepped {state['step']} times in "
                f"{self.inner_steps} inner steps; DiLoCo needs every low-rank parameter stepped at every inner "
                "step (or never), so that its projection is the one of the round (freeze unused parameters "
                "with requires_grad=False, or drive training with DiLoCo.step())"
            )
        return state

    @torch.no_grad()
    def sync(self) -> dict:
        """The global step: all-reduce the pseudo-gradients (low-rank where the math allows), outer Nesterov
        step, every worker reset to the new global weights. Returns the byte counts (also `last_sync`)."""
        comm = torch.float64 if any(p.dtype == torch.float64 for p in self.params) else torch.float32
        reduce_parts, gather_parts, plans = [], [], []
        for p, anchor in zip(self.params, self._anchor):
            info = self._lowrank.get(p)
            if info is None:
                reduce_parts.append((p.to(comm) - anchor.to(comm)).reshape(-1))
                plans.append(None)
                continue
            state = self._own_state(p, info)
            own_P, P_all = self._bases(p, info, comm)
            if state is None:  # never stepped: W_k = W^(g), A_k = 0
                f, A = 1.0, torch.zeros(info.coefficient_shape(), dtype=comm)
            else:
                f = self._decay[info.group_index]
                A = info.coefficients(own_P, p.to(comm) - f * anchor.to(comm))
            reduce_parts.append(torch.tensor([f], dtype=comm))
            (reduce_parts if self.projection_init == "identical" else gather_parts).append(A.reshape(-1))
            plans.append((own_P, P_all))
        reduced = torch.cat(reduce_parts) if reduce_parts else torch.zeros(0, dtype=comm)
        dist.all_reduce(reduced, group=self.group)
        gathered = None
        if gather_parts:
            mine = torch.cat(gather_parts)
            gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
            dist.all_gather(gathered, mine, group=self.group)
        K = self.world_size
        r_off = g_off = 0
        for p, anchor, plan in zip(self.params, self._anchor, plans):
            info = self._lowrank.get(p)
            if info is None:
                delta = reduced[r_off : r_off + p.numel()].view(p.shape) / K
                r_off += p.numel()
            else:
                f_mean = float(reduced[r_off]) / K
                r_off += 1
                shape = info.coefficient_shape()
                count = math.prod(shape)
                if self.projection_init == "identical":
                    expanded = info.expand(plan[0], reduced[r_off : r_off + count].view(shape))
                    r_off += count
                else:
                    blocks = [g[g_off : g_off + count].view(shape) for g in gathered]
                    g_off += count
                    expanded = self._expand_all(p, info, blocks, plan[1], comm)
                delta = (f_mean - 1.0) * anchor.to(comm) + expanded / K
            anchor.grad = (-delta).to(anchor.dtype)
        self.outer_optimizer.step()
        self.outer_optimizer.zero_grad(set_to_none=True)
        for p, anchor in zip(self.params, self._anchor):
            p.copy_(anchor)
        itemsize = torch.empty((), dtype=comm).element_size()
        self.last_sync = {
            "allreduce_bytes": reduced.numel() * itemsize,
            "allgather_bytes": (gathered[0].numel() * itemsize) if gathered else 0,
            "dense_allreduce_bytes": sum(p.numel() for p in self.params) * itemsize,
            "world_size": K,
        }
        self.rounds += 1
        self._decay = [1.0] * len(self._decay)
        return self.last_sync

    def _bases(self, p, info: _LowRank, comm):
        """(this worker's basis P_k of the round, and in "distributed" mode P_all, the (K r) x d basis of
        the kind whose row blocks are the workers' bases; its block k is bit-identical to what the inner
        optimizer computed: the same QR of the same sketch ("orthogonal"), or the same rows of the same
        float64 transform rounded once ("sr_dct"))."""
        if self.projection_init != "distributed":
            return _basis(info.kind, info.layout, self._round_seed(info, self.rank), p).to(comm), None
        ranks = self.world_size * info.rank
        full = projections.Layout(info.layout.shape, *((ranks, 0) if info.side == "left" else (0, ranks)))
        P_all = _basis(info.kind, full, self._round_seed(info, self.rank), p).to(comm)
        return P_all[self.rank * info.rank : (self.rank + 1) * info.rank], P_all

    def _expand_all(self, p, info: _LowRank, blocks, P_all, comm) -> torch.Tensor:
        """sum_j P_j^T A_j (left; sum_j A_j P_j right) over the workers' coefficient blocks."""
        if P_all is not None:
            return info.expand(P_all, torch.cat(blocks, dim=0 if info.side == "left" else 1))
        total = None
        for j, A in enumerate(blocks):
            P_j = _basis(info.kind, info.layout, self._round_seed(info, j), p).to(comm)
            term = info.expand(P_j, A)
            total = term if total is None else total + term
        return total

    # -- checkpointing --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """DiLoCo's own state (loads with torch.load(weights_only=True)): the global seed, mode, round and
        inner-step counters, the weight-decay factors of the current round, the global weights and the
        outer optimizer (its momentum). Each worker's model and inner optimizer are saved by the caller."""
        return {
            "seed": self.seed,
            "projection_init": self.projection_init,
            "sync_every": self.sync_every,
            "world_size": self.world_size,
            "rounds": self.rounds,
            "inner_steps": self.inner_steps,
            "decay": list(self._decay),
            "global_weights": [a.detach().clone() for a in self._anchor],
            "outer_optimizer": self.outer_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("projection_init", "sync_every", "world_size"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"{WHERE}.load_state_dict: saved {key}={state[key]!r}, this run has {getattr(self, key)!r}"
                )
        if len(state["global_weights"]) != len(self._anchor):
            raise ValueError(
                f"{WHERE}.load_state_dict: {len(state['global_weights'])} saved global weights, "
                f"the model has {len(self._anchor)} trainable parameters"
            )
        self.seed, self.rounds, self.inner_steps = state["seed"], state["rounds"], state["inner_steps"]
        self._decay = list(state["decay"])
        with torch.no_grad():
            for anchor, saved in zip(self._anchor, state["global_weights"]):
                anchor.copy_(saved)
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        self._lowrank = self._configure_inner()
