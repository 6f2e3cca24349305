"""Choosing lam: the smallest error bound (B1/S1) subject to no clipping (B3/S3).

B1 ``(delta/2) sqrt(sum_t r_t^2)`` grows with lam (each ``r_t^2`` does), while the weight
growth of B3/S3 shrinks (each update is at most ``||X_t|| / (2 sqrt(lam))``). For a grid with
K levels, no clipping needs ``max_j (|w_j| + a delta c_j(lam)) <= K delta`` (``a = 1/2`` and
``c`` the B3 growth for round to nearest; ``a = sqrt(log(2N^2/p)/2)`` and the S3 growth for
stochastic rounding, which then holds with probability >= 1 - p). With the step free this
gives the smallest admissible step ``delta(lam) = max_j |w_j| / (K - a c_j(lam))`` (feasible
iff ``a c_j < K`` for all j), and the bound at lam is B1 at that step.

A fixed step may vary per weight (a group-wise grid, (N, n)); then the condition is checked
weight by weight against each weight's own step, ``|w_t| + deviation_t(lam) <= K delta_t``
with B3's / S3's per-step deviation (theory/README.md section 7), and the bound is B1's
per-step form.
"""

from __future__ import annotations

import logging
import numbers
from typing import Literal, NamedTuple

import numpy as np

from ptq import options
from theory._factor import as_matrix, factorise, resolve
from theory._steps import check_steps, in_processing_order, per_neuron
from theory.optq_bounds import per_weight_deviation, update_magnitudes
from theory.stochastic import check_p, hoeffding_factor

log = logging.getLogger(__name__)


class LamGuidance(NamedTuple):
    """What :func:`lam_guidance` returns; arrays indexed by the candidate lam first."""

    lams: np.ndarray  # (L,) float64: the candidates (absolute lam)
    feasible: np.ndarray  # (L,) bool: the no-clipping condition can hold at this lam
    step: np.ndarray  # (L, n), or (L, N, n) for a fixed (N, n) step: the step used (smallest
    #   admissible, or given); NaN if infeasible
    bound: np.ndarray  # (L, n): B1/S1 per neuron at that step; NaN if infeasible
    total: np.ndarray  # (L,): sqrt(sum_n bound^2), bound on ||X (W - Q)||_F; NaN if infeasible
    growth: np.ndarray  # (L,): max_j a * c_j(lam), in units of delta (needs < K)
    index: int | None  # argmin of total over feasible lams; None if none is feasible
    lam: float | None  # lams[index]
    best_step: np.ndarray | None  # (n,) or (N, n): step[index]
    levels: int  # K


