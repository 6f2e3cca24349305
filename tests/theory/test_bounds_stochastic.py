"""High-probability bounds S2, S3, Q3 (violation rate at most p) and the mean bound S1.

Trials: the n neurons of one run are independent trials (each has its own column of
uniforms), repeated over a few keys. A bound claiming "probability >= 1 - p" is rejected
when the number of violations V out of T trials exceeds the (1 - ALPHA) quantile of
Binomial(T, p): if the bound is right (violation probability <= p) this test fails with
probability <= ALPHA = 1e-6 (its false-failure rate); over the ~15 such checks in this file
the suite's false-failure rate is below 2e-5. `test_harness_detects_a_wrong_bound` shows the
same check fails on a bound that is too small.
"""

import jax
import numpy as np
import pytest
import scipy.stats
from theory_data import make_X, x_hat

import ptq
import theory

ALPHA = 1e-6
T = 600  # neurons per run
KEYS = (0, 1)


def assert_rate_at_most(violations: int, trials: int, p: float) -> None:
    """Binomial test of H0: P(violation) <= p, at level ALPHA."""
    c = int(scipy.stats.binom.isf(ALPHA, trials, p))  # P(Bin(trials, p) > c) <= ALPHA
    while scipy.stats.binom.sf(c, trials, p) > ALPHA:
        c += 1
    assert violations <= c, (
        f"{violations}/{trials} violations (rate {violations / trials:.4f}) > {c} allowed "
        f"at p = {p} (P(Bin(T, p) > {c}) <= {ALPHA})"
    )


CASES = {
    # name: (m, N, cond, spread, dead, kwargs)
    "tall": (40, 13, 1.0, 0.5, 0, dict(percdamp=0.01, order="natural")),
    "ill_conditioned": (30, 20, 4.0, 1.0, 2, dict(percdamp=1e-3, order="decreasing_norm")),
    "wide": (8, 20, 0.0, 1.0, 1, dict(lam=0.05, order="random", order_seed=3)),
}


def problem(name, seed=0):
    m, N, cond, spread, dead, opts = CASES[name]
    rng = np.random.default_rng(seed + 17 * len(name))
    X = make_X(rng, m, N, cond=cond, spread=spread, dead=dead)
    w = rng.standard_normal(N)
    W = np.tile(w[:, None], (1, T))  # one neuron, T independent roundings
    step = 0.3 * np.abs(w).max() / 7  # a 4-bit-like step
    return X, W, step, opts, rng


def runs(X, W, grid, opts, X_hat=None, variant=None, seed0=1000):
    """Stochastic OPTQ (Qronos when X_hat is given) once per key ``seed0 + k``, k in KEYS."""
    for k in KEYS:
        key = jax.random.key(seed0 + k)
        if X_hat is None:
            yield ptq.optq(X, W, grid, rounding="stochastic", key=key, **opts)
        else:
            yield ptq.qronos(X, X_hat, W, grid, rounding="stochastic", key=key, variant=variant,
                             **opts)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("p", [0.05, 0.5])
def test_S2_and_S3_violation_rates(name, p):
    X, W, step, opts, _ = problem(name)
    s2 = theory.stochastic_linf_bound(X, step, p=p, **opts)
    s3 = theory.stochastic_weight_bound(X, W[:, :1], step, p=p, **opts)
    v2 = v3 = 0
    for res in runs(X, W, ptq.Grid.symmetric(step), opts):
        meas = theory.output_errors(X, np.asarray(res.W_start), np.asarray(res.Q))
        v2 += int(np.sum(meas.linf > s2))
        v3 += int(np.sum(np.asarray(res.w_max) > s3.bound[0]))
    assert_rate_at_most(v2, T * len(KEYS), p)
    assert_rate_at_most(v3, T * len(KEYS), p)


@pytest.mark.parametrize("name", sorted(CASES))
def test_S3_levels_make_S2_hold_on_the_finite_grid(name):
    """K = S3.levels: no clipping and S2, together with probability >= 1 - 2p."""
    p = 0.05
    X, W, step, opts, _ = problem(name)
    K = int(theory.stochastic_weight_bound(X, W[:, :1], step, p=p, **opts).levels[0])
    s2 = theory.stochastic_linf_bound(X, step, p=p, **opts)
    fails = 0
    for inf, fin in zip(runs(X, W, ptq.Grid.symmetric(step), opts),
                        runs(X, W, ptq.Grid.symmetric(step, K), opts)):
        clipped = np.any(np.asarray(inf.Q) != np.asarray(fin.Q), axis=0)  # same uniforms
        meas = theory.output_errors(X, np.asarray(fin.W_start), np.asarray(fin.Q))
        fails += int(np.sum(clipped | (meas.linf > s2)))
    assert_rate_at_most(fails, T * len(KEYS), 2 * p)


