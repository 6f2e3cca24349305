r"""Waterfilling OPTQ: one step per feature, ``delta_t = c / r_t``, on the infinite alphabet.

OPTQ's error is exactly ``||Xa (w - q)||^2 = sum_t e_t^2 r_t^2`` (identity I3, with the
per-weight steps of theory/README.md section 7). With rounding errors spread over
``[-delta_t/2, delta_t/2]`` every feature contributes about ``delta_t^2 r_t^2 / 12``: equal
steps weight the features by ``r_t^2``, while ``delta_t = c / r_t`` makes every term
``c^2 / 12``, the reverse-waterfilling allocation that the rate-distortion limit of the layer
asks for when all its levels are active (theory/README.md section 8). The steps are a
per-weight ``(N, n)`` grid, so this is `ptq.optq` itself, through the same kernel; only the
constant ``c`` is searched for, so that the entropy-coded rate of the codes (`ptq.rate`)
meets a target.

Bounds (no clipping, the alphabet is ``delta_t Z``): ``||Xa (w - q)|| <= (c/2) sqrt(N)`` per
neuron (B1' with ``delta_t r_t = c``), whatever the data; the high-rate estimate is
``N c^2 / 12``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from ptq import definiteness, gather, gram, inputs
from ptq._optq import _ordered_factor, run_ordered
from ptq.grid import Grid
from ptq.options import Order, check_layer_shapes
from ptq.rate import PER, code_entropy
from ptq.result import Result


class WaterfillResult(NamedTuple):
    """What `optq_waterfill` returns."""

    result: Result  # the OPTQ run at the final c (its grid: step (N, n) = c / r_t per row)
    c: float  # the constant: delta_t r_t = c for every feature
    rate: float  # entropy-coded rate of ``result.codes`` (bits per weight, `ptq.rate`)
    history: tuple  # ((c, rate), ...) every OPTQ run of the search, in order


def waterfill_steps(r, order, c: float) -> np.ndarray:
    """Per-feature steps in ORIGINAL order: ``step[order[t]] = c / r[t]`` ((N,) float64).

    Args:
      r: (N,) residual norms ``r_t`` in processing order (``ptq.Result.r``,
        `theory.residual_norms`). order: (N,) the processing order. c: the constant > 0.
    """
    r = np.asarray(r, dtype=np.float64)
    order = np.asarray(order)
    if r.ndim != 1 or order.shape != r.shape:
        raise ValueError(f"`r` and `order` must be 1-D of equal length; got shapes {r.shape} "
                         f"and {order.shape}")
    if not np.all(np.isfinite(r)) or not np.all(r > 0):
        raise ValueError("`r` must be finite and positive; got "
                         f"min {float(np.min(r)) if r.size else 'empty'}")
    if not (isinstance(c, (int, float, np.floating)) and math.isfinite(c) and c > 0):
        raise ValueError(f"`c` must be a finite number > 0; got {c!r}")
    steps = np.empty_like(r)
    steps[order] = float(c) / r
    return steps


def waterfill_grid(r, order, c: float, n: int) -> Grid:
    """The infinite per-weight grid of `waterfill_steps` for a layer of ``n`` neurons."""
    steps = waterfill_steps(r, order, c)
    return Grid.symmetric(jnp.asarray(np.broadcast_to(steps[:, None], (steps.size, n))))


def optq_waterfill(
    X,
    W,
    *,
    rate: float,
    per: str = "row",
    lam: float | None = None,
    percdamp: float | None = None,
    order: Order = "natural",
    order_seed: int = 0,
    tol: float = 0.005,
    max_iter: int = 30,
    block_size: int = 128,
) -> WaterfillResult:
    r"""OPTQ with steps ``delta_t = c / r_t``, ``c`` chosen so the codes' entropy is ``rate``.

    The search: the entropy-coded rate ``R(c)`` of the codes falls by one bit when ``c``
    doubles at high rate (``R = h - log2 c + mean_t log2 r_t`` for weights of differential
    entropy ``h`` bits), so each step sets ``c <- c 2^{R(c) - rate}``, kept inside the
    bracket of the values already seen on either side of the target (geometric bisection when
    the step leaves it). It starts from the high-rate value for Gaussian weights of the
    layer's variance and stops when ``|R(c) - rate| <= tol`` bits. ``R`` is a step function
    of ``c``, so when two values of ``c`` closer than one part in 10^6 still straddle the
    target, the one nearer to it is returned.

    Args:
      X, W: as `ptq.optq` (m, N) and (N, n).
      rate: target entropy-coded rate, bits per weight, > 0.
      per: how the rate is measured, ``"row"`` (one code table per input feature) or
        ``"layer"`` (`ptq.rate.code_entropy`).
      lam, percdamp, order, order_seed, block_size: as `ptq.optq`.
      tol: accepted distance to ``rate``, bits. max_iter: OPTQ runs at most.

    Raises:
      ValueError: on bad arguments (as `ptq.optq`), and when ``max_iter`` runs do not reach
        the target within ``tol`` (it never returns a result at another rate silently).
    """
    if not (isinstance(rate, (int, float, np.floating)) and math.isfinite(rate) and rate > 0):
        raise ValueError(f"`rate` must be a finite number of bits > 0; got {rate!r}")
    if per not in PER:
        raise ValueError(f"`per` must be one of {PER}; got {per!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"`tol` must be > 0 bits; got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"`max_iter` must be an integer >= 1; got {max_iter!r}")
    m, N, n = check_layer_shapes(X, W)
    X, W = inputs.as_arrays(("X", X), ("W", W))
    sq = gram.column_sq_norms(X)
    perm, lam_ = inputs.resolve_order_and_lam(sq, order, order_seed, lam, percdamp)
    definiteness.check_rank(sq, lam=lam_, m=m, name="X")
    if not np.all(np.asarray(sq) > 0):
        W = jnp.where((sq == 0)[:, None], 0.0, W)  # dead features, as GPTQ
    p = gather.gather_index(perm)
    R = _ordered_factor(gram.gram_sym(X), lam_, p)
    W_ordered = gather.take_rows(W, p)
    r = np.asarray(jnp.diagonal(R), dtype=np.float64)

    def run(c):
        res = run_ordered(R, W_ordered, waterfill_grid(r, perm, c, n), perm=perm, lam=lam_, m=m,
                          name="X", rounding="nearest", key=None, block_size=block_size,
                          W_original=W)
        return res, code_entropy(np.asarray(res.codes), per=per)

    w = np.asarray(W, dtype=np.float64)
    h_bits = 0.5 * math.log2(2 * math.pi * math.e * max(float(np.var(w)), 1e-300))
    c = 2.0 ** (h_bits - rate + float(np.mean(np.log2(r))))
    lo = hi = None  # c giving a rate above / below the target
    history = []
    best = None
    for _ in range(max_iter):
        res, got = run(c)
        history.append((c, got))
        if best is None or abs(got - rate) < abs(best[2] - rate):
            best = (res, c, got)
        if abs(got - rate) <= tol:
            return WaterfillResult(res, float(c), float(got), tuple(history))
        if got > rate:
            lo = c if lo is None else max(lo, c)
        else:
            hi = c if hi is None else min(hi, c)
        if lo is not None and hi is not None and hi / lo < 1 + 1e-6:
            return WaterfillResult(best[0], float(best[1]), float(best[2]), tuple(history))
        nxt = c * 2.0 ** (got - rate)
        if lo is not None and hi is not None:
            if not lo < nxt < hi:
                nxt = math.sqrt(lo * hi)
        elif lo is not None and nxt <= lo:
            nxt = 2 * lo
        elif hi is not None and nxt >= hi:
            nxt = hi / 2
        c = nxt
    raise ValueError(f"optq_waterfill: rate {rate} bits not reached within tol={tol} in "
                     f"max_iter={max_iter} runs; closest {best[2]:.4f} bits at c={best[1]:.4g}")
