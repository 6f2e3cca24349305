"""ptq.options resolves lam and order as THEORY.md section 1 defines them (checked directly,
not through ptq.options itself, which ptq and the oracle share)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ptq


@given(st.integers(0, 2**31 - 1), st.sampled_from([None, 0.0, 0.003, 0.5]),
       st.sampled_from([None, 0.0, 0.01, 0.2]))
def test_lam_from_lam_or_percdamp(seed, lam, percdamp):
    """lam absolute; percdamp * mean(diag(X^T X)); neither: percdamp = 0.01; both: error.
    For Qronos the matrix is X_hat."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((15, 6)) * rng.lognormal(0, 1, 6)
    X_hat = X + 0.5 * rng.standard_normal(X.shape)
    W = rng.standard_normal((6, 2))
    grid = ptq.Grid.symmetric(0.1)
    if lam is not None and percdamp is not None:
        with pytest.raises(ValueError, match="`lam`.*`percdamp`"):
            ptq.optq(X, W, grid, lam=lam, percdamp=percdamp)
        return
    for alg, Xf in (("optq", X), ("qronos", X_hat)):
        if alg == "optq":
            res = ptq.optq(X, W, grid, lam=lam, percdamp=percdamp)
        else:
            res = ptq.qronos(X, X_hat, W, grid, lam=lam, percdamp=percdamp)
        expected = lam if lam is not None else (0.01 if percdamp is None else percdamp) * np.mean(
            np.diag(Xf.T @ Xf)
        )
        assert res.lam == pytest.approx(expected, rel=1e-13)  # one mean in another order


def test_orders_directly():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((25, 9)) * np.array([3, 1, 4, 1.5, 5, 9, 2, 6, 0.5])
    W = rng.standard_normal((9, 2))
    grid = ptq.Grid.symmetric(0.1)
    norms = np.linalg.norm(X, axis=0)
    expect = {
        "natural": np.arange(9),
        "decreasing_norm": np.argsort(-norms),
        "increasing_norm": np.argsort(norms),
        "random": np.random.default_rng(5).permutation(9),
    }
    for name, perm in expect.items():
        np.testing.assert_array_equal(ptq.optq(X, W, grid, order=name, order_seed=5).order, perm)
    explicit = rng.permutation(9)
    np.testing.assert_array_equal(ptq.optq(X, W, grid, order=explicit).order, explicit)
    # Qronos sorts by the columns of X_hat
    X_hat = X[:, ::-1].copy()
    res = ptq.qronos(X, X_hat, W, grid, order="decreasing_norm")
    np.testing.assert_array_equal(res.order, np.argsort(-norms[::-1]))


def test_norm_order_ties_broken_by_index():
    """Equal column norms keep their original relative order (a stable sort)."""
    a = np.array([1.0, 2.0, 1.0, 2.0, 1.0])
    X = np.vstack([a, np.diag(a)])  # column norms sqrt(2) a: tied in two groups
    W = np.ones((5, 1))
    res = ptq.optq(X, W, ptq.Grid.symmetric(0.1), order="decreasing_norm")
    np.testing.assert_array_equal(res.order, [1, 3, 0, 2, 4])