def lam_guidance(
    X,
    W,
    *,
    bits: int | None = None,
    levels: int | None = None,
    lams=None,
    step=None,
    rounding: options.Rounding = "nearest",
    p: float = 0.05,
    per: Literal["neuron", "layer"] = "neuron",
    order: options.Order = "natural",
    order_seed: int = 0,
) -> LamGuidance:
    r"""The lam minimising the 2-norm bound (B1 / S1) subject to no clipping (B3 / S3).

    Args:
      X: (m, N) calibration inputs. W: (N, n) weights.
      bits / levels: the symmetric grid, ``K = 2^(bits-1) - 1`` or ``K = levels`` (give one).
      lams: (L,) candidate absolute lams, > 0 (default: ``mean(diag(X^T X))`` times
        ``logspace(-6, 1, 36)``). Each costs one factorisation and one triangular inverse.
      step: None (choose the smallest admissible step per lam) or a fixed step, a scalar, (n,)
        or (N, n) (one per weight, rows in the original feature order: a group-wise grid,
        checked weight by weight); then only feasibility varies and the smallest feasible lam
        wins (B1 is non-decreasing in lam for any fixed steps).
      rounding: "nearest" (B1 with B3) or "stochastic" (S1 with S3 at failure probability p).
      per: with ``step=None``, one step per neuron or one for the layer.
      order, order_seed: as `ptq.optq`.

    Returns:
      `LamGuidance` with the curves and the chosen lam (None when no candidate is feasible;
      then increase K or the candidates).
    """
    X = as_matrix("X", X)
    W = as_matrix("W", W)
    _, N, n = options.check_layer_shapes(X, W)
    K = _levels(bits, levels)
    options.check_rounding(rounding)
    if per not in ("neuron", "layer"):
        raise ValueError(f"`per` must be 'neuron' or 'layer'; got {per!r}")
    perm, _, sq = resolve(X, None, None, order, order_seed)
    if lams is None:
        lams = sq.mean() * np.logspace(-6, 1, 36)
    lams = np.asarray(lams, dtype=np.float64)
    if lams.ndim != 1 or lams.size == 0 or not np.all(np.isfinite(lams) & (lams > 0)):
        raise ValueError(f"`lams` must be a non-empty 1-D array of finite values > 0; got {lams!r}")
    fixed = None if step is None else check_steps(step, N, n)
    a = 0.5 if rounding == "nearest" else hoeffding_factor(N * N, check_p(p))

    live = sq[perm] > 0
    Wp = np.where(live[:, None], W[perm], 0.0)
    absW = np.abs(Wp)
    L = lams.size
    per_weight = fixed is not None and fixed.per_weight
    if fixed is not None and not per_weight:
        fixed_n = per_neuron(fixed, n)
    if per_weight:
        D = in_processing_order(fixed, perm)
    steps = np.full((L, N, n) if per_weight else (L, n), np.nan)
    bounds = np.full((L, n), np.nan)
    growth_max = np.zeros(L)
    feasible = np.zeros(L, bool)
    for i, lam in enumerate(lams):
        f = factorise(X, lam=float(lam), order=perm)
        # A: |V_sj| (nearest, B3) or V_sj^2 (stochastic, S3) for s < j; c: the growth per unit step
        kind = "l1" if rounding == "nearest" else "l2"
        A, c, _ = update_magnitudes(f, kind)
        growth_max[i] = a * c.max()
        if fixed is None:
            if growth_max[i] >= K:
                continue
            amax = absW / (K - a * c)[:, None]
            d = amax.max(axis=0)
            d = np.where(d > 0, d, 1.0 / K)  # an all-zero neuron: any step; Grid.fit's choice
            if per == "layer":
                d = np.full(n, d.max())
            bound = 0.5 * d * np.sqrt(np.sum(f.r[live] ** 2))
        elif per_weight:
            # each weight against its own step (README section 7)
            dev = per_weight_deviation(A, D, kind, a)
            if np.any(absW + dev > K * D):
                continue
            d = fixed.value
            bound = 0.5 * np.sqrt(np.where(live, f.r**2, 0.0) @ D**2)
        else:
            d = fixed_n
            if np.any((absW + a * c[:, None] * d[None, :]).max(axis=0) > K * d):
                continue
            bound = 0.5 * d * np.sqrt(np.sum(f.r[live] ** 2))
        feasible[i] = True
        steps[i] = d
        bounds[i] = bound
    total = np.sqrt(np.sum(bounds**2, axis=1))
    if not feasible.any():
        log.warning("lam_guidance: no candidate lam satisfies the no-clipping condition "
                    "(K = %d)", K)
        return LamGuidance(lams, feasible, steps, bounds, total, growth_max, None, None, None, K)
    idx = int(np.nanargmin(np.where(feasible, total, np.nan)))
    return LamGuidance(
        lams, feasible, steps, bounds, total, growth_max, idx, float(lams[idx]), steps[idx], K
    )


def _levels(bits, levels) -> int:
    if (bits is None) == (levels is None):
        raise ValueError(
            f"give exactly one of `bits` and `levels`; got bits={bits!r}, levels={levels!r}")
    if bits is not None:
        if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 2 <= bits <= 24:
            raise ValueError(f"`bits` must be an integer in [2, 24] (symmetric grid); got {bits!r}")
        return 2 ** (int(bits) - 1) - 1
    if isinstance(levels, bool) or not isinstance(levels, numbers.Integral) or levels < 1:
        raise ValueError(f"`levels` must be an integer K >= 1; got {levels!r}")
    return int(levels)
