"""Adaptive-rank projection "adaptive" (AdaRankGrad: Refael et al., "AdaRankGrad: Adaptive Gradient-Rank
and Moments for Memory-Efficient LLMs Training and Fine-Tuning", Algorithms 2-3): the rank of each layer is
chosen at every refresh as the smallest that keeps a fraction `energy` of the gradient's energy, the basis
is refreshed when the projected gradient has converged (not on a fixed clock), and the Adam moments are
carried over to the new basis. One-sided (side as the group's, docs/DESIGN.md §3).

Param-group keys (LowRankAdamW constructor keywords too):
  energy        0.9    fraction of ||G||_F^2 the basis keeps (AdaRankGrad's information fraction)
  max_rank      None   largest rank (None: the group's `rank`); capped at min(m, n)
  min_rank      1      smallest rank
  converge_tol  0.1    refresh when the relative change of the projected gradient over a window is below it
  min_gap       20     the window, and the fewest steps between refreshes (2 horizons of beta1 = 0.9)
  max_gap       None   the most steps between refreshes (None: the group's `update_gap`)

Refresh (at the first step, then when due): r, Q = lowrank_ops.ops.adaptive_rank(G, energy, max_rank,
min_rank=min_rank, seed=derive_seed(seed, layer, refresh), side=side) -- one range-finder pass at
max_rank and the singular-value tail bound (see that op) -- and P = Q^T (r x d), in G's dtype.

When it is due. Let s be the steps since the last refresh and m the first moment, the exponential average
of the projected gradients R = P G (left) or G P^T (right) over ~1/(1 - beta1) steps. At s = min_gap,
2 min_gap, ... the change of m over the window, relative to the current gradient,
    c = ||m_now - m_window_start||_F / ||G||_F,
is compared with converge_tol: c < converge_tol means the projected gradient has settled in the current
subspace (AdaRankGrad's exit condition of its low-rank block, on the averaged projected gradient so that
minibatch noise does not dominate; the paper's exact formula was lost in extraction). Why ||G|| and not
||m_window_start||: when the subspace is exhausted, the projected gradient decays geometrically towards 0,
and its change relative to itself stays constant (1 - rho^window for a rate rho) -- a first version that
divided by ||m_window_start|| never refreshed on convergence in the rank-decay test; relative to ||G||, which
keeps the energy outside the subspace, the change vanishes exactly then. A non-finite ||G|| makes the
refresh due, so that the refresh's NaN/Inf check skips the step. The refresh happens at the first check
with c < converge_tol, or at s = max_gap. The window start m_window_start is kept in
state["proj_anchor"] (one more tensor of the moments' projected shape and dtype, float32 beside 8-bit moments:
projected_buffers = 1);
the check is one norm reduction and a host sync every min_gap steps.

Moments on a refresh (Block 2 of Algorithm 3), with T = P_new P_old^T (r_new x r_old), both bases with
orthonormal rows, computed in the moments' dtype:
    side "left"  (moments r x n):  m' = T m,      v' = (T o T) v
    side "right" (moments m x r):  m' = m T^T,    v' = v (T o T)^T
(o the elementwise product). 8-bit moments (state_bits = 8) are decoded, transformed and encoded again
(projections/moments.py). m' is the issue's rule m' = P_new P_old^T m: the old average expressed in the
new coordinates (exact for the part of it inside the new subspace, the rest is dropped). For v there is no
linear rule: Adam's v_j estimates E[r_j^2] of the old coordinates r; the new ones are r'_i = sum_j T_ij r_j,
so E[r'_i^2] = sum_j T_ij^2 E[r_j^2] + sum_{j != k} T_ij T_ik E[r_j r_k]. Adam keeps no cross moments, so the
second sum is dropped (exact when the old coordinates are uncorrelated), giving v' = (T o T) v. This is
non-negative (T v could be negative and make sqrt(v) NaN), maps v exactly when the new basis permutes or
flips the signs of old vectors, keeps sum(v) when the subspace is unchanged (the columns of T o T then sum
to 1) and loses the mass of the directions that leave it, as m' does. The paper's own formula for v is lost
in the extraction we have; this rule is ours. Directions new to the subspace start from m' = v' = 0 while
the bias correction uses the global step, so their first Adam steps are larger than steady state (up to
~6.5x for beta = (0.9, 0.999)), as with galore-torch's untransformed moments. Measured on the tests' tiny
MLP (test_optim.train_mlp, left / right side, final MSE): this rule 0.0136 / 0.0108; resetting both moments
0.0141 / 0.0108; v' = |T| v 0.0189 / 0.0157. On the rank-decay regression the refreshes come when the
projected gradient has died out, so the rules tie. Small, one-seed evidence.

At the first refresh the moments (still zero) are re-allocated in the chosen rank's projected shape;
after that the transform changes their shape when the rank changes. Persisted per layer: the basis
state["proj_left"] / ["proj_right"], ints proj_rank (current rank), proj_step (step of the last refresh)
and proj_seed, and the tensor proj_anchor. Robustness as "svd": a NaN/Inf gradient at a refresh keeps the
basis (and rank and moments) and skips the step; a zero gradient keeps the previous basis, or at the first
refresh uses the seeded semi-orthogonal fallback at max_rank.
"""

import math
from dataclasses import replace
from typing import ClassVar

import torch

from ..ops.range_finder import adaptive_rank
from . import moments
from .base import ProjectionKind, matrix_projection, register
from .orthogonal import write_semi_orthogonal


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def transform_moments(exp_avg, exp_avg_sq, P_new, P_old, side: str):
    """(m', v') of the module docstring: the moments in the basis P_old (r_old x d) carried over to P_new
    (r_new x d), in the moments' dtype."""
    T = P_new.to(exp_avg.dtype) @ P_old.to(exp_avg.dtype).T
    T2 = T * T
    if side == "left":
        return T @ exp_avg, T2 @ exp_avg_sq
    return exp_avg @ T.T, exp_avg_sq @ T2.T


