"""OPTQ (GPTQ) and stochastic OPTQ on a whole layer."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ptq import definiteness, gather, gram, inputs
from ptq.grid import Grid, GroupGrid, GroupTables, _fit, expand, group_index, num_groups
from ptq.kernel import Groups, factor, quantize_ordered
from ptq.options import Order, Rounding, check_layer_shapes
from ptq.result import Result


def optq(
    X,
    W,
    grid: Grid | GroupGrid,
    *,
    lam: float | None = None,
    percdamp: float | None = None,
    order: Order = "natural",
    order_seed: int = 0,
    rounding: Rounding = "nearest",
    key: jax.Array | None = None,
    block_size: int = 128,
) -> Result:
    r"""Quantize the layer ``X @ W`` with OPTQ (GPTQ); ``rounding="stochastic"``: stochastic OPTQ.

    With ``Xa = [X; sqrt(lam) I]`` and features in processing order, ``w(0) = w`` and for
    ``t = 1..N`` (THEORY.md section 2)::

        q_t = Q(w_t(t-1)),   e_t = w_t(t-1) - q_t,
        w_{>t}(t) = w_{>t}(t-1) + e_t * Xa_{>t}^+ Xa_t        (least-squares re-fit)

    run in the fast form ``w_j(t) = w_j(t-1) - (e_t / U_tt) U_tj`` with ``H^{-1} = U^T U``,
    ``H = X^T X + lam I``, lazily batched (see `ptq.kernel`). Every neuron (column of W) is
    quantized independently with the same H.

    Exact identities of the output (THEORY.md I1-I3, tested): with ``r_t = result.r[t]``,
    ``||X (w - q)||^2 + lam ||w - q||^2 = sum_t e_t^2 r_t^2`` per neuron.

    Args:
      X: (m, N) calibration inputs, rows are samples.
      W: (N, n) weights, features x neurons (the transpose of ``nn.Linear.weight``).
      grid: the alphabet (`ptq.Grid`); values outside its range clip. Its step and zero are
        scalars, one per neuron (n,), or one per feature and neuron (N, n) in original
        feature order (group-wise grids): feature ``order[t]`` is rounded at step t with
        row ``order[t]``.
      lam: absolute regularisation ``>= 0``. percdamp: relative one,
        ``lam = percdamp * mean(diag(X^T X))``. Neither: ``percdamp = 0.01`` (GPTQ).
      order: "natural", "decreasing_norm" (GPTQ's act_order), "increasing_norm", "random"
        (seeded by ``order_seed``) or an explicit permutation.
      rounding: "nearest" (ties up) or "stochastic" (unbiased, needs ``key``).
      key: JAX PRNG key for stochastic rounding; the draws are
        ``jax.random.uniform(key, (N, n))``, row t used at processing step t.
      block_size: lazy-batch width B (does not change the result beyond float rounding).

    Returns:
      `ptq.Result`. Dead features (zero columns of X) get ``w_t = 0`` before quantization,
      as in GPTQ; ``W_start`` is that zeroed ``w``.

    Raises:
      ValueError: on bad shapes, NaN/Inf, bad options, or when H is not positive definite
        (for example N > m with lam = 0): it never returns unquantized weights.

    References: Frantar et al., GPTQ, arXiv:2210.17323; H. Zhang et al., Provable PTQ,
    arXiv:2508.04853. Differs from the reference GPTQ code in ties (rounded up here, to even
    there) and in computing ``U`` from one Cholesky factorisation (mathematically equal).
    """
    m, N, n = check_layer_shapes(X, W)
    inputs.check_common(grid, n, rounding, key, block_size, N=N)
    X, W = inputs.as_arrays(("X", X), ("W", W))
    sq = gram.column_sq_norms(X)
    perm, lam = inputs.resolve_order_and_lam(sq, order, order_seed, lam, percdamp)
    definiteness.check_rank(sq, lam=lam, m=m, name="X")
    W_given = W
    if not np.all(np.asarray(sq) > 0):
        W = jnp.where((sq == 0)[:, None], 0.0, W)  # dead features, as GPTQ
    grid = inputs.realise_static(grid, per_channel_on=W_given, static_on=W)
    p = gather.gather_index(perm)
    R = _ordered_factor(gram.gram_sym(X), lam, p)
    return run_ordered(R, gather.take_rows(W, p), grid, perm=perm, lam=lam, m=m, name="X",
                       rounding=rounding, key=key, block_size=block_size, W_original=W)


def _ordered_factor(XtX, lam, p):
    """``R`` with ``R R^T = H = X^T X + lam I`` in processing order ``p`` (None: natural).

    For another order, ``J H_p J`` (H in processing order, index-reversed, the matrix the
    Cholesky factorisation takes, see `ptq.kernel.factor`) is gathered by its own program,
    in one gather with the reversed index: fused into the factorisation's program the same
    gather cost 6x as much (N = 4096: 0.40 s against 0.06 s, XLA:CPU).
    """
    if p is None:
        return _natural_factor(XtX, lam)
    return _reversed_factor(gather.gather_sym(XtX, p[::-1]), lam)


@jax.jit
def _natural_factor(XtX, lam):
    """`_ordered_factor` in the natural order."""
    return factor(gram.regularise(XtX, lam))


@jax.jit
def _reversed_factor(K, lam):
    """``R`` from ``K = J H_p J`` (the reversal commutes with `gram.regularise`)."""
    return jnp.linalg.cholesky(gram.regularise(K, lam))[::-1, ::-1]


def run_ordered(R, W_start, grid, *, perm, lam, m, name, rounding, key, block_size,
                z_first=None, W_original=None) -> Result:
    """Run the kernel on ordered ``R`` and ``W_start`` and map the results back.

    ``R`` (N, N) is the factor of ``H = R R^T`` in processing order (`_ordered_factor`).
    ``W_start`` is ``w(0)`` in processing order; the result holds it in original order
    (``W_original``, when the caller has it: then it is not gathered back).
    ``grid`` is a `ptq.Grid` in original order (a per-weight grid (N, n) is gathered to
    processing order for the kernel, so feature ``perm[t]`` is rounded at step t with its own
    row), `GroupTables` (a static or per-channel `GroupGrid` already fitted, see
    `inputs.realise_static`), or a dynamic `GroupGrid`, fitted group by group in the kernel.

    The options are keyword-only: ``perm`` (N,) the processing order, ``lam`` the resolved
    ridge, ``m`` the number of samples and ``name`` the factorised matrix ("X" or "X_hat"),
    both for `definiteness.check_factor`'s message; ``rounding``, ``key`` and ``block_size``
    as `ptq.optq`; ``z_first`` (n,) the value step 1 rounds instead of ``w_1`` (Qronos'
    correction step), or None.
    """
    N, n = W_start.shape
    u = None
    if rounding == "stochastic":
        u = inputs.uniforms(key, N, n, W_start.dtype)
    tables, recipe, groups = None, None, None
    if isinstance(grid, GroupTables):
        tables, grid = grid, grid.grid
    elif isinstance(grid, GroupGrid):
        recipe = grid
        if num_groups(N, recipe.group_size) == 1:
            # one group starting at step 1: its current weights are w(0), the first row
            # being the value step 1 rounds (Qronos' z_1)
            W_fit = W_start if z_first is None else W_start.at[0].set(z_first)
            grid = _fit(W_fit, recipe.bits, recipe.kind, 0, recipe.mse)
        else:
            grid = None
            groups = Groups(int(recipe.group_size), recipe.bits, recipe.kind, recipe.mse)
    grid_ordered = grid
    if grid is not None and (jnp.ndim(grid.step) == 2 or jnp.ndim(grid.zero) == 2):
        p = gather.gather_index(perm)
        grid_ordered = grid._replace(
            step=gather.take_rows(jnp.broadcast_to(grid.step, (N, n)), p),
            zero=gather.take_rows(jnp.broadcast_to(grid.zero, (N, n)), p),
        )
    out = quantize_ordered(
        R,
        W_start,
        grid_ordered,
        u,
        z_first,
        block_size=min(int(block_size), N),
        stochastic=rounding == "stochastic",
        first_override=z_first is not None,
        groups=groups,
    )
    # H = R R^T; only the lam = 0 test reads its diagonal (one fused pass over R, no temporary)
    H_diag = _row_sq_norms(R) if lam == 0 else None
    definiteness.check_factor(out.r, lam=lam, m=m, N=N, name=name, H_diag=H_diag)
    if recipe is not None:  # dynamic groups: consecutive in processing order
        if groups is None:
            scales, zeros = grid.step[None], grid.zero[None]
        else:
            scales, zeros = out.scales, out.zeros
        tables = expand(recipe, scales, zeros, group_index(N, recipe.group_size, perm))
        grid = tables.grid
    inv = gather.gather_index(np.argsort(perm))
    Q, codes = _map_back(out.k, grid.step, grid.zero, inv)
    W_start = gather.take_rows(W_start, inv) if W_original is None else W_original
    if tables is None:
        return Result(Q, codes, out.e, perm, lam, out.w_max, out.r, W_start, grid)
    return Result(Q, codes, out.e, perm, lam, out.w_max, out.r, W_start, grid, tables.g_idx,
                  tables.scales, tables.zeros)


@jax.jit
def _row_sq_norms(R):
    return jnp.einsum("ij,ij->i", R, R)


@partial(jax.jit, donate_argnums=0)
def _map_back(k, step, zero, inv):
    """``(Q, codes)`` in the original order from the kernel's integer levels ``k`` (processing
    order; ``inv`` the inverse permutation, None for the natural order): one program that
    reads ``k`` once (N = 4096: two separate passes and a gather took 0.17 s). ``k`` is
    donated: Q takes its buffer when they have the same shape (no fresh 64 MiB at 4096)."""
    k = gather.take_rows(k, inv)
    return step * k, (k + zero).astype(jnp.int32)
