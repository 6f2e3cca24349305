"""Quantization grids (alphabets) and rounding.

Every grid here is a uniform grid with step ``delta`` and integer zero point ``zero``, written
with integer codes ``c``::

    value = delta * (c - zero),     qmin <= c <= qmax.

``delta`` and ``zero`` are scalars (one grid for the layer), one per neuron (shape (n,)), or
one per feature and neuron (shape (N, n), rows in the ORIGINAL feature order): the group-wise
grids of GPTQ, where row j holds the step and zero of the group feature j falls in. Rounding is
elementwise, so ``Q(z)[j, i]`` uses ``delta[j, i]``; the algorithms round feature ``order[t]``
(processing step t) with row ``order[t]``.

* Symmetric alphabet ``A = {k * delta : |k| <= K}`` (THEORY.md section 1): ``zero = 0``,
  ``qmin = -K``, ``qmax = K``; ``K = None`` is the infinite alphabet ``delta * Z``
  (``qmin = -inf``, ``qmax = +inf``). A b-bit symmetric grid has ``K = 2^(b-1) - 1``.
* GPTQ's asymmetric min-max grid: ``c`` in ``[0, 2^b - 1]``, ``zero`` an integer. It is the
  same uniform grid ``delta * Z`` with a shifted clipping range, so every bound that assumes no
  clipping holds with ``delta = scale``.

Rounding (``k = c - zero`` is the signed grid index):

* nearest: ``k = floor(z / delta + 1/2)``, then clipped to ``[qmin - zero, qmax - zero]``.
  Ties (``z / delta`` exactly half-integer) round **up**, towards +inf. This differs from
  ``torch.round`` in the reference GPTQ code, which rounds ties to even; ties have probability
  zero on continuous data.
* stochastic: with ``lo = floor(z / delta)`` and ``p = z / delta - lo`` in [0, 1), ``k = lo + 1``
  if ``u < p`` else ``lo``, for ``u ~ U[0, 1)``. Hence ``P(k = lo + 1) = p`` and
  ``E[delta * k] = z``: unbiased, error in ``(-delta, delta)``, conditional variance
  ``<= delta^2 / 4``. Clipping (only when ``z`` leaves the range) is applied afterwards.
"""

from __future__ import annotations

import numbers
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MAX_BITS = 24  # float32 represents every integer code exactly up to 2^24


