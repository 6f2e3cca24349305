"""ptq.qat: fake quantization (STE, LSQ) against ptq's Q, and the output-scale identities.

The conftest switches x64 on; the fake-quantization tests run in float32 (the training path)
with the `float32` fixture, the scale identities in float64 (tolerances there are round-off).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ptq
from ptq import qat


def _grids(W):
    return [ptq.Grid.fit(W, 3, kind="asymmetric"), ptq.Grid.fit(W, 3, kind="symmetric"),
            ptq.Grid.fit(W, 2, kind="asymmetric", per="layer")]


@pytest.fixture
def W(float32, rng):
    return jnp.asarray(rng.standard_normal((96, 12)), jnp.float32)


def test_fake_quant_forward_is_rtn_bit_for_bit(W):
    for grid in _grids(W):
        Q = ptq.rtn(W, grid).Q
        # custom_vjp returns grid.round(w) itself: equality is exact, not to a tolerance
        assert jnp.array_equal(qat.fake_quant(W, grid), Q)
        assert jnp.array_equal(jax.jit(qat.fake_quant)(W, grid), Q)
        assert bool(jnp.all(grid.on_grid(qat.fake_quant(W, grid), rtol=1e-6)))


def test_fake_quant_gradient_is_straight_through(W, rng):
    grid = _grids(W)[0]
    c = jnp.asarray(rng.standard_normal(W.shape), jnp.float32)
    g = jax.grad(lambda w: jnp.sum(c * qat.fake_quant(w, grid)))(W)
    assert jnp.array_equal(g, c)  # d Q / d w := 1 everywhere, clipped weights included


def test_lsq_forward_at_the_grid_step_is_rtn(W):
    for grid in _grids(W)[:2]:
        g = qat.lsq_grad_scale(grid, W.shape[0])
        assert jnp.array_equal(qat.lsq_quant(W, grid.step, grid, g), ptq.rtn(W, grid).Q)


def test_lsq_gradients_match_the_paper_formulas(W, rng):
    grid = _grids(W)[0]
    s = grid.step * 0.8  # a smaller step, so some weights fall outside the code range
    gs = qat.lsq_grad_scale(grid, W.shape[0])
    c = jnp.asarray(rng.standard_normal(W.shape), jnp.float32)
    dw, ds = jax.grad(lambda w, s: jnp.sum(c * qat.lsq_quant(w, s, grid, gs)),
                      argnums=(0, 1))(W, s)
    # Esser et al. (arXiv:1902.08153) eq. 3 and 5, written out in NumPy float64
    v = np.asarray(W, np.float64) / np.asarray(s, np.float64)
    kmin, kmax = (np.asarray(b, np.float64) for b in grid.index_bounds())
    inside = (v >= kmin) & (v <= kmax)
    assert 0 < (~inside).sum() < inside.sum()
    dq_ds = np.where(inside, np.floor(v + 0.5) - v, np.where(v < kmin, kmin, kmax))
    np.testing.assert_array_equal(np.asarray(dw), np.where(inside, np.asarray(c), 0.0))
    expect = float(gs) * np.sum(np.asarray(c, np.float64) * dq_ds, axis=0)
    # float32 sums of 96 terms of order 1: rtol 1e-5 is round-off
    np.testing.assert_allclose(np.asarray(ds), expect, rtol=1e-5, atol=1e-6)


def test_lsq_grad_scale_values_and_errors(W):
    asym, sym = _grids(W)[:2]
    assert float(qat.lsq_grad_scale(asym, 96)) == pytest.approx(1 / np.sqrt(96 * 7))
    assert float(qat.lsq_grad_scale(sym, 96)) == pytest.approx(1 / np.sqrt(96 * 3))
    with pytest.raises(ValueError, match=r"`N` must be an integer >= 1.*got 0"):
        qat.lsq_grad_scale(asym, 0)


def test_project_is_on_grid_and_raises_off_it(W):
    grid = _grids(W)[0]
    assert jnp.array_equal(qat.project(W, grid), ptq.rtn(W, grid).Q)
    with pytest.raises(RuntimeError, match="not on the grid"):
        qat.project(W.at[0, 0].set(jnp.nan), grid)


# ----------------------------------------------------------------------------- output scales
@pytest.fixture
def TY(rng):
    """A target T = X W and a perturbed, shrunk quantized output Y (float64)."""
    T = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 8))
    Y = 0.8 * T + 0.5 * rng.standard_normal(T.shape) + 0.1
    return T, Y


@pytest.mark.parametrize("per", ["layer", "channel"])
def test_least_squares_scale_minimises_the_error(TY, per):
    T, Y = TY
    axis = None if per == "layer" else 0
    s = np.asarray(qat.output_scale(T, Y, "ls", per))
    g = np.asarray(qat.output_scale(T, Y, "gamma", per))

    def direct(c):
        return np.sum((T - c * Y) ** 2, axis=axis)

    for c in (1.0, s, g, s * 1.01, s * 0.99):
        # the closed form ||T||^2 - 2c<T,Y> + c^2||Y||^2 in float64: round-off only
        np.testing.assert_allclose(np.asarray(qat.scaled_error(T, Y, c, per)), direct(c),
                                   rtol=1e-10)
        # E(c) = E(s) + ||Y||^2 (c - s)^2: s is the minimiser, so E(s) <= E(c)
        np.testing.assert_allclose(direct(c), direct(s) + np.sum(Y**2, axis=axis) * (c - s) ** 2,
                                   rtol=1e-10)
        assert np.all(direct(s) <= direct(c) * (1 + 1e-12))
    # gamma helps exactly when it is closer to s than 1 is
    np.testing.assert_array_equal(direct(g) < direct(1.0), np.abs(g - s) < np.abs(1.0 - s))


def test_gamma_matches_the_standard_deviation(TY):
    T, Y = TY
    g = np.asarray(qat.output_scale(T, Y, "gamma", "channel"))
    np.testing.assert_allclose(np.std(g * Y, axis=0), np.std(T, axis=0), rtol=1e-12)
    gl = float(qat.output_scale(T, Y, "gamma", "layer"))
    assert np.std(gl * Y) == pytest.approx(np.std(T), rel=1e-12)


@pytest.mark.parametrize("per", ["layer", "channel"])
def test_gamma_is_the_centred_least_squares_scale_over_rho(TY, per):
    # theory/README section 9: gamma = c~ / rho and ||t~ - gamma y~||^2 = 2 (1 - rho) ||t~||^2
    T, Y = TY
    axis = None if per == "layer" else 0
    g = np.asarray(qat.output_scale(T, Y, "gamma", per))
    Tc, Yc = T - T.mean(axis=axis), Y - Y.mean(axis=axis)
    tt, yy, ty = (np.sum(a * b, axis=axis) for a, b in ((Tc, Tc), (Yc, Yc), (Tc, Yc)))
    rho = ty / np.sqrt(tt * yy)
    np.testing.assert_allclose(g, (ty / yy) / rho, rtol=1e-12)
    np.testing.assert_allclose(np.sum((Tc - g * Yc) ** 2, axis=axis), 2 * (1 - rho) * tt,
                               rtol=1e-10)
    # against the centred LS minimum (1 - rho^2) ||t~||^2: the factor 2 / (1 + rho)
    c = ty / yy
    np.testing.assert_allclose(np.sum((Tc - c * Yc) ** 2, axis=axis), (1 - rho**2) * tt,
                               rtol=1e-10)


def test_gamma_can_hurt(rng):
    # Y = 0.5 T + noise of the same energy: gamma inflates the noise back, s shrinks it
    T = rng.standard_normal((500, 4))
    Y = 0.5 * T + 0.5 * rng.standard_normal(T.shape)
    err = {c: float(qat.scaled_error(T, Y, float(qat.output_scale(T, Y, c)))) for c in
           ("gamma", "ls")}
    assert err["ls"] < float(qat.scaled_error(T, Y, 1.0)) < err["gamma"]


def test_constant_output_gets_scale_one():
    T = np.ones((5, 2))
    assert np.all(np.asarray(qat.output_scale(T, np.zeros((5, 2)), "ls", "channel")) == 1.0)
    assert float(qat.output_scale(T, np.ones((5, 2)), "gamma")) == 1.0


@pytest.mark.parametrize("kw, match", [
    (dict(kind="rms"), r"`kind` must be one of \('gamma', 'ls'\); got 'rms'"),
    (dict(per="row"), r"`per` must be one of \('layer', 'channel'\); got 'row'"),
])
def test_bad_scale_arguments(TY, kw, match):
    with pytest.raises(ValueError, match=match):
        qat.output_scale(*TY, **kw)


def test_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(m, n\) arrays of one shape; got \(3, 2\) and"):
        qat.output_scale(np.ones((3, 2)), np.ones((3, 3)))
