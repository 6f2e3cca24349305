"""Bounds at a correction strength a < 1 (``ptq.qronos(variant="ls_first", strength=a)``).

Q4: ``||X w - X_hat q|| <= sqrt(E_LS^2 + sum_t (|c_t| + delta_t/2)^2 rh_t^2)`` with
``c = (1 - a) diag(1/rh) R^T (wt - w')``, for round to nearest without clipping; at a = 0 it
is at most Q2 (OPTQ ignoring the mismatch), as a -> 1 it becomes Q1. Q3 at strength a puts the
deterministic uncorrected part ``Mh c`` into the centre of the stochastic l_inf bound.

No clipping: the steps are a static symmetric group grid's (``ptq.GroupGrid(4, "symmetric",
4, static=True)``, one step per weight), realised by the run, and the bound is checked on
the run on the infinite alphabet with those steps (``ptq.Grid.symmetric(step)``, as
test_bounds_deterministic); on the 4-bit grid itself only for the neurons it did not clip
(codes equal to the infinite run's).
"""

import jax
import numpy as np
import pytest
from test_bounds_stochastic import assert_rate_at_most
from theory_data import make_X, x_hat

import ptq
import theory

SLACK = 1 + 1e-9  # float64 rounding of the measured error; the bounds are exact inequalities
STRENGTHS = (0.0, 0.25, 0.5, 0.75)
ORDERS = ("natural", "decreasing_norm")
N, NN = 12, 3
RECIPE = ptq.GroupGrid(4, "symmetric", 4, static=True)


def random_layer(seed):
    """m < N or m > N, conditioning, column spread, a dead feature, the mismatch, the ridge:
    all drawn from the seed."""
    rng = np.random.default_rng(seed)
    m = (8, 30)[seed % 2]
    X = make_X(rng, m, N, cond=rng.uniform(0, 3), spread=rng.uniform(0, 1),
               dead=int(rng.integers(0, 2)))
    Xh = x_hat(rng, X, rng.uniform(0.05, 1.0))
    W = rng.standard_normal((N, NN)) * np.exp(rng.standard_normal(NN))
    opts = dict(percdamp=float(10.0 ** rng.uniform(-3, 0)))
    return X, Xh, W, opts


def run(X, Xh, W, grid, a, **opts):
    return ptq.qronos(X, Xh, W, grid, variant="ls_first", strength=a, **opts)


@pytest.mark.parametrize("seed", range(20))
def test_Q4_holds_for_every_strength(seed):
    X, Xh, W, opts = random_layer(seed)
    for order in ORDERS:
        f = theory.factorise(Xh, order=order, **opts)
        for a in STRENGTHS:
            fin = run(X, Xh, W, RECIPE, a, order=order, **opts)
            step = np.asarray(fin.grid.step)  # (N, n): the group step of each weight
            res = run(X, Xh, W, ptq.Grid.symmetric(step), a, order=order, **opts)
            q4 = theory.qronos_l2_bound(X, Xh, W, step, variant="ls_first", strength=a,
                                        factors=f, order=order, **opts)
            meas = theory.output_errors(X, W, np.asarray(res.Q), X_hat=Xh, lam=res.lam)
            assert np.all(meas.augmented <= q4 * SLACK), (order, a, meas.augmented, q4)
            kept = np.all(np.asarray(fin.codes) == np.asarray(res.codes), axis=0)
            fmeas = theory.output_errors(X, W, np.asarray(fin.Q), X_hat=Xh, lam=fin.lam)
            assert np.all(fmeas.augmented[kept] <= q4[kept] * SLACK)
            if a == 0.0:
                # Q4 at a = 0 bounds OPTQ on X_hat (the same run) and is sharper than Q2
                q2 = theory.optq_mismatch_l2_bound(X, Xh, W, step, factors=f, order=order,
                                                   **opts)
                assert np.all(q4 <= q2 * SLACK), (q4, q2)
                optq = ptq.optq(Xh, W, ptq.Grid.symmetric(step), order=order, **opts)
                np.testing.assert_array_equal(np.asarray(optq.Q), np.asarray(res.Q))


def test_Q4_at_zero_strength_keeps_a_dead_features_ridge_term():
    """Regression: at a = 0 a feature dead in X_hat is quantized to 0 (e_t = 0), but with
    lam > 0 its ridge row keeps lam w_t^2 in the augmented error (c_t = w_t, I6). The bound
    used to drop it (b_t = 0) and fell below the augmented error it bounds."""
    rng = np.random.default_rng(0)
    X = make_X(rng, 8, N)
    X[:, 5] = 0.0  # an input that is always 0 (dead in X_hat too), a small mismatch
    Xh = x_hat(rng, X, 0.05)
    W = rng.standard_normal((N, NN))
    step = np.abs(W).max(axis=0) / 7
    res = run(X, Xh, W, ptq.Grid.symmetric(step), 0.0, percdamp=1.0)
    np.testing.assert_array_equal(np.asarray(res.Q)[5], 0.0)
    q4 = theory.qronos_l2_bound(X, Xh, W, step, variant="ls_first", strength=0.0,
                                percdamp=1.0)
    meas = theory.output_errors(X, W, np.asarray(res.Q), X_hat=Xh, lam=res.lam)
    assert np.all(meas.augmented <= q4 * SLACK), (meas.augmented, q4)
    assert np.all(q4 >= np.sqrt(res.lam) * np.abs(W[5]))


