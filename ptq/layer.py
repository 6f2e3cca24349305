"""Validation, Gram matrices and the result type shared by `optq` and `qronos`."""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ptq import options
from ptq.grid import Grid, GroupGrid, check_group_grid, fit_groups
from ptq.kernel import HIGHEST

Rounding = options.Rounding


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


def compute_dtype():
    """float64 when JAX's x64 mode is on, float32 otherwise (DESIGN.md)."""
    return jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32


def as_arrays(*named: tuple[str, object]):
    """Convert to device arrays of the compute dtype; raise on NaN or Inf."""
    dtype = compute_dtype()
    out = []
    for name, A in named:
        A = jnp.asarray(A, dtype=dtype)
        if not bool(_all_finite(A)):
            bad = int(A.size - jnp.count_nonzero(jnp.isfinite(A)))
            raise ValueError(f"`{name}` must be finite; got {bad} NaN or Inf entries")
        out.append(A)
    return out


@jax.jit
def _all_finite(A: jax.Array) -> jax.Array:
    """Whether every entry of ``A`` is finite: one fused pass, no boolean temporary."""
    return jnp.all(jnp.isfinite(A))


def check_common(grid, n: int, rounding: str, key, block_size, *, N: int | None = None) -> None:
    """Validate the options every algorithm shares.

    ``grid`` is a `ptq.GroupGrid` recipe or a `ptq.Grid` whose ``step`` and ``zero`` are each
    a scalar, one per neuron (n,) or, when the number of features ``N`` is given, one per
    feature and neuron (N, n).
    """
    if isinstance(grid, GroupGrid):
        check_group_grid(grid)
    elif isinstance(grid, Grid):
        _check_grid_shapes(grid, n, N)
    else:
        raise ValueError(
            f"`grid` must be a ptq.Grid or a ptq.GroupGrid; got {type(grid).__name__}"
        )
    options.check_rounding(rounding)
    if rounding == "stochastic" and key is None:
        raise ValueError("`rounding='stochastic'` needs `key` (a jax.random key); got key=None")
    integral = isinstance(block_size, numbers.Integral) and not isinstance(block_size, bool)
    if not integral or block_size < 1:
        raise ValueError(f"`block_size` must be an integer >= 1; got {block_size!r}")


def realise_static(grid, *, per_channel_on, static_on):
    """Fit a per-channel or static `GroupGrid` up front (-> `GroupTables`); pass others on.

    ``per_channel_on`` / ``static_on``: the (N, n) weights, original order, that those fits
    use (GPTQ fits per channel on the layer's weights before dead features are zeroed, and
    static groups after). A dynamic recipe is fitted inside the kernel and returned as is.
    """
    if not isinstance(grid, GroupGrid):
        return grid
    if grid.group_size is None:
        return fit_groups(per_channel_on, grid)
    if grid.static:
        return fit_groups(static_on, grid)
    return grid


def _check_grid_shapes(grid: Grid, n: int, N: int | None) -> None:
    allowed = [(), (n,)] + ([] if N is None else [(N, n)])
    expected = f"() or (n,) = ({n},)" + ("" if N is None else f" or (N, n) = {(N, n)}")
    for field in ("step", "zero"):
        shape = tuple(jnp.shape(getattr(grid, field)))
        if shape not in allowed:
            raise ValueError(
                f"`grid` {field} must have shape {expected} (one per layer, neuron"
                f"{'' if N is None else ' or weight'}); got {shape}"
            )
    for field in ("qmin", "qmax"):
        if jnp.shape(getattr(grid, field)) != ():
            raise ValueError(
                f"`grid` {field} must be a scalar; got shape {jnp.shape(getattr(grid, field))}"
            )


def _on_host(*arrays) -> bool:
    """Whether every array is a concrete JAX array on the CPU (not a tracer, not a GPU/TPU
    buffer): then NumPy reads its buffer without a copy."""
    return all(isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer)
               and all(d.platform == "cpu" for d in a.devices()) for a in arrays)


# On the CPU the two Gram products go to NumPy's BLAS, on zero-copy views of the inputs:
# XLA:CPU has no symmetric rank-k update and runs a product with a transposed operand at about
# half its usual rate, while ``A.T @ A`` in NumPy is one BLAS syrk (m N^2 flops, the other
# triangle mirrored, so exactly symmetric) and ``A.T @ B`` one gemm. Measured at m = 8192,
# N = 4096, float32, 2 cores: X^T X 0.93 s against 1.35-1.7 s (gram_sym below), X_hat^T X
# 1.59 s against 3.16 s. On a GPU/TPU, and inside a trace, XLA computes them.


def gram(A: jax.Array, B: jax.Array) -> jax.Array:
    """``A^T B`` at full float precision (on the CPU by NumPy's BLAS, see above)."""
    if _on_host(A, B):
        return _host_matmul(np.asarray(A).T, np.asarray(B))
    return _gram_xla(A, B)


