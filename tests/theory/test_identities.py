"""Exact identities I1-I5 (THEORY.md section 3) against ptq's float64 runs and least squares."""

import jax
import numpy as np
import ptq
from hypothesis import given
from hypothesis import strategies as st
from theory_data import augmented, layers, x_hat

import theory

REL = 1e-9  # float64: the identities are exact; 1e-9 leaves room for cond(H) ~ 1e6 rounding


def projector_distance(Xa, t):
    """||P_t Xa_t||: distance of column t from the span of columns > t, by least squares."""
    later = Xa[:, t + 1 :]
    if later.shape[1] == 0:
        return np.linalg.norm(Xa[:, t])
    coef, *_ = np.linalg.lstsq(later, Xa[:, t], rcond=None)
    return np.linalg.norm(Xa[:, t] - later @ coef)


@given(case=layers())
def test_r_equals_least_squares_distance_and_M_columns(case):
    X, opts = case["X"], case["opts"]
    rn = theory.residual_norms(X, M="augmented", **opts)
    Xa = augmented(X, rn.lam, rn.order)
    dist = np.array([projector_distance(Xa, t) for t in range(X.shape[1])])
    np.testing.assert_allclose(rn.r, dist, rtol=REL, atol=0)  # I3
    # I4: M^T M = diag(r^2) (columns orthogonal), and M_t - Xa_t lies in span(Xa_{>t}).
    G = rn.M.T @ rn.M
    np.testing.assert_allclose(G, np.diag(rn.r**2), rtol=0, atol=REL * np.max(rn.r**2))
    for t in range(X.shape[1] - 1):
        d = rn.M[:, t] - Xa[:, t]
        later = Xa[:, t + 1 :]
        coef, *_ = np.linalg.lstsq(later, d, rcond=None)
        assert np.linalg.norm(d - later @ coef) <= REL * np.linalg.norm(Xa[:, t]) * 1e2
    # I3: prod r_t^2 = det(H) in any order
    sign, logdet = np.linalg.slogdet(Xa.T @ Xa)
    assert sign > 0
    np.testing.assert_allclose(2 * np.sum(np.log(rn.r)), logdet, rtol=0, atol=1e-8 * X.shape[1])


@given(case=layers())
def test_error_identity_optq_deterministic_and_stochastic(case):
    """I1/I2: ||X(w-q)||^2 + lam ||w-q||^2 = sum_t e_t^2 r_t^2, per neuron."""
    X, W, opts = case["X"], case["W"], case["opts"]
    grid = ptq.Grid.symmetric(case["step"])
    rn = theory.residual_norms(X, M="rows", **opts)
    key = jax.random.key(case["seed"])
    for rounding in ("nearest", "stochastic"):
        res = ptq.optq(X, W, grid, rounding=rounding, key=key, **opts)
        np.testing.assert_allclose(np.asarray(res.r), rn.r, rtol=REL)  # same factor as ptq
        assert np.array_equal(res.order, rn.order)
        e = np.asarray(res.e)
        W0, Q = np.asarray(res.W_start), np.asarray(res.Q)
        meas = theory.output_errors(X, W0, Q, lam=res.lam).augmented
        ident = np.sqrt(np.sum(e**2 * rn.r[:, None] ** 2, axis=0))
        np.testing.assert_allclose(ident**2, meas**2, rtol=REL, atol=1e-24)
        # I1 row-wise: X (w - q) = M_X e (first m rows of M), processing order
        np.testing.assert_allclose(
            X @ (W0 - Q), rn.M @ e, rtol=0, atol=REL * max(1.0, np.abs(X @ (W0 - Q)).max())
        )


@given(case=layers(), noise=st.floats(0.0, 0.5))
def test_qronos_identity_I5(case, noise):
    X, W, opts = case["X"], case["W"], case["opts"]
    Xh = x_hat(case["rng"], X, noise)
    grid = ptq.Grid.symmetric(case["step"])
    for variant in ("paper", "ls_first"):
        res = ptq.qronos(X, Xh, W, grid, variant=variant, **opts)
        ls = theory.qronos_bounds.least_squares(X, Xh, W, opts.get("lam"), opts.get("percdamp"),
                                                opts["order"], opts["order_seed"], None)
        np.testing.assert_allclose(
            ls.W_ls, np.asarray(res.W_start)[ls.factors.order], rtol=1e-7,
            atol=1e-9 * np.abs(ls.W_ls).max(),
        )
        e = np.asarray(res.e)
        meas = theory.output_errors(X, W, np.asarray(res.Q), X_hat=Xh, lam=res.lam).augmented
        ident = ls.E_ls**2 + np.sum(e**2 * ls.factors.r[:, None] ** 2, axis=0)
        np.testing.assert_allclose(ident, meas**2, rtol=1e-8, atol=1e-20)
