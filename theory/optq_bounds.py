"""Bounds for deterministic OPTQ: B1 (data-dependent), B2 (structural), B3 (weight growth).

All assume no clipping (the infinite alphabet ``delta * Z``, or a finite one with enough
levels: B3 says how many, and :func:`no_clipping` checks a group-wise grid with shifted
ranges). ``step`` is a scalar, one per neuron (n,) or one per weight (N, n) (a group-wise
grid, rows in the original feature order); with an (N, n) step, ``delta_t`` below is the
step of the weight rounded at step t, ``step[order[t]]``. Proofs in theory/README.md
(sections 3 and 7).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg

from ptq import options
from theory._factor import Factors, as_matrix, get_factors, resolve, update_coefficients
from theory._steps import Steps, check_steps, in_processing_order, per_neuron, shape_out


class StructuralBound(NamedTuple):
    """What :func:`optq_structural_bound` returns."""

    bound: np.ndarray  # () or (n,): bound on ||X (w - q)||_2 (B2)
    r_sq_bound: np.ndarray  # (N,) processing order: the bound on r_t^2 used for step t
    s: np.ndarray  # (N,) processing order: lower bound on s_t used (NaN where not used)
    order: np.ndarray  # (N,) int64
    lam: float


class WeightBound(NamedTuple):
    """What :func:`optq_weight_bound` and `stochastic_weight_bound` return."""

    bound: np.ndarray  # (n,): bound on max_{t,j} |w_j(t)| (B3 / S3, per neuron)
    levels: np.ndarray  # (n,) int64: K = ceil(max_t b_t / delta_t) (b_t = |w_t| + deviation_t);
    #   a symmetric grid with >= K levels (in every group) never clips
    growth: np.ndarray  # (N,) processing order: c_j per unit step (B3: sum_{s<j} |V_sj|;
    #   S3: sqrt(sum_{s<j} V_sj^2)); independent of the step
    update_norm: np.ndarray  # (N,) processing order: ||Xa_{>t}^+ Xa_t||_2 (row norms of V)
    update_norm_cap: np.ndarray  # (N,): ||X_t|| / (2 sqrt(lam)) >= update_norm (inf if lam = 0)
    order: np.ndarray  # (N,) int64
    lam: float
    deviation: np.ndarray  # (N, n) processing order: bound on |w_j(t) - w_j| over t (B3:
    #   (1/2) sum_{s<j} delta_s |V_sj|; S3: kappa sqrt(sum_{s<j} delta_s^2 V_sj^2))


def neuron_steps(steps: Steps) -> np.ndarray:
    """A scalar or (n,) step as (n,) float64 ((1,) for a scalar): the unchanged code paths."""
    return per_neuron(steps, 1 if steps.scalar else steps.n)


def check_r(r, N: int) -> np.ndarray:
    """``r`` (N,) positive finite float64 (as `ptq.Result.r`, processing order)."""
    r = np.asarray(r, dtype=np.float64)
    if r.shape != (N,):
        raise ValueError(f"`r` must have shape (N,) = ({N},) (ptq.Result.r); got {r.shape}")
    if not np.all(np.isfinite(r) & (r > 0)):
        raise ValueError("`r` must be finite and > 0 (a failed factorisation gives NaN)")
    return r


def live_r_sq_sum(X, r, factors, lam, percdamp, order, order_seed) -> tuple[float, Factors | None]:
    """``sum_t r_t^2`` over live features (OPTQ has e_t = 0 on dead ones, which it zeroes)."""
    if r is not None and factors is not None:
        raise ValueError("give at most one of `r` and `factors`")
    if r is not None:
        perm, _, sq = resolve(X, lam, percdamp, order, order_seed)
        r = check_r(r, X.shape[1])
        return float(np.sum(r[sq[perm] > 0] ** 2)), None
    f = get_factors(X, factors, lam, percdamp, order, order_seed)
    return float(np.sum(f.r[f.live] ** 2)), f


def live_r_sq(X, r, factors, lam, percdamp, order, order_seed) -> tuple[np.ndarray, np.ndarray]:
    """``(r_t^2 with 0 on dead features, order)``, processing order: the weights of the
    per-step sums ``sum_t delta_t^2 r_t^2`` of an (N, n) step (README section 7)."""
    if r is not None and factors is not None:
        raise ValueError("give at most one of `r` and `factors`")
    if r is not None:
        perm, _, sq = resolve(X, lam, percdamp, order, order_seed)
        r = check_r(r, X.shape[1])
        return np.where(sq[perm] > 0, r**2, 0.0), perm
    f = get_factors(X, factors, lam, percdamp, order, order_seed)
    return np.where(f.live, f.r**2, 0.0), f.order


def weighted_root(D: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``sqrt(sum_t D_tk^2 c_t)`` per neuron k: D (N, n) steps in processing order, c (N,)."""
    return np.sqrt(c @ D**2)


