"""Bounds for stochastic OPTQ: S1 (mean square), S2 (infinity norm), S3 (weight growth).

Stochastic rounding ``Qs`` is unbiased and its error lies in an interval of length delta
(THEORY.md section 1). All three assume no clipping; S3 gives the K that ensures it with
probability >= 1 - p. ``step`` is a scalar, (n,) or (N, n) (one per weight, rows in the
original feature order); the (N, n) forms weight step t by ``delta_t = step[order[t]]``, and
they need the steps fixed before the run (not drawn from the same uniforms). Proofs in
theory/README.md (sections 4 and 7).
"""

from __future__ import annotations

import numpy as np

from ptq import options
from theory._factor import Factors, as_matrix, get_factors, rows_of_M
from theory._steps import check_steps, in_processing_order, shape_out
from theory.optq_bounds import (
    WeightBound,
    live_r_sq,
    live_r_sq_sum,
    neuron_steps,
    weight_growth,
    weight_result,
    weighted_root,
)


def check_p(p) -> float:
    """The failure probability, a float in (0, 1)."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not 0 < float(p) < 1:
        raise ValueError(f"`p` (failure probability) must be a number in (0, 1); got {p!r}")
    return float(p)


def hoeffding_factor(count: int, p: float) -> float:
    """``sqrt(log(2 count / p) / 2)``: Azuma-Hoeffding plus a union bound over ``count`` events."""
    return float(np.sqrt(np.log(2.0 * count / p) / 2.0))


def stochastic_l2_bound(
    X,
    step,
    *,
    lam: float | None = None,
    percdamp: float | None = None,
    order: options.Order = "natural",
    order_seed: int = 0,
    r=None,
    factors: Factors | None = None,
) -> np.ndarray:
    r"""S1: ``sqrt(E[||X(w-q)||^2 + lam ||w-q||^2]) <= (delta/2) sqrt(sum_t r_t^2)``.

    I2 holds path by path, ``||Xa(w-q)||^2 = sum_t e_t^2 r_t^2``, and for stochastic rounding
    ``E[e_t^2 | past] = delta^2 f_t (1 - f_t) <= delta^2/4`` (``f_t`` the fractional part of
    ``z_t / delta``). Returned as a root mean square so it has the units of B1 (the same
    number); square it for THEORY.md's form. Almost surely ``|e_t| < delta``, so the error
    itself is at most twice this value. With a step per weight (fixed before the run):
    ``(1/2) sqrt(sum_t delta_t^2 r_t^2)`` per neuron, ``delta_t = step[order[t]]`` (README 7).

    Args and Returns: as :func:`theory.optq_l2_bound`.
    """
    X = as_matrix("X", X)
    st = check_steps(step, X.shape[1])
    if st.per_weight:
        r2, perm = live_r_sq(X, r, factors, lam, percdamp, order, order_seed)
        return 0.5 * weighted_root(in_processing_order(st, perm), r2)
    total, _ = live_r_sq_sum(X, r, factors, lam, percdamp, order, order_seed)
    return shape_out(0.5 * neuron_steps(st) * np.sqrt(total), st)


def stochastic_linf_bound(
    X,
    step,
    *,
    p: float = 0.05,
    lam: float | None = None,
    percdamp: float | None = None,
    order: options.Order = "natural",
    order_seed: int = 0,
    factors: Factors | None = None,
) -> np.ndarray:
    r"""S2: with probability >= 1 - p, ``||X(w-q)||_inf <= delta sqrt(log(2m/p)/2) max_i ||M_i||``.

    ``(X(w-q))_i = sum_t e_t M_it`` (I1/I4, ``M_X = X R^{-T} diag(r)``): a martingale with
    increments in intervals of length ``delta |M_it|``; Azuma-Hoeffding for each of the m rows
    and a union bound. ``||M_i||`` is the norm of row i of ``M_X`` (O(m N^2) to compute).
    With a step per weight the increments lie in intervals of length ``delta_t |M_it|``:
    ``sqrt(log(2m/p)/2) max_i sqrt(sum_t delta_t^2 M_it^2)`` per neuron (README section 7;
    one more (m, N) x (N, n) product).

    Args:
      X: (m, N). step: a scalar, (n,) or (N, n) (rows in the original feature order), fixed
        before the run. p: failure probability in (0, 1). Others as `ptq.optq`.

    Returns:
      The bound: () for a scalar step, (n,) otherwise. It does not depend on w.
    """
    X = as_matrix("X", X)
    p = check_p(p)
    st = check_steps(step, X.shape[1])
    f = get_factors(X, factors, lam, percdamp, order, order_seed)
    MX = rows_of_M(X, f)
    kappa = hoeffding_factor(X.shape[0], p)
    if st.per_weight:
        return kappa * weighted_row_max(MX, in_processing_order(st, f.order))
    row = float(np.sqrt(np.max(np.einsum("ij,ij->i", MX, MX))))
    return shape_out(neuron_steps(st) * kappa * row, st)


def weighted_row_max(MX: np.ndarray, D: np.ndarray) -> np.ndarray:
    """``max_i sqrt(sum_t D_tk^2 M_it^2)`` per neuron k (MX (m, N), D (N, n) processing order)."""
    return np.sqrt(np.max((MX**2) @ (D**2), axis=0))


def stochastic_weight_bound(
    X,
    W,
    step,
    *,
    p: float = 0.05,
    lam: float | None = None,
    percdamp: float | None = None,
    order: options.Order = "natural",
    order_seed: int = 0,
    factors: Factors | None = None,
) -> WeightBound:
    r"""S3: with probability >= 1 - p, for all t, j: ``|w_j(t)| <= |w_j| + delta kappa g_j``.

    ``w_j(t) - w_j = -sum_{s <= t, s < j} e_s V_sj`` (``V_sj = U_sj / U_ss``) is a martingale in
    t with increments in intervals of length ``delta |V_sj|``; ``g_j = sqrt(sum_{s<j} V_sj^2)``
    bounds its coefficient norm for every t, and a union bound over the ``N^2`` pairs (t, j)
    gives ``kappa = sqrt(log(2 N^2 / p) / 2)``. Returned per neuron:
    ``max_j (|w_j| + delta kappa g_j) <= ||w||_inf + delta kappa max_j g_j`` (THEORY.md's form).
    A grid with ``K >= levels = ceil(bound / delta)`` never clips with probability >= 1 - p;
    S2 then holds for that finite grid with probability >= 1 - 2p.

    With a step per weight (fixed before the run; README section 7) the increments lie in
    intervals of length ``delta_s |V_sj|``: ``deviation_j = kappa sqrt(sum_{s<j} delta_s^2 V_sj^2)``
    and ``levels = ceil(max_t (|w_t| + deviation_t) / delta_t)``; shifted group ranges:
    `theory.no_clipping`.

    Args:
      X: (m, N). W: (N, n). step: a scalar, (n,) or (N, n) (rows in the original feature
        order). p: in (0, 1). Others as `ptq.optq`.

    Returns:
      `WeightBound` (``growth`` holds ``g_j`` per unit step).
    """
    p = check_p(p)
    f, Wp, st, off, growth, un, cap = weight_growth(
        X, W, step, factors, lam, percdamp, order, order_seed, "l2"
    )
    kappa = hoeffding_factor(Wp.shape[0] ** 2, p)
    return weight_result(f, Wp, st, off, growth, un, cap, "l2", kappa)
