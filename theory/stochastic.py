"""Bounds for stochastic OPTQ: S1 (mean square), S2 (infinity norm), S3 (weight growth).

Stochastic rounding ``Qs`` is unbiased and its error lies in an interval of length delta
(THEORY.md section 1). All three assume no clipping; S3 gives the K that ensures it with
probability >= 1 - p. Proofs in theory/README.md.
"""

from __future__ import annotations

import numpy as np

from ptq import options
from theory._factor import Factors, as_matrix, get_factors, rows_of_M
from theory.optq_bounds import (
    WeightBound,
    _shape_out,
    _step,
    levels_for,
    live_r_sq_sum,
    weight_bound_from_growth,
    weight_growth,
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
    itself is at most twice this value.

    Args and Returns: as :func:`theory.optq_l2_bound`.
    """
    X = as_matrix("X", X)
    s, scalar = _step(step, None)
    total, _ = live_r_sq_sum(X, r, factors, lam, percdamp, order, order_seed)
    return _shape_out(0.5 * s * np.sqrt(total), scalar)


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

    Args:
      X: (m, N). step: scalar or (n,). p: failure probability in (0, 1). Others as `ptq.optq`.

    Returns:
      The bound, shaped like ``step``. It does not depend on w.
    """
    X = as_matrix("X", X)
    p = check_p(p)
    s, scalar = _step(step, None)
    f = get_factors(X, factors, lam, percdamp, order, order_seed)
    MX = rows_of_M(X, f)
    row = float(np.sqrt(np.max(np.einsum("ij,ij->i", MX, MX))))
    return _shape_out(s * hoeffding_factor(X.shape[0], p) * row, scalar)


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

    Args:
      X: (m, N). W: (N, n). step: scalar or (n,). p: in (0, 1). Others as `ptq.optq`.

    Returns:
      `WeightBound` (``growth`` holds ``g_j``).
    """
    p = check_p(p)
    f, Wp, s, growth, un, cap = weight_growth(
        X, W, step, factors, lam, percdamp, order, order_seed, "l2"
    )
    kappa = hoeffding_factor(Wp.shape[0] ** 2, p)
    bound = weight_bound_from_growth(Wp, growth, kappa * s)
    return WeightBound(bound, levels_for(bound, s), growth, un, cap, f.order, f.lam)