class Grid(NamedTuple):
    """A uniform quantization grid (a JAX pytree): one step per layer, neuron or weight.

    Build it with :meth:`Grid.symmetric`, :meth:`Grid.asymmetric` or :meth:`Grid.fit`.
    ``step`` and ``zero`` have shape (), (n,) or (N, n) (rows in original feature order).
    """

    step: jax.Array  # (), (n,) or (N, n) float: delta, > 0
    zero: jax.Array  # (), (n,) or (N, n) float: integer-valued zero point (code of the value 0)
    qmin: jax.Array  # () float: lowest code (-inf for an infinite alphabet)
    qmax: jax.Array  # () float: highest code (+inf for an infinite alphabet)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def symmetric(cls, step, levels: int | None = None) -> "Grid":
        """The alphabet ``{k * step : |k| <= levels}``; ``levels=None`` is ``step * Z``.

        Args:
          step: delta, a positive scalar, one per neuron (n,) or one per feature and neuron
            (N, n), rows in original feature order.
          levels: K >= 1, or None for the infinite alphabet.
        """
        step = _positive_step(step)
        if levels is None:
            K = np.inf
        else:
            if isinstance(levels, bool) or not isinstance(levels, numbers.Integral) or levels < 1:
                raise ValueError(f"`levels` must be an integer K >= 1 or None; got {levels!r}")
            K = float(levels)
        return cls(step, jnp.zeros_like(step), jnp.asarray(-K), jnp.asarray(K))

    @classmethod
    def asymmetric(cls, scale, zero, bits: int) -> "Grid":
        """GPTQ's grid ``scale * (c - zero)`` with codes ``c`` in ``[0, 2^bits - 1]``.

        ``scale`` and ``zero`` have shape (), (n,) or (N, n) each, broadcastable together
        (e.g. a group table expanded to its features, ``scales[g_idx]``).
        """
        bits = _check_bits(bits, minimum=1)
        scale = _positive_step(scale)
        zero = jnp.asarray(zero, dtype=scale.dtype)
        if zero.ndim > 2:
            raise ValueError(
                f"`zero` must be a scalar, (n,) or (N, n); got shape {zero.shape}"
            )
        try:
            np.broadcast_shapes(scale.shape, zero.shape)
        except ValueError:
            raise ValueError(
                f"`zero` must broadcast against `scale` of shape {scale.shape}; got shape "
                f"{zero.shape}"
            ) from None
        if not bool(jnp.all(zero == jnp.round(zero))):
            raise ValueError("`zero` must be integer-valued (a code)")
        return cls(scale, zero, jnp.asarray(0.0), jnp.asarray(float(2**bits - 1)))

    @classmethod
    def fit(
        cls,
        W,
        bits: int,
        kind: Literal["symmetric", "asymmetric"] = "symmetric",
        per: Literal["neuron", "layer"] = "neuron",
        *,
        mse: bool = False,
    ) -> "Grid":
        """Fit a b-bit grid to the weights ``W`` (N, n), per neuron (column) or per layer.

        * symmetric, max-abs rule: ``K = 2^(b-1) - 1``, ``delta = max|w| / K`` (needs b >= 2).
        * asymmetric, GPTQ's min-max rule: ``xmin = min(w, 0)``, ``xmax = max(w, 0)``,
          ``scale = (xmax - xmin) / (2^b - 1)``, ``zero = round(-xmin / scale)`` (half to
          even, as ``torch.round``).

        A neuron whose weights are all zero gets the range of ``[-1, 1]``, as in GPTQ.

        ``mse=True`` runs GPTQ's clipping search: the range is shrunk by factors
        ``p = 1, 0.99, ..., 0.21`` and, per neuron (or for the layer), the ``p`` minimising
        ``sum |Q(w) - w|^2.4`` is kept (GPTQ's ``Quantizer(mse=True)``: grid 100,
        maxshrink 0.8, norm 2.4).
        """
        if kind not in ("symmetric", "asymmetric"):
            raise ValueError(f"`kind` must be 'symmetric' or 'asymmetric'; got {kind!r}")
        if per not in ("neuron", "layer"):
            raise ValueError(f"`per` must be 'neuron' or 'layer'; got {per!r}")
        bits = _check_bits(bits, minimum=2 if kind == "symmetric" else 1)
        W = jnp.asarray(W)
        if W.ndim != 2 or W.size == 0:
            raise ValueError(f"`W` must be a non-empty 2-D array (N, n); got shape {W.shape}")
        if not bool(jnp.all(jnp.isfinite(W))):
            raise ValueError("`W` must be finite; got NaN or Inf entries")
        W = W.astype(jnp.result_type(W.dtype, jnp.float32))
        axis = 0 if per == "neuron" else None
        lo = jnp.minimum(jnp.min(W, axis=axis), 0.0)
        hi = jnp.maximum(jnp.max(W, axis=axis), 0.0)
        if kind == "symmetric":
            K = 2 ** (bits - 1) - 1
            amax = jnp.maximum(-lo, hi)
            amax = jnp.where(amax == 0, 1.0, amax)
            make = lambda p: cls(  # noqa: E731
                p * amax / K, jnp.zeros_like(amax), jnp.asarray(-float(K)), jnp.asarray(float(K))
            )
        else:
            maxq = 2**bits - 1
            both_zero = (lo == 0) & (hi == 0)
            lo = jnp.where(both_zero, -1.0, lo)
            hi = jnp.where(both_zero, 1.0, hi)

            def make(p):
                scale = (p * hi - p * lo) / maxq
                return cls(scale, jnp.round(-p * lo / scale), jnp.asarray(0.0),
                           jnp.asarray(float(maxq)))

        if not mse:
            grid = make(1.0)
        else:
            grid = _mse_search(make, W, per)
        if per == "neuron":
            return grid
        n = W.shape[1]
        return grid._replace(step=jnp.full(n, grid.step), zero=jnp.full(n, grid.zero))

    # ----------------------------------------------------------------- properties
    @property
    def levels(self) -> int | None:
        """K of a symmetric alphabet (None if infinite); raises for a shifted grid."""
        if bool(jnp.any(self.zero != 0)) or float(self.qmin) != -float(self.qmax):
            raise ValueError("`levels` is defined for symmetric grids only")
        return None if np.isinf(float(self.qmax)) else int(self.qmax)

    @property
    def is_finite(self) -> bool:
        return bool(np.isfinite(float(self.qmax)))

    # ----------------------------------------------------------------- rounding
    def index_bounds(self):
        """Lowest and highest signed grid index ``k = c - zero`` (broadcast like ``step``)."""
        return self.qmin - self.zero, self.qmax - self.zero

    def nearest_index(self, z):
        """Signed grid index of round-to-nearest (ties up), clipped; ``z`` broadcasts with
        ``step`` ((..., n) for () or (n,) steps, (N, n) for a per-weight grid)."""
        kmin, kmax = self.index_bounds()
        return jnp.clip(jnp.floor(z / self.step + 0.5), kmin, kmax)

    def stochastic_index(self, z, u):
        """Signed grid index of unbiased stochastic rounding driven by ``u ~ U[0,1)``."""
        kmin, kmax = self.index_bounds()
        x = z / self.step
        lo = jnp.floor(x)
        return jnp.clip(lo + (u < x - lo), kmin, kmax)

    def round(self, z):
        """Round to nearest: the grid value ``Q(z)`` (same shape as ``z``)."""
        return self.step * self.nearest_index(z)

    def round_stochastic(self, z, key):
        """Unbiased stochastic rounding ``Qs(z)`` with a JAX key."""
        u = jax.random.uniform(key, jnp.shape(z), dtype=jnp.result_type(z))
        return self.step * self.stochastic_index(z, u)

    def codes(self, z):
        """Integer codes (int32) of round-to-nearest."""
        return (self.nearest_index(z) + self.zero).astype(jnp.int32)

    def dequantize(self, codes):
        """Grid values of integer codes: ``step * (codes - zero)``."""
        return self.step * (jnp.asarray(codes) - self.zero)

    def on_grid(self, values, *, rtol: float = 0.0):
        """Boolean mask: ``values`` is a grid point inside the range."""
        x = values / self.step
        kmin, kmax = self.index_bounds()
        k = jnp.round(x)
        return (jnp.abs(x - k) <= rtol * jnp.maximum(1.0, jnp.abs(k))) & (k >= kmin) & (k <= kmax)


