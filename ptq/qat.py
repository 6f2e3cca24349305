"""Fake quantization for quantization-aware training, and output scales of a quantized layer.

Model-agnostic pieces of QAT (the training loop over a model is `experiments.qat`):

* `fake_quant(w, grid)`: the straight-through estimator (STE, Bengio et al. arXiv:1308.3432).
  Forward ``Q(w) = grid.round(w)``, **exactly** `ptq`'s round to nearest on the same grid
  (`ptq.rtn`'s values, bit for bit); backward the identity,
  ``d Q(w) / d w := 1``, the gradient of ``w + stop_gradient(Q(w) - w)``.
* `lsq_quant(w, step, grid)`: LSQ (Esser et al., arXiv:1902.08153), the step ``s`` learnable.
  With ``v = w / s`` and the grid's index range ``[kmin, kmax] = [qmin - zero, qmax - zero]``
  (the zero point stays fixed)::

      Q(w; s) = s * clip(floor(v + 1/2), kmin, kmax)
      dQ/dw   = 1 if kmin <= v <= kmax else 0
      dQ/ds   = (round(v) - v) if kmin <= v <= kmax, kmin if v < kmin, kmax if v > kmax

  and the step's gradient is multiplied by LSQ's ``g = 1 / sqrt(N_w * Q_P)``, ``N_w`` the
  number of weights sharing the step (the column length N per channel) and ``Q_P`` the number
  of positive levels. Differs from reference: LSQ's grids are symmetric or unsigned; on GPTQ's
  asymmetric min-max grid ``Q_P`` is taken as the code range ``qmax - qmin = 2^b - 1``.
  At ``s = grid.step`` the forward equals `fake_quant`'s (and `ptq.rtn`'s) bit for bit.
* `project(w, grid)`: the final weights ``Q(w)``, checked to lie on the grid (raises if not).
* `output_scale(T, Y, kind, per)`: a multiplier ``c`` of a quantized layer's output ``Y = X_hat
  Q`` against its full-precision target ``T = X W``: the variance-preserving
  ``gamma = std(T) / std(Y)`` (arXiv:2411.06084) or the least-squares
  ``s = <T, Y> / ||Y||^2``, per layer or per output channel. `scaled_error` is the closed form
  ``||T - c Y||^2 = ||T||^2 - 2 c <T, Y> + c^2 ||Y||^2 = E(s) + ||Y||^2 (c - s)^2``
  (theory/README.md, section 9): ``s`` minimises it, so ``E(s) <= E(1)``, the unscaled error,
  and every bound on ``E(1)`` bounds ``E(s)``; ``gamma`` helps iff ``|gamma - s| < |1 - s|``.

A scale ``c`` multiplies the quantized weights' output (``Y c + b``, the bias unscaled), i.e.
``Q diag(c)``: per channel it folds into the grid's step (``step * c``), so a scaled layer is
still a uniform grid per neuron and costs nothing at inference.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from ptq.grid import Grid

ScaleKind = Literal["gamma", "ls"]
ScalePer = Literal["layer", "channel"]
SCALE_KINDS = ("gamma", "ls")
SCALE_PERS = ("layer", "channel")


# --------------------------------------------------------------------------- straight-through
@jax.custom_vjp
def fake_quant(w, grid: Grid):
    """``Q(w) = grid.round(w)`` forward, identity gradient backward (STE).

    Args:
      w: (N, n) latent weights (any shape broadcasting with ``grid.step``).
      grid: a `ptq.Grid` (step/zero (), (n,) or (N, n)); no gradient flows to it.

    Returns:
      ``grid.round(w)``, the same values as ``ptq.rtn(w, grid).Q``.
    """
    return grid.round(w)


def _fq_fwd(w, grid):
    return grid.round(w), grid


def _fq_bwd(grid, g):
    return g, jax.tree_util.tree_map(jnp.zeros_like, grid)


fake_quant.defvjp(_fq_fwd, _fq_bwd)


# --------------------------------------------------------------------------- LSQ
def lsq_grad_scale(grid: Grid, N: int):
    """LSQ's step-gradient scale ``g = 1 / sqrt(N_w * Q_P)`` for a per-channel grid.

    ``N_w = N`` (the weights of one output channel share its step); ``Q_P`` is ``K`` on a
    symmetric alphabet and the code range ``qmax - qmin`` on GPTQ's asymmetric one. A JAX
    scalar (traceable: the grid may be a jit argument); 0 on the infinite alphabet, whose step
    LSQ cannot learn.
    """
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
        raise ValueError(f"`N` must be an integer >= 1 (weights per step); got {N!r}")
    levels = jnp.where(grid.qmin == -grid.qmax, grid.qmax, grid.qmax - grid.qmin)
    return 1.0 / jnp.sqrt(N * levels)


@jax.custom_vjp
def lsq_quant(w, step, grid: Grid, g):
    """LSQ fake quantization with a learnable step (formulas in the module docstring).

    Args:
      w: (N, n) latent weights. step: the learnable step ``s``, shaped as ``grid.step``.
      grid: supplies the zero point and the code range (its own step is not used).
      g: the step-gradient scale (`lsq_grad_scale`), a scalar; no gradient flows to it.

    Returns:
      ``s * clip(floor(w / s + 1/2), kmin, kmax)``.
    """
    return _lsq_forward(w, step, grid)


def _lsq_forward(w, step, grid):
    return grid._replace(step=step).round(w)


def _lsq_fwd(w, step, grid, g):
    return _lsq_forward(w, step, grid), (w, step, grid, g)


def _lsq_bwd(res, ct):
    w, step, grid, g = res
    kmin, kmax = grid.index_bounds()
    v = w / step
    inside = (v >= kmin) & (v <= kmax)
    dw = jnp.where(inside, ct, 0.0)
    dq_ds = jnp.where(inside, jnp.floor(v + 0.5) - v, jnp.where(v < kmin, kmin, kmax))
    ds = jnp.sum(ct * dq_ds, axis=tuple(range(ct.ndim - jnp.ndim(step)))) * g
    ds = jnp.reshape(ds, jnp.shape(step))
    return dw, ds, jax.tree_util.tree_map(jnp.zeros_like, grid), jnp.zeros_like(g)


lsq_quant.defvjp(_lsq_fwd, _lsq_bwd)


# --------------------------------------------------------------------------- final weights
def project(w, grid: Grid):
    """The final quantized weights ``Q(w)``, each checked to be a grid point in range.

    Raises:
      RuntimeError: if any value is not on the grid (it cannot happen for a finite grid and
        finite ``w``; a NaN from a diverged training run would).
    """
    Q = grid.round(jnp.asarray(w))
    ok = grid.on_grid(Q, rtol=1e-6)  # k = Q / step recovers the integer up to one rounding
    if not bool(jnp.all(ok)):
        raise RuntimeError(f"{int(ok.size - jnp.sum(ok))} of {ok.size} weights are not on the "
                           "grid after projection (non-finite latent weights?)")
    return Q


# --------------------------------------------------------------------------- output scales
def output_scale(T, Y, kind: ScaleKind = "gamma", per: ScalePer = "layer"):
    """Output multiplier of a quantized layer, from its calibration outputs.

    Args:
      T: (m, n) full-precision target ``X W`` (bias excluded; it cancels in every formula).
      Y: (m, n) quantized layer's output ``X_hat Q`` on the same tokens.
      kind: ``"gamma"``: ``std(T) / std(Y)``, the ratio of standard deviations (population,
        centred), which gives the scaled output ``c Y`` the variance of ``T``
        (arXiv:2411.06084); ``"ls"``: ``<T, Y> / ||Y||^2``, the least-squares optimal scale,
        the minimiser of ``||T - c Y||_F^2``.
      per: ``"layer"``: one scalar over all m x n entries; ``"channel"``: one per column (n,).

    Returns:
      ``c``, shape () or (n,), float. Where ``Y`` is constant (zero variance or zero norm)
      the scale is 1 (nothing to match).
    """
    if kind not in SCALE_KINDS:
        raise ValueError(f"`kind` must be one of {SCALE_KINDS}; got {kind!r}")
    if per not in SCALE_PERS:
        raise ValueError(f"`per` must be one of {SCALE_PERS}; got {per!r}")
    T, Y = jnp.asarray(T), jnp.asarray(Y)
    if T.ndim != 2 or T.shape != Y.shape:
        raise ValueError(f"`T` and `Y` must be (m, n) arrays of one shape; got {T.shape} and "
                         f"{Y.shape}")
    axis = None if per == "layer" else 0
    if kind == "gamma":
        num, den = jnp.std(T, axis=axis), jnp.std(Y, axis=axis)
    else:
        num, den = jnp.sum(T * Y, axis=axis), jnp.sum(Y * Y, axis=axis)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 1.0)


def scaled_error(T, Y, c, per: ScalePer = "layer"):
    """``||T - c Y||^2`` in closed form, ``||T||^2 - 2 c <T, Y> + c^2 ||Y||^2``.

    Per layer (c a scalar) the squared Frobenius norm; per channel (c (n,)) the (n,) squared
    column norms. Written with the three inner products so that a test can compare it with
    the direct norm, and the error of any scale is read off the same three numbers.
    """
    if per not in SCALE_PERS:
        raise ValueError(f"`per` must be one of {SCALE_PERS}; got {per!r}")
    axis = None if per == "layer" else 0
    T, Y = jnp.asarray(T), jnp.asarray(Y)
    tt, ty, yy = (jnp.sum(a * b, axis=axis) for a, b in ((T, T), (T, Y), (Y, Y)))
    return tt - 2 * c * ty + c**2 * yy


__all__ = ["SCALE_KINDS", "SCALE_PERS", "fake_quant", "lsq_grad_scale", "lsq_quant",
           "output_scale", "project", "scaled_error"]
