"""A deliberately slow float64 NumPy oracle for OPTQ, stochastic OPTQ, Qronos and RTN.

Everything here is written from the least-squares definitions of THEORY.md section 2, with
no Cholesky factor, no ``H^{-1}`` and no blocking, so that it shares no algebra with the fast
kernel (`ptq.kernel`) it checks. It shares on purpose only what must be identical for a
draw-for-draw, code-for-code comparison:

* ``lam``/``percdamp`` and ``order`` are resolved by `ptq.options` (the one definition);
* the rounding rule of `ptq.grid` (restated below, re-implemented in NumPy);
* the dead-feature convention of `ptq.gram.regularise`;
* the stochastic-rounding uniforms ``u`` (N, n), passed in explicitly (row t at step t); a
  test feeds it ``np.asarray(ptq.inputs.uniforms(key, N, n, dtype))``.

Augmentation (THEORY.md section 1). ``Xa = [X; D]`` with ``D = diag(d)``, ``d_t = sqrt(lam)``,
so ``Xa^T Xa = X^T X + lam I = H`` and ``||Xa z||^2 = ||X z||^2 + lam ||z||^2``. Dead features
(zero columns of X) with ``lam = 0`` get ``d_t = 1`` (the 1 that `ptq` puts on the diagonal
of H); since such a column is orthogonal to every other one it only sets its own ``r_t = 1``.

Grids: ``step`` and ``zero`` of shape (), (n,) or (N, n) (rows in original feature order, one
per feature and neuron, as group-wise grids give them); step t rounds with the row of the
feature it processes, ``order[t]``. A group recipe (`ptq.GroupGrid`, or any object with its
fields ``bits``, ``kind``, ``group_size``, ``static``, ``mse``) is fitted here by
:func:`fit_group`, written from GPTQ's ``find_params`` and the max-abs rule in NumPy, with the
group semantics stated in `ptq.GroupGrid`: per channel on ``W``; static groups on ``W``
(original order, ``g_idx[j] = j // group_size``); dynamic groups, consecutive in processing
order, on the current weights of the group's rows when the loop reaches the group's first
step (OPTQ: the least-squares-updated ``w(t-1)``; Qronos: the fresh fit ``v`` of the
remaining columns, its first row replaced by the value rounded at that step).

Rounding, with ``x = z / delta`` and signed index ``k`` clipped to ``[qmin - zero, qmax - zero]``:
nearest ``k = floor(x + 1/2)`` (ties up); stochastic ``k = floor(x) + [u < x - floor(x)]``.

This module imports no JAX: it runs anywhere NumPy does, and costs O(N) least-squares solves
of size (m + N) x N per layer, so keep it to small matrices.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ptq import options

__all__ = [
    "ReferenceResult",
    "RTNReference",
    "optq",
    "qronos",
    "rtn",
    "augment",
    "projected_columns",
    "round_nearest",
    "round_stochastic",
    "fit_group",
]


class ReferenceResult(NamedTuple):
    """Output of :func:`optq` and :func:`qronos` (float64 NumPy arrays).

    "processing order": row t is the t-th processed feature, original index ``order[t]``.
    """

    Q: np.ndarray  # (N, n) quantized weights, original order
    codes: np.ndarray  # (N, n) int64 integer codes, Q = step * (codes - zero), original order
    e: np.ndarray  # (N, n) processing order: e_t = w_t(t-1) - q_t
    z: np.ndarray  # (N, n) processing order: the value actually rounded at step t
    order: np.ndarray  # (N,) int64 permutation, order[t] = original index of step t
    lam: float  # resolved absolute regularisation
    r: np.ndarray  # (N,) processing order: r_t = ||P_t Xa_t|| from explicit projections
    w_traj_max: np.ndarray  # (n,) max over t = 0..N-1, j >= t+1 of |w_j(t)|, plus |w(0)|
    w_max: np.ndarray  # (n,) ptq's definition: max(max_t |w_t(0)|, max_t |z_t|)
    W_start: np.ndarray  # (N, n) w(0), original order (OPTQ: dead rows zeroed; Qronos: wt)
    W_ls: np.ndarray | None  # (N, n) Qronos only: wt = argmin_v ||ya - Xha v||, original order
    E_LS: np.ndarray | None  # (n,) Qronos only: E_LS = min_v ||ya - Xha v|| per neuron
    grid: "_Grid"  # the grid used: step, zero (N, n), original order
    g_idx: np.ndarray | None  # (N,) int64: group of each feature (group recipes only)
    scales: np.ndarray | None  # (G, n) group steps (group recipes only; G = 1 per channel)
    zeros: np.ndarray | None  # (G, n) group zero points (group recipes only)


class RTNReference(NamedTuple):
    Q: np.ndarray  # (N, n)
    codes: np.ndarray  # (N, n) int64
    grid: "_Grid"  # step, zero (N, n), original order
    g_idx: np.ndarray | None = None  # (N,) group recipes only
    scales: np.ndarray | None = None  # (G, n)
    zeros: np.ndarray | None = None  # (G, n)


# --------------------------------------------------------------------------- building blocks
def augment(X, lam: float, *, dead_to_one: bool = True) -> np.ndarray:
    """``Xa = [X; diag(d)]`` in R^{(m+N) x N}, ``d_t = sqrt(lam)`` (1 for dead features, lam = 0).

    Args:
      X: (m, N) inputs. lam: the absolute ridge, >= 0.
      dead_to_one: apply the dead-feature convention (the factorised matrix only; Qronos'
        target ``ya = Xa w`` uses the plain ``sqrt(lam) I``, so that ``Xha^T Xa = G``).
    """
    X = np.asarray(X, dtype=np.float64)
    d = np.full(X.shape[1], np.sqrt(lam))
    if dead_to_one:
        dead = np.sum(X * X, axis=0) == 0
        d[dead & (lam == 0)] = 1.0
    return np.vstack([X, np.diag(d)])


def _lstsq(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``argmin_v ||A v - b||`` (SVD based; A has full column rank here)."""
    return np.linalg.lstsq(A, b, rcond=None)[0]


