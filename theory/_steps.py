"""Quantization steps that vary: one for the layer, one per neuron, or one per weight.

Every bound of `theory` takes ``step`` in one of three forms (theory/README.md section 7):

* a scalar ``delta``: one uniform grid for the whole layer;
* shape (n,): ``delta_k`` for neuron k (a per-channel grid);
* shape (N, n): ``delta_{jk}``, the step of the grid weight ``W[j, k]`` is rounded on, rows in
  the ORIGINAL feature order (row j = feature j), columns = neurons. This is what a group-wise
  grid gives: every weight carries the step of its group, whatever the grouping (consecutive
  features in original order for static groups, in processing order for GPTQ's act_order
  groups, or any other assignment).

The bounds walk the features in processing order, so the step used at step t of neuron k is
``step[order[t], k]`` (:func:`in_processing_order`). The scalar and (n,) forms keep the code
paths (and the floating-point results) they always had; only the (N, n) form takes the
per-step sums of section 7.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Steps(NamedTuple):
    """A validated ``step`` argument."""

    value: np.ndarray  # float64, () or (n,) or (N, n) (original feature order), finite, > 0
    per_weight: bool  # True for the (N, n) form

    @property
    def scalar(self) -> bool:
        return self.value.ndim == 0

    @property
    def n(self) -> int | None:
        """The number of neurons the step fixes (None for a scalar)."""
        return None if self.value.ndim == 0 else int(self.value.shape[-1])


def check_steps(step, N: int, n: int | None = None) -> Steps:
    """Validate ``step`` against N features and (if known) n neurons.

    Args:
      step: a scalar, (n,) or (N, n) array of finite steps > 0.
      N: the number of features (rows of W, columns of X).
      n: the number of neurons, when the function also receives W; None when it does not
        (then a 1-D step fixes n).

    Returns:
      `Steps` (the value as float64, not broadcast).

    Raises:
      ValueError: naming ``step``, the accepted shapes and the shape received.
    """
    s = np.asarray(step, dtype=np.float64)
    ok = s.ndim == 0 or (s.ndim == 1 and (n is None or s.shape[0] == n) and s.shape[0] > 0) or (
        s.ndim == 2 and s.shape[0] == N and (n is None or s.shape[1] == n) and s.shape[1] > 0)
    if not ok:
        neuron = "(n,)" if n is None else f"(n,) = ({n},)"
        weight = f"(N, n) = ({N}, n)" if n is None else f"(N, n) = ({N}, {n})"
        raise ValueError(
            f"`step` must be a scalar, one per neuron {neuron} or one per feature and neuron "
            f"{weight} (rows in the original feature order); got shape {s.shape}"
        )
    if not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError(f"`step` must be finite and > 0; got min {float(np.min(s))!r}")
    return Steps(s, s.ndim == 2)


def per_neuron(steps: Steps, n: int) -> np.ndarray:
    """A scalar or (n,) step as float64 (n,) (what the scalar/per-neuron code paths use)."""
    if steps.per_weight:
        raise ValueError("internal: per_neuron called with an (N, n) step")
    return np.full(n, float(steps.value)) if steps.scalar else steps.value


def in_processing_order(steps: Steps, order: np.ndarray, n: int | None = None) -> np.ndarray:
    """``D[t, k] = delta`` of the weight rounded at step t of neuron k: (N, n) float64.

    An (N, n) step is gathered by rows, ``D = step[order]``; a scalar or (n,) step is
    broadcast (n taken from the step when None).
    """
    N = order.shape[0]
    if steps.per_weight:
        return steps.value[order]
    if n is None:
        n = 1 if steps.scalar else steps.n
    return np.broadcast_to(steps.value, (N, n)).astype(np.float64)


def shape_out(values: np.ndarray, steps: Steps):
    """A per-neuron result (n,) returned as () when the step was a scalar."""
    return values[0] if steps.scalar and values.shape == (1,) else values
