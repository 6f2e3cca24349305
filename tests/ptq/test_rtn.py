"""ptq.rtn: elementwise round to nearest, as the oracle; the no-feedback baseline."""

import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import ptq
from ptq import reference


@given(st.integers(0, 2**31 - 1), st.sampled_from(["sym", "asym", "infinite"]), st.integers(1, 6))
def test_rtn_matches_reference_and_stays_on_grid(seed, kind, bits):
    rng = np.random.default_rng(seed)
    W = rng.standard_t(3, (17, 5))
    if kind == "sym":
        grid = ptq.Grid.symmetric(np.abs(W).std(axis=0) / 2, max(bits - 1, 1))  # clips
    elif kind == "asym":
        grid = ptq.Grid.fit(W, bits, "asymmetric")
    else:
        grid = ptq.Grid.symmetric(0.1)
    res = ptq.rtn(W, grid)
    ref = reference.rtn(W, grid)
    np.testing.assert_array_equal(np.asarray(res.codes), ref.codes)  # same rule, exact
    np.testing.assert_array_equal(np.asarray(res.Q), ref.Q)
    assert res.codes.dtype == jnp.int32 and res.Q.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(grid.dequantize(res.codes)), np.asarray(res.Q))
    assert np.all(np.asarray(res.codes) >= float(grid.qmin))
    assert np.all(np.asarray(res.codes) <= float(grid.qmax))


def test_rtn_ties_round_up():
    grid = ptq.Grid.symmetric(np.array([1.0, 0.5]))
    W = np.array([[0.5, 0.25], [-0.5, -0.25], [1.5, 0.75], [-2.5, -1.25]])
    np.testing.assert_array_equal(
        np.asarray(ptq.rtn(W, grid).Q), [[1.0, 0.5], [0.0, 0.0], [2.0, 1.0], [-2.0, -1.0]]
    )


def test_optq_beats_rtn_in_its_objective(rng):
    """Directional check on seeded data: OPTQ's ||X (w - q)|| is below RTN's on correlated
    inputs (the reason OPTQ exists). Not an identity: a seeded sanity check of the baseline."""
    m, N, n = 200, 32, 16
    X = rng.standard_normal((m, N)) @ np.linalg.cholesky(
        0.9 ** np.abs(np.subtract.outer(np.arange(N), np.arange(N)))
    ).T
    W = rng.standard_normal((N, n))
    grid = ptq.Grid.fit(W, 3, "asymmetric")
    e_rtn = np.linalg.norm(X @ (W - np.asarray(ptq.rtn(W, grid).Q)))
    e_optq = np.linalg.norm(X @ (W - np.asarray(ptq.optq(X, W, grid).Q)))
    assert e_optq < e_rtn


@given(st.integers(0, 2**31 - 1), st.integers(1, 4))
def test_rtn_per_weight_grid_matches_reference(seed, bits):
    """A (N, n) grid (here: min-max fits on groups of 4 features, a short last group) is
    applied elementwise, as the oracle applies it."""
    rng = np.random.default_rng(seed)
    W = rng.standard_t(3, (17, 5))
    parts = [ptq.Grid.fit(W[g : g + 4], bits, "asymmetric") for g in range(0, 17, 4)]
    rows = np.repeat(np.arange(len(parts)), 4)[:17]
    step = np.stack([np.asarray(p.step) for p in parts])[rows]
    zero = np.stack([np.asarray(p.zero) for p in parts])[rows]
    grid = ptq.Grid.asymmetric(step, zero, bits)
    res = ptq.rtn(W, grid)
    ref = reference.rtn(W, grid)
    np.testing.assert_array_equal(np.asarray(res.codes), ref.codes)  # same rule, exact
    np.testing.assert_array_equal(np.asarray(grid.dequantize(res.codes)), np.asarray(res.Q))
    assert np.all((np.asarray(res.codes) >= 0) & (np.asarray(res.codes) <= 2**bits - 1))
    # every group's own min-max grid holds its weights: no clipping, error <= step / 2
    assert np.all(np.abs(np.asarray(res.Q) - W) <= step / 2 * (1 + 1e-12))  # ulps of w / step
