"""The blocked OPTQ kernel shared by `optq` and `qronos` (jit-compiled, `jax.lax` loops).

Notation (THEORY.md sections 1-2), everything in processing order:

* ``H`` (N, N): the regularised Gram matrix ``X^T X + lam I`` (``Xh^T Xh + lam I`` for Qronos).
* ``R`` (N, N): the upper-triangular factor with ``H = R R^T``, obtained from the Cholesky
  factor of the index-reversed matrix (``J H J = L L^T`` gives ``R = J L J``). Then
  ``U = R^{-1}`` is the upper Cholesky factor of ``H^{-1}`` (``H^{-1} = U^T U``, what the GPTQ
  code calls Hinv), so ``U_tt = 1 / R_tt`` and ``r_t = R_tt`` (identity I3).
* ``C = diag(R)^{-1} R^T`` (unit lower triangular), ``C_ts = R_st / R_tt``.

GPTQ's right-looking update ``w_j(t) = w_j(t-1) - (e_t / U_tt) U_tj`` (j > t) telescopes to
``w - q = U^T diag(1/U_tt) e``, i.e. ``R^T (w - q) = diag(R) e``. Reading row t of that
triangular system gives the left-looking form this kernel runs::

    z_t = w_t + sum_{s < t} C_ts (w_s - q_s),     q_t = Q(z_t),     e_t = z_t - q_t,

where ``z_t = w_t(t-1)`` is the value GPTQ rounds at step t. It needs no inverse: one
Cholesky factorisation, no ``cholesky_inverse`` and no second factorisation.

Lazy batching, on two levels. Features are processed in blocks of ``B`` (``block_size``).
For block ``[i, i+B)`` the contribution of every earlier block c is one (B, B) x (B, n)
product ``C[block, block c] @ (W - Q)[block c]``, so no multiply touches a structural zero
(``n N^2`` flops in all, the minimum). Inside a block, panels of ``b`` rows (``b <= 16``, the
largest divisor of B) take the contribution of the finished rows of the block with one
(b, B) x (B, n) product, and their columns are then rounded one at a time with rank-1 updates
of the small (b, n) panel, which stays in cache: the sequential part of OPTQ touches ``b n``
numbers per column instead of GPTQ's ``B n``. All loops are ``lax.fori_loop``, so the compiled
program does not grow with N.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ptq.grid import Grid, _fit

HIGHEST = jax.lax.Precision.HIGHEST  # no TF32/bf16 passes on GPU: results must match float64 logic


class KernelOut(NamedTuple):
    """Outputs of :func:`quantize_ordered`, all in processing order."""

    k: jax.Array  # (N, n) float: signed grid index of q (q = step * k)
    e: jax.Array  # (N, n) float: e_t = z_t - q_t
    w_max: jax.Array  # (n,) float: max(|w_t|, |value rounded at t|) over t
    r: jax.Array  # (N,) float: r_t = R_tt (I3); NaN if H is not positive definite
    scales: jax.Array | None = None  # (G, n) float: dynamic groups' steps, processing order
    zeros: jax.Array | None = None  # (G, n) float: dynamic groups' zero points


class Groups(NamedTuple):
    """Static description of dynamic groups for :func:`quantize_ordered` (hashable)."""

    size: int  # features per group, consecutive in processing order (2 groups at least)
    bits: int
    kind: str  # "symmetric" or "asymmetric"
    mse: bool


def factor(H: jax.Array) -> jax.Array:
    """Upper-triangular ``R`` with ``H = R R^T`` (NaN-filled if H is not positive definite)."""
    return jnp.linalg.cholesky(H[::-1, ::-1])[::-1, ::-1]


SUB_BLOCK = 16  # rows of the in-cache panel: (16, n) float32 is 256 KiB at n = 4096


def sub_block_size(B: int) -> int:
    """The largest divisor of ``B`` not above ``SUB_BLOCK``."""
    return max(d for d in range(1, min(SUB_BLOCK, B) + 1) if B % d == 0)


def group_block_size(block_size: int, group_size: int) -> int:
    """The lazy-batch width used with dynamic groups: a multiple of the group size.

    ``group_size * max(1, block_size // group_size)``: the largest multiple of the group size
    not above ``block_size``, or one group per block when groups are wider than blocks. Each
    group then lies inside one block, starting at a panel boundary, so its current weights
    are the block's partial sums plus one product with the block's finished rows.
    """
    return group_size * max(1, block_size // group_size)


@partial(jax.jit, static_argnames=("block_size", "stochastic", "first_override", "groups"))
def quantize_ordered(
    R: jax.Array,
    W: jax.Array,
    grid: Grid,
    u: jax.Array | None,
    z_first: jax.Array | None,
    *,
    block_size: int,
    stochastic: bool,
    first_override: bool,
    groups: Groups | None = None,
) -> KernelOut:
    """Run OPTQ on ``W`` (N, n) given the factor ``R`` of ``H = R R^T``, both ordered.

    The left-looking recursion of the module docstring, ``z_t = w_t + sum_{s < t} C_ts (w_s -
    q_s)``, ``q_t = Q(z_t)``, ``e_t = z_t - q_t``, in its phases: `_prepare` (``C`` and the
    padded operands), then for each block of B features `_block`: `_partial_sums` (the
    earlier blocks' feedback), and panel by panel `_panel` (the block's finished rows) and
    `_round_rows` (the panel's own rows, one at a time); with dynamic groups, `_group` fits
    each group's grid (`_group_weights`) before rounding its panels.

    Args:
      R: (N, N) upper triangular with ``H = R R^T`` (see :func:`factor`), processing order.
      W: (N, n) weights to quantize (``w(0)``), in processing order.
      grid: the grid: step and zero point of shape () or (n,), or (N, n) in processing
        order (row t is the grid of the feature processed at step t).
      u: (N, n) uniforms for stochastic rounding (row t is used at step t), or None.
      z_first: (n,) value rounded at step 1 instead of ``z_1 = w_1`` (Qronos' correction
        step); the error fed forward is still ``e_1 = w_1 - q_1``. None when unused.
      block_size: B, the lazy-batch width (with ``groups``: see :func:`group_block_size`).
      stochastic / first_override: static switches matching ``u`` / ``z_first``.
      groups: dynamic groups (``grid`` is then unused and may be None). When the algorithm
        reaches the first step ``t0`` of group ``g`` (``t0 = g * size``), the group's grid is
        fitted, per neuron, on the current weights of its rows ``G = [t0, t0 + size)``,
        GPTQ's ``w_G(t0 - 1)`` (see `_group_weights`). Row ``t0 = 0`` is replaced by
        ``z_first`` when ``first_override`` (Qronos' step 1 rounds ``z_1``). The tables come
        back in ``KernelOut.scales`` / ``zeros``.
    """
    N, n = W.shape
    op = _prepare(R, W, grid, u, z_first, block_size=block_size, stochastic=stochastic,
                 first_override=first_override, groups=groups)
    nb = op.Np // op.B
    zeros = jnp.zeros((op.Np, n), op.dtype)
    wmax0 = jnp.max(jnp.abs(W), axis=0)
    if groups is None:
        tabs = (None, None)
    else:
        tabs = (jnp.ones((op.Np // groups.size, n), op.dtype),
                jnp.zeros((op.Np // groups.size, n), op.dtype))
    _, K, E, wmax, S_tab, Z_tab = jax.lax.fori_loop(
        0, nb, partial(_block, op), (zeros, zeros, zeros, wmax0) + tabs
    )
    if groups is None:
        return KernelOut(K[:N], E[:N], wmax, op.r)
    G = -(-N // groups.size)
    return KernelOut(K[:N], E[:N], wmax, op.r, S_tab[:G], Z_tab[:G])


class _Operands(NamedTuple):
    """What the loop bodies of one `quantize_ordered` trace read: its padded operands
    (Np = nb B rows, whole blocks; padded features have w = 0, no coupling, and come last)
    and its static sizes and switches."""

    r: jax.Array  # (N,): r_t = R_tt
    Ls: jax.Array  # (Np, Np): the strictly lower part of C = diag(R)^{-1} R^T
    Wp: jax.Array  # (Np, n): w(0)
    up: jax.Array | None  # (Np, n): the uniforms (stochastic rounding only)
    Sp: jax.Array | None  # (Np, n): the per-weight steps, padded with 1 (per_row only)
    Zp: jax.Array | None  # (Np, n): the per-weight zero points, padded with 0 (per_row only)
    grid: Grid | None
    z_first: jax.Array | None  # (n,)
    B: int  # block width
    b: int  # panel height, b | B (and b | group size)
    Np: int
    n: int
    dtype: jnp.dtype
    stochastic: bool
    first_override: bool
    per_row: bool  # a per-weight (N, n) grid, sliced with each panel
    groups: Groups | None


def _prepare(R, W, grid, u, z_first, *, block_size, stochastic, first_override, groups):
    """The feedback coefficients ``C_ts = R_st / R_tt`` (s < t) and the padded operands.

    ``Ls = diag(R)^{-1} R^T - I``, the strictly lower part of the unit lower triangular
    ``C``, so that ``z = w + Ls (w - q)`` row by row; zero-padded to whole blocks of ``B``
    (``B`` a multiple of the group size with groups, `group_block_size`), like ``w`` and the
    uniforms. A per-weight grid (N, n) is padded with step 1 and zero 0; the () / (n,) grid is
    left as it is (static branch: the per-neuron program is unchanged).
    """
    N, n = W.shape
    B = block_size if groups is None else group_block_size(block_size, groups.size)
    # panels must not straddle a group boundary: b divides the group size (and so B)
    b = sub_block_size(B if groups is None else groups.size)
    nb = -(-N // B)
    Np = nb * B
    dtype = W.dtype

    r = jnp.diagonal(R)
    Ls = jnp.zeros((Np, Np), dtype).at[:N, :N].set(R.T / r[:, None] - jnp.eye(N, dtype=dtype))
    Wp = jnp.zeros((Np, n), dtype).at[:N].set(W)
    up = jnp.zeros((Np, n), dtype).at[:N].set(u) if stochastic else None
    per_row = groups is None and (jnp.ndim(grid.step) == 2 or jnp.ndim(grid.zero) == 2)
    Sp = Zp = None
    if per_row:
        Sp = jnp.ones((Np, n), dtype).at[:N].set(jnp.broadcast_to(grid.step, (N, n)))
        Zp = jnp.zeros((Np, n), dtype).at[:N].set(jnp.broadcast_to(grid.zero, (N, n)))
    return _Operands(r, Ls, Wp, up, Sp, Zp, grid, z_first, B, b, Np, n, dtype, stochastic,
                   first_override, per_row, groups)


def _block(op: _Operands, kb, carry):
    """Block ``kb``, features ``[i, i + B)`` with ``i = kb B``: its partial sums from every
    earlier block (`_partial_sums`), then its panels of ``b`` rows in turn (`_panel`), or,
    with dynamic groups, its groups in turn (`_group`).

    ``carry = (D, K, E, wmax, S_tab, Z_tab)``: ``D = w - q``, ``K`` the grid indices and
    ``E`` the errors (Np, n), ``wmax`` (n,), the group tables (Np / size, n) or None.
    """
    D, K, E, wmax, S_tab, Z_tab = carry
    B, n = op.B, op.n
    i = kb * B
    Zb = _partial_sums(op, D, i, kb)
    Lbb = _ds(op.Ls, i, i, B, B)
    zeros = jnp.zeros((B, n), op.dtype)
    start = (zeros, zeros, zeros, wmax)
    if op.groups is None:
        Db, Kb, Eb, wmax = jax.lax.fori_loop(
            0, B // op.b, lambda s, c: _panel(op, i, Zb, Lbb, s * op.b, c, None), start
        )
    else:
        (Db, Kb, Eb, wmax), S_tab, Z_tab = jax.lax.fori_loop(
            0, B // op.groups.size, partial(_group, op, i, Zb, Lbb), (start, S_tab, Z_tab)
        )
    return _dus(D, Db, i), _dus(K, Kb, i), _dus(E, Eb, i), wmax, S_tab, Z_tab


def _partial_sums(op: _Operands, D, i, kb):
    """``Zb = w[block] + sum_{c < kb} C[block, block c] (w - q)[block c]``, (B, n).

    The left-looking sums over every finished block: one (B, B) x (B, n) product each, so no
    multiply touches a structural zero of ``C``. What is still missing from ``z_t`` is the
    feedback of the rows of the block itself (`_panel`, `_round_rows`).
    """
    B, n = op.B, op.n

    def earlier(c, Z):  # Z += C[block, block c] @ (W - Q)[block c] for each finished c
        return Z + jnp.dot(_ds(op.Ls, i, c * B, B, B), _ds(D, c * B, 0, B, n),
                           precision=HIGHEST)

    return jax.lax.fori_loop(0, kb, earlier, _ds(op.Wp, i, 0, B, n))


def _panel(op: _Operands, i, Zb, Lbb, j, carry, g):
    """Round the ``b`` rows at in-block offset ``j`` on grid ``g`` (None: `grid` / per-row).

    Their sums so far, ``Zs = Zb[j:j+b] + C[j:j+b, block] (w - q)[block]``: the block's rows
    not finished yet are zero in ``Db``, so the full-width (b, B) x (B, n) product adds
    exactly the finished rows ``< j``. The panel's own rows feed each other in `_round_rows`.
    ``carry = (Db, Kb, Eb, wmax)``, the block's ``w - q``, indices and errors (B, n).
    """
    b, n = op.b, op.n
    Db, Kb, Eb, wmax = carry
    # Rows of Db not finished yet are zero, so the full-width product is exact.
    Zs = _ds(Zb, j, 0, b, n) + jnp.dot(_ds(Lbb, j, 0, b, op.B), Db, precision=HIGHEST)
    Us = _ds(op.up, i + j, 0, b, n) if op.stochastic else None
    Ws = _ds(op.Wp, i + j, 0, b, n)
    if g is not None:  # a dynamic group's grid, (n,)
        row_grid = lambda _: g  # noqa: E731
    elif op.per_row:  # the panel's rows of a per-weight grid
        Ss, Zz = _ds(op.Sp, i + j, 0, b, n), _ds(op.Zp, i + j, 0, b, n)
        row_grid = lambda r: op.grid._replace(step=Ss[r], zero=Zz[r])  # noqa: E731
    else:
        row_grid = lambda _: op.grid  # noqa: E731
    Ds, Ks, Es, wmax = _round_rows(op, i + j, Zs, Ws, Us, _ds(Lbb, j, j, b, b), wmax, row_grid)
    return _dus(Db, Ds, j), _dus(Kb, Ks, j), _dus(Eb, Es, j), wmax


def _round_rows(op: _Operands, i0, Zs, Ws, Us, Lss, wmax, row_grid):
    """Round the ``b`` rows of a panel in turn (global rows ``i0 .. i0 + b - 1``).

    For row j: ``q_j = Q(z_j)`` (``z_first`` instead of ``z_j`` at global step 0 with
    ``first_override``; stochastic with ``Us[j]``), ``e_j = z_j - q_j``, and the rank-1
    update ``Zs += Lss[:, j] (w_j - q_j)`` feeds it to the later rows of the panel
    (``Lss`` strictly lower, so rows ``<= j`` are untouched). ``Zs`` (b, n) holds all but
    this in-panel feedback; ``row_grid(j)`` is the grid of row j. Returns the panel's
    ``w - q``, grid indices and errors (b, n) and the updated ``wmax``.
    """
    b, n = op.b, op.n
    z_first = op.z_first

    def col(j, carry):
        Zs, Ds, Ks, Es, wmax = carry
        z = Zs[j]
        g = row_grid(j)
        rounded = jnp.where(i0 + j == 0, z_first, z) if op.first_override else z
        k = g.stochastic_index(rounded, Us[j]) if op.stochastic else g.nearest_index(rounded)
        q = g.step * k
        d = Ws[j] - q  # w_t - q_t, fed forward through column j of Lss
        Zs = Zs + Lss[:, j, None] * d[None, :]  # rows <= j untouched: Lss is strictly lower
        wmax = jnp.maximum(wmax, jnp.abs(rounded))
        return Zs, Ds.at[j].set(d), Ks.at[j].set(k), Es.at[j].set(z - q), wmax

    zeros = jnp.zeros((b, n), op.dtype)
    _, Ds, Ks, Es, wmax = jax.lax.fori_loop(0, b, col, (Zs, zeros, zeros, zeros, wmax))
    return Ds, Ks, Es, wmax


def _group(op: _Operands, i, Zb, Lbb, h, carry):
    """Group ``h`` of the block (rows ``jg = h size`` on): fit its grid on its current
    weights (`_group_weights`), record it in the tables, then round its panels on it.

    ``carry = ((Db, Kb, Eb, wmax), S_tab, Z_tab)``: the block's carry as in `_panel`, and the
    tables of group steps and zero points (one row per group, processing order).
    """
    (Db, Kb, Eb, wmax), S_tab, Z_tab = carry
    gsz, dtype = op.groups.size, op.dtype
    jg = h * gsz
    Zg = _group_weights(op, i, Zb, Lbb, Db, jg)
    g = _fit(Zg, op.groups.bits, op.groups.kind, 0, op.groups.mse)
    gi = (i + jg) // gsz
    S_tab = jax.lax.dynamic_update_slice(S_tab, g.step[None].astype(dtype), (gi, 0))
    Z_tab = jax.lax.dynamic_update_slice(Z_tab, g.zero[None].astype(dtype), (gi, 0))
    inner = jax.lax.fori_loop(
        0, gsz // op.b, lambda s, c: _panel(op, i, Zb, Lbb, jg + s * op.b, c, g),
        (Db, Kb, Eb, wmax),
    )
    return inner, S_tab, Z_tab


def _group_weights(op: _Operands, i, Zb, Lbb, Db, jg):
    """The current weights ``w_G(t0 - 1)`` (size, n) of the group ``G = [t0, t0 + size)``
    starting at ``t0 = i + jg``, GPTQ's weights when it fits the group's grid.

    They are the least-squares continuation given ``q_{<t0}``, ``w_{>=t0}(t0-1) = w_{>=t0} +
    H22^{-1} H21 d`` with ``d = (w - q)_{<t0}``; with ``R = [[R11, R12], [0, R22]]``,
    ``H22 = R22 R22^T`` and ``H21 = R22 R12^T``, so it is ``w + R22^{-T} R12^T d``. ``R22^T``
    is lower triangular, so the rows of G need only its leading (size, size) block,
    ``diag(r_G) (I + L_GG)``, and in the kernel's terms::

        p_G = sum_{s < t0} C_Gs (w_s - q_s)           (the left-looking partial sums)
        w_G(t0 - 1) = w_G + (I + L_GG)^{-1} p_G,      L_GG = strictly lower C[G, G].

    Note that ``w_j + p_j`` alone is ``z_j`` only for ``j = t0``: the partial sums use the
    original ``w_s - q_s``, the current weights the errors propagated through the later rows,
    hence the unit lower triangular solve (size^2 n flops per group). In a block, ``w_G +
    p_G`` is the block's partial sums ``Zb`` (every earlier block) plus one (size, B) x (B, n)
    product with the block's finished rows. With ``first_override`` the row ``t0 = 0`` is
    ``z_first``, the value Qronos' step 1 rounds, so that group is fitted on it.
    """
    gsz, n = op.groups.size, op.n
    Wg = _ds(op.Wp, i + jg, 0, gsz, n)
    Pg = _ds(Zb, jg, 0, gsz, n) - Wg + jnp.dot(
        _ds(Lbb, jg, 0, gsz, op.B), Db, precision=HIGHEST
    )
    Zg = Wg + jax.scipy.linalg.solve_triangular(
        _ds(Lbb, jg, jg, gsz, gsz), Pg, lower=True, unit_diagonal=True
    )
    if op.first_override:  # Qronos: step 1 rounds z_1, fit its group on it
        Zg = Zg.at[0].set(jnp.where(i + jg == 0, op.z_first, Zg[0]))
    return Zg


def _ds(A, i, j, rows, cols):
    return jax.lax.dynamic_slice(A, (i, j), (rows, cols))


def _dus(A, block, i):
    return jax.lax.dynamic_update_slice(A, block, (i, 0))
