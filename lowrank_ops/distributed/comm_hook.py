"""A DDP communication hook that all-reduces one-sided low-rank projections of the gradients, with error
feedback.

For each gradient matrix M (m x n; a >2-D gradient is viewed as shape[0] x rest) of a DDP bucket, every
rank applies the same basis P (r x d, orthonormal rows, so P^T P is the orthogonal projector onto
range(P^T)), with E the rank's error-feedback memory:
    X = M + E;  R = P X (side left, d = m; right: R = X P^T, d = n);  E <- X - P^T R  (what P dropped)
    all-reduce(R) / world_size;  M <- P^T R                          (= mean over ranks of P^T P X)
Only R travels: r n (left) or m r (right) elements per matrix instead of m n. The dropped part is carried
to the next iteration (error feedback, as PowerSGD: Vogels et al., NeurIPS 2019).

Where P comes from:
- a seeded sketch, the same on every rank: the orthonormalized Gaussian sketch of
  derive_seed(derive_seed(seed, bucket, iteration), position, 0) on the larger dimension
  (lowrank_ops.projections.semi_orthogonal); nothing but the seed is shared. With warm_start=False every
  iteration draws a fresh one.
- warm_start=True (default): the first compressed iteration uses the seeded sketch; afterwards the basis of
  the next iteration is the orthonormalized all-reduced result of this one, on the other side: after a
  left step the rows of R (r x n) span the dominant right-singular directions seen through P, so
  P' = orth(rows of R) projects on the right next; after a right step P' = orth(columns of R)^T projects on
  the left. This is a subspace (power) iteration spread over the training steps, like PowerSGD's warm
  start, with one all-reduce of one factor per step; every rank computes P' from the same all-reduced R.
  Random subspaces drawn afresh each step are a weak compressor: on the benchmark's tiny model they lose
  far more than the warm-started ones at the same rank (bench/bench_distributed.py).
1-D gradients (biases, norms) and matrices whose compression rate (`compression_rate`: m n over the mean
elements sent per step) is below `min_compression_rate` go into the same single all-reduce uncompressed. The first `start_iter`
iterations are plain all-reduces (DDP rebuilds its buckets after the first one). A non-finite all-reduced
bucket (an overflowing AMP step) resets that bucket's error memory and warm bases.

    state = LowRankHookState(process_group=None, rank=8)
    ddp_model.register_comm_hook(state, lowrank_allreduce_hook)
"""

import torch
import torch.distributed as dist

from ..projections import derive_seed, semi_orthogonal


class LowRankHookState:
    """State of lowrank_allreduce_hook: settings, the iteration counter, and per bucket the error memory
    and warm bases. `bytes_last_iter` / `bytes_total`: bytes this rank handed to all-reduces."""

    def __init__(
        self,
        process_group=None,
        rank: int = 8,
        *,
        seed: int = 0,
        warm_start: bool = True,
        error_feedback: bool = True,
        start_iter: int = 2,
        min_compression_rate: float = 2.0,
    ):
        where = "lowrank_ops.distributed.LowRankHookState"
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"{where}: 'rank' must be an int >= 1, got {rank!r}")
        if isinstance(start_iter, bool) or not isinstance(start_iter, int) or start_iter < 1:
            raise ValueError(
                f"{where}: 'start_iter' must be an int >= 1 (DDP rebuilds buckets after iteration 0), "
                f"got {start_iter!r}"
            )
        derive_seed(seed, 0, 0)  # validates the seed
        self.process_group, self.rank, self.seed = process_group, rank, seed
        self.warm_start, self.error_feedback = warm_start, error_feedback
        self.start_iter, self.min_compression_rate = start_iter, min_compression_rate
        self.iter = 0
        self.buckets: dict[int, list] = {}  # bucket index -> per compressed matrix [shape, error, basis]
        self.bytes_last_iter = self.bytes_total = 0
        self._bytes_this_iter = 0

    def _count(self, tensor: torch.Tensor, bucket) -> None:
        self._bytes_this_iter += tensor.numel() * tensor.element_size()
        if bucket.is_last():
            self.bytes_last_iter, self._bytes_this_iter = self._bytes_this_iter, 0
            self.bytes_total += self.bytes_last_iter
            self.iter += 1


