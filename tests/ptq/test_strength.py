"""ptq.qronos(variant="ls_first", strength=a): the two ends, the start w_a, the argument checks
and the error identity I6, in float64 (x64 from tests/conftest.py).

``w_a = w' + a (wt - w')`` with ``wt`` the ridge least-squares fit of ``X w`` on ``X_hat`` and
``w'`` the weights with the dead features of ``X_hat`` zeroed; OPTQ on ``X_hat`` runs from
``w_a``. ``a = 0`` must be `ptq.optq` on ``X_hat`` code for code (the same program), ``a = 1``
the least-squares-first Qronos. The references here are NumPy: ``lstsq`` on the augmented
system for ``wt`` and ``E_LS``, a Cholesky of the reversed matrix for the factor ``R``.
"""

import jax
import numpy as np
import pytest

import ptq
import theory.qronos_bounds as qb

M, N, NN = 40, 12, 4  # small layer: one kernel compilation per grid kind
ORDERS = ("natural", "decreasing_norm", "random")
GRIDS = {
    # name: the grid from W (a plain grid fitted here, or a recipe fitted inside)
    "per_neuron": lambda W: ptq.Grid.fit(W, 4),
    "per_channel": lambda W: ptq.GroupGrid(4, "asymmetric", None),
    "static_groups": lambda W: ptq.GroupGrid(3, "asymmetric", 5, static=True),
    "dynamic_groups": lambda W: ptq.GroupGrid(3, "symmetric", 5),
}


