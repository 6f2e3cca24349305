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
from functools import partial
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
        grid = _fit(W, bits, kind, 0 if per == "neuron" else None, mse)
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


# --------------------------------------------------------------------------- group-wise grids
class GroupGrid(NamedTuple):
    """A recipe for GPTQ's group-wise grids, fitted inside `ptq.optq`, `ptq.qronos`, `ptq.rtn`.

    The N features are split into groups of ``group_size`` (the last one shorter when
    ``group_size`` does not divide N; one group when ``group_size >= N``). Every group gets,
    per neuron, a b-bit grid fitted by the rule of :meth:`Grid.fit` (symmetric max-abs, or
    GPTQ's asymmetric min-max; ``mse`` adds GPTQ's clipping search) on the group's rows:

    * ``static=False`` (GPTQ's default, "dynamic"): groups are consecutive in PROCESSING
      order, group ``g`` holding steps ``t = g*group_size ...``, so with an order ``perm``
      ``g_idx[perm[t]] = t // group_size``. Group g is fitted when the algorithm reaches its
      first step ``t0``, on the current weights of its features, ``w_j(t0 - 1)`` (already
      updated by the error feedback of steps ``< t0``): the least-squares continuation
      ``w_{>=t0}(t0-1) = w_{>=t0} + H22^{-1} H21 (w - q)_{<t0}``, which the left-looking
      kernel forms from its partial sums with one small triangular solve per group
      (`ptq.kernel.quantize_ordered`). For Qronos the
      current weights are those of the OPTQ recursion it runs on ``Hh`` from the least-squares
      fit ``wt`` (THEORY.md section 2), and the first row of the first group is the value
      that step 1 rounds, ``z_1`` in the "paper" variant (``wt_1`` in "ls_first"), so that
      the first rounded value lies in its group's range.
    * ``static=True``: all groups fitted first on the original weights in ORIGINAL feature
      order, ``g_idx[j] = j // group_size`` whatever the processing order (GPTQ's
      ``static_groups``, which makes act_order and groups compatible). OPTQ fits on ``W``
      with dead features zeroed (as GPTQ), Qronos on the ``W`` it is given.
    * ``group_size=None``: per channel, one grid per neuron fitted on the given ``W`` before
      anything else (GPTQ's ``groupsize=-1``, the same as ``Grid.fit(W, bits, kind)``).
    * `ptq.rtn` has no order and no feedback: its groups are always fitted on ``W``.

    Results carry the realised grid (``step``/``zero`` (N, n), original feature order; (n,)
    per channel), ``g_idx`` (N,) int32 (None per channel), and the group tables
    ``scales``/``zeros`` (G, n), so that ``Q = scales[g_idx] * (codes - zeros[g_idx])``
    (``Q = result.grid.dequantize(result.codes)``).

    Differs from reference: GPTQ's ``fasterquant`` fits a dynamic group on the global ``W``,
    which holds the updates of finished blocks but not the in-block updates, so a group that
    starts inside a block (``group_size < blocksize`` and not a multiple of it) is fitted on
    weights missing the feedback of the block's earlier columns. It equals the definition
    above whenever groups start at block boundaries (``group_size`` a multiple of GPTQ's
    ``blocksize = 128``). Here the definition is implemented exactly for every group size, and
    the result does not depend on ``block_size`` beyond float rounding. GPTQ's own ``sym``
    grid (codes ``[0, 2^b - 1]``, zero ``2^(b-1)``) is not this ``symmetric`` kind: that is
    the max-abs grid with ``K = 2^(b-1) - 1`` of THEORY.md, codes ``[-K, K]``, zero 0.
    """

    bits: int  # b: asymmetric 1..24, symmetric 2..24
    kind: Literal["symmetric", "asymmetric"]
    group_size: int | None = 128  # features per group; None = per channel
    static: bool = False  # GPTQ's static_groups
    mse: bool = False  # GPTQ's clipping search on each group


class GroupTables(NamedTuple):
    """A realised group-wise grid (all arrays in original feature order)."""

    grid: Grid  # step, zero (N, n) (group of each weight); (n,) per channel
    g_idx: jax.Array | None  # (N,) int32: the group of each feature; None per channel
    scales: jax.Array  # (G, n) float: the step of each group and neuron
    zeros: jax.Array  # (G, n) float: integer-valued zero point of each group and neuron


def check_group_grid(recipe: GroupGrid) -> None:
    """Raise ValueError naming the field for a bad recipe."""
    if recipe.kind not in ("symmetric", "asymmetric"):
        raise ValueError(f"`GroupGrid.kind` must be 'symmetric' or 'asymmetric'; got "
                         f"{recipe.kind!r}")
    _check_bits(recipe.bits, minimum=2 if recipe.kind == "symmetric" else 1)
    gs = recipe.group_size
    if gs is not None:
        if isinstance(gs, bool) or not isinstance(gs, numbers.Integral):
            raise ValueError(f"`GroupGrid.group_size` must be a positive integer or None "
                             f"(per channel); got {gs!r}")
        if gs < 1:
            hint = " (GPTQ's -1 is written None here)" if gs == -1 else ""
            raise ValueError(f"`GroupGrid.group_size` must be a positive integer or None "
                             f"(per channel){hint}; got {gs!r}")
    for name in ("static", "mse"):
        if not isinstance(getattr(recipe, name), bool):
            raise ValueError(f"`GroupGrid.{name}` must be a bool; got {getattr(recipe, name)!r}")


