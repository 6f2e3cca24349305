"""Argument resolution shared by `ptq` (JAX) and `theory` (NumPy).

This module is NumPy-only on purpose: `theory` imports it to resolve `order`, `lam` and
`percdamp` exactly as the algorithms do, without importing JAX (see DESIGN.md). The names of
the rounding modes and of the Qronos variants live here for the same reason. Every
public function of `ptq` and `theory` that takes these arguments goes through here, so
there is one definition of each.

Conventions (THEORY.md section 1):

* ``lam`` is the absolute ridge added to the Gram matrix, ``H = X^T X + lam * I``.
* ``percdamp`` is GPTQ's relative damping, ``lam = percdamp * mean(diag(X^T X))``.
  Giving neither means ``percdamp = 0.01`` (GPTQ's default); giving both is an error.
* An order is a permutation ``perm`` of the features: ``perm[t]`` is the (original) index of
  the t-th processed feature. Ties in the norm orders are broken by the original index
  (a stable sort), so the order is a pure function of the column norms.
"""

from __future__ import annotations

import numbers
from typing import Literal, Sequence, Union, get_args

import numpy as np

OrderName = Literal["natural", "decreasing_norm", "increasing_norm", "random"]
Order = Union[OrderName, Sequence[int], np.ndarray]
ORDERS: tuple[str, ...] = get_args(OrderName)
Rounding = Literal["nearest", "stochastic"]
ROUNDINGS: tuple[str, ...] = get_args(Rounding)
Variant = Literal["paper", "ls_first"]  # Qronos: correction step first, or least squares first
VARIANTS: tuple[str, ...] = get_args(Variant)
DEFAULT_PERCDAMP = 0.01  # GPTQ's default relative damping


def check_rounding(rounding) -> None:
    """``rounding`` is one of `ROUNDINGS` (ValueError naming the argument otherwise)."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"`rounding` must be 'nearest' or 'stochastic'; got {rounding!r}")


def check_variant(variant) -> None:
    """``variant`` is one of `VARIANTS` (ValueError naming the argument otherwise)."""
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {VARIANTS}; got {variant!r}")


def check_strength(strength, variant) -> float:
    """Qronos' correction strength: a number in [0, 1], only 1 for the paper variant.

    Returns it as a Python float; ValueError naming the argument otherwise ("auto" is
    handled by the caller, `ptq.qronos`)."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise ValueError(f'`strength` must be a number in [0, 1] or "auto"; got {strength!r}')
    a = float(strength)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"`strength` must lie in [0, 1]; got {strength!r}")
    if variant == "paper" and a != 1.0:
        raise ValueError(
            f'`strength` other than 1 needs `variant="ls_first"` (the paper variant\'s first '
            f"step is defined at full strength only); got strength={strength!r} with "
            f"variant={variant!r}")
    return a


def resolve_lam(diag_mean: float, lam: float | None, percdamp: float | None) -> float:
    """Return the absolute regularisation ``lam`` from ``lam`` or ``percdamp``.

    Args:
      diag_mean: ``mean(diag(X^T X)) = ||X||_F^2 / N`` of the matrix whose Gram matrix is
        regularised (X for OPTQ, X_hat for Qronos).
      lam: absolute ridge, ``>= 0``; or None.
      percdamp: relative ridge, ``>= 0``; or None. Neither given means 0.01.

    Returns:
      ``lam`` as a Python float (``percdamp * diag_mean`` when given relatively).
    """
    if lam is not None and percdamp is not None:
        raise ValueError(
            f"give at most one of `lam` and `percdamp`; got lam={lam!r} and percdamp={percdamp!r}"
        )
    if lam is not None:
        lam = _nonnegative_float("lam", lam)
        return lam
    percdamp = DEFAULT_PERCDAMP if percdamp is None else _nonnegative_float("percdamp", percdamp)
    return float(percdamp) * float(diag_mean)