def projected_columns(Xa) -> np.ndarray:
    """The matrix whose column t is ``P_t Xa_t``, ``P_t = I - Xa_{>t} Xa_{>t}^+`` (THEORY.md I1-I4).

    Each column is the least-squares residual of ``Xa_t`` on the later columns, formed
    explicitly; ``r_t`` is its norm. Columns are in the order of ``Xa``'s columns.
    """
    Xa = np.asarray(Xa, dtype=np.float64)
    N = Xa.shape[1]
    P = np.empty_like(Xa)
    for t in range(N):
        later = Xa[:, t + 1 :]
        P[:, t] = Xa[:, t] - (later @ _lstsq(later, Xa[:, t]) if t < N - 1 else 0.0)
    return P


class _Grid(NamedTuple):
    """Plain NumPy grid arrays (the attributes the rounding functions read)."""

    step: np.ndarray
    zero: np.ndarray
    qmin: np.ndarray
    qmax: np.ndarray


def _grid_arrays(grid, shape):
    """step, zero broadcast to ``shape`` and the signed index bounds, of any object with the
    Grid attributes (step/zero of shape (), (n,) or (N, n))."""
    step = np.asarray(grid.step, dtype=np.float64)
    zero = np.asarray(grid.zero, dtype=np.float64)
    try:
        step = np.broadcast_to(step, shape)
        zero = np.broadcast_to(zero, shape)
    except ValueError:
        raise ValueError(
            f"`grid` step {step.shape} and zero {zero.shape} must broadcast to {tuple(shape)}"
        ) from None
    qmin = np.asarray(grid.qmin, dtype=np.float64)
    qmax = np.asarray(grid.qmax, dtype=np.float64)
    return step, zero, qmin - zero, qmax - zero


def _grid_table(grid, N: int, n: int) -> _Grid:
    """The grid as (N, n) step and zero in original feature order (row j: feature j).

    Accepts step and zero of shape (), (n,) or (N, n) each; anything else raises, naming the
    expected and received shapes.
    """
    for field in ("step", "zero"):
        shape = np.shape(getattr(grid, field))
        if shape not in ((), (n,), (N, n)):
            raise ValueError(
                f"`grid` {field} must have shape () or (n,) = ({n},) or (N, n) = {(N, n)}; "
                f"got {shape}"
            )
    step, zero, _, _ = _grid_arrays(grid, (N, n))
    return _Grid(step, zero, np.asarray(grid.qmin, np.float64), np.asarray(grid.qmax, np.float64))