def _host_matmul(A: np.ndarray, B: np.ndarray) -> jax.Array:
    """``A @ B`` by NumPy (``A.T @ A`` on the same buffer is one syrk) into a 64-byte aligned
    buffer that JAX adopts through DLPack without a copy. ``jnp.asarray`` of NumPy's own
    result copies it: 64 MiB of fresh pages at N = 4096, ~16k page faults per product."""
    dtype = np.result_type(A, B)
    size = A.shape[0] * B.shape[1] * dtype.itemsize
    raw = np.empty(size + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    out = raw[start:start + size].view(dtype).reshape(A.shape[0], B.shape[1])
    np.matmul(A, B, out=out)
    return jax.dlpack.from_dlpack(out)


_ALIGN = 64  # bytes: the alignment XLA:CPU needs to use a host buffer in place


@jax.jit
def _gram_xla(A, B):
    return jnp.dot(A.T, B, precision=HIGHEST)


def gram_sym(X: jax.Array) -> jax.Array:
    """``X^T X``, exactly symmetric (to the last bit).

    On the CPU, NumPy's ``X.T @ X``: one BLAS syrk, half the flops of a general product. On
    other devices (and under a trace), XLA: the column halves give ``[[X1^T X1, X1^T X2],
    [(X1^T X2)^T, X2^T X2]]``; the diagonal blocks recurse (three levels at most, while
    N >= 1024), so only the off-diagonal products are full matrix products, about 9/16 of
    the flops of a general product.
    """
    if _on_host(X):
        Xh = np.asarray(X)
        return _host_matmul(Xh.T, Xh)
    return _gram_sym_xla(X)


@jax.jit
def _gram_sym_xla(X):
    return _gram_sym(X, depth=3)


def _gram_sym(X, depth):
    N = X.shape[1]
    if depth == 0 or N < 1024:  # a product XLA does not make symmetric: mirror its lower half
        H = jnp.dot(X.T, X, precision=HIGHEST)
        return jnp.tril(H) + jnp.tril(H, -1).T
    h = N // 2
    X1, X2 = X[:, :h], X[:, h:]
    H12 = jnp.dot(X1.T, X2, precision=HIGHEST)
    return jnp.block([[_gram_sym(X1, depth - 1), H12], [H12.T, _gram_sym(X2, depth - 1)]])


@jax.jit
def column_sq_norms(X: jax.Array) -> jax.Array:
    """``||X_t||^2`` for each column t (= diag(X^T X))."""
    return jnp.sum(X * X, axis=0)


@jax.jit
def regularise(H: jax.Array, lam) -> jax.Array:
    """``H + lam I``; a diagonal entry still zero (a dead feature with lam = 0) becomes 1.

    A dead feature (zero column of X) is decoupled from every other one (its row and column
    of X^T X vanish), so the value on its diagonal only affects its own r_t. GPTQ sets it to 1
    so that the Cholesky factorisation exists; we do the same, and only when lam = 0.
    """
    d = jnp.diagonal(H) + lam
    d = jnp.where(d == 0, jnp.ones_like(d), d)
    N = H.shape[0]
    return H.at[jnp.arange(N), jnp.arange(N)].set(d)


def resolve_order_and_lam(sq_norms: jax.Array, order, order_seed, lam, percdamp):
    """Shared resolution (ptq.options) from the column norms of the factorised matrix."""
    sq = np.asarray(sq_norms, dtype=np.float64)
    lam = options.resolve_lam(sq.mean(), lam, percdamp)
    perm = options.resolve_order(sq, order, order_seed)
    return perm, lam


def gather_index(perm) -> jax.Array | None:
    """``perm`` as a device index, or None when it is the identity (the natural order).

    With None every reordering (`take_rows`, `gather_sym`) is skipped: at N = 4096 a gather
    of an (N, N) float32 array takes 0.03-0.07 s on 2 cores (measured), 1-3% of an OPTQ run,
    and the natural order is the default.
    """
    return None if options.is_natural(perm) else jnp.asarray(np.asarray(perm))


def take_rows(A: jax.Array, p: jax.Array | None) -> jax.Array:
    """``A[p]`` (``A`` itself when ``p`` is None), ``p`` a permutation."""
    return A if p is None else _gather_rows(A, p)


@jax.jit
def _gather_rows(A: jax.Array, p: jax.Array) -> jax.Array:
    # A permutation is in bounds and has no repeats: with these promises XLA:CPU copies rows
    # at the rate of an element-wise pass (N = 4096 float32: 0.026 s against 0.054 s for an
    # eager A[p], measured)
    return A.at[p].get(mode="promise_in_bounds", unique_indices=True)


@jax.jit
def gather_sym(H: jax.Array, p: jax.Array) -> jax.Array:
    """``H[p][:, p]`` as a program of its own. XLA:CPU runs this gather several times slower
    when it is fused into the program that consumes it (a Cholesky factorisation, the
    least-squares start of Qronos), so the callers gather first."""
    return H[p][:, p]


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


def uniforms(key, N: int, n: int, dtype) -> jax.Array:
    """The U[0,1) draws of stochastic rounding: row t is used at processing step t.

    `ptq.reference` takes the same array, so runs can be compared draw for draw.
    """
    return jax.random.uniform(key, (N, n), dtype=dtype)