class AdaptiveRank(ProjectionKind):
    name = "adaptive"
    uses_gradient = True
    persists_matrix = True
    variable_rank = True
    projected_buffers = 1
    options: ClassVar[dict] = {
        "energy": 0.9,
        "max_rank": None,
        "min_rank": 1,
        "converge_tol": 0.1,
        "min_gap": 20,
        "max_gap": None,
    }

    def _get(self, group, key):
        return self.options[key] if group is None else group.get(key, self.options[key])

    def check_options(self, group, where):
        energy, max_rank, min_rank = (self._get(group, k) for k in ("energy", "max_rank", "min_rank"))
        tol, min_gap, max_gap = (self._get(group, k) for k in ("converge_tol", "min_gap", "max_gap"))
        if not _number(energy) or not 0 < energy < 1:
            raise ValueError(f"{where}: 'energy' must be a number in (0, 1), got {energy!r}")
        if max_rank is not None and (not _int(max_rank) or max_rank < 1):
            raise ValueError(f"{where}: 'max_rank' must be None or an int >= 1, got {max_rank!r}")
        upper = group["rank"] if max_rank is None else max_rank
        if not _int(min_rank) or not 1 <= min_rank <= upper:
            raise ValueError(
                f"{where}: 'min_rank' must be an int in [1, max_rank = {upper}]"
                f"{' (the group rank)' if max_rank is None else ''}, got {min_rank!r}"
            )
        if not _number(tol) or tol < 0:
            raise ValueError(f"{where}: 'converge_tol' must be a number >= 0, got {tol!r}")
        if not _int(min_gap) or min_gap < 1:
            raise ValueError(f"{where}: 'min_gap' must be an int >= 1, got {min_gap!r}")
        if max_gap is not None and (not _int(max_gap) or max_gap < min_gap):
            raise ValueError(
                f"{where}: 'max_gap' must be None or an int >= min_gap = {min_gap}, got {max_gap!r}"
            )

    def max_rank(self, shape, side):
        return min(shape)  # adaptive_rank's max_rank is at most min(m, n)

    def _bounds(self, layout, group):
        """(min_rank, max_rank) for this layer: max_rank (or the group rank) capped at min(m, n)."""
        ((_, rank, _),) = layout.sides()
        cap = min(layout.shape)
        hi = rank if group is None else min(self._get(group, "max_rank") or group["rank"], cap)
        return min(self._get(group, "min_rank"), hi), hi

    def current_layout(self, state, layout, group):
        ((side, _, _),) = layout.sides()
        rank = state["proj_rank"] if "proj_rank" in state else self._bounds(layout, group)[1]
        return (
            replace(layout, left_rank=rank, right_rank=0)
            if side == "left"
            else replace(layout, left_rank=0, right_rank=rank)
        )

    def due(self, state, G, layout, gap, group):
        if "proj_rank" not in state:
            return True
        since = state["step"] - state["proj_step"]
        if since >= (self._get(group, "max_gap") or gap):
            return True
        window = self._get(group, "min_gap")
        if since == 0 or since % window:
            return False
        m, anchor = moments.read_one(state, "exp_avg"), state["proj_anchor"]
        change = float(torch.linalg.vector_norm(m - anchor, dtype=torch.float64))
        scale = float(torch.linalg.vector_norm(G, dtype=torch.float64))
        if not math.isfinite(scale) or change < self._get(group, "converge_tol") * scale:
            # state untouched: the refresh skips a NaN/Inf gradient's step and keeps everything
            return True
        anchor.copy_(m)  # the next window starts here
        return False

    def refresh(self, state, G, layout, seed):
        return self.refresh_for(state, G, layout, seed, None)

    def refresh_for(self, state, G, layout, seed, group):
        ((side, _, _),) = layout.sides()
        low, high = self._bounds(layout, group)
        try:
            rank, Q, _ = adaptive_rank(
                G, self._get(group, "energy"), high, min_rank=low, seed=seed, side=side
            )
        except ValueError:  # e.g. a squared norm that overflows: a failed refresh (base.refresh)
            return False
        if not bool(torch.isfinite(Q).all()):
            return False
        state[f"proj_{side}"] = Q.T.contiguous().to(G.dtype)
        state.update(proj_rank=rank, proj_step=state.get("step", 0), proj_seed=seed)
        return True

    def fallback(self, state, G, layout, seed):
        write_semi_orthogonal(state, G, layout, seed)
        ((_, rank, _),) = layout.sides()
        state.update(proj_rank=rank, proj_step=state.get("step", 0))

    def transform_moments(self, state, previous, layout):
        ((side, _, _),) = layout.sides()
        new, old = state[f"proj_{side}"], previous.get(f"proj_{side}")
        if old is new:  # the refresh kept the previous basis (zero gradient)
            return
        exp_avg, exp_avg_sq = moments.read(state)  # 8-bit moments: decoded, transformed, encoded again
        if old is None:  # first basis: the moments are still zero, only their shape follows the rank
            exp_avg, exp_avg_sq = (x.new_zeros(layout.projected_shape) for x in (exp_avg, exp_avg_sq))
        else:
            exp_avg, exp_avg_sq = transform_moments(exp_avg, exp_avg_sq, new, old, side)
        moments.write(state, exp_avg, exp_avg_sq)
        state["proj_anchor"] = moments.read_one(state, "exp_avg").clone()

    def projection(self, state, layout):
        return matrix_projection(state, layout)


register(AdaptiveRank())
