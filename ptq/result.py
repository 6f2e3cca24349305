"""`Result`: what `ptq.optq` and `ptq.qronos` return."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from ptq.grid import Grid


class Result(NamedTuple):
    """What `ptq.optq` and `ptq.qronos` return.

    Feature-indexed arrays are in the original feature order unless marked "processing
    order", where row t is the t-th processed feature, ``order[t]``.
    """

    Q: jax.Array  # (N, n) float: quantized weights, on the grid
    codes: jax.Array  # (N, n) int32: integer codes, Q = step * (codes - zero)
    e: jax.Array  # (N, n) float, processing order: e_t = z_t - q_t
    order: np.ndarray  # (N,) int64: order[t] = original index of the t-th processed feature
    lam: float  # the resolved absolute regularisation
    w_max: jax.Array  # (n,) float: max over t of |w_t(0)| and of the value rounded at step t
    r: jax.Array  # (N,) float, processing order: r_t = R_tt = 1 / U_tt (identity I3)
    W_start: jax.Array  # (N, n) float: w(0), the weights the OPTQ recursion starts from
    # The grid actually used: the `ptq.Grid` given, or a `ptq.GroupGrid` realised (step and
    # zero (N, n), the group of each weight; (n,) per channel). Q == grid.dequantize(codes).
    grid: Grid | None = None
    g_idx: jax.Array | None = None  # (N,) int32: group of each feature (GroupGrid groups)
    scales: jax.Array | None = None  # (G, n) float: group steps (GroupGrid only; G = 1 per channel)
    zeros: jax.Array | None = None  # (G, n) float: group zero points (GroupGrid only)
    strength: float | None = None  # Qronos: the correction strength a used (None: OPTQ)
    selection: object | None = None  # Qronos "auto": the `ptq.select.Selection` behind a, lam
