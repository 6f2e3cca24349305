"""Deterministic bounds B1, B2, B3, Q1, Q2 are never exceeded by ptq's float64 runs."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from theory_data import augmented, layers, x_hat

import ptq
import theory

SLACK = 1 + 1e-9  # float64 rounding of the measured error; the bounds are exact inequalities


def _infinite(step):
    return ptq.Grid.symmetric(step)


@given(case=layers())
def test_optq_B1_B2_B3_hold_and_K_prevents_clipping(case):
    X, W, step, opts = case["X"], case["W"], case["step"], case["opts"]
    res = ptq.optq(X, W, _infinite(step), **opts)
    meas = theory.output_errors(X, np.asarray(res.W_start), np.asarray(res.Q), lam=res.lam)
    b1 = theory.optq_l2_bound(X, step, **opts)
    assert np.all(meas.augmented <= b1 * SLACK), (meas.augmented, b1)
    # The cheap path from ptq's own r gives the same number.
    b1_from_r = theory.optq_l2_bound(X, step, r=np.asarray(res.r), **opts)
    np.testing.assert_allclose(b1_from_r, b1, rtol=1e-9)
    b2 = theory.optq_structural_bound(X, step, **opts)
    assert np.all(b1 <= b2.bound * SLACK)  # r_t^2 <= rbar_t^2 step by step
    f = theory.factorise(X, **opts)
    assert np.all(f.r[f.live] ** 2 <= b2.r_sq_bound[f.live] * SLACK)
    coarse = theory.optq_structural_bound(X, step, breakpoints=2, **opts)
    assert np.all(b2.bound <= coarse.bound * SLACK)  # fewer breakpoints: looser, still valid
    b3 = theory.optq_weight_bound(X, W, step, factors=f, **opts)
    assert np.all(np.asarray(res.w_max) <= b3.bound * SLACK)
    assert np.all(b3.update_norm <= b3.update_norm_cap * SLACK)
    # A grid with K = b3.levels never clips: the finite-grid run equals the infinite one.
    fin = ptq.optq(X, W, ptq.Grid.symmetric(step, int(b3.levels.max())), **opts)
    np.testing.assert_array_equal(np.asarray(fin.Q), np.asarray(res.Q))


@given(case=layers(), noise=st.floats(0.0, 1.0))
def test_qronos_Q1_and_mismatch_Q2_hold(case, noise):
    X, W, step, opts = case["X"], case["W"], case["step"], case["opts"]
    Xh = x_hat(case["rng"], X, noise)
    f = theory.factorise(Xh, **opts)
    for variant in ("paper", "ls_first"):
        res = ptq.qronos(X, Xh, W, _infinite(step), variant=variant, **opts)
        meas = theory.output_errors(X, W, np.asarray(res.Q), X_hat=Xh, lam=res.lam)
        q1 = theory.qronos_l2_bound(X, Xh, W, step, variant=variant, factors=f, **opts)
        assert np.all(meas.augmented <= q1 * SLACK), (variant, meas.augmented, q1)
    res = ptq.optq(Xh, W, _infinite(step), **opts)  # OPTQ ignoring the mismatch
    meas = theory.output_errors(X, W, np.asarray(res.Q), X_hat=Xh, lam=res.lam)
    q2 = theory.optq_mismatch_l2_bound(X, Xh, W, step, factors=f, **opts)
    assert np.all(meas.l2 <= q2 * SLACK), (meas.l2, q2)


@given(case=layers())
def test_E_ls_is_a_floor(case):
    """No real-valued v beats E_LS (Q1's floor): compare with the lstsq optimum and w itself."""
    X, W, opts = case["X"], case["W"], case["opts"]
    Xh = x_hat(case["rng"], X, 0.3)
    ls = theory.qronos_bounds.least_squares(
        X, Xh, W, opts.get("lam"), opts.get("percdamp"), opts["order"], opts["order_seed"], None
    )
    lam = ls.factors.lam
    A = augmented(Xh, lam, np.arange(Xh.shape[1]))
    for j in range(W.shape[1]):
        y = np.concatenate([X @ W[:, j], np.sqrt(lam) * W[:, j]])
        v, *_ = np.linalg.lstsq(A, y, rcond=None)
        best = np.linalg.norm(y - A @ v)
        scale = np.linalg.norm(y)
        assert abs(ls.E_ls[j] - best) <= 1e-7 * scale  # lstsq vs Cholesky solve, cond(H) <= ~1e10
        assert ls.E_ls[j] <= np.linalg.norm(y - A @ W[:, j]) + 1e-9 * scale
