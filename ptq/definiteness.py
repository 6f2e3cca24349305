"""Whether ``H = X^T X + lam I`` is positive definite: before and after its factorisation.

`ptq.optq` and `ptq.qronos` never return unquantized weights: a singular H raises a
ValueError naming the matrix and the remedy (a ridge ``lam`` or ``percdamp``).
"""

from __future__ import annotations

import jax
import numpy as np


def check_rank(sq_norms: jax.Array, *, lam: float, m: int, name: str = "X") -> None:
    """Raise when ``lam = 0`` and more live features than samples make H singular.

    ``X^T X`` has rank at most m, so with more than m nonzero columns and no ridge H is
    singular in exact arithmetic. The floating-point Cholesky factorisation does not always
    notice (it can end with tiny positive pivots), hence this exact count.
    """
    live = int(np.count_nonzero(np.asarray(sq_norms)))
    if lam == 0 and live > m:
        raise ValueError(
            f"H = {name}^T {name} + lam*I is not positive definite: lam = 0 and {live} live "
            f"features exceed m = {m} samples, so {name}^T {name} (rank <= {m}) is singular. "
            f"Pass `lam` > 0 (absolute) or `percdamp` > 0 (relative to "
            f"mean(diag({name}^T {name})), GPTQ uses 0.01)."
        )


def check_factor(
    r: jax.Array, *, lam: float, m: int, N: int, name: str = "X", H_diag: jax.Array | None = None
) -> None:
    """Raise when H is not (numerically) positive definite.

    Either the Cholesky factorisation failed (a NaN or non-positive pivot), or ``lam = 0`` and
    a pivot ``r_t^2`` is at most ``N * eps * H_tt``, the size of the factorisation's backward
    error: then H is singular to working precision (e.g. duplicate features). With ``lam > 0``
    H is positive definite by construction and only a failed factorisation raises.
    """
    r = np.asarray(r)
    failed = not np.all(np.isfinite(r) & (r > 0))
    if not failed and lam == 0 and H_diag is not None:
        eps = float(np.finfo(r.dtype).eps)
        failed = bool(np.any(r.astype(np.float64) ** 2 <= N * eps * np.asarray(H_diag)))
    if failed:
        hint = (
            f" With N = {N} > m = {m} features exceed samples, so {name}^T {name} is singular"
            if N > m
            else ""
        )
        raise ValueError(
            f"H = {name}^T {name} + lam*I is not positive definite (lam = {lam:g}); its Cholesky "
            f"factorisation failed or left a pivot at rounding-error level.{hint} Pass a "
            f"larger `lam` (absolute) or `percdamp` (relative to mean(diag({name}^T {name})), "
            f"GPTQ uses 0.01)."
        )
