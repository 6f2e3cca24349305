r"""Qronos' correction strength and the ridge chosen from the calibration data.

`ptq.qronos` with ``variant="ls_first"`` starts OPTQ on ``X_hat`` from
``w_a = w + a (wt - w)``, ``wt`` the ridge least-squares fit of the target ``X w`` on
``X_hat`` (``a = 0``: OPTQ, ``a = 1``: full correction). On a small calibration set ``wt``
overfits: it fits the mismatch ``u = (X - X_hat) w`` of these rows, not of new ones.
:func:`select` chooses ``a`` (and, optionally, ``lam``) per layer by the error the layer is
predicted to make on calibration sequences it was not fitted on.

**Held out by sequence.** Rows of one sequence are strongly correlated (neighbouring tokens),
so whole sequences are held out: the sequences are dealt round-robin into
``K = min(#sequences, folds)`` folds. For fold g, with ``Hh_{-g} = X_hat_{-g}^T X_hat_{-g} + lam I``
(the other folds; ``lam`` the layer's absolute ridge):

* the fit without g, exactly: ``wt_{-g} - w = Hh_{-g}^{-1} X_hat_{-g}^T u_{-g}``;
* its held-out residual at strength a, exactly: ``X_g w - X_hat_g w_{a,-g} = u_g - a d_g``
  with ``d_g = X_hat_g (wt_{-g} - w)``. Summed over folds and neurons this is a quadratic,
  ``C(a) = A0 - 2 a A1 + a^2 A2`` (``A0 = sum ||u_g||^2``, ``A1 = sum <u_g, d_g>``,
  ``A2 = sum ||d_g||^2``), minimised in closed form by ``a* = clip(A1 / A2, 0, 1)``.
* the rounding term, approximately: OPTQ moves ``w_a`` by ``R^{-T} diag(r) e`` (THEORY I2),
  whose held-out image is ``X_hat_g R_{-g}^{-T} diag(r_{-g}) e``. Modelling the errors ``e_tj`` as
  independent with mean 0 and variance ``delta_tj^2 / 12`` (what round to nearest gives a
  weight that is not on the grid), its expected size is
  ``rho = sum_g sum_t ||(X_hat_g R_{-g}^{-T})_{:, t}||^2 r_{-g,t}^2 sum_j delta_tj^2 / 12``. In
  sample the same model gives ``sum_t r_t^2 sum_j delta_tj^2 / 12`` (identity I2). ``rho`` does
  not depend on ``a``, so it decides ``lam`` only.

``strength="auto"`` takes ``a*`` at the given ``lam``; ``lam="auto"`` takes, among
``percdamp`` in `PERCDAMPS`, the ``lam`` with the smallest predicted held-out error
``C(a) + rho`` (at ``a*(lam)``, or at the given strength). Exact: the folds' fits and
``C(a)``. Approximate: ``rho`` (the error model above), and, for layers with more than
``sketch`` neurons, ``C``'s coefficients are computed on ``W S`` with S a fixed Gaussian
(n, sketch) matrix scaled by ``1/sqrt(sketch)``, an unbiased estimate of the sums over
neurons (``E ||M W S||_F^2 = ||M W||_F^2``) at ``sketch / n`` of the cost.

Cost: one Cholesky factorisation per fold and candidate (``K N^3 / 3``), the folds' Gram
matrices (``m N^2``, as many flops as one Gram matrix) and, for ``lam="auto"``, one triangular
solve with the held-out rows per fold (``m N^2``).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ptq import gather, gram, inputs, options
from ptq.grid import Grid, GroupGrid, GroupTables, fit_groups
from ptq.kernel import HIGHEST, factor

# lam="auto" candidates, relative to mean diag(X_hat^T X_hat)
PERCDAMPS = (0.01, 0.03, 0.1, 0.3, 1.0)
FOLDS = 4  # at most this many folds of whole sequences
SKETCH = 512  # neurons above which C's coefficients are estimated on a sketch W S


class Selection(NamedTuple):
    """What :func:`select` chose and why (sums over held-out rows and neurons, squared).

    Arrays are indexed by the candidate ``lam`` (one entry unless ``lam="auto"``)."""

    strength: float  # the chosen a
    lam: float  # the chosen absolute ridge
    lams: np.ndarray  # (L,) the candidates (absolute)
    percdamps: np.ndarray  # (L,) the same relative to mean diag(X_hat^T X_hat)
    strengths: np.ndarray  # (L,) a*(lam), or the given strength
    heldout: np.ndarray  # (L, 3) C(0), C(1), C(a) for a = strengths: predicted held-out
    insample: np.ndarray  # (L, 3) the same on the calibration rows (fitted on all of them)
    rounding_heldout: np.ndarray  # (L,) rho, predicted held-out rounding term (NaN: not computed)
    rounding_insample: np.ndarray  # (L,) sum_t r_t^2 sum_j delta_tj^2 / 12 (NaN: not computed)
    folds: int  # K
    sequences: int  # number of calibration sequences
    rows: int  # m
    dead: int  # zero columns of X_hat
    sketched: bool  # C's coefficients estimated on a sketch of the neurons

    @property
    def predicted(self) -> np.ndarray:
        """(L,) the criterion: predicted held-out error at the chosen strength plus rho."""
        return self.heldout[:, 2] + np.nan_to_num(self.rounding_heldout)


def sequence_folds(sequences, m: int, folds: int = FOLDS) -> tuple[np.ndarray, int]:
    """The fold of each row (m,) and the number of sequences.

    ``sequences``: an int k (the rows are k equal consecutive sequences, k divides m) or an
    (m,) integer array of sequence ids. Sequences are dealt round-robin, in order of first
    appearance, into ``min(k, folds)`` folds; at least two sequences are needed."""
    if sequences is None:
        raise ValueError('`sequences` is needed with strength="auto" or lam="auto" (the rows '
                         "are held out by calibration sequence); got None")
    if isinstance(sequences, (int, np.integer)) and not isinstance(sequences, bool):
        k = int(sequences)
        if k < 2 or m % k:
            raise ValueError(f"`sequences` as an int must be >= 2 and divide the number of rows "
                             f"m = {m}; got {k}")
        ids = np.repeat(np.arange(k), m // k)
    else:
        ids = np.asarray(sequences)
        if ids.shape != (m,) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"`sequences` as an array must be integer ids of shape ({m},); got "
                             f"shape {ids.shape} and dtype {ids.dtype}")
        _, first, ids = np.unique(ids, return_index=True, return_inverse=True)
        k = first.size
        ids = np.argsort(np.argsort(first))[ids]  # ids in order of first appearance
        if k < 2:
            raise ValueError(f"`sequences` must name at least 2 sequences; got {k}")
    return ids % min(k, int(folds)), k


def select(X, X_hat, W, grid, *, sequences, strength="auto", lam="auto", percdamp=None,
           order="natural", order_seed=0, folds: int = FOLDS, sketch: int = SKETCH,
           rounding_term: bool | None = None) -> Selection:
    """Choose Qronos' strength and/or lam by predicted held-out error (module docstring).

    Args:
      X, X_hat: (m, N); W: (N, n); grid: the `ptq.Grid` or `ptq.GroupGrid` the layer will be
        quantized on (its steps give the rounding term; a dynamic GroupGrid is fitted
        statically on W for that purpose).
      sequences: see :func:`sequence_folds`.
      strength: "auto" or a number in [0, 1]. lam: "auto", a number, or None (then
        ``percdamp``, default 0.01).
      order, order_seed: the processing order (as `ptq.qronos`; the rounding term uses it).
      folds: at most this many folds. sketch: neurons above which the coefficients are
        estimated on a Gaussian sketch. rounding_term: compute rho (default: when
        ``lam="auto"``; it never changes the strength).

    Returns:
      `Selection`.
    """
    m, N, n = options.check_layer_shapes(X, W, X_hat)
    X, X_hat, W = inputs.as_arrays(("X", X), ("X_hat", X_hat), ("W", W))
    fold, k = sequence_folds(sequences, m, folds)
    K = int(fold.max()) + 1
    auto_lam = isinstance(lam, str)
    if auto_lam and lam != "auto":
        raise ValueError(f'`lam` must be a number >= 0, None or "auto"; got {lam!r}')
    if auto_lam and percdamp is not None:
        raise ValueError(f'give `percdamp` or lam="auto", not both; got percdamp={percdamp!r}')
    if strength != "auto":
        strength = options.check_strength(strength, "ls_first")
    sq = np.asarray(gram.column_sq_norms(X_hat), dtype=np.float64)
    diag_mean = float(sq.mean())
    if auto_lam:
        percdamps = np.asarray(PERCDAMPS)
        lams = percdamps * diag_mean
    else:
        lams = np.asarray([options.resolve_lam(diag_mean, lam, percdamp)])
        percdamps = lams / diag_mean if diag_mean > 0 else np.full(1, np.nan)
    perm = options.resolve_order(sq, order, order_seed)
    p = gather.gather_index(perm)
    if rounding_term is None:
        rounding_term = auto_lam
    sketched = n > sketch
    Ws = W
    if sketched:  # fixed seed: the same layer always gets the same estimate
        S = np.random.default_rng(0).standard_normal((n, sketch)) / np.sqrt(sketch)
        Ws = jnp.dot(W, jnp.asarray(S, W.dtype), precision=HIGHEST)
    s2 = _step_sq(grid, W)[jnp.asarray(perm)] if rounding_term else None  # processing order
    # every fold padded to the largest with zero rows (index m, filled with 0): a zero row adds
    # nothing to a Gram matrix, to u or to d, and equal shapes compile each program once
    rows = [np.flatnonzero(fold == g) for g in range(K)]
    size = max(r.size for r in rows)
    idx = [jnp.asarray(np.pad(r, (0, size - r.size), constant_values=m)) for r in rows]
    # per fold: X_hat_g (ordered columns), u_g = (X_g - X_hat_g) W S, its Gram and X_hat_g^T u_g
    Xh = [_rows(X_hat, i, p) for i in idx]
    U = [_mismatch(_rows(X, i, None), _rows(X_hat, i, None), Ws) for i in idx]
    Hg = [gram.gram_sym(x) for x in Xh]
    Pg = [_xtu(x, u) for x, u in zip(Xh, U)]
    # the other folds' sums added up (not the total minus the fold: no cancellation)
    H_out = [_sum([H for h, H in enumerate(Hg) if h != g]) for g in range(K)]
    P_out = [_sum([P for h, P in enumerate(Pg) if h != g]) for g in range(K)]
    H_all, P_all = H_out[0] + Hg[0], P_out[0] + Pg[0]
    L = lams.size
    heldout, insample = np.zeros((L, 3)), np.zeros((L, 3))
    strengths = np.zeros(L)
    rho, rho_in = np.full(L, np.nan), np.full(L, np.nan)
    for c, lam_c in enumerate(lams):
        A = np.zeros(3)  # A0, A1, A2 summed over folds
        rho_c = 0.0
        for g in range(K):
            Rg = _factor(H_out[g], float(lam_c))
            a0, a1, a2, Bn = _fold_terms(Rg, P_out[g], Xh[g], U[g], rounding_term)
            A += np.array([float(a0), float(a1), float(a2)])
            if rounding_term:
                rho_c += float(jnp.dot(Bn * _diag_sq(Rg), s2))
        if not np.all(np.isfinite(A)):
            raise ValueError(
                f"the Gram matrix of X_hat without one fold of sequences is not positive "
                f"definite at lam={lam_c:.6g} (too few rows per fold for N = {N} features, or "
                f"dead features with lam = 0): give lam > 0 or percdamp > 0")
        R = _factor(H_all, float(lam_c))
        i0, i1, i2 = (float(v) for v in _insample_terms(R, P_all, Xh, U))
        a_c = strength if strength != "auto" else _argmin_quadratic(A[1], A[2])
        strengths[c] = a_c
        heldout[c] = [A[0], A[0] - 2 * A[1] + A[2], A[0] - 2 * a_c * A[1] + a_c**2 * A[2]]
        insample[c] = [i0, i0 - 2 * i1 + i2, i0 - 2 * a_c * i1 + a_c**2 * i2]
        if rounding_term:
            rho[c], rho_in[c] = rho_c, float(jnp.dot(_diag_sq(R), s2))
    crit = heldout[:, 2] + (rho if rounding_term else 0.0)
    best = int(np.argmin(crit)) if auto_lam else 0
    return Selection(float(strengths[best]), float(lams[best]), lams, percdamps, strengths,
                     heldout, insample, rho, rho_in, K, k, m, int(np.sum(sq == 0)), sketched)


def _argmin_quadratic(A1: float, A2: float) -> float:
    """``argmin_{a in [0, 1]} A0 - 2 a A1 + a^2 A2`` (A2 >= 0; 0 when A2 = 0)."""
    if not A2 > 0:
        return 0.0
    return float(np.clip(A1 / A2, 0.0, 1.0))


def _step_sq(grid, W) -> jax.Array:
    """(N,) ``sum_j delta_tj^2 / 12`` in the original feature order."""
    N, n = W.shape
    if isinstance(grid, GroupGrid):
        recipe = grid if grid.group_size is None or grid.static else grid._replace(static=True)
        grid = fit_groups(W, recipe)
    if isinstance(grid, GroupTables):
        grid = grid.grid
    if not isinstance(grid, Grid):
        raise ValueError(f"`grid` must be a ptq.Grid or ptq.GroupGrid; got {type(grid).__name__}")
    step = jnp.broadcast_to(jnp.asarray(grid.step, W.dtype), (N, n))
    return jnp.sum(step**2, axis=1) / 12.0


def _sum(arrays):
    out = arrays[0]
    for A in arrays[1:]:
        out = out + A
    return out


@jax.jit
def _rows(A, i, p):
    """Rows ``i`` of A (an index ``m`` gives a zero row), columns in processing order ``p``."""
    B = A.at[i].get(mode="fill", fill_value=0)
    return B if p is None else B[:, p]


@jax.jit
def _factor(H, lam):
    return factor(gram.regularise(H, lam))


@jax.jit
def _mismatch(Xg, Xhg, Ws):
    return jnp.dot(Xg - Xhg, Ws, precision=HIGHEST)


@jax.jit
def _xtu(Xhg, Ug):
    return jnp.dot(Xhg.T, Ug, precision=HIGHEST)


@jax.jit
def _diag_sq(R):
    return jnp.diagonal(R) ** 2


def _solve_h(R, B):
    """``(R R^T)^{-1} B`` by two triangular solves."""
    solve = jax.scipy.linalg.solve_triangular
    return solve(R, solve(R, B, lower=False, trans=0), lower=False, trans=1)


@partial(jax.jit, static_argnames=("with_rounding",))
def _fold_terms(Rg, Pg, Xhg, Ug, with_rounding):
    """A fold's ``||u_g||^2, <u_g, d_g>, ||d_g||^2`` and, for rho, the squared column norms of
    ``X_hat_g R_g^{-T}`` (processing order)."""
    D = jnp.dot(Xhg, _solve_h(Rg, Pg), precision=HIGHEST)  # d_g = X_hat_g (wt_{-g} - w)
    a = (jnp.sum(Ug * Ug), jnp.sum(Ug * D), jnp.sum(D * D))
    Bn = None
    if with_rounding:  # B = X_hat_g R^{-T}: solve R B^T = X_hat_g^T
        Bt = jax.scipy.linalg.solve_triangular(Rg, Xhg.T, lower=False)
        Bn = jnp.sum(Bt * Bt, axis=1)
    return (*a, Bn)


def _insample_terms(R, P, Xh, U):
    """``||u||^2, <u, d>, ||d||^2`` on all calibration rows, ``d = X_hat (wt - w)``."""
    Delta = _solve_h(R, P)
    out = np.zeros(3)
    for x, u in zip(Xh, U):
        out += np.array([float(v) for v in _pair(x, u, Delta)])
    return out


@jax.jit
def _pair(Xhg, Ug, Delta):
    D = jnp.dot(Xhg, Delta, precision=HIGHEST)
    return jnp.sum(Ug * Ug), jnp.sum(Ug * D), jnp.sum(D * D)
