"""Round to nearest: the baseline with no error feedback."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ptq import inputs
from ptq.grid import Grid, GroupGrid, GroupTables
from ptq.options import check_matrix


class RTNResult(NamedTuple):
    Q: jax.Array  # (N, n) float: Q(w) elementwise, on the grid
    codes: jax.Array  # (N, n) int32
    grid: Grid | None = None  # the grid used (a GroupGrid realised: step/zero (N, n))
    g_idx: jax.Array | None = None  # (N,) int32: group of each feature (GroupGrid groups)
    scales: jax.Array | None = None  # (G, n): group steps (GroupGrid only)
    zeros: jax.Array | None = None  # (G, n): group zero points (GroupGrid only)


def rtn(W, grid: Grid | GroupGrid) -> RTNResult:
    """Round every weight to the nearest grid point (ties up), ``q = Q(w)``.

    Args:
      W: (N, n) weights, features x neurons. grid: `ptq.Grid`, its step and zero of shape
        (), (n,) or (N, n) (one per weight, rounded elementwise); or a `ptq.GroupGrid`,
        whose groups are fitted on ``W`` itself in original feature order,
        ``g_idx[j] = j // group_size`` (RTN has no order and no feedback, so ``static``
        changes nothing).
    """
    N, n = check_matrix("W", W)
    inputs.check_common(grid, n, "nearest", None, 1, N=N)
    (W,) = inputs.as_arrays(("W", W))
    tables = inputs.realise_static(grid, per_channel_on=W, static_on=W)
    if isinstance(tables, GroupGrid):  # dynamic groups without feedback are static ones
        tables = inputs.realise_static(tables._replace(static=True), per_channel_on=W,
                                      static_on=W)
    if isinstance(tables, GroupTables):
        grid = tables.grid
    k = grid.nearest_index(W)
    Q, codes = grid.step * k, (k + grid.zero).astype(jnp.int32)
    if isinstance(tables, GroupTables):
        return RTNResult(Q, codes, grid, tables.g_idx, tables.scales, tables.zeros)
    return RTNResult(Q, codes, grid)