def _mse_search(make, W, per, grid_points: int = 100, maxshrink: float = 0.8, norm: float = 2.4):
    """GPTQ's clipping search over shrink factors p (see Grid.fit)."""
    ps = 1.0 - jnp.arange(int(maxshrink * grid_points)) / grid_points
    axis = 0 if per == "neuron" else None

    def loss(p):
        g = make(p)
        return jnp.sum(jnp.abs(g.round(W) - W) ** norm, axis=axis)

    losses = jax.lax.map(loss, ps.astype(W.dtype))  # (P,) or (P, n)
    best = ps[jnp.argmin(losses, axis=0)]  # the first (largest p) among equal losses
    return make(best.astype(W.dtype))


def _positive_step(step) -> jax.Array:
    s = jnp.asarray(step)
    if not jnp.issubdtype(s.dtype, jnp.floating):
        s = s.astype(jnp.float32)
    if s.ndim > 2:
        raise ValueError(
            "`step` must be a scalar, one per neuron (n,) or one per feature and neuron (N, n); "
            f"got shape {s.shape}"
        )
    if not bool(jnp.all(jnp.isfinite(s) & (s > 0))):
        raise ValueError(f"`step` must be finite and > 0; got {np.asarray(s).min()!r} (minimum)")
    return s


def _check_bits(bits, *, minimum: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise ValueError(f"`bits` must be an integer; got {bits!r}")
    if bits < minimum or bits > MAX_BITS:
        need = "symmetric grids need bits >= 2 (K = 2^(b-1) - 1 >= 1)" if minimum == 2 else ""
        raise ValueError(
            f"`bits` must be in [{minimum}, {MAX_BITS}]; got {bits}"
            + (f" ({need})" if need else "")
        )
    return int(bits)