def num_groups(N: int, group_size: int | None) -> int:
    """G = ceil(N / group_size) (1 per channel)."""
    return 1 if group_size is None else -(-N // int(group_size))


def group_index(N: int, group_size: int, perm=None) -> np.ndarray:
    """``g_idx`` (N,) int32 in original order: ``j // group_size`` (static, or natural order),
    or ``g_idx[perm[t]] = t // group_size`` for groups consecutive in processing order."""
    t = np.arange(N) // int(group_size)
    if perm is None:
        return t.astype(np.int32)
    g = np.empty(N, np.int32)
    g[np.asarray(perm)] = t
    return g


@partial(jax.jit, static_argnames=("bits", "kind", "group_size", "mse"))
def fit_group_table(W, *, bits: int, kind: str, group_size: int, mse: bool):
    """Fit every group of consecutive rows of ``W`` (N, n): (scales, zeros), each (G, n).

    The rows are zero-padded to ``G * group_size``; zero rows change no fit (both rules use
    ``min(w, 0)`` and ``max(w, 0)``, and the value 0 is on every grid, so it adds nothing to
    the clipping search's loss), so the last, shorter group is fitted on its own rows.
    """
    N, n = W.shape
    G = -(-N // group_size)
    Wp = jnp.zeros((G * group_size, n), W.dtype).at[:N].set(W).reshape(G, group_size, n)
    g = jax.vmap(lambda Wg: _fit(Wg, bits, kind, 0, mse))(Wp)
    return g.step, g.zero


def fit_groups(W, recipe: GroupGrid) -> GroupTables:
    """The static (or per-channel) realisation of ``recipe`` on ``W`` (N, n), original order."""
    W = jnp.asarray(W)
    N, n = W.shape
    if recipe.group_size is None:
        g = _fit(W, recipe.bits, recipe.kind, 0, recipe.mse)
        return GroupTables(g, None, g.step[None], g.zero[None])
    scales, zeros = fit_group_table(W, bits=recipe.bits, kind=recipe.kind,
                                    group_size=int(recipe.group_size), mse=recipe.mse)
    g_idx = group_index(N, recipe.group_size)
    return expand(recipe, scales, zeros, g_idx)


def expand(recipe: GroupGrid, scales, zeros, g_idx) -> GroupTables:
    """Group tables (G, n) and ``g_idx`` (N,) -> the realised (N, n) grid, original order."""
    qmin, qmax = range_of(recipe)
    idx = jnp.asarray(g_idx)
    grid = Grid(scales[idx], zeros[idx], jnp.asarray(qmin), jnp.asarray(qmax))
    return GroupTables(grid, jnp.asarray(g_idx, jnp.int32), scales, zeros)


def range_of(recipe: GroupGrid) -> tuple[float, float]:
    """(qmin, qmax) of the recipe's codes."""
    if recipe.kind == "symmetric":
        K = float(2 ** (recipe.bits - 1) - 1)
        return -K, K
    return 0.0, float(2**recipe.bits - 1)


def _fit(W, bits: int, kind: str, axis, mse: bool) -> Grid:
    """The fitting rules of :meth:`Grid.fit`, unchecked and jit-friendly.

    ``axis=0``: one grid per column of ``W`` (step and zero (n,)); ``axis=None``: one for the
    whole array (scalars). The group-wise fits (`fit_groups`, the kernel's dynamic groups)
    call this on a group's rows, so every fit in `ptq` uses the one definition.
    """
    W = W.astype(jnp.result_type(W.dtype, jnp.float32))
    lo = jnp.minimum(jnp.min(W, axis=axis), 0.0)
    hi = jnp.maximum(jnp.max(W, axis=axis), 0.0)
    if kind == "symmetric":
        K = 2 ** (bits - 1) - 1
        amax = jnp.maximum(-lo, hi)
        amax = jnp.where(amax == 0, 1.0, amax)

        def make(p):
            return Grid(p * amax / K, jnp.zeros_like(amax), jnp.asarray(-float(K)),
                        jnp.asarray(float(K)))
    else:
        maxq = 2**bits - 1
        both_zero = (lo == 0) & (hi == 0)
        lo = jnp.where(both_zero, -1.0, lo)
        hi = jnp.where(both_zero, 1.0, hi)

        def make(p):
            scale = (p * hi - p * lo) / maxq
            return Grid(scale, jnp.round(-p * lo / scale), jnp.asarray(0.0),
                        jnp.asarray(float(maxq)))

    return _mse_search(make, W, axis) if mse else make(1.0)


def _mse_search(make, W, axis, grid_points: int = 100, maxshrink: float = 0.8,
                norm: float = 2.4):
    """GPTQ's clipping search over shrink factors p (see Grid.fit)."""
    ps = 1.0 - jnp.arange(int(maxshrink * grid_points)) / grid_points

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