@pytest.mark.parametrize("per_weight", [False, True])
def test_Q4_tends_to_Q1_at_full_strength(per_weight):
    """a = 1 is Q1 (ls_first); a = 1 - 1e-15 takes the a < 1 formula with c ~ 1e-15 and
    gives Q1 to 1e-12; a = 0 is looser than both."""
    X, Xh, W, opts = random_layer(3)
    f = theory.factorise(Xh, **opts)
    step = np.abs(W).max(axis=0) / 7
    if per_weight:
        step = step * np.random.default_rng(0).uniform(0.5, 1.5, W.shape)
    q1 = theory.qronos_l2_bound(X, Xh, W, step, variant="ls_first", factors=f, **opts)
    at1 = theory.qronos_l2_bound(X, Xh, W, step, variant="ls_first", strength=1.0, factors=f,
                                 **opts)
    np.testing.assert_array_equal(at1, q1)
    near = theory.qronos_l2_bound(X, Xh, W, step, variant="ls_first", strength=1 - 1e-15,
                                  factors=f, **opts)
    np.testing.assert_allclose(near, q1, rtol=1e-12)
    at0 = theory.qronos_l2_bound(X, Xh, W, step, variant="ls_first", strength=0.0, factors=f,
                                 **opts)
    assert np.all(at0 >= q1)


def test_strength_is_checked_by_the_bounds():
    X, Xh, W, _ = random_layer(0)
    for fn in (theory.qronos_l2_bound, theory.qronos_linf_bound):
        with pytest.raises(ValueError, match="`strength`"):
            fn(X, Xh, W, 0.1, variant="paper", strength=0.5)
        for bad in (-0.5, 2.0, "auto", True):
            with pytest.raises(ValueError, match="`strength`"):
                fn(X, Xh, W, 0.1, variant="ls_first", strength=bad)


# ------------------------------------------------------------------ stochastic l_inf (Q3)
T = 200  # copies of one neuron: independent stochastic roundings (own uniforms)
CASES = {
    # name: (m, N, cond, dead, kwargs)
    "tall": (40, 13, 1.0, 0, dict(percdamp=0.01, order="natural")),
    "wide_dead": (8, 20, 0.0, 1, dict(lam=0.05, order="decreasing_norm")),
}


@pytest.mark.parametrize("a", [0.0, 0.5])
@pytest.mark.parametrize("name", sorted(CASES))
def test_Q3_with_strength_violation_rate(name, a):
    """At most p of T = 200 stochastic runs exceed qronos_linf_bound(strength=a) (binomial
    test at level 1e-6, as test_bounds_stochastic's Q3 test); the slack is that test's."""
    p = 0.05
    m, n_feat, cond, dead, opts = CASES[name]
    rng = np.random.default_rng(31 + len(name))
    X = make_X(rng, m, n_feat, cond=cond, spread=0.5, dead=dead)
    Xh = x_hat(rng, X, 0.5)
    w = rng.standard_normal(n_feat)
    W = np.tile(w[:, None], (1, T))
    step = 0.3 * np.abs(w).max() / 7
    q3 = theory.qronos_linf_bound(X, Xh, W[:, :1], step, p=p, variant="ls_first", strength=a,
                                  **opts)[0]
    res = ptq.qronos(X, Xh, W, ptq.Grid.symmetric(step), variant="ls_first", strength=a,
                     rounding="stochastic", key=jax.random.key(3000), **opts)
    meas = theory.output_errors(X, W, np.asarray(res.Q), X_hat=Xh).linf
    assert_rate_at_most(int(np.sum(meas > q3)), T, p)
    # the centre matters: without the uncorrected part (the a = 1 bound) it is violated
    # almost surely when the step is fine and a < 1 (the harness has power here)
    if a == 0.0:
        fine = step / 50
        res = ptq.qronos(X, Xh, W, ptq.Grid.symmetric(fine), variant="ls_first", strength=a,
                         rounding="stochastic", key=jax.random.key(3001), **opts)
        meas = theory.output_errors(X, W, np.asarray(res.Q), X_hat=Xh).linf
        q3_full = theory.qronos_linf_bound(X, Xh, W[:, :1], fine, p=p, variant="ls_first",
                                           **opts)[0]
        q3_a = theory.qronos_linf_bound(X, Xh, W[:, :1], fine, p=p, variant="ls_first",
                                        strength=a, **opts)[0]
        assert_rate_at_most(int(np.sum(meas > q3_a)), T, p)
        assert np.mean(meas > q3_full) > 0.5