def _row(table: _Grid, j: int) -> _Grid:
    """The (n,) grid of original feature j."""
    return table._replace(step=table.step[j], zero=table.zero[j])


def _shape_with(z, grid) -> tuple[int, ...]:
    return np.broadcast_shapes(z.shape, np.shape(grid.step), np.shape(grid.zero))


def round_nearest(z, grid) -> np.ndarray:
    """Signed grid index of round to nearest, ties up, clipped; ``z`` broadcasts with the step
    ((..., n) for a () or (n,) step, (N, n) for a per-weight one)."""
    z = np.asarray(z, dtype=np.float64)
    step, _, kmin, kmax = _grid_arrays(grid, _shape_with(z, grid))
    return np.clip(np.floor(z / step + 0.5), kmin, kmax)


def round_stochastic(z, u, grid) -> np.ndarray:
    """Signed grid index of stochastic rounding with uniforms ``u`` (same shape as ``z``).

    ``k = floor(x) + 1`` with probability ``x - floor(x)`` (when ``u ~ U[0,1)``), so
    ``E[delta k] = z`` before clipping.
    """
    z = np.asarray(z, dtype=np.float64)
    step, _, kmin, kmax = _grid_arrays(grid, _shape_with(z, grid))
    x = z / step
    lo = np.floor(x)
    return np.clip(lo + (np.asarray(u, dtype=np.float64) < x - lo), kmin, kmax)


# --------------------------------------------------------------------------- groups
def _is_recipe(grid) -> bool:
    """A group-wise recipe (`ptq.GroupGrid` or any object with its fields) rather than a grid."""
    return hasattr(grid, "group_size") and hasattr(grid, "bits")


def fit_group(Wg, bits: int, kind: str, mse: bool = False):
    """The b-bit grid of one group of weights ``Wg`` (rows, n), per neuron: (scale, zero) (n,).

    symmetric (max-abs): ``K = 2^(b-1) - 1``, ``scale = a / K`` with ``a = max|w|`` (1 if the
    neuron's group is all zero), zero 0, codes in ``[-K, K]``.
    asymmetric (GPTQ's ``find_params``): ``lo = min(w, 0)``, ``hi = max(w, 0)`` (``[-1, 1]`` if
    both are 0), ``scale = (hi - lo) / (2^b - 1)``, ``zero = round(-lo / scale)`` (half to
    even), codes in ``[0, 2^b - 1]``.
    ``mse``: GPTQ's clipping search, the shrink factor ``p = 1 - i/100``, ``i = 0..79``, of the
    smallest ``sum_rows |Q_p(w) - w|^2.4`` per neuron (the first p among equal losses).
    """
    Wg = np.asarray(Wg, dtype=np.float64)
    lo = np.minimum(Wg.min(axis=0), 0.0)
    hi = np.maximum(Wg.max(axis=0), 0.0)
    if kind == "symmetric":
        K = 2 ** (bits - 1) - 1
        a = np.maximum(-lo, hi)
        a[a == 0] = 1.0
        kmin, kmax = -K, K

        def at(p):
            return p * a / K, np.zeros_like(a)
    else:
        maxq = 2**bits - 1
        flat = (lo == 0) & (hi == 0)
        lo[flat], hi[flat] = -1.0, 1.0
        kmin, kmax = 0, maxq

        def at(p):
            scale = (p * hi - p * lo) / maxq
            return scale, np.round(-p * lo / scale)

    if not mse:
        return at(1.0)
    best_loss = np.full(Wg.shape[1], np.inf)
    scale, zero = at(1.0)
    for i in range(80):
        s_p, z_p = at(1 - i / 100)
        k = np.clip(np.floor(Wg / s_p + 0.5), kmin - z_p, kmax - z_p)
        loss = np.sum(np.abs(s_p * k - Wg) ** 2.4, axis=0)
        better = loss < best_loss
        best_loss[better] = loss[better]
        scale[better], zero[better] = s_p[better], z_p[better]
    return scale, zero


