"""Exact identities I1-I5 (THEORY.md section 3) against ptq's float64 runs and least squares."""

import jax
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from theory_data import augmented, layers, x_hat

import ptq
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


@given(case=layers(), wide=st.booleans())
def test_weight_bounds_match_least_squares_update_coefficients(case, wide):
    """B3/S3 from their definitions: ``V_{s,>s} = -Xa_{>s}^+ Xa_s`` by least squares, then
    ``c_j`` (sum of |V_sj| or root of the sum of squares over s < j), the row norms, the
    deviations of a scalar/(n,) and an (N, n) step, the bound and the level count.

    ``wide`` uses n = 2N neurons (the deviation then takes a new array instead of V's buffer)."""
    X, W, step, opts = case["X"], case["W"], case["step"], case["opts"]
    if wide:
        W = case["rng"].standard_normal((X.shape[1], 2 * X.shape[1]))
        step = np.max(np.abs(W), axis=0) / 7
    N, n = W.shape
    f = theory.factorise(X, **opts)
    Xa = augmented(X, f.lam, f.order)
    V = np.zeros((N, N))
    for s in range(N - 1):
        coef, *_ = np.linalg.lstsq(Xa[:, s + 1:], Xa[:, s], rcond=None)
        V[s, s + 1:] = -coef
    tol = dict(rtol=1e-8, atol=1e-8 * max(1.0, np.abs(V).max()))
    Wp = np.where(f.live[:, None], W[f.order], 0.0)
    D = np.broadcast_to(np.asarray(step, np.float64), (n,))
    per_weight = case["rng"].uniform(0.5, 2.0, (N, n)) * D  # rows in the original order
    Dp = per_weight[f.order]
    kappa = theory.stochastic.hoeffding_factor(N * N, 0.1)
    for fn, growth, dev_w, a in (
        (theory.optq_weight_bound, np.abs(V).sum(0), np.abs(V).T @ Dp, 0.5),
        (lambda *args, **k: theory.stochastic_weight_bound(*args, p=0.1, **k),
         np.sqrt((V**2).sum(0)), np.sqrt((V**2).T @ Dp**2), kappa),
    ):
        wb = fn(X, W, step, factors=f, **opts)
        np.testing.assert_allclose(wb.growth, growth, **tol)
        np.testing.assert_allclose(wb.update_norm, np.sqrt((V**2).sum(1)), **tol)
        dev = a * growth[:, None] * D[None, :]
        np.testing.assert_allclose(wb.deviation, dev, **tol)
        np.testing.assert_allclose(wb.bound, np.max(np.abs(Wp) + dev, axis=0), **tol)
        g = fn(X, W, per_weight, factors=f, **opts)
        np.testing.assert_allclose(g.deviation, a * dev_w, **tol)
        reach = np.abs(Wp) + a * dev_w
        np.testing.assert_allclose(g.bound, reach.max(0), **tol)
        ratio = (reach / Dp).max(0)
        exact = np.abs(ratio - np.round(ratio)) > 1e-6  # away from a level boundary
        assert np.array_equal(g.levels[exact], np.maximum(np.ceil(ratio), 1)[exact])