def layer(seed=0, dead=(), noise=0.3, m=M):
    """X, X_hat = X + noise, W; the features in ``dead`` are zero in X_hat only (a live input
    whose quantized version is 0: the hardest case for w')."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, N)) * np.exp(0.5 * rng.standard_normal(N))
    X_hat = X + noise * X.std(axis=0) * rng.standard_normal(X.shape)
    X_hat[:, list(dead)] = 0.0
    W = rng.standard_normal((N, NN))
    return X, X_hat, W


def assert_same_run(a, b):
    """Bit-for-bit the same quantization (codes, Q, e, start, factor, order, lam)."""
    np.testing.assert_array_equal(a.order, b.order)
    assert a.lam == b.lam
    for name in ("codes", "Q", "e", "W_start", "r", "w_max"):
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)),
                                      err_msg=name)


def lam_of(X_hat, percdamp=0.01):
    return percdamp * float(np.mean(np.sum(X_hat**2, axis=0)))


def numpy_fit(X, X_hat, W, lam):
    """``wt`` (original order) and ``E_LS`` (n,) by lstsq on ``[X_hat; sqrt(lam) I]``."""
    Xa = np.vstack([X_hat, np.sqrt(lam) * np.eye(N)])
    ya = np.vstack([X @ W, np.sqrt(lam) * W])
    wt, *_ = np.linalg.lstsq(Xa, ya, rcond=None)
    return wt, np.linalg.norm(ya - Xa @ wt, axis=0)


def reversed_cholesky(H):
    """Upper triangular R with ``H = R R^T`` (OPTQ's factor): J chol(J H J) J, J the reversal."""
    L = np.linalg.cholesky(H[::-1, ::-1])
    return L[::-1, ::-1]


# ----------------------------------------------------------------------- a = 0 is OPTQ
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("grid_name", sorted(GRIDS))
def test_strength_zero_is_optq_on_x_hat(grid_name, order):
    X, X_hat, W = layer(1)
    grid = GRIDS[grid_name](W)
    opts = dict(percdamp=0.05, order=order, order_seed=3)
    q = ptq.qronos(X, X_hat, W, grid, variant="ls_first", strength=0.0, **opts)
    o = ptq.optq(X_hat, W, grid, **opts)
    assert_same_run(q, o)
    assert q.strength == 0.0 and q.selection is None


@pytest.mark.parametrize("order", ORDERS)
def test_strength_zero_is_optq_with_stochastic_rounding(order):
    """The same key draws the same uniforms: the same codes."""
    X, X_hat, W = layer(2)
    grid = ptq.Grid.fit(W, 3)
    key = jax.random.key(7)
    opts = dict(order=order, order_seed=5, rounding="stochastic", key=key)
    q = ptq.qronos(X, X_hat, W, grid, variant="ls_first", strength=0, **opts)
    assert_same_run(q, ptq.optq(X_hat, W, grid, **opts))


@pytest.mark.parametrize("grid_name", ["per_neuron", "per_channel", "static_groups"])
@pytest.mark.parametrize("reg", [{"percdamp": 0.01}, {"lam": 0.0}])
def test_strength_zero_is_optq_with_a_dead_feature(grid_name, reg):
    """A feature dead in X_hat (live in X) starts at 0 and quantizes to 0, as in OPTQ, also
    with lam = 0 (the unit diagonal); static groups are fitted on the zeroed W as OPTQ's."""
    X, X_hat, W = layer(3, dead=(2, 7), m=60)
    grid = GRIDS[grid_name](W)
    q = ptq.qronos(X, X_hat, W, grid, variant="ls_first", strength=0.0,
                   order="decreasing_norm", **reg)
    assert_same_run(q, ptq.optq(X_hat, W, grid, order="decreasing_norm", **reg))
    np.testing.assert_array_equal(np.asarray(q.Q)[[2, 7]], 0.0)


# ----------------------------------------------------------------------- a = 1 is ls_first
@pytest.mark.parametrize("dead", [(), (4,)])
def test_strength_one_is_ls_first(dead):
    X, X_hat, W = layer(4, dead=dead)
    grid = ptq.Grid.fit(W, 4, "asymmetric")
    for order in ("natural", "decreasing_norm"):
        default = ptq.qronos(X, X_hat, W, grid, variant="ls_first", order=order)
        for a in (1, 1.0, np.float64(1.0)):
            full = ptq.qronos(X, X_hat, W, grid, variant="ls_first", strength=a, order=order)
            assert_same_run(full, default)
            assert full.strength == 1.0
    assert ptq.qronos(X, X_hat, W, grid, variant="paper", strength=1.0).strength == 1.0


# ----------------------------------------------------------------------- the start w_a
@pytest.mark.parametrize("order", ["natural", "decreasing_norm"])
@pytest.mark.parametrize("dead", [(), (0, 5)])
def test_start_is_the_blend_of_w_prime_and_the_least_squares_fit(dead, order):
    """W_start at a = 0.5 is w' + 0.5 (wt - w') with wt from NumPy's lstsq (original order)."""
    X, X_hat, W = layer(5, dead=dead)
    lam = lam_of(X_hat)
    wt, _ = numpy_fit(X, X_hat, W, lam)
    w_prime = np.where(np.sum(X_hat**2, axis=0)[:, None] > 0, W, 0.0)
    expect = w_prime + 0.5 * (wt - w_prime)
    res = ptq.qronos(X, X_hat, W, ptq.Grid.fit(W, 4), variant="ls_first", strength=0.5,
                     order=order)
    assert res.lam == pytest.approx(lam, rel=1e-14)
    np.testing.assert_allclose(np.asarray(res.W_start), expect, rtol=0,
                               atol=1e-10 * np.abs(expect).max())
    if dead:  # a dead feature: wt_t = w_t (only the ridge row sees it), w'_t = 0
        np.testing.assert_allclose(np.asarray(res.W_start)[list(dead)], 0.5 * W[list(dead)],
                                   rtol=1e-12)


# ----------------------------------------------------------------------- argument checks
def test_paper_variant_takes_full_strength_only():
    X, X_hat, W = layer(6)
    with pytest.raises(ValueError, match="`strength`"):
        ptq.qronos(X, X_hat, W, ptq.Grid.fit(W, 4), variant="paper", strength=0.5)
    with pytest.raises(ValueError, match="`strength`"):  # the default variant is "paper"
        ptq.qronos(X, X_hat, W, ptq.Grid.fit(W, 4), strength=0.0)


@pytest.mark.parametrize("strength", [-0.1, 1.5, "half", True, float("nan"), None])
def test_bad_strength_is_named(strength):
    X, X_hat, W = layer(6)
    with pytest.raises(ValueError, match="`strength`"):
        ptq.qronos(X, X_hat, W, ptq.Grid.fit(W, 4), variant="ls_first", strength=strength)


def test_auto_needs_sequences_and_sequences_need_auto():
    X, X_hat, W = layer(6)
    grid = ptq.Grid.fit(W, 4)
    for kw in ({"strength": "auto"}, {"lam": "auto"}, {"strength": "auto", "lam": "auto"}):
        with pytest.raises(ValueError, match="`sequences`"):
            ptq.qronos(X, X_hat, W, grid, variant="ls_first", **kw)
    for kw in ({}, {"strength": 0.5}, {"lam": 1.0}):
        with pytest.raises(ValueError, match="`sequences`"):
            ptq.qronos(X, X_hat, W, grid, variant="ls_first", sequences=4, **kw)
    with pytest.raises(ValueError, match="`percdamp`"):
        ptq.qronos(X, X_hat, W, grid, variant="ls_first", lam="auto", percdamp=0.01,
                   sequences=4)
    for kw in ({"strength": "auto"}, {"lam": "auto"}):  # auto is ls_first's
        with pytest.raises(ValueError, match="`variant=\"ls_first\"`"):
            ptq.qronos(X, X_hat, W, grid, variant="paper", sequences=4, **kw)


# ----------------------------------------------------------------------- identity I6
@pytest.mark.parametrize("dead", [(), (3,)])
@pytest.mark.parametrize("a", [0.0, 0.3, 0.7, 1.0])
def test_error_identity_I6(a, dead):
    """||X w - X_hat q||^2 + lam ||w - q||^2 = E_LS^2 + sum_t (c_t + e_t)^2 rh_t^2 with
    c = (1 - a) diag(1/rh) R^T (wt - w') (processing order), c, R, wt and E_LS from NumPy,
    e and the steps from ptq. On a clipping 3-bit grid: the identity holds for any e."""
    X, X_hat, W = layer(7, dead=dead)
    grid = ptq.Grid.fit(W, 3)
    res = ptq.qronos(X, X_hat, W, grid, variant="ls_first", strength=a, order="decreasing_norm")
    lam, p = res.lam, res.order
    wt, E_ls = numpy_fit(X, X_hat, W, lam)
    R = reversed_cholesky(X_hat[:, p].T @ X_hat[:, p] + lam * np.eye(N))
    rh = np.diag(R)
    np.testing.assert_allclose(np.asarray(res.r), rh, rtol=1e-12)
    w_prime = np.where(np.sum(X_hat**2, axis=0)[:, None] > 0, W, 0.0)
    c = (1 - a) * (R.T @ (wt - w_prime)[p]) / rh[:, None]
    Q = np.asarray(res.Q)
    lhs = np.sum((X @ W - X_hat @ Q) ** 2, axis=0) + lam * np.sum((W - Q) ** 2, axis=0)
    rhs = E_ls**2 + np.sum((c + np.asarray(res.e)) ** 2 * rh[:, None] ** 2, axis=0)
    np.testing.assert_allclose(rhs, lhs, rtol=1e-10)
    if a == 1.0:  # I5: nothing uncorrected
        assert np.all(c == 0.0)
    # the theory module's c (theory.qronos_bounds.uncorrected) is the same
    ls = qb.least_squares(X, X_hat, W, lam, None, "decreasing_norm", 0, None)
    np.testing.assert_allclose(qb.uncorrected(ls, a), c, rtol=0, atol=1e-10 * np.abs(c).max()
                               + 1e-300)
