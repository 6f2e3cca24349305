"""ptq.qronos (both variants): invariants, agreement with the oracle, reductions to OPTQ."""

import _ptq_cases as C
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_optq import check_invariants, tol_for

import ptq
from ptq import reference

VARIANTS = ("paper", "ls_first")


@settings(max_examples=settings().max_examples)
@given(C.cases(), st.sampled_from(VARIANTS))
def test_invariants(case, variant):
    res = C.run_qronos(case, variant)
    check_invariants(res, case.grid, *case.W.shape, jnp.float64)
    sq = np.sum(case.X_hat**2, axis=0)  # lam refers to X_hat, the factorised matrix
    assert res.lam == pytest.approx(
        ptq.options.resolve_lam(sq.mean(), case.reg.get("lam"), case.reg.get("percdamp")),
        rel=1e-12,  # the same mean, summed in another order
    )


@settings(max_examples=3 * settings().max_examples)
@given(C.cases(mismatch=(0.0, 0.5)), st.sampled_from(VARIANTS))
def test_agrees_with_reference(case, variant):
    """Identical codes to the oracle except at exact ties; the least-squares fit wt, r and
    w_max agree to the conditioning tolerance (see test_optq.tol_for)."""
    res = C.run_qronos(case, variant)
    ref = C.ref_qronos(case, variant)
    tol = tol_for(case.X_hat[:, ref.order], ref.lam)
    out = C.compare_codes(res, ref, case.grid, z_rtol=tol, u=case.u() if case.stochastic else None)
    np.testing.assert_allclose(np.asarray(res.r), ref.r, rtol=tol)
    scale = np.maximum(np.abs(ref.W_ls).max(axis=0), C.step_scale(ref.grid))
    assert np.all(np.abs(np.asarray(res.W_start) - ref.W_ls) <= tol * scale)
    if out["diverged"] == 0:
        scale = np.maximum(ref.w_traj_max, C.step_scale(ref.grid))
        assert np.all(np.abs(np.asarray(res.w_max) - ref.w_max) <= tol * scale)


@settings(max_examples=settings().max_examples)
@given(C.cases(families=("gaussian", "heavy", "correlated", "ill")))
def test_ls_first_without_mismatch_is_optq(case):
    """With X_hat = X the fit is wt = w, so "ls_first" is exactly OPTQ (codes equal except at
    ties; e equal to the conditioning tolerance)."""
    q = ptq.qronos(case.X, case.X, case.W, case.grid, variant="ls_first", **case.kwargs())
    o = ptq.optq(case.X, case.W, case.grid, **case.kwargs())
    tol = tol_for(case.X[:, o.order], o.lam)
    scale = np.maximum(np.abs(case.W).max(axis=0), C.step_scale(o.grid))
    assert np.all(np.abs(np.asarray(q.W_start) - case.W) <= tol * scale)
    ref = reference.optq(case.X, case.W, case.grid, **case.kwargs())
    C.compare_codes(q, ref, case.grid, z_rtol=tol)
    C.compare_codes(o, ref, case.grid, z_rtol=tol)


@given(C.cases(families=("gaussian", "correlated"), mismatch=(0.05, 0.5),
               grid_kinds=C.PLAIN_GRID_KINDS + C.STATIC_GROUP_KINDS))
def test_variants_differ_only_in_the_first_rounded_value(case):
    """paper and ls_first start from the same fit wt and share r; their first pre-rounding
    values are z_1 and wt_1. If Q(z_1) = Q(wt_1) every later step is the same computation.
    (Not with dynamic groups: the first group is fitted on z_1 or wt_1, so it differs too.)"""
    a = C.run_qronos(case, "paper")
    b = C.run_qronos(case, "ls_first")
    np.testing.assert_array_equal(np.asarray(a.W_start), np.asarray(b.W_start))
    np.testing.assert_array_equal(np.asarray(a.r), np.asarray(b.r))
    first = a.order[0]
    same_first = np.asarray(a.codes)[first] == np.asarray(b.codes)[first]
    np.testing.assert_array_equal(
        np.asarray(a.codes)[:, same_first], np.asarray(b.codes)[:, same_first]
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_dead_features_of_x_hat(rng, variant):
    """A feature dead in X_hat carries no signal. With lam = 0 (the 1 put on Hh's diagonal)
    its fit is wt_t = 0 and it quantizes to 0; with lam > 0 only the ridge row
    sqrt(lam) (w_t - v_t) sees it, so wt_t = w_t. Both as the oracle."""
    X = rng.standard_normal((40, 8))
    X_hat = X + 0.1 * rng.standard_normal(X.shape)
    X_hat[:, [1, 6]] = 0.0
    W = rng.standard_normal((8, 3))
    grid = ptq.Grid.fit(W, 4, "asymmetric")
    for reg in ({"lam": 0.0}, {"percdamp": 0.05}):
        res = ptq.qronos(X, X_hat, W, grid, variant=variant, **reg)
        ref = reference.qronos(X, X_hat, W, grid, variant=variant, **reg)
        expect = 0.0 if reg == {"lam": 0.0} else W[[1, 6]]
        # a couple of float64 operations on O(1) numbers
        np.testing.assert_allclose(np.asarray(res.W_start)[[1, 6]], expect, rtol=0, atol=1e-12)
        if reg == {"lam": 0.0}:
            np.testing.assert_array_equal(np.asarray(res.Q)[[1, 6]], 0.0)
        C.compare_codes(res, ref, grid, z_rtol=tol_for(X_hat[:, ref.order], ref.lam))


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_agrees_with_float64_reference(float32, variant):
    """Default float32 path: >= 99% of codes equal the float64 oracle's on well-conditioned
    data (the issue's criterion); the output stays float32 and on the grid."""
    rng = np.random.default_rng(5)
    m, N, n = 192, 64, 32
    X = rng.standard_normal((m, N))
    X_hat = X + 0.2 * rng.standard_normal((m, N))
    W = rng.standard_normal((N, n))
    grid = ptq.Grid.fit(W, 4, "asymmetric")
    res = ptq.qronos(X, X_hat, W, grid, variant=variant)
    check_invariants(res, grid, N, n, jnp.float32)
    ref = reference.qronos(X, X_hat, W, grid, variant=variant)
    same = np.mean(np.asarray(res.codes) == ref.codes)
    assert same >= 0.99, f"only {same:.4f} of codes agree with the float64 reference"
