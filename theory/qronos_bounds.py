"""Bounds under input mismatch: Qronos (Q1, Q3) and OPTQ ignoring the mismatch (Q2).

``X`` are the full-precision inputs, ``X_hat`` those of the partially quantized model; the
target is ``y = X w``. With ``Xa = [X; sqrt(lam) I]``, ``Xha = [X_hat; sqrt(lam) I]``,
``ya = Xa w``, ``Hh = Xha^T Xha = R R^T`` (processing order, ``rh_t = R_tt``) and
``G = Xha^T Xa = X_hat^T X + lam I``:

* ``wt = Hh^{-1} G w``, the least-squares fit ``argmin_v ||ya - Xha v||``;
* ``E_LS = ||ya - Xha wt||`` (computed as a residual, not as a difference of squares);
* ``z_1 = w_1 + ((G - Hh) w)_1 / Hh_11``, the value the paper variant rounds at step 1.

lam, percdamp and the norm orders refer to ``X_hat`` (the factorised matrix), as in
`ptq.qronos`. ``step`` is a scalar, (n,) or (N, n) (one per weight, rows in the original
feature order; step t uses ``delta_t = step[order[t]]``). Proofs in theory/README.md
(sections 5 and 7).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg

from ptq import options
from theory._factor import Factors, as_matrix, get_factors, rows_of_M
from theory._steps import check_steps, in_processing_order, per_neuron
from theory.stochastic import check_p, hoeffding_factor, weighted_row_max

Variant = options.Variant
VARIANTS = options.VARIANTS


class LeastSquares(NamedTuple):
    """The least-squares quantities of :func:`least_squares` (processing order)."""

    factors: Factors  # the factorisation of Hh
    W_ls: np.ndarray  # (N, n): wt = Hh^{-1} G w
    z1: np.ndarray  # (n,): the paper variant's first rounded value
    E_ls: np.ndarray  # (n,): min_v ||ya - Xha v|| (the floor of Q1/Q2)
    residual: np.ndarray  # (m, n): X w - X_hat wt, the first m rows of ya - Xha wt
    X: np.ndarray  # (m, N): X, original feature order (validated float64)
    X_hat: np.ndarray  # (m, N): X_hat, original feature order
    Wp: np.ndarray  # (N, n): w in processing order


def least_squares(X, X_hat, W, lam, percdamp, order, order_seed, factors) -> LeastSquares:
    """Factor ``Hh`` and compute ``wt``, ``z_1``, ``E_LS`` (O(N^3 + m N^2 + N^2 n)).

    The (m, N) matrices are never copied into processing order: ``X w``, ``X_hat^T y`` and
    ``X_hat v`` are computed in the original order and only the (N, n) results are permuted.
    """
    X = as_matrix("X", X)
    X_hat = as_matrix("X_hat", X_hat)
    W = as_matrix("W", W)
    options.check_layer_shapes(X, W, X_hat)
    f = get_factors(X_hat, factors, lam, percdamp, order, order_seed, name="X_hat")
    perm = f.order
    Wp = W[perm]
    Y = X @ W  # the target X w (independent of the order)
    GW = (X_hat.T @ Y)[perm] + f.lam * Wp  # G w without forming G
    Y1 = scipy.linalg.solve_triangular(f.R, GW, lower=False, check_finite=False)
    W_ls = scipy.linalg.solve_triangular(f.R, Y1, lower=False, trans=1, check_finite=False)
    # Hh row 0, with ptq's convention for a zero diagonal (dead first feature, lam = 0)
    Hh0 = (X_hat[:, perm[0]] @ X_hat)[perm]
    Hh0[0] += f.lam
    if Hh0[0] == 0:
        Hh0[0] = 1.0
    z1 = Wp[0] + (GW[0] - Hh0 @ Wp) / Hh0[0]
    res = Y - X_hat @ in_original_order(W_ls, perm)
    E_ls = np.sqrt(np.sum(res**2, axis=0) + f.lam * np.sum((Wp - W_ls) ** 2, axis=0))
    return LeastSquares(f, W_ls, z1, E_ls, res, X, X_hat, Wp)


def uncorrected(ls: LeastSquares, strength: float) -> np.ndarray:
    """``c = (1 - a) diag(1/rh) R^T (wt - w')`` (N, n), processing order: ``wt - w_a`` written as
    ``R^{-T} diag(rh) c``, so that ``Xha (wt - w_a) = Mh c`` with orthogonal columns of norms rh.

    ``w'`` is ``w`` with the dead features of X_hat zeroed (the start of `ptq.optq`)."""
    f = ls.factors
    return (1.0 - strength) * triangular_times(f.R, correction(ls)) / f.r[:, None]


def correction(ls: LeastSquares) -> np.ndarray:
    """``wt - w'`` (N, n), processing order: the least-squares correction of OPTQ's start ``w'``
    (``w`` with the dead features of X_hat zeroed)."""
    return ls.W_ls - np.where(ls.factors.live[:, None], ls.Wp, 0.0)


def triangular_times(R: np.ndarray, D: np.ndarray) -> np.ndarray:
    """``R^T D`` for R (N, N) upper triangular (C order), by BLAS trmm: ``N^2 n`` flops.

    ``R.T`` is R's lower-triangular transpose read column-major, so trmm takes it without a
    copy; D (N, n) is copied once into the column-major layout trmm overwrites."""
    return scipy.linalg.blas.dtrmm(1.0, R.T, np.asfortranarray(D), lower=1, overwrite_b=1)


def in_original_order(Vp: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Rows of ``Vp`` (processing order) put back in the original feature order."""
    V = np.empty_like(Vp)
    V[perm] = Vp
    return V


def qronos_l2_bound(
    X,
    X_hat,
    W,
    step,
    *,
    variant: Variant = "paper",
    strength: float = 1.0,
    lam: float | None = None,
    percdamp: float | None = None,
    order: options.Order = "natural",
    order_seed: int = 0,
    factors: Factors | None = None,
) -> np.ndarray:
    r"""Q1: ``||X w - X_hat q||_2 <= sqrt(E_LS^2 + sum_t b_t^2 rh_t^2)``, per neuron.

    At a strength ``a < 1`` (``variant="ls_first"``, OPTQ on X_hat started from
    ``w_a = w' + a (wt - w')``), Q4: ``sqrt(E_LS^2 + sum_t (|c_t| + delta_t/2)^2 rh_t^2)`` with
    ``c = (1 - a) diag(1/rh) R^T (wt - w')`` (processing order): the coordinates of the
    uncorrected part ``X_hat (wt - w_a)`` in I4's orthogonal basis (README section 5). At
    ``a = 1`` it is Q1; at ``a = 0`` it is OPTQ ignoring the mismatch, sharper than Q2.

    From I5, ``||ya - Xha q||^2 = E_LS^2 + sum_t e_t^2 rh_t^2`` and the left side is
    ``||Xw - X_hat q||^2 + lam ||w - q||^2``. ``b_t = delta/2`` bounds ``|e_t|``, except for the
    paper variant at t = 1 where ``e_1 = wt_1 - Q(z_1)``, so ``b_1 = |wt_1 - z_1| + delta/2``.
    ``E_LS`` is a floor no quantizer (and no real re-fit) goes below. Round to nearest, no
    clipping. With a step per weight, ``b_t = delta_t/2``, ``delta_t = step[order[t]]``:
    ``sqrt(E_LS^2 + (1/4) sum_t delta_t^2 rh_t^2 + (b_1^2 - delta_1^2/4) rh_1^2)`` (README 7).

    Args:
      X, X_hat: (m, N). W: (N, n). step: a scalar, (n,) or (N, n) (rows in the original
        feature order). variant: "paper" or "ls_first".
      Others as `ptq.qronos` (resolved from X_hat). factors: `theory.Factors` of X_hat.

    Returns:
      (n,) the bound per neuron (it bounds the augmented error as well).
    """
    options.check_variant(variant)
    a = options.check_strength(strength, variant)
    ls = least_squares(X, X_hat, W, lam, percdamp, order, order_seed, factors)
    N, n = ls.Wp.shape
    st = check_steps(step, N, n)
    rh2 = ls.factors.r**2
    if a < 1:
        c = np.abs(uncorrected(ls, a))
        D = in_processing_order(st, ls.factors.order) if st.per_weight else per_neuron(st, n)
        b = c + np.broadcast_to(D, (N, n)) / 2
        if a == 0:  # OPTQ: a dead feature starts at 0 and rounds to 0 (e_t = 0), but its
            # uncorrected part c_t (sqrt(lam) w_t in the ridge rows) stays in the augmented error
            b = np.where(ls.factors.live[:, None], b, c)
        return np.sqrt(ls.E_ls**2 + rh2 @ b**2)
    if st.per_weight:
        D = in_processing_order(st, ls.factors.order)
        s1 = D[0]  # the step of the first rounded weight
        total = ls.E_ls**2 + 0.25 * (rh2 @ D**2)
    else:
        s1 = s = per_neuron(st, n)
        total = ls.E_ls**2 + (s / 2) ** 2 * rh2.sum()
    if variant == "paper":
        b1 = np.abs(ls.W_ls[0] - ls.z1) + s1 / 2
        total = total + (b1**2 - (s1 / 2) ** 2) * rh2[0]
    return np.sqrt(total)


def optq_mismatch_l2_bound(
    X,
    X_hat,
    W,
    step,
    *,
    lam: float | None = None,
    percdamp: float | None = None,
    order: options.Order = "natural",
    order_seed: int = 0,
    factors: Factors | None = None,
) -> np.ndarray:
    r"""Q2: OPTQ on ``X_hat`` ignoring the mismatch (``q = ptq.optq(X_hat, W, ...).Q``) satisfies
    ``||X w - X_hat q||_2 <= sqrt(E_LS^2 + (||Xha (wt - w')|| + (delta/2) sqrt(sum_t rh_t^2))^2)``.

    ``w'`` is ``w`` with the dead features of ``X_hat`` zeroed (what OPTQ starts from; ``w' = w``
    when X_hat has no zero column) and the sum runs over live features. From
    ``ya - Xha q = (ya - Xha wt) + Xha (wt - w') + Xha (w' - q)``, the first term orthogonal
    to ``range(Xha)``, and B1 for the last. Qronos removes the middle, correctable term.
    With a step per weight the last term is B1's per-step form,
    ``(1/2) sqrt(sum_t delta_t^2 rh_t^2)`` (README section 7).

    Args: as :func:`qronos_l2_bound` (no variant).

    Returns:
      (n,) the bound per neuron.
    """
    ls = least_squares(X, X_hat, W, lam, percdamp, order, order_seed, factors)
    f = ls.factors
    N, n = ls.Wp.shape
    st = check_steps(step, N, n)
    D = correction(ls)
    # ||Xha (wt - w')||^2 = ||X_hat D||^2 + lam ||D||^2 = D^T Hh D = ||R^T D||^2 (Hh = R R^T,
    # processing order): one triangular product (N^2 n flops) instead of X_hat D (2 m N n).
    # A dead feature with lam = 0 has (wt - w')_t = 0, so ptq's unit diagonal adds nothing.
    corr = np.sqrt(np.sum(triangular_times(f.R, D) ** 2, axis=0))
    if st.per_weight:
        D = in_processing_order(st, f.order)
        quant = 0.5 * np.sqrt(np.where(f.live, f.r**2, 0.0) @ D**2)
    else:
        quant = 0.5 * per_neuron(st, n) * np.sqrt(np.sum(f.r[f.live] ** 2))
    return np.sqrt(ls.E_ls**2 + (corr + quant) ** 2)


def qronos_linf_bound(
    X,
    X_hat,
    W,
    step,
    *,
    p: float = 0.05,
    variant: Variant = "paper",
    strength: float = 1.0,
    lam: float | None = None,
    percdamp: float | None = None,
    order: options.Order = "natural",
    order_seed: int = 0,
    factors: Factors | None = None,
) -> np.ndarray:
    r"""Q3: stochastic Qronos, with probability >= 1 - p,
    ``||X w - X_hat q||_inf <= ||c||_inf + delta sqrt(log(2m/p)/2) max_i ||Mh_i||``.

    ``X w - X_hat q = (X w - X_hat wt) + sum_t e_t Mh_t`` (rows 1..m of I5/I4, ``Mh`` the M of
    X_hat). For "ls_first" every ``e_t`` is a martingale increment, so ``c = X w - X_hat wt``
    (THEORY.md's form). For "paper", ``e_1 = (wt_1 - z_1) + (z_1 - Qs(z_1))`` has mean
    ``wt_1 - z_1``, a deterministic offset that joins the centre:
    ``c = X w - X_hat wt + (wt_1 - z_1) Mh_1`` (THEORY.md's form omits it; see README).
    At a strength ``a < 1`` the uncorrected part ``X_hat (wt - w_a) = Mh c`` (see
    :func:`uncorrected`) is deterministic and joins the centre: ``c_X = X w - X_hat wt + Mh c``.
    With a step per weight (fixed before the run) the random part is
    ``sqrt(log(2m/p)/2) max_i sqrt(sum_t delta_t^2 Mh_it^2)`` per neuron (README section 7).

    Args: as :func:`qronos_l2_bound`, plus p, the failure probability in (0, 1).

    Returns:
      (n,) the bound per neuron.
    """
    options.check_variant(variant)
    a = options.check_strength(strength, variant)
    p = check_p(p)
    ls = least_squares(X, X_hat, W, lam, percdamp, order, order_seed, factors)
    m = ls.X.shape[0]
    N, n = ls.Wp.shape
    st = check_steps(step, N, n)
    MX = rows_of_M(ls.X_hat, ls.factors)
    centre = ls.residual
    if variant == "paper":
        centre = centre + MX[:, :1] * (ls.W_ls[0] - ls.z1)[None, :]
    if a < 1:  # X_hat (wt - w_a) = Mh c, deterministic: it joins the centre
        centre = centre + MX @ uncorrected(ls, a)
    if st.per_weight:
        D = in_processing_order(st, ls.factors.order)
        return np.max(np.abs(centre), axis=0) + hoeffding_factor(m, p) * weighted_row_max(MX, D)
    row = np.sqrt(np.max(np.einsum("ij,ij->i", MX, MX)))
    return np.max(np.abs(centre), axis=0) + per_neuron(st, n) * hoeffding_factor(m, p) * row