def _start_groups(grid, N: int, n: int, W_channel, W_static, *, static: bool = False):
    """(table, state): the grid as (N, n) rows, original order, and the group state.

    For a plain grid the state is None. For a recipe, per-channel and static groups are
    fitted here, on ``W_channel`` / ``W_static`` (original order, static groups consecutive
    in original order); dynamic groups are fitted later by :func:`_fit_dynamic`.
    ``static=True`` treats every recipe as static (RTN).
    """
    if not _is_recipe(grid):
        return _grid_table(grid, N, n), None
    bits, kind, gs = int(grid.bits), str(grid.kind), grid.group_size
    K = 2 ** (bits - 1) - 1
    qmin, qmax = (-K, K) if kind == "symmetric" else (0, 2**bits - 1)
    table = _Grid(np.ones((N, n)), np.zeros((N, n)), np.float64(qmin), np.float64(qmax))
    static = static or bool(grid.static)
    state = {"recipe": grid, "static": static, "g_idx": np.full(N, -1, np.int64),
             "scales": {}, "zeros": {}}
    if gs is None:
        scale, zero = fit_group(W_channel, bits, kind, bool(grid.mse))
        table.step[:], table.zero[:] = scale, zero
        state.update(g_idx=None, scales={0: scale}, zeros={0: zero})
    elif static:
        for g, j0 in enumerate(range(0, N, gs)):
            _set_group(table, state, g, np.arange(j0, min(j0 + gs, N)), W_static[j0 : j0 + gs])
    return table, state


def _set_group(table, state, g: int, rows, values) -> None:
    """Fit group g on ``values`` (its rows' current weights) and give ``rows`` its grid."""
    r = state["recipe"]
    scale, zero = fit_group(values, int(r.bits), str(r.kind), bool(r.mse))
    table.step[rows], table.zero[rows] = scale, zero
    state["g_idx"][rows] = g
    state["scales"][g], state["zeros"][g] = scale, zero