def optq_l2_bound(
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
    r"""B1: ``||X (w-q)||_2 <= sqrt(||X(w-q)||^2 + lam ||w-q||^2) <= (delta/2) sqrt(sum r_t^2)``.

    From I2, ``||Xa (w - q)||^2 = sum_t e_t^2 r_t^2`` with ``|e_t| <= delta/2`` (round to
    nearest, no clipping). The sum runs over live features (nonzero columns of X): OPTQ
    zeroes ``w_t`` on dead ones, so ``e_t = 0`` there. Also the Babai nearest-plane bound.
    With a step per weight (a group-wise grid), ``|e_t| <= delta_t/2`` step by step and the
    bound is ``(1/2) sqrt(sum_t delta_t^2 r_t^2)`` per neuron, ``delta_t = step[order[t]]``
    (README section 7); it applies only while no weight is clipped by its group's range.

    Args:
      X: (m, N) calibration inputs. step: delta, a scalar, (n,) (one per neuron) or (N, n)
        (one per weight, rows in the original feature order).
      lam, percdamp, order, order_seed: as `ptq.optq`.
      r: optional ``ptq.Result.r`` (processing order) of a run with the same arguments; then
        no factorisation is done (cost O(m N)).
      factors: optional precomputed `theory.Factors` (same arguments).

    Returns:
      The bound: () for a scalar step, (n,) otherwise. It does not depend on w.
    """
    X = as_matrix("X", X)
    st = check_steps(step, X.shape[1])
    if st.per_weight:
        r2, perm = live_r_sq(X, r, factors, lam, percdamp, order, order_seed)
        return 0.5 * weighted_root(in_processing_order(st, perm), r2)
    s = neuron_steps(st)
    total, _ = live_r_sq_sum(X, r, factors, lam, percdamp, order, order_seed)
    return shape_out(0.5 * s * np.sqrt(total), st)


def smallest_singular_values(Xp: np.ndarray, breakpoints: int | None = None) -> np.ndarray:
    r"""Lower bounds ``s_t`` on the smallest nonzero singular value of ``X_{>t}``, t <= N - m.

    For ``t <= N - m`` with ``rank(X_{>t}) = m``, ``s_t^2 = lambda_min(K_t)``,
    ``K_t = X_{>t} X_{>t}^T = sum_{u > t} X_u X_u^T`` (m x m). ``K_t`` only grows as t decreases,
    so ``s_t`` is non-increasing in t and ``s_b`` (b >= t) is a valid lower bound for ``s_t``.

    * ``breakpoints=None``: exact, one m x m eigenvalue problem per t: O((N - m) m^3).
    * ``breakpoints=k``: ``s`` is computed at k indices b (trailing sizes N - b geometric from m
      to N) and each t uses the next breakpoint b >= t: O(N m^2 + k m^3), a looser bound.

    Returns:
      (N,) with NaN for t > N - m and where ``X_{>t}`` has rank < m (numerically).
    """
    m, N = Xp.shape
    out = np.full(N, np.nan)
    T = N - m  # 0-based t in [0, T) has at least m later columns
    if T <= 0:
        return out
    if breakpoints is None:
        bps = np.arange(T)
    else:
        integral = isinstance(breakpoints, (int, np.integer)) and not isinstance(breakpoints, bool)
        if not integral or breakpoints < 1:
            raise ValueError(f"`breakpoints` must be an integer >= 1 or None; got {breakpoints!r}")
        k = np.unique(np.round(m * (N / m) ** np.linspace(0, 1, int(breakpoints))).astype(int))
        # k later columns <=> 0-based t = N - 1 - k; need t in [0, T); k = m gives t = T - 1,
        # the last index that needs s, so every t has a breakpoint b >= t.
        bps = np.unique(np.clip(N - 1 - k, 0, T - 1))
    K = np.zeros((m, m))
    done = N  # columns >= done are accumulated in K
    s_at = {}
    for b in bps[::-1]:  # decreasing t: K grows
        block = Xp[:, b + 1 : done]
        K += block @ block.T
        done = b + 1
        # only the smallest eigenvalue (LAPACK syevx with an index range): cheaper than all m
        ev0 = scipy.linalg.eigh(K, eigvals_only=True, subset_by_index=[0, 0], driver="evx",
                                 check_finite=False)[0]
        # rank m only if it is clearly above the rounding noise of K (trace(K) >= lambda_max)
        s_at[b] = np.sqrt(ev0) if ev0 > 100 * m * np.finfo(float).eps * np.trace(K) else np.nan
    bps_sorted = np.sort(bps)
    nxt = np.searchsorted(bps_sorted, np.arange(T), side="left")  # first breakpoint >= t
    out[:T] = [s_at[bps_sorted[i]] for i in nxt]
    return out


def optq_structural_bound(
    X,
    step,
    *,
    lam: float | None = None,
    percdamp: float | None = None,
    order: options.Order = "natural",
    order_seed: int = 0,
    breakpoints: int | None = None,
) -> StructuralBound:
    r"""B2: ``||X(w-q)||^2 + lam ||w-q||^2 <= (delta^2/4) sum_t rbar_t^2`` from column norms.

    Per step (processing order), ``r_t^2 <= rbar_t^2`` with

    * always ``rbar_t^2 = ||X_t||^2 + lam`` (the distance is at most the column's norm);
    * if ``X_t`` lies in ``span(X_{>t})`` (true for t <= N - m when ``X_{>t}`` has rank m,
      generic data with N > m), also ``r_t^2 <= lam (1 + ||X_t||^2 / s_t^2)``, ``s_t`` the
      smallest nonzero singular value of ``X_{>t}``; the smaller of the two is used.

    With N > m and lam -> 0 only the last m processed columns remain,
    ``(delta^2/4) sum_{t > N-m} ||X_t||^2``: processing columns in decreasing norm order
    (GPTQ's act_order) minimises it. Dead features are left out (OPTQ has e_t = 0 there).

    Cost: no Cholesky factorisation; O(m N) for the norms plus the singular values, see
    :func:`smallest_singular_values` (exact: O((N - m) m^3); ``breakpoints=k``:
    O(N m^2 + k m^3), using that s_t is monotone in t). Nothing to do when N <= m.

    With a step per weight, ``(1/2) sqrt(sum_t delta_t^2 rbar_t^2)`` per neuron (README
    section 7); the lam -> 0 limit is then smallest when features are processed in
    decreasing ``delta_j ||X_j||`` (per neuron) rather than decreasing norm.

    Args:
      X: (m, N). step: delta, a scalar, (n,) or (N, n) (rows in the original feature order).
      lam, percdamp, order, order_seed: as `ptq.optq`.
      breakpoints: None (exact s_t) or the number of points s is evaluated at.

    Returns:
      `StructuralBound` (bound () for a scalar step, (n,) otherwise; per-step ``rbar_t^2``,
      ``s_t``, order, lam).
    """
    X = as_matrix("X", X)
    st = check_steps(step, X.shape[1])
    perm, lam, sq = resolve(X, lam, percdamp, order, order_seed)
    sqp = sq[perm]
    m, N = X.shape
    # the singular values need X in processing order only when N > m (a copy of X otherwise)
    sv = smallest_singular_values(X[:, perm] if N > m else X, breakpoints)
    rbar = sqp + lam
    with np.errstate(divide="ignore", invalid="ignore"):
        span_form = lam * (1.0 + sqp / sv**2)
    use = np.isfinite(span_form)
    rbar[use] = np.minimum(rbar[use], span_form[use])
    rbar[sqp == 0] = 0.0  # dead features: e_t = 0
    if st.per_weight:
        bound = 0.5 * weighted_root(in_processing_order(st, perm), rbar)
    else:
        bound = shape_out(0.5 * neuron_steps(st) * np.sqrt(rbar.sum()), st)
    return StructuralBound(bound, rbar, sv, perm, lam)


def max_reach(Wp: np.ndarray, deviation: np.ndarray,
              D: np.ndarray | None = None, rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron, ``max_t (|w_t| + deviation_t)`` and (with steps D, (N, n)) the largest
    ``(|w_t| + deviation_t) / D_t`` (NaN without D), both over blocks of ``rows`` rows on one
    reused (rows, n) buffer: no (N, n) temporary."""
    N, n = Wp.shape
    best = np.full(n, -np.inf)
    ratio = np.full(n, -np.inf if D is not None else np.nan)
    buf = np.empty((min(rows, N), n))
    for i in range(0, N, rows):
        b = buf[:min(rows, N - i)]
        np.abs(Wp[i:i + rows], out=b)
        b += deviation[i:i + rows]  # |z_t| <= |w_t| + deviation_t: the value rounded at step t
        np.maximum(best, b.max(axis=0), out=best)
        if D is not None:
            b /= D[i:i + rows]
            np.maximum(ratio, b.max(axis=0), out=ratio)
    return best, ratio


def levels_for(bound: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Smallest K with ``K delta >= bound``: then ``|z| <= K delta`` rounds inside [-K, K]."""
    return np.maximum(np.ceil(bound / s), 1).astype(np.int64)


def update_magnitudes(f: Factors, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, growth, update_norm)`` from ``V`` (:func:`theory._factor.update_coefficients`).

    ``A`` (N, N) holds, for s < j, ``|V_sj|`` (kind "l1", B3) or ``V_sj^2`` (kind "l2", S3) and
    0 elsewhere; ``growth_j = sum_{s<j} A_sj`` (B3's c_j) or its square root (S3's);
    ``update_norm_s = (sum_{j>s} V_sj^2)^(1/2)`` (row s off the diagonal: ``||Xa_{>s}^+ Xa_s||``).
    Everything is done on V's own buffer (the one (N, N) array of B3/S3): a fresh (N, N)
    temporary costs its page faults, as much as the triangular inverse's excess at N = 4096.
    """
    A = update_coefficients(f)
    np.fill_diagonal(A, 0.0)  # V is upper triangular: what is left are the entries s < j
    if kind == "l1":
        update_norm = np.sqrt(np.einsum("sj,sj->s", A, A))
        np.abs(A, out=A)
        growth = A.sum(axis=0)
    else:
        np.square(A, out=A)
        update_norm = np.sqrt(A.sum(axis=1))
        growth = np.sqrt(A.sum(axis=0))
    return A, growth, update_norm


def per_weight_deviation(A: np.ndarray, D: np.ndarray, kind: str, factor: float) -> np.ndarray:
    """The (N, n) deviations of a step per weight ``D`` (processing order) from
    :func:`update_magnitudes`' ``A``: B3 (kind "l1") ``factor sum_{s<j} D_s |V_sj|``, S3
    (kind "l2") ``factor sqrt(sum_{s<j} D_s^2 V_sj^2)`` (README section 7)."""
    deviation = A.T @ D if kind == "l1" else np.sqrt(A.T @ D**2)
    deviation *= factor
    return deviation


def outer_on(buf: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``u v^T`` (len(u), len(v)), written on the memory of the scratch array ``buf`` when it
    is contiguous and the product takes at least half of it (so a large ``buf`` is not kept
    alive for a small result), on a new array otherwise. ``buf``'s contents are lost."""
    size = u.size * v.size
    if buf.flags.c_contiguous and buf.size // 2 <= size <= buf.size:
        out = buf.reshape(-1)[:size].reshape(u.size, v.size)
    else:
        out = np.empty((u.size, v.size))
    return np.multiply(u[:, None], v[None, :], out=out)


def weight_growth(X, W, step, factors, lam, percdamp, order, order_seed, kind: str):
    """Shared body of B3 (kind="l1") and S3 (kind="l2"): validated inputs and the
    step-free quantities (``A``, growth, update norms: :func:`update_magnitudes`)."""
    X = as_matrix("X", X)
    W = as_matrix("W", W)
    _, N, n = options.check_layer_shapes(X, W)
    st = check_steps(step, N, n)
    f = get_factors(X, factors, lam, percdamp, order, order_seed)
    A, growth, update_norm = update_magnitudes(f, kind)
    with np.errstate(divide="ignore"):
        cap = np.sqrt(f.col_sq_norms) / (2.0 * np.sqrt(f.lam)) if f.lam > 0 else np.full(N, np.inf)
    # OPTQ zeroes dead features first; the natural order with no dead feature needs no copy
    if options.is_natural(f.order) and f.live.all():
        Wp = W
    else:
        Wp = np.where(f.live[:, None], W[f.order], 0.0)
    return f, Wp, st, A, growth, update_norm, cap


def weight_result(f: Factors, Wp, st: Steps, A, growth, un, cap, kind: str,
                  factor: float) -> WeightBound:
    """B3 (kind="l1", factor 1/2) or S3 (kind="l2", factor kappa) from `weight_growth`
    (``A``'s buffer is reused for the deviation: it is not valid afterwards).

    Scalar or (n,) step: ``deviation_j = factor delta c_j`` and ``levels = ceil(bound/delta)``
    (the forms of sections 3-4). (N, n) step, D = step[order] (README section 7):
    B3 ``deviation_j = (1/2) sum_{s<j} D_s |V_sj|``, S3 ``kappa sqrt(sum_{s<j} D_s^2 V_sj^2)``,
    and ``levels = ceil(max_t (|w_t| + deviation_t) / D_t)``: each rounded value against
    the range of its own group.
    """
    n = Wp.shape[1]
    if not st.per_weight:
        s = per_neuron(st, n)
        deviation = outer_on(A, growth, factor * s)
        bound, _ = max_reach(Wp, deviation)
        levels = levels_for(bound, s)
    else:
        D = in_processing_order(st, f.order)
        deviation = per_weight_deviation(A, D, kind, factor)
        bound, ratio = max_reach(Wp, deviation, D)
        levels = np.maximum(np.ceil(ratio), 1).astype(np.int64)
    return WeightBound(bound, levels, growth, un, cap, f.order, f.lam, deviation)


def optq_weight_bound(
    X,
    W,
    step,
    *,
    lam: float | None = None,
    percdamp: float | None = None,
    order: options.Order = "natural",
    order_seed: int = 0,
    factors: Factors | None = None,
) -> WeightBound:
    r"""B3: ``max_{t,j} |w_j(t)| <= max_j (|w_j| + (delta/2) c_j) <= ||w||_inf + delta/2 max c_j``.

    ``w_j(t) - w_j = -sum_{s <= t, s < j} e_s V_sj`` with ``V_sj = U_sj / U_ss`` (OPTQ's fast
    form), ``|e_s| <= delta/2``, so ``c_j = sum_{s<j} |V_sj|``. The first (per coordinate) form
    is what is returned; it implies THEORY.md's. If ``K delta >= bound`` no value ever
    rounded leaves ``[-K delta, K delta]``, so a K-level symmetric grid never clips (by
    induction on t) and B1 holds for it: ``levels = ceil(bound / delta)``.

    With a step per weight (group-wise grid, README section 7), ``|e_s| <= delta_s/2`` gives
    ``|w_j(t) - w_j| <= deviation_j = (1/2) sum_{s<j} delta_s |V_sj|`` and
    ``levels = ceil(max_t (|w_t| + deviation_t) / delta_t)``: the value rounded at step t
    must fit the range of its own group, so the count is a maximum of ratios, not
    bound / one step. For shifted (asymmetric) group ranges use :func:`no_clipping`.

    Each update is small when lam > 0: ``||Xa_{>t}^+ Xa_t||_2 <= ||X_t|| / (2 sqrt(lam))``
    (``update_norm`` <= ``update_norm_cap``); the growth shrinks like 1/sqrt(lam) while B1
    grows with lam (see `theory.lam_guidance`).

    Cost: the factorisation plus one triangular inverse (N^3/3 flops): B3 needs entries of U;
    an (N, n) step adds one (N, N) x (N, n) product.

    Args:
      X: (m, N). W: (N, n). step: a scalar, (n,) or (N, n) (rows in the original feature
        order). Others as `ptq.optq`.

    Returns:
      `WeightBound`; ``bound`` bounds ``ptq.Result.w_max`` (which covers only rounded values).
    """
    f, Wp, st, off, growth, un, cap = weight_growth(
        X, W, step, factors, lam, percdamp, order, order_seed, "l1"
    )
    return weight_result(f, Wp, st, off, growth, un, cap, "l1", 0.5)


def no_clipping(W, weight_bound: WeightBound, step, *, qmin, qmax, zero=0.0) -> np.ndarray:
    r"""Whether B3 (or S3) guarantees that no rounding clips on a (group-wise) grid.

    The grid of weight ``(j, k)`` is ``step_jk * (c - zero_jk)`` with integer codes
    ``qmin <= c <= qmax`` (a symmetric K-level grid: ``zero = 0``, ``qmin = -K``,
    ``qmax = K``; GPTQ's asymmetric b-bit grid: ``qmin = 0``, ``qmax = 2^b - 1`` and one zero
    per group). Neuron k never clips if, for every step t,

        (qmin - zero_t) delta_t <= w_t - deviation_t,
        w_t + deviation_t <= (qmax - zero_t) delta_t,

    because the value rounded at step t lies in ``[w_t - deviation_t, w_t + deviation_t]``
    while nothing clipped before (induction, README section 7), and round to nearest (ties
    up) as well as stochastic rounding map ``[kmin delta, kmax delta]`` into codes
    ``kmin..kmax``. For `optq_weight_bound` the guarantee is certain; for
    `stochastic_weight_bound` it holds on S3's event (probability >= 1 - p). It is a
    sufficient condition: False means "may clip", not "clips".

    Args:
      W: (N, n) weights, original feature order: the weights OPTQ starts from
        (``ptq.Result.W_start``, dead features zeroed); W itself is conservative on dead ones.
      weight_bound: `WeightBound` from :func:`optq_weight_bound` or
        `theory.stochastic_weight_bound` for the same W and step.
      step, zero: scalars, (n,) or (N, n) (rows in the original feature order), as the grid.
      qmin, qmax: the code range, scalars (``+-inf`` for an unbounded side).

    Returns:
      (n,) bool.
    """
    W = as_matrix("W", W)
    N, n = W.shape
    dev = np.asarray(weight_bound.deviation)
    if dev.shape != (N, n) or np.shape(weight_bound.order) != (N,):
        raise ValueError(
            f"`weight_bound` must come from a weight bound of this W, deviation (N, n) = "
            f"{(N, n)}; got {dev.shape}")
    st = check_steps(step, N, n)
    z = np.asarray(zero, dtype=np.float64)
    if not (z.ndim == 0 or z.shape == (n,) or z.shape == (N, n)):
        raise ValueError(f"`zero` must be a scalar, (n,) = ({n},) or (N, n) = {(N, n)}; "
                         f"got shape {z.shape}")
    lo_code, hi_code = float(qmin), float(qmax)
    if not lo_code <= hi_code:
        raise ValueError(f"`qmin` must be <= `qmax`; got {qmin!r} and {qmax!r}")
    perm = np.asarray(weight_bound.order)
    D = in_processing_order(st, perm, n)
    Z = z[perm] if z.ndim == 2 else np.broadcast_to(z, (N, n))
    Wp = W[perm]
    with np.errstate(invalid="ignore"):  # inf code bounds times a step: +-inf, as meant
        low = (lo_code - Z) * D
        high = (hi_code - Z) * D
    return np.all((Wp - dev >= low) & (Wp + dev <= high), axis=0)
