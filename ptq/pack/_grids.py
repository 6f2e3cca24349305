"""From a `ptq.Grid` and a result's codes to GPTQ's conventions: bits and sym of the grid,
signed symmetric codes to unsigned ones, per-feature tables to group tables and g_idx."""

from __future__ import annotations

import math

import numpy as np

from ptq.pack._bits import check_bits
from ptq.pack._layer import Format, PackedLayer, check_range, integer_array, pack


def grid_bits(grid) -> tuple[int, bool]:
    """``(bits, sym)`` of a finite `ptq.Grid` (read through NumPy; JAX is not imported).

    Asymmetric: codes [0, 2^b - 1]. Symmetric: zero 0 and codes [-K, K], K = 2^(b-1) - 1.
    """
    qmin, qmax = float(np.asarray(grid.qmin)), float(np.asarray(grid.qmax))
    if not (math.isfinite(qmin) and math.isfinite(qmax)):
        raise ValueError("`grid` is an infinite alphabet (no code range): only finite grids "
                         f"pack; got qmin {qmin}, qmax {qmax}")
    if qmin == 0 and math.log2(qmax + 1).is_integer():
        return check_bits(int(math.log2(qmax + 1))), False
    if qmin == -qmax and np.all(np.asarray(grid.zero) == 0) and math.log2(qmax + 1).is_integer():
        return check_bits(int(math.log2(qmax + 1)) + 1), True
    raise ValueError("`grid` must be GPTQ's asymmetric grid (codes [0, 2^b - 1]) or a b-bit "
                     f"symmetric one (zero 0, codes [-(2^(b-1) - 1), 2^(b-1) - 1]); got qmin "
                     f"{qmin}, qmax {qmax}")


def signed_to_unsigned(k, bits: int):
    """Symmetric codes k in [-K, K] (zero 0) -> GPTQ sym=True codes ``k + 2^(b-1)``, zero
    ``2^(b-1)`` (the same values: ``delta (k + 2^(b-1) - 2^(b-1)) = delta k``)."""
    half = 2 ** (check_bits(bits) - 1)
    return np.asarray(k).astype(np.int64) + half, half


def from_grid(codes, grid, *, g_idx=None, name: str = "layer",
              format: Format = "gptq") -> PackedLayer:
    """Pack ``codes`` (a ptq result's ``codes``, ``Q = step * (codes - zero)``) on ``grid``.

    ``grid.step`` / ``grid.zero`` may be scalars (per layer), (n,) (per neuron, G = 1), (G, n)
    group tables with ``g_idx`` (N,), or (N, n) per-feature tables (each feature's row is its
    group's step, as a group-wise `ptq.Grid`), compressed with `group_table` and ``g_idx``.
    A symmetric grid is shifted to GPTQ's sym=True convention (`signed_to_unsigned`).
    """
    bits, sym = grid_bits(grid)
    codes = integer_array("codes", codes, 2, name)
    N, n = codes.shape
    step, zero = np.broadcast_arrays(np.asarray(grid.step), np.asarray(grid.zero))
    if step.ndim <= 1:
        step, zero = (np.broadcast_to(a, (n,))[None] for a in (step, zero))
    elif step.shape == (N, n):  # per feature: one row per input feature, compress to groups
        if g_idx is None:
            raise ValueError(f"layer {name!r}: a per-feature grid ({N}, {n}) needs `g_idx`, "
                             "the group of each input feature; got None")
        step, zero = group_table(step, zero, g_idx, name=name)
    if sym:
        codes, half = signed_to_unsigned(codes, bits)
        zero = zero + half
    return pack(codes, step, zero, g_idx, bits=bits, name=name, format=format)


def group_table(step, zero, g_idx, *, name: str = "layer") -> tuple[np.ndarray, np.ndarray]:
    """Per-feature tables (N, n) -> group tables (G, n), G = max(g_idx) + 1.

    Every feature of group g must carry the same step and zero row (ValueError otherwise,
    naming the group), and every group must have a feature.
    """
    step, zero = np.asarray(step), np.asarray(zero)
    g = integer_array("g_idx", g_idx, 1, name)
    if step.ndim != 2 or zero.shape != step.shape or g.shape != step.shape[:1]:
        raise ValueError(f"layer {name!r}: `step`, `zero` must be (N, n) and `g_idx` (N,); got "
                         f"{step.shape}, {zero.shape}, {g.shape}")
    check_range("g_idx", g, 0, step.shape[0] - 1, name)
    G = int(g.max()) + 1
    first = np.full(G, -1)
    first[g[::-1]] = np.arange(len(g))[::-1]  # the first feature of each group
    empty = np.flatnonzero(first < 0)
    if empty.size:
        raise ValueError(f"layer {name!r}: groups {empty[:5].tolist()} have no feature in "
                         "`g_idx`")
    S, Z = step[first], zero[first]
    bad = np.flatnonzero(np.any((step != S[g]) | (zero != Z[g]), axis=1))
    if bad.size:
        j = int(bad[0])
        raise ValueError(f"layer {name!r}: feature {j} is in group {int(g[j])} but its step or "
                         "zero differs from the group's first feature")
    return S, Z


def group_index(N: int, group_size: int | None) -> np.ndarray:
    """GPTQ's g_idx without act_order (or with static groups): ``j // group_size``."""
    if group_size is None or group_size == -1:
        return np.zeros(N, np.int32)
    return (np.arange(N) // group_size).astype(np.int32)