def resolve_order(col_sq_norms: np.ndarray, order: Order, order_seed: int = 0) -> np.ndarray:
    """Return the processing permutation (int64, shape (N,)).

    Args:
      col_sq_norms: ``||X_t||^2`` for each feature t, shape (N,). For "decreasing_norm" this
        is GPTQ's ``act_order`` (sorting ``diag(H)``; the ridge shifts every entry equally).
      order: "natural" (0..N-1), "decreasing_norm", "increasing_norm", "random" (a uniform
        permutation from ``numpy.random.default_rng(order_seed)``), or an explicit
        permutation of ``range(N)``.
      order_seed: seed of the "random" order.

    Returns:
      ``perm`` with ``perm[t]`` the original index of the t-th processed feature.
    """
    norms = np.asarray(col_sq_norms, dtype=np.float64)
    N = norms.shape[0]
    if isinstance(order, str):
        if order == "natural":
            return np.arange(N, dtype=np.int64)
        if order == "decreasing_norm":
            return np.argsort(-norms, kind="stable").astype(np.int64)
        if order == "increasing_norm":
            return np.argsort(norms, kind="stable").astype(np.int64)
        if order == "random":
            if not isinstance(order_seed, numbers.Integral):
                raise ValueError(f"`order_seed` must be an integer; got {order_seed!r}")
            return np.random.default_rng(int(order_seed)).permutation(N).astype(np.int64)
        raise ValueError(f"`order` must be one of {ORDERS} or a permutation; got {order!r}")
    perm = np.asarray(order)
    if (
        perm.shape != (N,)
        or not np.issubdtype(perm.dtype, np.integer)
        or not np.array_equal(np.sort(perm), np.arange(N))
    ):
        raise ValueError(
            f"`order` given as an array must be a permutation of range({N}); "
            f"got shape {perm.shape} and dtype {perm.dtype}"
        )
    return perm.astype(np.int64)


def check_matrix(name: str, A, *, ndim: int = 2) -> tuple[int, ...]:
    """Check that ``A`` has ``ndim`` dimensions; return its shape."""
    shape = tuple(np.shape(A))
    if len(shape) != ndim:
        raise ValueError(f"`{name}` must be a {ndim}-D array; got shape {shape}")
    if 0 in shape:
        raise ValueError(f"`{name}` must be non-empty; got shape {shape}")
    return shape


def check_layer_shapes(X, W, X_hat=None) -> tuple[int, int, int]:
    """Check ``X`` (m, N), ``W`` (N, n) and optionally ``X_hat`` (m, N); return (m, N, n)."""
    m, N = check_matrix("X", X)
    NW, n = check_matrix("W", W)
    if NW != N:
        raise ValueError(
            f"`W` must have shape (N, n) with N = X.shape[1] = {N} (features x neurons; "
            f"PyTorch's nn.Linear.weight is (n, N), pass its transpose); got W.shape={(NW, n)}"
        )
    if X_hat is not None:
        shape_hat = check_matrix("X_hat", X_hat)
        if shape_hat != (m, N):
            raise ValueError(f"`X_hat` must have the shape of X, {(m, N)}; got {shape_hat}")
    return m, N, n


def is_natural(perm) -> bool:
    """Whether the permutation ``perm`` is the identity, the natural order (the default), for
    which every reordering gather or copy can be skipped."""
    perm = np.asarray(perm)
    return bool(np.array_equal(perm, np.arange(perm.size)))


def check_finite_numpy(name: str, A: np.ndarray) -> None:
    """Raise if a NumPy array holds NaN or Inf.

    A NaN or Inf entry makes the sum NaN or Inf, so a finite sum proves every entry finite in
    one pass with no boolean temporary; only a non-finite sum (a bad entry, or finite entries
    whose sum overflows) is checked entry by entry."""
    A = np.asarray(A)
    if A.dtype.kind in "fc":
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.sum(A)):
                return
    if not np.all(np.isfinite(A)):
        bad = int(np.size(A) - np.count_nonzero(np.isfinite(A)))
        raise ValueError(f"`{name}` must be finite; got {bad} NaN or Inf entries")


def _nonnegative_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a real number >= 0; got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0; got {value!r}")
    return value
