"""The public arguments of `optq`, `qronos` and `rtn`: checked, converted and resolved.

Shapes are checked by `ptq.options` (NumPy, shared with `theory`); here the JAX side: arrays
in the compute dtype, the options every algorithm shares, the resolved order and ``lam``, a
`ptq.GroupGrid` fitted when it can be fitted up front, and the uniforms of stochastic
rounding drawn from ``key``.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from ptq import options
from ptq.grid import Grid, GroupGrid, check_group_grid, fit_groups


def compute_dtype():
    """float64 when JAX's x64 mode is on, float32 otherwise (DESIGN.md)."""
    return jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32


def as_arrays(*named: tuple[str, object]):
    """Convert to device arrays of the compute dtype; raise on NaN or Inf."""
    dtype = compute_dtype()
    out = []
    for name, A in named:
        A = jnp.asarray(A, dtype=dtype)
        if not bool(_all_finite(A)):
            bad = int(A.size - jnp.count_nonzero(jnp.isfinite(A)))
            raise ValueError(f"`{name}` must be finite; got {bad} NaN or Inf entries")
        out.append(A)
    return out


@jax.jit
def _all_finite(A: jax.Array) -> jax.Array:
    """Whether every entry of ``A`` is finite: one fused pass, no boolean temporary."""
    return jnp.all(jnp.isfinite(A))


def check_common(grid, n: int, rounding: str, key, block_size, *, N: int | None = None) -> None:
    """Validate the options every algorithm shares.

    ``grid`` is a `ptq.GroupGrid` recipe or a `ptq.Grid` whose ``step`` and ``zero`` are each
    a scalar, one per neuron (n,) or, when the number of features ``N`` is given, one per
    feature and neuron (N, n).
    """
    if isinstance(grid, GroupGrid):
        check_group_grid(grid)
    elif isinstance(grid, Grid):
        _check_grid_shapes(grid, n, N)
    else:
        raise ValueError(
            f"`grid` must be a ptq.Grid or a ptq.GroupGrid; got {type(grid).__name__}"
        )
    options.check_rounding(rounding)
    if rounding == "stochastic" and key is None:
        raise ValueError("`rounding='stochastic'` needs `key` (a jax.random key); got key=None")
    integral = isinstance(block_size, numbers.Integral) and not isinstance(block_size, bool)
    if not integral or block_size < 1:
        raise ValueError(f"`block_size` must be an integer >= 1; got {block_size!r}")


def _check_grid_shapes(grid: Grid, n: int, N: int | None) -> None:
    allowed = [(), (n,)] + ([] if N is None else [(N, n)])
    expected = f"() or (n,) = ({n},)" + ("" if N is None else f" or (N, n) = {(N, n)}")
    for field in ("step", "zero"):
        shape = tuple(jnp.shape(getattr(grid, field)))
        if shape not in allowed:
            raise ValueError(
                f"`grid` {field} must have shape {expected} (one per layer, neuron"
                f"{'' if N is None else ' or weight'}); got {shape}"
            )
    for field in ("qmin", "qmax"):
        if jnp.shape(getattr(grid, field)) != ():
            raise ValueError(
                f"`grid` {field} must be a scalar; got shape {jnp.shape(getattr(grid, field))}"
            )


def realise_static(grid, *, per_channel_on, static_on):
    """Fit a per-channel or static `GroupGrid` up front (-> `GroupTables`); pass others on.

    ``per_channel_on`` / ``static_on``: the (N, n) weights, original order, that those fits
    use (GPTQ fits per channel on the layer's weights before dead features are zeroed, and
    static groups after). A dynamic recipe is fitted inside the kernel and returned as is.
    """
    if not isinstance(grid, GroupGrid):
        return grid
    if grid.group_size is None:
        return fit_groups(per_channel_on, grid)
    if grid.static:
        return fit_groups(static_on, grid)
    return grid


def resolve_order_and_lam(sq_norms: jax.Array, order, order_seed, lam, percdamp):
    """Shared resolution (ptq.options) from the column norms of the factorised matrix."""
    sq = np.asarray(sq_norms, dtype=np.float64)
    lam = options.resolve_lam(sq.mean(), lam, percdamp)
    perm = options.resolve_order(sq, order, order_seed)
    return perm, lam


def uniforms(key, N: int, n: int, dtype) -> jax.Array:
    """The U[0,1) draws of stochastic rounding: row t is used at processing step t.

    `ptq.reference` takes the same array, so runs can be compared draw for draw.
    """
    return jax.random.uniform(key, (N, n), dtype=dtype)
