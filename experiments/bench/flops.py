"""Flop counts: the machine limit of ptq (`optq_limit`, `qronos_limit`) and the float64 counts
of the timed `theory` functions (`THEORY`, the theory table's "float64 limit").

Each timed row of `experiments.bench.theory_timing.theory_times` has a count here, read from
the code of ``theory/`` (X, X_hat (m, N), W (N, n); the benchmark has m = 2N, n = N).
Classical counts, a multiply-add = 2 flops:

* general product (a, b) x (b, c) (BLAS gemm): ``2 a b c``;
* Gram ``X^T X`` (NumPy's ``X.T @ X`` runs BLAS syrk, one triangle): ``m N^2``;
* Cholesky (LAPACK potrf) and triangular inverse (trtri): ``N^3 / 3`` each;
* triangular solve with k right-hand sides (trsm): ``N^2 k``;
* the column norms every call resolves lam and the order from (``theory._factor.resolve``,
  ``einsum("ij,ij->j")`` over the (m, N) input): ``2 m N``.

Not counted: element-wise work on (N, N) and (N, n) arrays (abs, squares, sums of the update
coefficients), gathers and copies, and the float32 -> float64 conversion of the inputs. The
O(m N) rows are therefore memory-bound passes over X, and their ratio to the limit measures
that, not the flop rate. The limit = flops / (NumPy's float64 square matrix-product rate
at N, measured in the same run); potrf, trtri and trsm run somewhat below the gemm rate, so
it is a floor, not a prediction.

The counts assume m >= N (B2 then needs no singular values: ``theory.optq_structural_bound``
returns after the column norms).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


def optq_limit(m: int, N: int, n: int) -> float:
    """Flops counted in the machine limit of ptq.optq from X (the layer-size benchmark's
    float32 limit): updates ``n N^2`` + symmetric Gram ``m N^2``."""
    return float(n * N * N + m * N * N)


def qronos_limit(m: int, N: int, n: int) -> float:
    """Flops counted in Qronos' own limit: OPTQ's (`optq_limit`, on X_hat) + the cross Gram
    ``X_hat^T X`` (a general product, ``2 m N^2``) + ``G W`` (``2 N^2 n``) + the two
    triangular solves of the least-squares start (``2 N^2 n``): ``3 m N^2 + 5 n N^2``."""
    return optq_limit(m, N, n) + 2.0 * m * N * N + 4.0 * n * N * N


def gemm(a: int, b: int, c: int) -> float:
    """(a, b) x (b, c): ``2 a b c``."""
    return 2.0 * a * b * c


def syrk(m: int, N: int) -> float:
    """``X^T X`` for X (m, N), one triangle: ``m N^2``."""
    return float(m) * N * N


def cholesky(N: int) -> float:
    """potrf (or trtri) of an (N, N) matrix: ``N^3 / 3``."""
    return N**3 / 3.0


def trsm(N: int, k: int) -> float:
    """Triangular (N, N) solve with k right-hand sides: ``N^2 k``."""
    return float(N) * N * k


def norms(m: int, N: int) -> float:
    """Column squared norms of an (m, N) matrix: ``2 m N``."""
    return 2.0 * m * N


def factorise(m: int, N: int, n: int) -> float:
    """``theory.factorise``: column norms + syrk + potrf = ``2mN + m N^2 + N^3/3``."""
    return norms(m, N) + syrk(m, N) + cholesky(N)


def with_factors(m: int, N: int, n: int) -> float:
    """B1 / S1 with ``r`` or ``factors`` given: only the column norms, ``2mN``."""
    return norms(m, N)


def weight_bound(m: int, N: int, n: int) -> float:
    """B3 / S3 with ``factors``: column norms + trtri (``update_coefficients``),
    ``2mN + N^3/3``."""
    return norms(m, N) + cholesky(N)


def linf_bound(m: int, N: int, n: int) -> float:
    """S2 with ``factors``: column norms + ``rows_of_M`` (trsm with m right-hand sides) + its
    row norms, ``N^2 m + 4mN``."""
    return norms(m, N) + trsm(N, m) + norms(m, N)


def least_squares(m: int, N: int, n: int) -> float:
    """``theory.qronos_bounds.least_squares`` with ``factors``: column norms of X_hat,
    ``Y = X W`` and ``X_hat^T Y`` (``2mNn`` each), two trsm with n right-hand sides
    (``2 N^2 n``), the row ``Hh_1`` (``2mN``) and the residual ``Y - X_hat wt`` (``2mNn``):
    ``6mNn + 2N^2 n + 4mN``."""
    return norms(m, N) + 3 * gemm(m, N, n) + 2 * trsm(N, n) + 2.0 * m * N


def qronos_l2(m: int, N: int, n: int) -> float:
    """Q1 with ``factors``: `least_squares` only."""
    return least_squares(m, N, n)


def trmm(N: int, k: int) -> float:
    """Triangular (N, N) times (N, k) (BLAS trmm): ``N^2 k``."""
    return float(N) * N * k


def mismatch_l2(m: int, N: int, n: int) -> float:
    """Q2 with ``factors``: `least_squares` + ``R^T (wt - w')`` (trmm, ``N^2 n``)."""
    return least_squares(m, N, n) + trmm(N, n)


def qronos_linf(m: int, N: int, n: int) -> float:
    """Q3 with ``factors``: `least_squares` + ``rows_of_M(X_hat)`` and its row norms
    (``N^2 m + 2mN``)."""
    return least_squares(m, N, n) + trsm(N, m) + norms(m, N)


def optq_l2_own(m: int, N: int, n: int) -> float:
    """B1 without ``factors``: one `factorise`."""
    return factorise(m, N, n)


def run_optq(m: int, N: int, n: int) -> float:
    """factorise + B1 + B2 (column norms only, m >= N) + B3:
    ``m N^2 + 2N^3/3 + 8mN``."""
    return factorise(m, N, n) + with_factors(m, N, n) + norms(m, N) + weight_bound(m, N, n)


def run_stochastic(m: int, N: int, n: int) -> float:
    """factorise + S1 + S2 + S3: ``2 m N^2 + 2N^3/3 + 10mN``."""
    return (factorise(m, N, n) + with_factors(m, N, n) + linf_bound(m, N, n)
            + weight_bound(m, N, n))


def run_qronos(m: int, N: int, n: int) -> float:
    """factorise(X_hat) + Q1 (whose column norms factorise already did):
    ``m N^2 + N^3/3 + 6mNn + 2N^2 n + 4mN``."""
    return factorise(m, N, n) + least_squares(m, N, n) - norms(m, N)


def square_matmul(m: int, N: int, n: int) -> float:
    """The (N, N) x (N, N) product the rate is measured with: ``2 N^3``."""
    return gemm(N, N, N)


class Count(NamedTuple):
    """The flop count of one timed row: a function of (m, N, n) and its formula."""

    flops: Callable[[int, int, int], float]
    formula: str


# Keyed by the row names of `theory_timing.theory_times` (also those of saved runs).
THEORY: dict[str, Count] = {
    "float64 matmul (N, N) x (N, N)": Count(square_matmul, "2 N^3"),
    "factorise(X)": Count(factorise, "m N^2 + N^3/3 + 2mN"),
    "factorise(X_hat)": Count(factorise, "m N^2 + N^3/3 + 2mN"),
    "optq_l2_bound(r=Result.r)": Count(with_factors, "2mN"),
    "optq_l2_bound": Count(optq_l2_own, "m N^2 + N^3/3 + 2mN"),
    "optq_l2_bound(factors)": Count(with_factors, "2mN"),
    "optq_weight_bound(factors)": Count(weight_bound, "N^3/3 + 2mN"),
    "stochastic_l2_bound(factors)": Count(with_factors, "2mN"),
    "stochastic_linf_bound(factors)": Count(linf_bound, "m N^2 + 4mN"),
    "stochastic_weight_bound(factors)": Count(weight_bound, "N^3/3 + 2mN"),
    "qronos_l2_bound(factors)": Count(qronos_l2, "6mNn + 2N^2 n + 4mN"),
    "optq_mismatch_l2_bound(factors)": Count(mismatch_l2, "6mNn + 3N^2 n + 4mN"),
    "qronos_linf_bound(factors)": Count(qronos_linf, "6mNn + m N^2 + 2N^2 n + 6mN"),
    "run: OPTQ (factorise + B1 + B2 + B3)": Count(run_optq, "m N^2 + 2N^3/3 + 8mN"),
    "run: stochastic OPTQ (factorise + S1 + S2 + S3)":
        Count(run_stochastic, "2m N^2 + 2N^3/3 + 10mN"),
    "run: Qronos (factorise(X_hat) + Q1)":
        Count(run_qronos, "m N^2 + N^3/3 + 6mNn + 2N^2 n + 4mN"),
}
