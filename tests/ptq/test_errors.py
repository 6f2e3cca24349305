"""Bad input: a ValueError that names the argument (and never a returned result)."""

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ptq

RNG = np.random.default_rng(0)
X = RNG.standard_normal((20, 6))
X_HAT = X + 0.1 * RNG.standard_normal(X.shape)
W = RNG.standard_normal((6, 3))
GRID = ptq.Grid.symmetric(0.1, 7)


def call(alg, X=X, W=W, grid=GRID, X_hat=X_HAT, **kw):
    if alg == "optq":
        return ptq.optq(X, W, grid, **kw)
    if alg == "qronos":
        return ptq.qronos(X, X_hat, W, grid, **kw)
    raise AssertionError(alg)


def raises(match, alg, **kw):
    """Assert the call raises ValueError matching ``match``; nothing is returned."""
    result = "not set"
    with pytest.raises(ValueError, match=match):
        result = call(alg, **kw)
    assert result == "not set"


ALGS = ["optq", "qronos"]


def with_nan(A, value):
    A = A.copy()
    A[1, 2] = value
    return A


@pytest.mark.parametrize("alg", ALGS)
def test_shapes(alg):
    raises("`W`", alg, W=W[:5])  # W rows != features of X
    raises("`W`", alg, W=W[:, 0])  # 1-D
    raises("`X`", alg, X=X[0])
    raises("`X`", alg, X=X[:0])  # empty
    if alg == "qronos":
        raises("`X_hat`", alg, X_hat=X_HAT[:10])
        raises("`X_hat`", alg, X_hat=X_HAT[:, :5])


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_anywhere(alg, bad):
    raises("`X`.*finite", alg, X=with_nan(X, bad))
    raises("`W`.*finite", alg, W=with_nan(W, bad))
    if alg == "qronos":
        raises("`X_hat`.*finite", alg, X_hat=with_nan(X_HAT, bad))


@pytest.mark.parametrize("alg", ALGS)
def test_regularisation(alg):
    raises("`lam`", alg, lam=-1e-3)
    raises("`lam`", alg, lam=float("nan"))
    raises("`lam`", alg, lam=float("inf"))
    raises("`lam`", alg, lam="0.1")
    raises("`percdamp`", alg, percdamp=-0.01)
    raises("`lam`.*`percdamp`", alg, lam=0.1, percdamp=0.01)


@pytest.mark.parametrize("alg", ALGS)
def test_options(alg):
    for bad in (0, -1, 2.5, True, None):
        raises("`block_size`", alg, block_size=bad)
    raises("`order`", alg, order="act_order")
    raises("`order`", alg, order=[0, 1, 2, 3, 4, 4])  # not a permutation
    raises("`order`", alg, order=np.arange(5))  # wrong length
    raises("`order_seed`", alg, order="random", order_seed=1.5)
    raises("`rounding`", alg, rounding="up")
    raises("`key`", alg, rounding="stochastic")  # stochastic without key
    raises("`grid`", alg, grid=ptq.Grid.symmetric(np.full(4, 0.1)))  # 4 steps, 3 neurons
    raises("`grid`", alg, grid=(0.1, 0, -7, 7))  # not a ptq.Grid
    if alg == "qronos":
        raises("`variant`", alg, variant="brevitas")


def test_grid_constructors():
    with pytest.raises(ValueError, match="`bits`"):
        ptq.Grid.fit(W, 0, "asymmetric")
    with pytest.raises(ValueError, match="`bits`"):
        ptq.Grid.fit(W, 1, "symmetric")  # K = 2^0 - 1 = 0 levels
    with pytest.raises(ValueError, match="`bits`"):
        ptq.Grid.fit(W, 2.0)
    with pytest.raises(ValueError, match="`bits`"):
        ptq.Grid.asymmetric(0.1, 0, 0)
    with pytest.raises(ValueError, match="`kind`"):
        ptq.Grid.fit(W, 4, "signed")
    with pytest.raises(ValueError, match="`per`"):
        ptq.Grid.fit(W, 4, per="row")
    with pytest.raises(ValueError, match="`W`"):
        ptq.Grid.fit(with_nan(W, np.nan), 4)
    with pytest.raises(ValueError, match="`step`"):
        ptq.Grid.symmetric(0.0)
    with pytest.raises(ValueError, match="`step`"):
        ptq.Grid.symmetric(np.array([0.1, -0.1]))
    with pytest.raises(ValueError, match="`levels`"):
        ptq.Grid.symmetric(0.1, 0)
    with pytest.raises(ValueError, match="`zero`"):
        ptq.Grid.asymmetric(0.1, 0.5, 4)


def test_rtn_bad_input():
    with pytest.raises(ValueError, match="`W`"):
        ptq.rtn(W[:, 0], GRID)
    with pytest.raises(ValueError, match="`W`.*finite"):
        ptq.rtn(with_nan(W, np.inf), GRID)
    with pytest.raises(ValueError, match="`grid`"):
        ptq.rtn(W, ptq.Grid.symmetric(np.full(5, 0.1)))