def _fit_dynamic(table, state, t: int, perm, current) -> None:
    """At processing step t, fit the dynamic group starting there (if one does) on
    ``current`` (the group's rows' current weights, processing order, first row = the
    value rounded at step t)."""
    if state is None or state["g_idx"] is None:
        return
    r = state["recipe"]
    gs = r.group_size
    if state["static"] or t % gs:
        return
    rows = perm[t : t + gs]
    _set_group(table, state, t // gs, rows, current[: len(rows)])


def _group_fields(state):
    """(g_idx, scales (G, n), zeros (G, n)) of a finished run (all None for a plain grid)."""
    if state is None:
        return None, None, None
    G = len(state["scales"])
    return (state["g_idx"], np.stack([state["scales"][g] for g in range(G)]),
            np.stack([state["zeros"][g] for g in range(G)]))


# --------------------------------------------------------------------------- validation
def _prepare(X, W, grid, X_hat, rounding, u, lam, percdamp, order, order_seed):
    m, N, n = options.check_layer_shapes(X, W, X_hat)
    X = np.asarray(X, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    named = [("X", X), ("W", W)] + ([] if X_hat is None else [("X_hat", X_hat)])
    for name, A in named:
        options.check_finite_numpy(name, np.asarray(A, dtype=np.float64))
    options.check_rounding(rounding)
    if rounding == "stochastic":
        if u is None or np.shape(u) != (N, n):
            raise ValueError(f"`u` must have shape (N, n) = {(N, n)}; got {np.shape(u)}")
        u = np.asarray(u, dtype=np.float64)
    Xf = X if X_hat is None else np.asarray(X_hat, dtype=np.float64)  # the factorised matrix
    sq = np.sum(Xf * Xf, axis=0)
    lam = options.resolve_lam(sq.mean(), lam, percdamp)
    perm = options.resolve_order(sq, order, order_seed)
    live = int(np.count_nonzero(sq))
    Xfa = augment(Xf[:, perm], lam)
    if np.linalg.matrix_rank(Xfa) < N:
        name = "X" if X_hat is None else "X_hat"
        raise ValueError(
            f"H = {name}^T {name} + lam*I is singular (lam = {lam:g}, {live} live features, "
            f"m = {m} samples); pass a larger `lam` or `percdamp`"
        )
    if not _is_recipe(grid):
        _grid_table(grid, N, n)  # fails early on a grid of the wrong shape
    return X, W, u, sq, lam, perm, Xfa


def _round(z, u_t, grid, stochastic: bool) -> np.ndarray:
    return round_stochastic(z, u_t, grid) if stochastic else round_nearest(z, grid)


# --------------------------------------------------------------------------- algorithms
def optq(
    X,
    W,
    grid,
    *,
    lam=None,
    percdamp=None,
    order="natural",
    order_seed: int = 0,
    rounding: str = "nearest",
    u=None,
) -> ReferenceResult:
    """OPTQ (stochastic OPTQ with ``rounding="stochastic"``) from its least-squares definition.

    With ``Xa`` augmented and permuted to processing order, ``w(0) = w`` (dead rows zeroed,
    as GPTQ) and for ``t = 1..N`` (THEORY.md section 2)::

        z_t = w_t(t-1),   q_t = Q(z_t),   e_t = z_t - q_t,
        w_{>t}(t) = w_{>t}(t-1) + e_t * argmin_c ||Xa_{>t} c - Xa_t||.

    Each update is a fresh least-squares solve; no factorisation of H is formed.

    Args:
      X: (m, N). W: (N, n). grid: any object with ``step``, ``zero``, ``qmin``, ``qmax``
        (e.g. `ptq.Grid`, step/zero (), (n,) or (N, n)), or a group recipe (module
        docstring). lam, percdamp, order, order_seed: as `ptq.optq`.
      rounding: "nearest" or "stochastic". u: (N, n) uniforms, row t used at step t.

    Returns:
      :class:`ReferenceResult` (``W_ls``, ``E_LS`` are None).
    """
    X, W, u, sq, lam, perm, Xa = _prepare(
        X, W, grid, None, rounding, u, lam, percdamp, order, order_seed
    )
    N, n = W.shape
    W_start = np.where((sq == 0)[:, None], 0.0, W)
    # groups: per channel on W as given, static on W with dead rows zeroed (as GPTQ)
    table, state = _start_groups(grid, N, n, W, W_start)
    w = W_start[perm].copy()  # w(t), processing order; rows < t are finished
    traj = np.abs(w).max(axis=0)
    k = np.empty((N, n))
    e = np.empty((N, n))
    z = np.empty((N, n))
    for t in range(N):
        z[t] = w[t]
        _fit_dynamic(table, state, t, perm, w[t:])  # a dynamic group starts: w_{>=t}(t-1)
        g = _row(table, perm[t])  # the grid of the feature processed at step t
        k[t] = _round(z[t], None if u is None else u[t], g, rounding == "stochastic")
        e[t] = z[t] - g.step * k[t]
        if t < N - 1:
            c = _lstsq(Xa[:, t + 1 :], Xa[:, t])  # Xa_{>t}^+ Xa_t
            w[t + 1 :] += np.outer(c, e[t])
            traj = np.maximum(traj, np.abs(w[t + 1 :]).max(axis=0))
    r = np.linalg.norm(projected_columns(Xa), axis=0)
    w_max = np.maximum(np.abs(W_start).max(axis=0), np.abs(z).max(axis=0))
    return _finish(k, e, z, perm, lam, r, traj, w_max, W_start, table, state, None, None)


def qronos(
    X,
    X_hat,
    W,
    grid,
    *,
    lam=None,
    percdamp=None,
    order="natural",
    order_seed: int = 0,
    rounding: str = "nearest",
    u=None,
    variant: str = "paper",
) -> ReferenceResult:
    """Qronos from its least-squares definition (both variants).

    ``Xa = [X; sqrt(lam) I]``, ``Xha = [X_hat; sqrt(lam) I]`` (dead convention on Xha), in
    processing order; target ``ya = Xa w``. The fit ``wt = argmin_v ||ya - Xha v||`` and
    ``E_LS = ||ya - Xha wt||``. At step t (0-based here), with ``q_{<t}`` fixed::

        v = argmin_v ||ya - Xha_{<t} q_{<t} - Xha_{>=t} v||     (v = wt at t = 0),
        q_t = Q(z_t),   e_t = v_t - q_t,

    where ``z_t = v_t``, except in the paper variant at t = 0, where the correction step uses
    the original later weights: ``z_0 = <Xha_0, ya - Xha_{>0} w_{>0}> / ||Xha_0||^2``.
    "ls_first" rounds ``wt_0`` instead (THEORY.md section 2). Every v is a fresh solve on
    the current residual, not the OPTQ update.

    Args:
      X, X_hat: (m, N). W: (N, n). variant: "paper" or "ls_first". The rest as :func:`optq`;
        lam, percdamp and the norm orders refer to ``X_hat``.

    Returns:
      :class:`ReferenceResult` with ``W_start = W_ls = wt`` and ``E_LS`` (identity I5).
    """
    if variant not in ("paper", "ls_first"):
        raise ValueError(f"`variant` must be one of ('paper', 'ls_first'); got {variant!r}")
    X, W, u, _, lam, perm, Xha = _prepare(
        X, W, grid, X_hat, rounding, u, lam, percdamp, order, order_seed
    )
    N, n = W.shape
    table, state = _start_groups(grid, N, n, W, W)  # per channel and static: on W as given
    w = W[perm]
    ya = augment(X[:, perm], lam, dead_to_one=False) @ w  # (m + N, n)
    wt = _lstsq(Xha, ya)
    E_LS = np.linalg.norm(ya - Xha @ wt, axis=0)
    traj = np.abs(wt).max(axis=0)
    v = wt
    k = np.empty((N, n))
    e = np.empty((N, n))
    z = np.empty((N, n))
    q = np.empty((N, n))
    for t in range(N):
        if t == 0 and variant == "paper":
            x0 = Xha[:, 0]
            z[0] = x0 @ (ya - Xha[:, 1:] @ w[1:]) / (x0 @ x0)
        else:
            z[t] = v[0]
        # a dynamic group starting at t is fitted on the current fit v of its rows, its first
        # row being the value rounded now (z_0 in the paper variant)
        _fit_dynamic(table, state, t, perm, np.vstack([z[t][None], v[1:]]))
        g = _row(table, perm[t])
        k[t] = _round(z[t], None if u is None else u[t], g, rounding == "stochastic")
        q[t] = g.step * k[t]
        e[t] = v[0] - q[t]
        if t < N - 1:
            residual = ya - Xha[:, : t + 1] @ q[: t + 1]
            v = _lstsq(Xha[:, t + 1 :], residual)
            traj = np.maximum(traj, np.abs(v).max(axis=0))
    r = np.linalg.norm(projected_columns(Xha), axis=0)
    w_max = np.maximum(np.abs(wt).max(axis=0), np.abs(z).max(axis=0))
    inv = np.argsort(perm)
    return _finish(k, e, z, perm, lam, r, traj, w_max, wt[inv], table, state, wt[inv], E_LS)


def rtn(W, grid) -> RTNReference:
    """Round every weight to nearest (ties up), clipped: ``q = Q(w)``.

    A group recipe is fitted on ``W`` in original order (no order, no feedback: static)."""
    W = np.asarray(W, dtype=np.float64)
    N, n = options.check_matrix("W", W)
    table, state = _start_groups(grid, N, n, W, W, static=True)
    k = round_nearest(W, table)
    return RTNReference(table.step * k, (k + table.zero).astype(np.int64), table,
                        *_group_fields(state))


def _finish(k, e, z, perm, lam, r, traj, w_max, W_start, table, state, W_ls, E_LS):
    inv = np.argsort(perm)
    k = k[inv]
    g_idx, scales, zeros = _group_fields(state)
    return ReferenceResult(
        Q=table.step * k,
        codes=(k + table.zero).astype(np.int64),
        e=e,
        z=z,
        order=perm,
        lam=lam,
        r=r,
        w_traj_max=traj,
        w_max=w_max,
        W_start=W_start,
        W_ls=W_ls,
        E_LS=E_LS,
        grid=table,
        g_idx=g_idx,
        scales=scales,
        zeros=zeros,
    )
