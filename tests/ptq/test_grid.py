"""ptq.Grid: constructors, fitting rules (max-abs, GPTQ min-max, MSE search), rounding."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import ptq


# --------------------------------------------------------------------------- GPTQ transcription
def gptq_find_params(W, bits, per_neuron, mse=False, grid=100, maxshrink=0.8, norm=2.4):
    """NumPy transcription of GPTQ's ``Quantizer.find_params`` (sym=False) for weights.

    ``x`` is torch's layout (rows = neurons), i.e. ``W.T`` here; per-tensor flattens it to one
    row. ``torch.round`` and ``np.round`` both round half to even. Returns (scale, zero) per
    row, plus the row losses of the chosen grid when ``mse``.
    """
    x = W.T if per_neuron else W.reshape(1, -1)
    maxq = 2**bits - 1
    xmin = np.minimum(x.min(axis=1), 0)
    xmax = np.maximum(x.max(axis=1), 0)
    tmp = (xmin == 0) & (xmax == 0)
    xmin[tmp] = -1
    xmax[tmp] = +1
    scale = (xmax - xmin) / maxq
    zero = np.round(-xmin / scale)
    best = np.full(x.shape[0], np.inf)
    if mse:
        for i in range(int(maxshrink * grid)):
            p = 1 - i / grid
            xmin1, xmax1 = p * xmin, p * xmax
            scale1 = (xmax1 - xmin1) / maxq
            zero1 = np.round(-xmin1 / scale1)
            q = np.clip(np.round(x / scale1[:, None]) + zero1[:, None], 0, maxq)
            err = np.sum(np.abs(scale1[:, None] * (q - zero1[:, None]) - x) ** norm, axis=1)
            better = err < best
            best[better] = err[better]
            scale[better] = scale1[better]
            zero[better] = zero1[better]
    return scale, zero, best


def grid_loss(grid, W, per_neuron, norm=2.4):
    loss = np.abs(np.asarray(grid.round(W)) - W) ** norm
    return loss.sum(axis=0) if per_neuron else loss.sum()


weights = st.builds(
    lambda seed, N, n, kind: _weights(seed, N, n, kind),
    st.integers(0, 2**31 - 1),
    st.sampled_from([1, 5, 32]),
    st.sampled_from([1, 4]),
    st.sampled_from(["gauss", "positive", "negative", "heavy", "zero_col"]),
)


def _weights(seed, N, n, kind):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, n))
    if kind == "positive":
        W = np.abs(W)
    elif kind == "negative":
        W = -np.abs(W)
    elif kind == "heavy":
        W = rng.standard_t(2, (N, n))
    elif kind == "zero_col":
        W[:, 0] = 0.0
    return W


# --------------------------------------------------------------------------- fit
@given(weights, st.integers(2, 8), st.sampled_from(["neuron", "layer"]))
def test_fit_symmetric_is_max_abs(W, bits, per):
    """delta = max|w| / K, K = 2^(b-1) - 1, zero point 0; an all-zero neuron gets max|w| = 1."""
    grid = ptq.Grid.fit(W, bits, "symmetric", per)
    K = 2 ** (bits - 1) - 1
    amax = np.abs(W).max(axis=0) if per == "neuron" else np.full(W.shape[1], np.abs(W).max())
    amax = np.where(amax == 0, 1.0, amax)
    np.testing.assert_allclose(np.asarray(grid.step), amax / K, rtol=1e-15)  # one division
    assert grid.levels == K and grid.is_finite
    np.testing.assert_array_equal(np.asarray(grid.zero), 0.0)
    # max-abs: nothing clips, the extreme weight is exactly representable up to rounding
    assert np.all(np.abs(np.asarray(grid.round(W)) - W) <= np.asarray(grid.step) / 2 * (1 + 1e-12))


@given(weights, st.integers(1, 8), st.sampled_from(["neuron", "layer"]), st.booleans())
def test_fit_asymmetric_matches_gptq(W, bits, per, mse):
    """GPTQ's min-max grid (and its clipping search) as the NumPy transcription computes it.

    Steps agree to 1e-14 relative: XLA may divide by 2^b - 1 as a multiply by its reciprocal
    (1 ulp). The search compares float losses; where two shrink factors give losses within
    float noise of each other the choice between them is arbitrary, so a different (step,
    zero) is accepted when ptq's loss equals the transcription's best to 1e-9 relative (or,
    when that best is ~0, to 1e-12 of sum |w|^2.4)."""
    per_neuron = per == "neuron"
    grid = ptq.Grid.fit(W, bits, "asymmetric", per, mse=mse)
    scale, zero, best = gptq_find_params(W, bits, per_neuron, mse=mse)
    n = W.shape[1]
    step = np.asarray(grid.step)
    assert step.shape == (n,)
    assert float(grid.qmin) == 0 and float(grid.qmax) == 2**bits - 1
    if not per_neuron:
        scale, zero, best = (np.full(n, a[0]) for a in (scale, zero, best))
    same = np.isclose(step, scale, rtol=1e-14, atol=0) & (np.asarray(grid.zero) == zero)
    if not mse:
        assert np.all(same)
    else:
        loss = grid_loss(grid, W, per_neuron)
        size = grid_loss(ptq.Grid.symmetric(1e30), W, per_neuron)  # sum |w|^2.4 (all round to 0)
        loss, size = (a if per_neuron else np.full(n, a) for a in (loss, size))
        assert np.all(same | (np.abs(loss - best) <= np.maximum(1e-9 * best, 1e-12 * size)))


@given(weights, st.integers(1, 6), st.sampled_from(["symmetric", "asymmetric"]),
       st.sampled_from(["neuron", "layer"]))
def test_mse_search_is_never_worse_than_no_search(W, bits, kind, per):
    """The search includes the unshrunk range (p = 1), so in its own norm (sum |Q(w) - w|^2.4,
    per neuron or for the layer) it cannot lose."""
    if kind == "symmetric" and bits < 2:
        bits = 2
    per_neuron = per == "neuron"
    plain = grid_loss(ptq.Grid.fit(W, bits, kind, per), W, per_neuron)
    searched = grid_loss(ptq.Grid.fit(W, bits, kind, per, mse=True), W, per_neuron)
    # both losses are sums of the same float64 terms for p = 1: no slack needed beyond ulps
    assert np.all(searched <= plain * (1 + 1e-12))


def test_per_layer_shares_one_grid_per_neuron_differs(rng):
    W = rng.standard_normal((20, 6)) * np.array([0.1, 1, 2, 3, 4, 5])
    layer = ptq.Grid.fit(W, 4, "asymmetric", "layer")
    neuron = ptq.Grid.fit(W, 4, "asymmetric", "neuron")
    assert np.ptp(np.asarray(layer.step)) == 0 and np.ptp(np.asarray(layer.zero)) == 0
    assert np.ptp(np.asarray(neuron.step)) > 0


# --------------------------------------------------------------------------- rounding
def test_symmetric_alphabet_and_levels():
    g = ptq.Grid.symmetric(0.5, 3)
    assert g.levels == 3 and g.is_finite
    z = jnp.array([-10.0, -1.3, -0.25, 0.0, 0.2, 0.25, 0.74, 0.75, 1.49, 10.0])
    # ties (+-0.25 = half a step, 0.75) round up; |k| <= 3 clips +-10
    np.testing.assert_array_equal(
        np.asarray(g.round(z)), [-1.5, -1.5, 0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 1.5, 1.5]
    )
    inf = ptq.Grid.symmetric(0.5)
    assert inf.levels is None and not inf.is_finite
    np.testing.assert_array_equal(np.asarray(inf.round(z))[[0, -1]], [-10.0, 10.0])


@given(st.integers(0, 2**31 - 1), st.integers(1, 8))
def test_codes_dequantize_and_on_grid(seed, bits):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((30, 5)) * 2
    grid = ptq.Grid.fit(W, bits, "asymmetric")
    Z = W * rng.uniform(0.5, 2.0)  # values beyond the fitted range clip
    codes = np.asarray(grid.codes(Z))
    assert codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    Q = grid.round(Z)
    np.testing.assert_array_equal(np.asarray(grid.dequantize(codes)), np.asarray(Q))
    assert bool(jnp.all(grid.on_grid(Q, rtol=1e-12)))  # a few ulps of Q / step
    off = Q + 0.3 * grid.step
    assert not bool(jnp.any(grid.on_grid(off, rtol=1e-12)))
    # inside the range the error is at most half a step
    lo, hi = (np.asarray(b) * np.asarray(grid.step) for b in grid.index_bounds())
    inside = (Z >= lo - np.asarray(grid.step) / 2) & (Z <= hi + np.asarray(grid.step) / 2)
    err = np.abs(np.asarray(Q) - Z)
    half = np.broadcast_to(np.asarray(grid.step), Z.shape) / 2
    assert np.all(err[inside] <= half[inside] * (1 + 1e-12))  # a few ulps of the quotient


def test_stochastic_index_extremes():
    """u = 0 always rounds up unless z is on the grid; u just below 1 always rounds down."""
    g = ptq.Grid.symmetric(1.0)
    z = jnp.array([0.0, 0.25, 1.0, -0.5, 2.999])
    np.testing.assert_array_equal(np.asarray(g.stochastic_index(z, jnp.zeros(5))), [0, 1, 1, 0, 3])
    u = jnp.full(5, 1 - 2**-40)
    np.testing.assert_array_equal(np.asarray(g.stochastic_index(z, u)), [0, 0, 1, -1, 2])


def test_grid_is_a_pytree_usable_under_jit():
    g = ptq.Grid.fit(np.arange(12.0).reshape(4, 3) - 5, 3, "asymmetric")
    f = jax.jit(lambda g, z: g.round(z))
    z = jnp.linspace(-6, 6, 12).reshape(4, 3)
    np.testing.assert_array_equal(np.asarray(f(g, z)), np.asarray(g.round(z)))
