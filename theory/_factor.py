"""The factorisation every bound shares: ``H = R R^T`` in processing order (THEORY.md I3, I4).

Notation (THEORY.md section 1), everything in processing order (row/column t is the t-th
processed feature ``order[t]``):

* ``Xa = [X; sqrt(lam) I]``, ``H = Xa^T Xa = X^T X + lam I``.
* ``R`` (N, N) upper triangular with ``H = R R^T``, the factor `ptq.kernel` uses: the Cholesky
  factor of the index-reversed matrix, ``J H J = L L^T``, gives ``R = J L J``.
* ``U = R^{-1}``: the upper Cholesky factor of ``H^{-1} = U^T U`` (GPTQ's Hinv), ``U_tt = 1/R_tt``.
* ``r_t = R_tt = 1/U_tt``: the distance of ``Xa_t`` from ``span(Xa_{>t})`` (I3).
* ``M = Xa R^{-T} diag(r)``: column t is ``P_t Xa_t`` (I4). Its first m rows are
  ``M_X = X R^{-T} diag(r)``, computed with one triangular solve, O(m N^2).
* ``V = diag(r) R^{-1} = diag(1/U_tt) U``: row t, off the diagonal, is ``-Xa_{>t}^+ Xa_t``,
  the update OPTQ applies to the later weights per unit of error (B3, S3).

Conventions shared with `ptq` (see ``ptq.gram.regularise``): a diagonal entry of H that is
still 0 after adding lam (a dead feature with lam = 0) is set to 1. A dead feature is
decoupled from all others, so this only fixes its own r_t; it equals appending a row
``e_t^T`` to Xa, which changes no error OPTQ measures (OPTQ sets ``w_t = 0``, so
``q_t = 0`` and ``e_t = 0`` there).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import scipy.linalg

from ptq import options


class Factors(NamedTuple):
    """The factorisation of ``H`` in processing order, shared by the bound functions."""

    order: np.ndarray  # (N,) int64: order[t] = original index of the t-th processed feature
    lam: float  # the resolved absolute regularisation
    R: np.ndarray  # (N, N) float64, upper triangular, H = R R^T (processing order)
    r: np.ndarray  # (N,) float64: r_t = R_tt (I3)
    col_sq_norms: np.ndarray  # (N,) float64, processing order: ||X_t||^2 of the factorised X
    live: np.ndarray  # (N,) bool, processing order: ||X_t|| > 0


class ResidualNorms(NamedTuple):
    """What :func:`residual_norms` returns (processing order)."""

    r: np.ndarray  # (N,) float64: r_t = ||P_t Xa_t|| = R_tt = 1/U_tt (I3)
    M: np.ndarray | None  # (m, N) or (m + N, N) float64: columns P_t Xa_t (I4); None if not asked
    order: np.ndarray  # (N,) int64: the processing order
    lam: float  # the resolved regularisation


def as_matrix(name: str, A) -> np.ndarray:
    """``A`` as a finite 2-D float64 array (ValueError naming ``name`` otherwise)."""
    options.check_matrix(name, A)
    A = np.asarray(A, dtype=np.float64)
    options.check_finite_numpy(name, A)
    return A


def resolve(X: np.ndarray, lam, percdamp, order,
            order_seed) -> tuple[np.ndarray, float, np.ndarray]:
    """``(order, lam, col_sq_norms)`` resolved exactly as `ptq` does, from the factorised X."""
    sq = np.einsum("ij,ij->j", X, X)
    lam = options.resolve_lam(sq.mean(), lam, percdamp)
    perm = options.resolve_order(sq, order, order_seed)
    return perm, lam, sq


def factorise(
    X,
    *,
    lam: float | None = None,
    percdamp: float | None = None,
    order: options.Order = "natural",
    order_seed: int = 0,
    name: str = "X",
) -> Factors:
    """Factor ``H = X^T X + lam I`` in processing order as ``H = R R^T`` (R upper).

    One Gram product (O(m N^2)) and one Cholesky factorisation (O(N^3 / 3));
    ``order`` and ``lam``/``percdamp`` are resolved by `ptq.options` from the column norms of
    ``X``, as `ptq.optq` does (for Qronos pass ``X_hat``, the matrix that is factorised).

    Args:
      X: (m, N) the factorised matrix. name: its name in error messages.

    Returns:
      `Factors`.

    Raises:
      ValueError: bad arguments, or H not positive definite (pass a larger lam/percdamp).
    """
    X = as_matrix(name, X)
    m, N = X.shape
    perm, lam, sq = resolve(X, lam, percdamp, order, order_seed)
    # K = J H J (H in processing order, index-reversed by J) in one gather of X^T X. NumPy
    # computes X.T @ X with BLAS syrk and mirrors the triangle, so it is exactly symmetric.
    rev = perm[::-1]
    K = X.T @ X
    if options.is_natural(perm):
        # the natural order: J H J is H's C-order buffer read backwards, reversed in place
        reverse_in_place(K)
    else:
        K = K[np.ix_(rev, rev)]
    d = np.diagonal(K) + lam
    K[np.diag_indices(N)] = np.where(d == 0, 1.0, d)  # dead feature with lam = 0 (ptq convention)
    # K = U^T U by LAPACK potrf (upper) on K read column-major (K.T, the same symmetric matrix,
    # no copy): the variant OpenBLAS runs fastest, ~2x the row-major lower one at N = 4096.
    U, info = scipy.linalg.lapack.dpotrf(K.T, lower=0, clean=1, overwrite_a=1)
    if info != 0:
        hint = f" With N = {N} > m = {m}, {name}^T {name} is singular." if N > m else ""
        raise ValueError(
            f"H = {name}^T {name} + lam*I is not positive definite (lam = {lam:g}).{hint} "
            "Pass a larger `lam` (absolute) or `percdamp` (relative)."
        )
    R = U.T  # U^T J-reversed, in place: R = J U^T J, upper, H = R R^T (C order, U's buffer)
    reverse_in_place(R)
    r = np.diagonal(R).copy()
    if not np.all(np.isfinite(r) & (r > 0)):
        raise ValueError(
            f"H = {name}^T {name} + lam*I is not numerically positive definite (lam = {lam:g}); "
            "pass a larger `lam` or `percdamp`"
        )
    sqp = sq[perm]
    return Factors(perm, lam, R, r, sqp, sqp > 0)


def reverse_in_place(A: np.ndarray, chunk: int = 1 << 20) -> None:
    """Reverse the buffer of the C-contiguous array ``A`` in place (for a square matrix:
    ``A <- J A J``), ``chunk`` elements at a time.

    Each new (N, N) float64 array costs its page faults on first touch (about 0.3 s at
    N = 4096 on the machine of the benchmark), so the factorisation reverses its matrices where
    they are instead of copying them; the temporary is one chunk (8 MiB)."""
    if not A.flags.c_contiguous:
        raise ValueError("reverse_in_place needs a C-contiguous array")
    f = A.reshape(-1)
    n = f.size
    for s in range(0, n // 2, chunk):
        e = min(s + chunk, n // 2)
        head = f[s:e].copy()
        f[s:e] = f[n - e:n - s][::-1]
        f[n - e:n - s] = head[::-1]


def get_factors(X, factors, lam, percdamp, order, order_seed, name="X") -> Factors:
    """Return ``factors`` after checking it matches the arguments, or compute it."""
    if factors is None:
        return factorise(X, lam=lam, percdamp=percdamp, order=order, order_seed=order_seed,
                         name=name)
    if not isinstance(factors, Factors):
        raise ValueError(
            f"`factors` must be a theory.Factors or None; got {type(factors).__name__}")
    perm, lam, _ = resolve(X, lam, percdamp, order, order_seed)
    check_precomputed(factors.order, factors.lam, perm, lam, "factors")
    return factors


def check_precomputed(order_got, lam_got, order_want, lam_want, what: str) -> None:
    """Raise when precomputed factors were made with another order or lam than requested."""
    if np.shape(order_got) != np.shape(order_want) or not np.array_equal(order_got, order_want):
        raise ValueError(
            f"`{what}` was computed with another processing order than the one the arguments "
            f"resolve to (order/order_seed); got {np.asarray(order_got)[:8]}..., expected "
            f"{np.asarray(order_want)[:8]}..."
        )
    if not np.isclose(lam_got, lam_want, rtol=1e-12, atol=0.0):
        raise ValueError(
            f"`{what}` was computed with lam = {lam_got!r}, but the arguments resolve to "
            f"lam = {lam_want!r}"
        )


def rows_of_M(X: np.ndarray, f: Factors) -> np.ndarray:
    """``M_X = X_p R^{-T} diag(r)`` (m, N): the first m rows of M (I4), one triangular solve.

    ``X`` is in the original feature order; ``X_p = X[:, order]``. The one copy made is
    ``X_p`` in C order, whose transpose ``X_p^T`` (N, m) is already the column-major
    right-hand side LAPACK's solve overwrites in place; the result is scaled in place and
    returned as a transposed view (measured at m = 8192, N = 4096: 1.9 s against 3.5 s for a
    row gather that the solve then copied into column-major order).
    """
    Xp = X.copy() if options.is_natural(f.order) else X[:, f.order]
    Z = scipy.linalg.solve_triangular(f.R, Xp.T, lower=False, check_finite=False,
                                      overwrite_b=True)
    Z *= f.r[:, None]
    return Z.T


def update_coefficients(f: Factors) -> np.ndarray:
    """``V = diag(r) R^{-1}`` (N, N) upper, unit diagonal: ``V_sj = U_sj / U_ss`` (B3, S3).

    Row s, j > s, is ``-(Xa_{>s}^+ Xa_s)_j``: OPTQ's update of ``w_j`` per unit of ``e_s``.
    One triangular inverse (LAPACK trtri, N^3/3 flops): B3 and S3 need entries of U itself.
    """
    # trtri of the lower factor R^T, in place on one copy of R's buffer seen column-major:
    # (R^T)^{-1} = (R^{-1})^T. Letting trtri copy its input instead costs about twice the
    # inverse's own time at N = 4096 (0.69 s against 0.21 + 0.32 s, measured).
    RinvT, info = scipy.linalg.lapack.dtrtri(f.R.copy().T, lower=1, overwrite_c=1)
    if info != 0:
        raise ValueError(f"the triangular factor is singular (trtri info = {info})")
    V = RinvT.T  # zero below the diagonal, as R is
    V *= f.r[:, None]
    return V


def residual_norms(
    X,
    *,
    lam: float | None = None,
    percdamp: float | None = None,
    order: options.Order = "natural",
    order_seed: int = 0,
    M: Literal["none", "rows", "augmented"] = "rows",
    factors: Factors | None = None,
) -> ResidualNorms:
    r"""The residual norms ``r_t`` (I3) and the matrix ``M`` (I4), in processing order.

    ``r_t = ||P_t Xa_t||``, ``P_t = I - Xa_{>t} Xa_{>t}^+``: the distance of the t-th processed
    (augmented) column from the span of the later ones. Computed as ``r_t = R_tt = 1/U_tt``
    (I3: ``r_t^2 = H_tt - H_{t,>t} H_{>t,>t}^{-1} H_{>t,t}``, a Schur complement), and
    ``M = Xa R^{-T} diag(r)``, whose column t is ``P_t Xa_t`` (I4, ``M^T M = diag(r^2)``):
    O(N^3 + m N^2), no projection is formed. ``prod_t r_t^2 = det(H)`` for every order.

    Args:
      X: (m, N) calibration inputs (``X_hat`` for Qronos).
      lam, percdamp, order, order_seed: as `ptq.optq`, resolved by `ptq.options`.
      M: "rows" returns the first m rows ``X R^{-T} diag(r)`` (what S2/Q3 use), "augmented"
        the full (m + N, N) matrix, "none" skips it.
      factors: precomputed `Factors` (from :func:`factorise` with the same arguments).

    Returns:
      `ResidualNorms` (r, M, order, lam). ``r`` equals ``ptq.Result.r``.
    """
    if M not in ("none", "rows", "augmented"):
        raise ValueError(f"`M` must be 'none', 'rows' or 'augmented'; got {M!r}")
    X = as_matrix("X", X)
    f = get_factors(X, factors, lam, percdamp, order, order_seed)
    Mout = None
    if M != "none":
        if M == "augmented":
            # Xa = [X; sqrt(lam) I] (a dead feature with lam = 0 keeps its unit row: ptq's
            # convention H_tt = 1 is the Gram matrix of Xa with that row appended).
            # Row m + t is the t-th processed feature's row, in X's original column order.
            N = X.shape[1]
            extra = np.zeros((N, N))
            extra[np.arange(N), f.order] = np.where(
                (f.col_sq_norms + f.lam) == 0, 1.0, np.sqrt(f.lam))
            X = np.vstack([X, extra])
        Mout = rows_of_M(X, f)
    return ResidualNorms(f.r.copy(), Mout, f.order, f.lam)
