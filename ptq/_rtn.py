"""Round to nearest: the baseline with no error feedback."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ptq import layer
from ptq.grid import Grid
from ptq.options import check_matrix


class RTNResult(NamedTuple):
    Q: jax.Array  # (N, n) float: Q(w) elementwise, on the grid
    codes: jax.Array  # (N, n) int32


def rtn(W, grid: Grid) -> RTNResult:
    """Round every weight to the nearest grid point (ties up), ``q = Q(w)``.

    Args:
      W: (N, n) weights, features x neurons. grid: `ptq.Grid`, its step and zero of shape
        (), (n,) or (N, n) (one per weight, rounded elementwise).
    """
    N, n = check_matrix("W", W)
    layer.check_common(grid, n, "nearest", None, 1, N=N)
    (W,) = layer.as_arrays(("W", W))
    k = grid.nearest_index(W)
    return RTNResult(grid.step * k, (k + grid.zero).astype(jnp.int32))
