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

Lazy batching: features are processed in blocks of ``B`` (``block_size``). For block
``[i, i+B)`` the contribution of all earlier blocks is one matrix product
``C[i:i+B, :] @ D`` with ``D = W - Q`` of the finished rows (rows not yet finished are zero);
inside the block, columns are processed one by one with rank-1 updates of the (B, n) panel.
Both loops are ``lax.fori_loop``, so the compiled program does not grow with N.
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
      grid: the grid (step and zero point per neuron, shape () or (n,)).
      u: (N, n) uniforms for stochastic rounding (row t is used at step t), or None.
      z_first: (n,) value rounded at step 1 instead of ``z_1 = w_1`` (Qronos' correction
        step); the error fed forward is still ``e_1 = w_1 - q_1``. None when unused.
      block_size: B, the lazy-batch width.
      stochastic / first_override: static switches matching ``u`` / ``z_first``.
    """
    N, n = W.shape
    B = block_size
    nb = -(-N // B)
    Np = nb * B
    dtype = W.dtype

    r = jnp.diagonal(R)
    C = R.T / r[:, None]
    # Pad to whole blocks: padded features are decoupled (C = I there) and have w = 0, so they
    # never touch the real ones (C is lower triangular and they come last).
    C = jnp.eye(Np, dtype=dtype).at[:N, :N].set(C)
    Wp = jnp.zeros((Np, n), dtype).at[:N].set(W)
    up = None if u is None else jnp.zeros((Np, n), dtype).at[:N].set(u)
    zf = jnp.zeros((n,), dtype) if z_first is None else z_first
    Ls = C - jnp.eye(Np, dtype=dtype)  # strictly lower part: the feedback coefficients

    def block_body(b, carry):
        D, K, E, wmax = carry
        i = b * B
        Wb = jax.lax.dynamic_slice(Wp, (i, 0), (B, n))
        # Contributions of all finished blocks (rows >= i of D are still zero).
        Cb = jax.lax.dynamic_slice(Ls, (i, 0), (B, Np))
        Zb = Wb + jnp.dot(Cb, D, precision=HIGHEST)
        Lbb = jax.lax.dynamic_slice(Ls, (i, i), (B, B))
        Ub = None if up is None else jax.lax.dynamic_slice(up, (i, 0), (B, n))

        def col_body(j, inner):
            Zb, Db, Kb, Eb, wmax = inner
            z = Zb[j]
            rounded = jnp.where(i + j == 0, zf, z) if first_override else z
            if stochastic:
                k = grid.stochastic_index(rounded, Ub[j])
            else:
                k = grid.nearest_index(rounded)
            q = grid.step * k
            d = Wb[j] - q
            e = z - q
            # Rank-1 update of the later rows of this block (column j of Lbb is zero above j).
            Zb = Zb + Lbb[:, j, None] * d[None, :]
            wmax = jnp.maximum(wmax, jnp.abs(rounded))
            return Zb, Db.at[j].set(d), Kb.at[j].set(k), Eb.at[j].set(e), wmax

        zeros = jnp.zeros((B, n), dtype)
        _, Db, Kb, Eb, wmax = jax.lax.fori_loop(0, B, col_body, (Zb, zeros, zeros, zeros, wmax))
        D = jax.lax.dynamic_update_slice(D, Db, (i, 0))
        K = jax.lax.dynamic_update_slice(K, Kb, (i, 0))
        E = jax.lax.dynamic_update_slice(E, Eb, (i, 0))
        return D, K, E, wmax

    zeros = jnp.zeros((Np, n), dtype)
    wmax0 = jnp.max(jnp.abs(W), axis=0)
    _, K, E, wmax = jax.lax.fori_loop(0, nb, block_body, (zeros, zeros, zeros, wmax0))
    return KernelOut(K[:N], E[:N], wmax, r)
