"""Stochastic rounding: unbiased (with a stated false-failure rate), bounded, reproducible.

Both statistical tests use Hoeffding/Azuma-Hoeffding inequalities, which hold for every
sample size (no normal approximation). Each test fails by chance with probability at most
ALPHA = 1e-6 when the implementation is correct (union bound over the coordinates tested).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ptq
from ptq import reference

ALPHA = 1e-6  # false-failure probability of each statistical test below


def hoeffding_radius(range_: np.ndarray, samples: int, coords: int) -> np.ndarray:
    """s with P(|mean - E| >= s) <= ALPHA / coords for means of `samples` iid draws in an
    interval of length `range_`: 2 exp(-2 samples s^2 / range^2) = ALPHA / coords."""
    return range_ * np.sqrt(np.log(2 * coords / ALPHA) / (2 * samples))


def rounding_bias_within_bound(rounded: np.ndarray, z: np.ndarray, step: np.ndarray) -> bool:
    """mean over rows of ``rounded`` equals ``z`` (per column) within the Hoeffding radius."""
    S, n = rounded.shape
    return bool(np.all(np.abs(rounded.mean(axis=0) - z) <= hoeffding_radius(step, S, n)))


def test_grid_stochastic_rounding_is_unbiased(key):
    """E[Qs(z)] = z: Qs(z) takes values in [lo, lo + delta] (an interval of length delta), so
    the mean of S draws is within delta sqrt(log(2n/ALPHA) / (2S)) of z except with
    probability ALPHA / n per value (Hoeffding); n values, union bound: ALPHA in all.
    With S = 2^18 the radius is 0.0057 delta, so a bias of 1% of a step is caught."""
    z = np.array([0.0, 1e-3, 0.1, 0.25, 0.5, 0.7, 0.999, 1.3, -0.2, -0.5, -1.75, -2.999, 3.01, 7.5])
    step = np.array([1.0, 1.0, 0.5, 1.0, 1.0, 0.3, 1.0, 2.0, 1.0, 0.25, 1.0, 1.0, 0.1, 3.0])
    grid = ptq.Grid.symmetric(step)  # infinite: no clipping
    S = 2**18
    Z = jnp.broadcast_to(jnp.asarray(z), (S, len(z)))
    rounded = np.asarray(grid.round_stochastic(Z, key))
    lo = np.floor(z / step) * step
    assert np.all((rounded == lo) | (rounded == lo + step))  # one of the two neighbours
    assert rounding_bias_within_bound(rounded, z, step)
    # the statistic has power: round-to-nearest (biased) fails the same check
    assert not rounding_bias_within_bound(np.asarray(grid.round(Z)), z, step)


def test_stochastic_optq_is_unbiased(key):
    """E[Xa (w - q)] = 0 for stochastic OPTQ without clipping (E[e_t | past] = 0).

    One neuron is copied into R columns; every column gets its own uniforms, so the columns are
    R independent runs. Row i of Xa (w - q) is sum_t e_t M_it (I1, M = the P_t Xa_t), each
    increment lying, given the past, in an interval of length delta |M_it| with mean zero.
    The mean over runs is a martingale with R N such increments of length delta |M_it| / R;
    Azuma-Hoeffding gives P(|mean_i| >= s) <= 2 exp(-2 R s^2 / (delta^2 sum_t M_it^2)), and a
    union bound over the m + N rows puts the false-failure probability at ALPHA.
    """
    rng = np.random.default_rng(3)
    m, N, R = 30, 10, 4096
    X = rng.standard_normal((m, N)) @ np.diag(rng.lognormal(0, 0.5, N))
    w = rng.standard_normal(N)
    W = np.repeat(w[:, None], R, axis=1)
    delta = 0.2
    res = ptq.optq(X, W, ptq.Grid.symmetric(delta), rounding="stochastic", key=key, lam=0.1)
    p = res.order
    Xa = reference.augment(X[:, p], res.lam)
    D = Xa @ (np.asarray(res.W_start) - np.asarray(res.Q))[p]  # (m + N, R)
    M = reference.projected_columns(Xa)
    s = delta * np.sqrt(np.sum(M**2, axis=1)) * np.sqrt(np.log(2 * (m + N) / ALPHA) / (2 * R))
    assert np.all(np.abs(D.mean(axis=1)) <= s)
    # the runs really differ (otherwise the mean would be one deterministic error)
    assert len({tuple(c) for c in np.asarray(res.codes).T[:50]}) > 1


@pytest.mark.parametrize("alg", ["optq", "paper", "ls_first"])
def test_reproducible_from_the_key_and_keys_differ(alg, rng):
    X = rng.standard_normal((40, 12))
    X_hat = X + 0.1 * rng.standard_normal(X.shape)
    W = rng.standard_normal((12, 8))
    grid = ptq.Grid.symmetric(0.05)  # small step: every decision is a genuine coin flip

    def run(key):
        kw = dict(rounding="stochastic", key=key)
        if alg == "optq":
            return ptq.optq(X, W, grid, **kw)
        return ptq.qronos(X, X_hat, W, grid, variant=alg, **kw)

    a, b, c = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(a.codes), np.asarray(b.codes))
    np.testing.assert_array_equal(np.asarray(a.e), np.asarray(b.e))
    # 96 rounding decisions, each a non-degenerate coin flip: equal by chance has
    # negligible probability
    assert np.any(np.asarray(a.codes) != np.asarray(c.codes))


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_per_step_errors_are_bounded_without_clipping(rounding, rng, key):
    """|e_t| <= delta/2 (nearest) and |e_t| < delta (stochastic) at every step, for OPTQ and
    for Qronos' steps t >= 2 (the paper form's e_1 = wt_1 - Q(z_1) is not bounded so)."""
    X = rng.standard_normal((20, 16)) @ np.diag(rng.lognormal(0, 1, 16))
    W = rng.standard_normal((16, 5))
    step = np.array([0.05, 0.1, 0.2, 0.5, 1.0])
    grid = ptq.Grid.symmetric(step)
    kw = {"rounding": rounding, "key": key}
    bound = step / 2 if rounding == "nearest" else step
    for res in (
        ptq.optq(X, W, grid, percdamp=1e-3, **kw),
        ptq.qronos(X, X + 0.2 * rng.standard_normal(X.shape), W, grid, **kw),
    ):
        e = np.abs(np.asarray(res.e))[1:]
        # float64 rounding of z / delta can move e by a few ulps of z
        slack = 1e-12 * (1 + np.abs(np.asarray(res.w_max)))
        assert np.all(e <= bound + slack) if rounding == "nearest" else np.all(e < bound + slack)
    e0 = np.abs(np.asarray(ptq.optq(X, W, grid, percdamp=1e-3, **kw).e))[0]
    assert np.all(e0 <= bound + 1e-12)
