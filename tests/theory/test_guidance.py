"""lam guidance: the chosen lam satisfies the no-clipping condition, and ptq agrees."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from theory_data import make_X

import ptq
import theory


@settings(max_examples=10)
@given(seed=st.integers(0, 10**6), bits=st.integers(3, 6), per=st.sampled_from(["neuron", "layer"]),
       order=st.sampled_from(["natural", "decreasing_norm"]))
def test_chosen_lam_satisfies_B3_and_never_clips(seed, bits, per, order):
    rng = np.random.default_rng(seed)
    X = make_X(rng, 30, 13, cond=2.0, spread=0.5)
    W = rng.standard_normal((13, 4))
    lams = np.mean(X**2) * 30 * np.logspace(-4, 2, 13)
    g = theory.lam_guidance(X, W, bits=bits, per=per, order=order, lams=lams)
    assert g.lam is not None
    K = 2 ** (bits - 1) - 1
    b3 = theory.optq_weight_bound(X, W, g.best_step, lam=g.lam, order=order)
    assert np.all(b3.bound <= K * g.best_step * (1 + 1e-12))  # the constraint
    assert g.total[g.index] == np.nanmin(g.total[g.feasible])  # the minimiser over feasible lams
    b1 = theory.optq_l2_bound(X, g.best_step, lam=g.lam, order=order)
    np.testing.assert_allclose(b1, g.bound[g.index], rtol=1e-12)
    # ptq with K levels at that step and lam: identical to the infinite grid (no clipping)
    fin = ptq.optq(X, W, ptq.Grid.symmetric(g.best_step, K), lam=g.lam, order=order)
    inf = ptq.optq(X, W, ptq.Grid.symmetric(g.best_step), lam=g.lam, order=order)
    np.testing.assert_array_equal(np.asarray(fin.Q), np.asarray(inf.Q))
    # infeasible lams are those whose growth reaches K
    assert np.all(g.feasible == (g.growth < K))


def test_fixed_step_picks_smallest_feasible_lam_and_stochastic_mode():
    rng = np.random.default_rng(0)
    X = make_X(rng, 30, 13, cond=2.0)
    W = rng.standard_normal((13, 3))
    step = np.abs(W).max(0) / 3
    g = theory.lam_guidance(X, W, levels=8, step=step)
    assert g.lam == g.lams[g.feasible].min()  # B1 grows with lam
    assert np.all(np.diff(g.total[g.feasible]) > 0)
    gs = theory.lam_guidance(X, W, levels=8, rounding="stochastic", p=0.1)
    s3 = theory.stochastic_weight_bound(X, W, gs.best_step, p=0.1, lam=gs.lam)
    assert np.all(s3.bound <= 8 * gs.best_step * (1 + 1e-12))
    res = ptq.optq(X, W, ptq.Grid.symmetric(gs.best_step, 8), lam=gs.lam, rounding="stochastic",
                   key=jax.random.key(0))
    assert np.all(np.isfinite(np.asarray(res.Q)))


def test_no_feasible_lam_returns_none_with_curves():
    rng = np.random.default_rng(1)
    X = make_X(rng, 30, 13, cond=3.0)
    W = rng.standard_normal((13, 2))
    g = theory.lam_guidance(X, W, levels=1, lams=[1e-8, 1e-6])
    assert g.lam is None and g.index is None and not g.feasible.any()
    assert g.growth.shape == (2,)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "exactly one of `bits` and `levels`"),
        (dict(bits=3, levels=3), "exactly one"),
        (dict(bits=1), "`bits`"),
        (dict(levels=0), "`levels`"),
        (dict(levels=3, lams=[-1.0]), "`lams`"),
        (dict(levels=3, rounding="up"), "`rounding`"),
        (dict(levels=3, per="row"), "`per`"),
        (dict(levels=3, rounding="stochastic", p=0.0), "`p`"),
    ],
)
def test_guidance_errors(kwargs, match):
    X = np.ones((4, 3)) + np.eye(4, 3)
    with pytest.raises(ValueError, match=match):
        theory.lam_guidance(X, np.ones((3, 2)), **kwargs)