@pytest.mark.parametrize("variant", ["paper", "ls_first"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_Q3_violation_rate(name, variant):
    p = 0.05
    X, W, step, opts, rng = problem(name)
    Xh = x_hat(rng, X, 0.5)
    q3 = theory.qronos_linf_bound(X, Xh, W[:, :1], step, p=p, variant=variant, **opts)[0]
    v = 0
    for res in runs(X, W, ptq.Grid.symmetric(step), opts, X_hat=Xh, variant=variant):
        v += int(np.sum(theory.output_errors(X, W, np.asarray(res.Q), X_hat=Xh).linf > q3))
    assert_rate_at_most(v, T * len(KEYS), p)


def test_Q3_paper_variant_needs_the_first_step_offset():
    """THEORY.md's Q3 centre ||X w - X_hat wt||_inf omits the paper variant's mean offset
    (wt_1 - z_1) Mh_1; with a fine step it is violated almost surely, ours is not."""
    p = 0.05
    rng = np.random.default_rng(10)
    X = rng.standard_normal((12, 8))
    Xh = X + rng.standard_normal(X.shape)
    W = np.tile(rng.standard_normal(8)[:, None], (1, 200))
    step = 0.002
    res = ptq.qronos(X, Xh, W, ptq.Grid.symmetric(step), rounding="stochastic",
                     key=jax.random.key(0), variant="paper")
    meas = theory.output_errors(X, W, np.asarray(res.Q), X_hat=Xh).linf
    ours = theory.qronos_linf_bound(X, Xh, W[:, :1], step, p=p, variant="paper")[0]
    # ls_first has no first-step offset: its centre is THEORY.md's form
    theirs = theory.qronos_linf_bound(X, Xh, W[:, :1], step, p=p, variant="ls_first")[0]
    assert np.mean(meas > ours) == 0.0
    assert np.mean(meas > theirs) > 0.5


def test_harness_detects_a_wrong_bound():
    """The rate check has power: a bound at a quarter of S2 is rejected."""
    X, W, step, opts, _ = problem("tall")
    s2 = theory.stochastic_linf_bound(X, step, p=0.05, **opts)
    res = next(runs(X, W, ptq.Grid.symmetric(step), opts))
    meas = theory.output_errors(X, np.asarray(res.W_start), np.asarray(res.Q))
    with pytest.raises(AssertionError):
        assert_rate_at_most(int(np.sum(meas.linf > 0.25 * s2)), T, 0.05)


@pytest.mark.parametrize("name", sorted(CASES))
def test_S1_mean_square_identity_and_bound(name):
    """S1: E||Xa(w-q)||^2 = sum_t E[e_t^2] r_t^2 <= (delta^2/4) sum_t r_t^2.

    Path by path the compensator A = sum_t delta^2 f_t (1 - f_t) r_t^2 (f_t the fractional part
    of z_t / delta, z_t = q_t + e_t) is <= the S1 bound squared; the error minus A is a sum of
    martingale increments in intervals of length delta^2 r_t^2, so by Azuma-Hoeffding the mean
    of T independent copies is within s of 0 except with probability
    2 exp(-2 T s^2 / (delta^4 sum_t r_t^4)) = ALPHA.
    """
    X, W, step, opts, _ = problem(name)
    f = theory.factorise(X, **opts)
    r = np.where(f.live, f.r, 0.0)  # OPTQ has e_t = 0 on dead features
    s1 = theory.stochastic_l2_bound(X, step, **opts)
    for res in runs(X, W, ptq.Grid.symmetric(step), opts):
        e = np.asarray(res.e)
        q = np.asarray(res.Q)[res.order]
        x = (q + e) / step
        frac = x - np.floor(x)
        A = np.sum(step**2 * frac * (1 - frac) * r[:, None] ** 2, axis=0)
        assert np.all(A <= s1**2 * (1 + 1e-12))
        out = theory.output_errors(X, np.asarray(res.W_start), np.asarray(res.Q), lam=res.lam)
        err2 = out.augmented**2
        s = np.sqrt(np.log(2 / ALPHA) * step**4 * np.sum(r**4) / (2 * W.shape[1]))
        assert abs(np.mean(err2 - A)) <= s
        assert np.mean(err2) <= s1**2 + s
