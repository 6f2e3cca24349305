"""The oracle itself: its rounding rule, its two formulations, its independence from JAX."""

import subprocess
import sys

import _ptq_cases as C
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ptq
from ptq import reference


def test_reference_imports_no_jax():
    """The oracle must not share code with the kernel through JAX (and `theory` may use it)."""
    code = "import sys, ptq.reference; assert 'jax' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rounding_rule_matches_grid_including_ties(rng):
    """Same rule as ptq.Grid, exactly, on random values and on exact ties (+-k.5 steps)."""
    n = 5
    step = np.array([0.25, 0.5, 1.0, 2.0, 0.125])  # powers of two: k.5 * step is exact
    grid = ptq.Grid.symmetric(step, 3)
    ties = (np.arange(-6, 6)[:, None] + 0.5) * step  # includes clipped ties at |k| > 3
    z = np.vstack([ties, rng.standard_normal((200, n)) * 3 * step])
    k_ref = reference.round_nearest(z, grid)
    np.testing.assert_array_equal(k_ref, np.asarray(grid.nearest_index(z)))
    # ties go up: (k + 1/2) step -> k + 1, clipped to [-3, 3]
    np.testing.assert_array_equal(k_ref[:12], np.clip(np.arange(-5, 7), -3, 3)[:, None] + 0 * step)
    u = rng.uniform(size=z.shape)
    np.testing.assert_array_equal(
        reference.round_stochastic(z, u, grid), np.asarray(grid.stochastic_index(z, u))
    )


def test_rounding_accepts_any_grid_like_object(rng):
    """The oracle takes anything with step/zero/qmin/qmax, not only ptq.Grid."""

    class G:
        step = np.array([0.5, 1.0])
        zero = np.array([1.0, 2.0])
        qmin = 0.0
        qmax = 3.0

    z = rng.standard_normal((10, 2)) * 3
    k = reference.round_nearest(z, G)
    assert np.all(k >= -G.zero) and np.all(k <= 3 - G.zero)
    np.testing.assert_array_equal(
        k, np.asarray(ptq.Grid.asymmetric(G.step, G.zero, 2).nearest_index(z))
    )


@settings(max_examples=2 * settings().max_examples)
@given(C.cases(families=("gaussian", "heavy", "correlated", "ill")))
def test_optq_equals_qronos_ls_first_with_matched_inputs(case):
    """Two formulations inside the oracle agree: OPTQ's recursive least-squares update and
    Qronos' fresh solve on the residual, when X_hat = X (then wt = w and the variant
    "ls_first" is OPTQ). Tolerance as in compare_codes: both are SVD-based float64 solves, so
    they agree to ~eps * cond(Xa); 1e-8 relative leaves a wide margin at cond(H) <= 1e8."""
    a = reference.optq(case.X, case.W, case.grid, **case.kwargs())
    b = reference.qronos(case.X, case.X, case.W, case.grid, variant="ls_first", **case.kwargs())
    np.testing.assert_allclose(b.W_ls, case.W, rtol=0, atol=1e-8 * np.abs(case.W).max())
    np.testing.assert_allclose(b.E_LS, 0, atol=1e-8 * np.linalg.norm(case.X) * np.abs(case.W).max())
    np.testing.assert_allclose(a.r, b.r, rtol=1e-12)  # the same projections, same code path
    C.compare_codes(b, a, case.grid, z_rtol=1e-8)


def test_qronos_paper_z1_is_the_correction_step(rng):
    """z_1 from the definition equals its fast form w_1 + ((G - Hh) w)_1 / Hh_11."""
    m, N, n = 20, 6, 3
    X = rng.standard_normal((m, N))
    X_hat = X + 0.3 * rng.standard_normal((m, N))
    W = rng.standard_normal((N, n))
    lam = 0.7
    res = reference.qronos(X, X_hat, W, ptq.Grid.symmetric(0.1), lam=lam)
    G = X_hat.T @ X + lam * np.eye(N)
    Hh = X_hat.T @ X_hat + lam * np.eye(N)
    z1 = W[0] + ((G - Hh) @ W)[0] / Hh[0, 0]
    np.testing.assert_allclose(res.z[0], z1, rtol=1e-12)  # a few float64 operations apart
    np.testing.assert_allclose(res.W_ls, np.linalg.solve(Hh, G @ W), rtol=1e-10)


def test_trajectory_max_dominates_the_rounded_values():
    """w_traj_max (every w_j(t)) >= w_max (w(0) and the values rounded) for OPTQ."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((8, 12)) @ np.diag(rng.lognormal(0, 1, 12))
    W = rng.standard_normal((12, 4))
    res = reference.optq(X, W, ptq.Grid.symmetric(0.3), percdamp=0.01)
    assert np.all(res.w_traj_max >= res.w_max)
    assert np.all(res.w_max >= np.abs(W).max(axis=0))


@pytest.mark.parametrize("func", ["optq", "qronos"])
def test_reference_refuses_a_singular_hessian(rng, func):
    X = rng.standard_normal((4, 9))
    W = rng.standard_normal((9, 2))
    args = (X, W) if func == "optq" else (X, X, W)
    with pytest.raises(ValueError, match="lam.*percdamp"):
        getattr(reference, func)(*args, ptq.Grid.symmetric(0.1), lam=0.0)


def test_reference_checks_its_uniforms(rng):
    X, W = rng.standard_normal((10, 4)), rng.standard_normal((4, 2))
    with pytest.raises(ValueError, match="`u`"):
        reference.optq(X, W, ptq.Grid.symmetric(0.1), rounding="stochastic", u=np.zeros((4, 3)))


@given(st.integers(0, 2**31 - 1))
def test_rtn_reference_is_elementwise_rounding(seed):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((9, 3))
    grid = ptq.Grid.fit(W, 3, "asymmetric")
    res = reference.rtn(W, grid)
    np.testing.assert_array_equal(res.codes, np.asarray(grid.codes(W)))
    assert np.all((res.codes >= 0) & (res.codes <= 7))