@given(
    st.integers(0, 2**31 - 1),
    st.integers(2, 12),
    st.integers(1, 12),
    st.sampled_from(["optq", "qronos"]),
    st.sampled_from(["gaussian", "heavy", "dead"]),
)
def test_singular_hessian_is_refused(seed, m, extra, alg, family):
    """N > m live features with lam = 0: X^T X has rank <= m < N, H is singular. ptq must
    refuse, naming lam/percdamp, however the floating-point factorisation happens to end
    (it can finish with tiny positive pivots instead of failing)."""
    rng = np.random.default_rng(seed)
    N = m + extra
    Xs = rng.standard_normal((m, N))
    if family == "heavy":
        Xs = Xs * rng.lognormal(0, 2, N)
    if family == "dead":  # dead columns do not rescue it: the live ones still exceed m
        Xs = np.hstack([Xs, np.zeros((m, 2))])
        N += 2
    Ws = rng.standard_normal((N, 2))
    kw = dict(X=Xs, W=Ws, X_hat=Xs + 0.01 * rng.standard_normal(Xs.shape), lam=0.0)
    raises(r"(?s)not positive definite.*`lam`.*`percdamp`", alg, grid=ptq.Grid.symmetric(0.1), **kw)


def test_singular_with_duplicate_features_is_refused():
    """Rank deficiency with N <= m (two identical features), lam = 0."""
    Xs = RNG.standard_normal((30, 6))
    Xs[:, 4] = Xs[:, 1]
    raises(r"(?s)not positive definite.*`lam`", "optq", X=Xs, lam=0.0)


def test_same_input_with_a_ridge_is_accepted():
    """The same singular X is fine once lam > 0 (H = X^T X + lam I is positive definite)."""
    Xs = RNG.standard_normal((4, 9))
    res = ptq.optq(Xs, RNG.standard_normal((9, 2)), ptq.Grid.symmetric(0.1), percdamp=0.01)
    assert np.all(np.isfinite(np.asarray(res.Q)))


def test_stochastic_key_is_a_jax_key():
    res = ptq.optq(X, W, GRID, rounding="stochastic", key=jax.random.key(0))
    assert res.Q.shape == W.shape


@pytest.mark.parametrize("alg", ALGS + ["rtn"])
def test_per_weight_grid_shapes(alg):
    """step/zero of shape (N, n) are accepted; any other 2-D shape names `grid`, the expected
    shapes and the received one."""
    N, n = W.shape
    ok = ptq.Grid.symmetric(np.full((N, n), 0.1), 7)
    bad = [ptq.Grid.symmetric(np.full((N - 1, n), 0.1), 7),
           ptq.Grid.symmetric(np.full((n, N), 0.1), 7),
           ptq.Grid.symmetric(np.full((N, 1), 0.1), 7),
           ok._replace(zero=np.zeros((N + 1, n)))]
    run = (lambda g: ptq.rtn(W, g)) if alg == "rtn" else (lambda g: call(alg, grid=g))
    assert run(ok).Q.shape == (N, n)
    for g in bad:
        with pytest.raises(ValueError, match=r"`grid` (step|zero) must have shape .*\(N, n\) = "
                                             rf"\({N}, {n}\).*got"):
            run(g)
    with pytest.raises(ValueError, match="`grid` qmax must be a scalar"):
        run(ok._replace(qmax=np.full(n, 7.0)))


def test_reference_per_weight_grid_shapes():
    N, n = W.shape
    with pytest.raises(ValueError, match=rf"`grid` step .*\(N, n\) = \({N}, {n}\); got \(5, 3\)"):
        ptq.reference.optq(X, W, ptq.Grid.symmetric(np.full((5, n), 0.1), 7))
    with pytest.raises(ValueError, match="`grid` zero"):
        ptq.reference.rtn(W, ptq.Grid.symmetric(0.1, 7)._replace(zero=np.zeros((N, 2))))


def test_grid_constructor_shapes():
    with pytest.raises(ValueError, match=r"`step` .*\(N, n\); got shape \(2, 2, 2\)"):
        ptq.Grid.symmetric(np.full((2, 2, 2), 0.1))
    with pytest.raises(ValueError, match="`zero` must broadcast against `scale`"):
        ptq.Grid.asymmetric(np.full((6, 3), 0.1), np.zeros((6, 2)), 4)


@pytest.mark.parametrize("alg", ALGS + ["rtn"])
def test_group_grid_recipe(alg):
    """A bad GroupGrid names the field and the value; GPTQ's -1 is pointed to None."""
    run = (lambda g: ptq.rtn(W, g)) if alg == "rtn" else (lambda g: call(alg, grid=g))
    for gs, match in [(0, "group_size.*got 0"), (-1, r"group_size.*-1 is written None.*got -1"),
                      (2.5, "group_size.*got 2.5"), (True, "group_size.*got True"),
                      ("128", "group_size.*got '128'")]:
        with pytest.raises(ValueError, match=f"`GroupGrid.{match}"):
            run(ptq.GroupGrid(4, "asymmetric", gs))
    with pytest.raises(ValueError, match="`GroupGrid.kind`.*'signed'"):
        run(ptq.GroupGrid(4, "signed", 2))
    with pytest.raises(ValueError, match="`bits`"):
        run(ptq.GroupGrid(1, "symmetric", 2))  # K = 0 levels
    with pytest.raises(ValueError, match="`GroupGrid.static` must be a bool"):
        run(ptq.GroupGrid(4, "asymmetric", 2, static="yes"))
    with pytest.raises(ValueError, match="`GroupGrid.mse` must be a bool"):
        run(ptq.GroupGrid(4, "asymmetric", 2, mse=1))
    # accepted: a last short group (N = 6, groups of 4) and groups wider than N
    for gs in (4, 6, 1000):
        assert run(ptq.GroupGrid(4, "asymmetric", gs)).scales.shape == (-(-6 // gs), 3)