def _orth_rows(R: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (rows) of the row space of R (r x d, r <= d): Q^T of the reduced QR of R^T."""
    return torch.linalg.qr(R.T)[0].T.contiguous()


def compression_rate(shape, rank: int, warm_start: bool) -> float:
    """m n over the elements sent per step: r min(m, n) for a fresh sketch of the larger dimension; with
    warm start the side alternates, so the mean of min(r, m) n and m min(r, n)."""
    m, n = shape
    sent = (min(rank, m) * n + m * min(rank, n)) / 2 if warm_start else rank * min(m, n)
    return m * n / sent


def _matrices(state: LowRankHookState, grads):
    """(position, matrix view) of each gradient worth compressing."""
    out = []
    for i, g in enumerate(grads):
        if g.dim() >= 2:
            M = g.view(g.shape[0], -1)
            if compression_rate(M.shape, state.rank, state.warm_start) >= state.min_compression_rate:
                out.append((i, M))
    return out


def _bucket_slots(state: LowRankHookState, index: int, matrices):
    """Per compressed matrix [shape, error memory or None, warm basis (side, P) or None]; recreated when
    the bucket's matrices changed (first compressed iteration, DDP's bucket rebuild)."""
    slots = state.buckets.get(index)
    if slots is None or [s[0] for s in slots] != [M.shape for _, M in matrices]:
        slots = [[M.shape, torch.zeros_like(M) if state.error_feedback else None, None] for _, M in matrices]
        state.buckets[index] = slots
    return slots


def lowrank_allreduce_hook(state: LowRankHookState, bucket) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook (register with `ddp_model.register_comm_hook(state, lowrank_allreduce_hook)`)."""
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    buffer = bucket.buffer()
    if state.iter < state.start_iter:
        state._count(buffer, bucket)
        fut = dist.all_reduce(buffer, group=group, async_op=True).get_future()
        return fut.then(lambda f: f.value()[0].div_(world))

    grads = bucket.gradients()
    matrices = _matrices(state, grads)
    compressed = {i for i, _ in matrices}
    slots = _bucket_slots(state, bucket.index(), matrices)
    bucket_seed = derive_seed(state.seed, bucket.index(), state.iter)
    used, parts = [], []
    for (i, M), (_, error, warm) in zip(matrices, slots):
        if state.warm_start and warm is not None:
            side, P = warm
        else:
            side = "left" if M.shape[0] >= M.shape[1] else "right"  # project the larger dimension
            d = max(M.shape)
            P = semi_orthogonal(min(state.rank, d), d, derive_seed(bucket_seed, i, 0), M.dtype, M.device)
        if error is not None:
            M.add_(error)  # X = M + E, in place in the bucket (overwritten by the result)
        R = P @ M if side == "left" else M @ P.T
        if error is not None:
            error.copy_(M).sub_(P.T @ R if side == "left" else R @ P)
        used.append((side, P))
        parts.append(R.reshape(-1))
    parts += [g.reshape(-1) for i, g in enumerate(grads) if i not in compressed]
    flat = torch.cat(parts) if parts else buffer.new_zeros(0)
    state._count(flat, bucket)

    def unpack(fut):
        reduced = fut.value()[0].div_(world)
        finite = bool(torch.isfinite(reduced).all())
        offset = 0
        for (i, M), (side, P), slot in zip(matrices, used, slots):
            r = P.shape[0]
            shape = (r, M.shape[1]) if side == "left" else (M.shape[0], r)
            R = reduced[offset : offset + shape[0] * shape[1]].view(shape)
            offset += R.numel()
            M.copy_(P.T @ R if side == "left" else R @ P)
            if not finite:
                slot[2] = None
                if slot[1] is not None:
                    slot[1].zero_()
            elif state.warm_start:
                slot[2] = ("right", _orth_rows(R)) if side == "left" else ("left", _orth_rows(R.T))
        for i, g in enumerate(grads):
            if i not in compressed:
                g.copy_(reduced[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        return buffer

    return dist.all_reduce(flat, group=group, async_op=True).get_future().then(unpack)
