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

from ptq.grid import Grid

HIGHEST = jax.lax.Precision.HIGHEST  # no TF32/bf16 passes on GPU: results must match float64 logic


class KernelOut(NamedTuple):
    """Outputs of :func:`quantize_ordered`, all in processing order."""

    k: jax.Array  # (N, n) float: signed grid index of q (q = step * k)
    e: jax.Array  # (N, n) float: e_t = z_t - q_t
    w_max: jax.Array  # (n,) float: max(|w_t|, |value rounded at t|) over t
    r: jax.Array  # (N,) float: r_t = R_tt (I3); NaN if H is not positive definite


def factor(H: jax.Array) -> jax.Array:
    """Upper-triangular ``R`` with ``H = R R^T`` (NaN-filled if H is not positive definite)."""
    return jnp.linalg.cholesky(H[::-1, ::-1])[::-1, ::-1]


SUB_BLOCK = 16  # rows of the in-cache panel: (16, n) float32 is 256 KiB at n = 4096


def sub_block_size(B: int) -> int:
    """The largest divisor of ``B`` not above ``SUB_BLOCK``."""
    return max(d for d in range(1, min(SUB_BLOCK, B) + 1) if B % d == 0)


@partial(jax.jit, static_argnames=("block_size", "stochastic", "first_override"))
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
) -> KernelOut:
    """Run OPTQ on ``W`` (N, n) given the factor ``R`` of ``H = R R^T``, both ordered.

    Args:
      R: (N, N) upper triangular with ``H = R R^T`` (see :func:`factor`), processing order.
      W: (N, n) weights to quantize (``w(0)``), in processing order.
      grid: the grid: step and zero point of shape () or (n,), or (N, n) in processing
        order (row t is the grid of the feature processed at step t).
      u: (N, n) uniforms for stochastic rounding (row t is used at step t), or None.
      z_first: (n,) value rounded at step 1 instead of ``z_1 = w_1`` (Qronos' correction
        step); the error fed forward is still ``e_1 = w_1 - q_1``. None when unused.
      block_size: B, the lazy-batch width.
      stochastic / first_override: static switches matching ``u`` / ``z_first``.
    """
    N, n = W.shape
    B = block_size
    b = sub_block_size(B)
    nb = -(-N // B)
    Np = nb * B
    dtype = W.dtype

    r = jnp.diagonal(R)
    # Feedback coefficients: the strictly lower part of C = diag(R)^{-1} R^T. Padding to whole
    # blocks adds features with w = 0 and no coupling; they come last and are dropped.
    Ls = jnp.zeros((Np, Np), dtype).at[:N, :N].set(R.T / r[:, None] - jnp.eye(N, dtype=dtype))
    Wp = jnp.zeros((Np, n), dtype).at[:N].set(W)
    up = jnp.zeros((Np, n), dtype).at[:N].set(u) if stochastic else None
    # A per-weight grid (N, n) is sliced with the panel; the () / (n,) path is left as it was
    # (static branch: the per-neuron program is unchanged). Padded rows get step 1, zero 0.
    per_row = jnp.ndim(grid.step) == 2 or jnp.ndim(grid.zero) == 2
    if per_row:
        Sp = jnp.ones((Np, n), dtype).at[:N].set(jnp.broadcast_to(grid.step, (N, n)))
        Zp = jnp.zeros((Np, n), dtype).at[:N].set(jnp.broadcast_to(grid.zero, (N, n)))

    def columns(i0, Zs, Ws, Us, Lss, wmax, Gs):
        """Round the b rows of a panel in turn; ``Zs`` holds all but the in-panel feedback.

        ``Gs``: the panel's (b, n) steps and zeros of a per-weight grid, else None."""

        def col(j, carry):
            Zs, Ds, Ks, Es, wmax = carry
            z = Zs[j]
            g = grid if Gs is None else grid._replace(step=Gs[0][j], zero=Gs[1][j])
            rounded = jnp.where(i0 + j == 0, z_first, z) if first_override else z
            k = g.stochastic_index(rounded, Us[j]) if stochastic else g.nearest_index(rounded)
            q = g.step * k
            d = Ws[j] - q  # w_t - q_t, fed forward through column j of Lss
            Zs = Zs + Lss[:, j, None] * d[None, :]  # rows <= j untouched: Lss is strictly lower
            wmax = jnp.maximum(wmax, jnp.abs(rounded))
            return Zs, Ds.at[j].set(d), Ks.at[j].set(k), Es.at[j].set(z - q), wmax

        zeros = jnp.zeros((b, n), dtype)
        _, Ds, Ks, Es, wmax = jax.lax.fori_loop(0, b, col, (Zs, zeros, zeros, zeros, wmax))
        return Ds, Ks, Es, wmax

    def block(kb, carry):
        D, K, E, wmax = carry
        i = kb * B

        def earlier(c, Z):  # Z += C[block, block c] @ (W - Q)[block c] for each finished c
            return Z + jnp.dot(_ds(Ls, i, c * B, B, B), _ds(D, c * B, 0, B, n), precision=HIGHEST)

        Zb = jax.lax.fori_loop(0, kb, earlier, _ds(Wp, i, 0, B, n))
        Lbb = _ds(Ls, i, i, B, B)

        def panel(s, carry):
            Db, Kb, Eb, wmax = carry
            j = s * b
            # Rows of Db not finished yet are zero, so the full-width product is exact.
            Zs = _ds(Zb, j, 0, b, n) + jnp.dot(_ds(Lbb, j, 0, b, B), Db, precision=HIGHEST)
            Us = _ds(up, i + j, 0, b, n) if stochastic else None
            Ws = _ds(Wp, i + j, 0, b, n)
            Gs = (_ds(Sp, i + j, 0, b, n), _ds(Zp, i + j, 0, b, n)) if per_row else None
            Ds, Ks, Es, wmax = columns(i + j, Zs, Ws, Us, _ds(Lbb, j, j, b, b), wmax, Gs)
            return _dus(Db, Ds, j), _dus(Kb, Ks, j), _dus(Eb, Es, j), wmax

        zeros = jnp.zeros((B, n), dtype)
        Db, Kb, Eb, wmax = jax.lax.fori_loop(0, B // b, panel, (zeros, zeros, zeros, wmax))
        return _dus(D, Db, i), _dus(K, Kb, i), _dus(E, Eb, i), wmax

    zeros = jnp.zeros((Np, n), dtype)
    wmax0 = jnp.max(jnp.abs(W), axis=0)
    _, K, E, wmax = jax.lax.fori_loop(0, nb, block, (zeros, zeros, zeros, wmax0))
    return KernelOut(K[:N], E[:N], wmax, r)


def _ds(A, i, j, rows, cols):
    return jax.lax.dynamic_slice(A, (i, j), (rows, cols))


def _dus(A, block, i):
    return jax.lax.dynamic_update_slice(A, block, (i, 0))
