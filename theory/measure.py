"""Measured errors of a quantized layer and the tightness ratio (measured / bound)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ptq import options
from theory._factor import as_matrix


class OutputErrors(NamedTuple):
    """Per-neuron errors of ``Q`` against the target ``X W`` (float64, shape (n,))."""

    l2: np.ndarray  # ||X w - X_hat q||_2 (B1, B2, Q1, Q2)
    linf: np.ndarray  # ||X w - X_hat q||_inf (S2, Q3)
    augmented: np.ndarray  # sqrt(||X w - X_hat q||^2 + lam ||w - q||^2) (I2, I5)


def output_errors(X, W, Q, *, X_hat=None, lam: float = 0.0) -> OutputErrors:
    """Errors of the quantized weights ``Q`` (N, n): ``X W - X_hat Q`` (X_hat = X if None).

    Args:
      X: (m, N) full-precision inputs. W, Q: (N, n) weights and quantized weights, original
        feature order. X_hat: (m, N) mismatched inputs or None. lam: ``>= 0``, for ``augmented``
        (pass ``ptq.Result.lam``).
    """
    X = as_matrix("X", X)
    W = as_matrix("W", W)
    Q = as_matrix("Q", Q)
    options.check_layer_shapes(X, W, X_hat)
    if Q.shape != W.shape:
        raise ValueError(f"`Q` must have the shape of W, {W.shape}; got {Q.shape}")
    lam = options.resolve_lam(0.0, lam, None)  # validates lam >= 0
    Xh = X if X_hat is None else as_matrix("X_hat", X_hat)
    D = X @ W - Xh @ Q
    l2sq = np.sum(D**2, axis=0)
    aug = np.sqrt(l2sq + lam * np.sum((W - Q) ** 2, axis=0))
    return OutputErrors(np.sqrt(l2sq), np.max(np.abs(D), axis=0), aug)


def tightness(measured, bound) -> np.ndarray:
    """The ratio ``measured / bound`` (<= 1 when the bound holds; near 1 when it is tight).

    Args:
      measured: array of measured errors (for example ``output_errors(...).l2``).
      bound: an array, or a result with a ``bound`` field (`StructuralBound`, `WeightBound`),
        broadcastable with ``measured``; entries must be > 0.

    Returns:
      float64 array of the broadcast shape.
    """
    b = getattr(bound, "bound", bound)
    b = np.asarray(b, dtype=np.float64)
    x = np.asarray(measured, dtype=np.float64)
    try:
        shape = np.broadcast_shapes(x.shape, b.shape)
    except ValueError:
        raise ValueError(
            f"`measured` and `bound` must broadcast; got shapes {x.shape} and {b.shape}"
        ) from None
    if not np.all(np.isfinite(b) & (b > 0)):
        raise ValueError("`bound` must be finite and > 0")
    if not np.all(np.isfinite(x) & (x >= 0)):
        raise ValueError("`measured` must be finite and >= 0")
    return np.broadcast_to(x / b, shape).copy()
