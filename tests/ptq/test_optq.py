"""ptq.optq: invariants of the output, agreement with the float64 oracle, float32 agreement."""

import _ptq_cases as C
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import ptq
from ptq import kernel, reference

EPS64 = np.finfo(np.float64).eps


def check_invariants(res, grid, N, n, dtype):
    """Shapes, dtypes, finiteness; Q on the grid; codes in [qmin, qmax]; dequantize(codes) == Q.

    ``grid``: the grid given, or a `ptq.GroupGrid` recipe, whose realised grid ``res.grid``
    is checked (test_groups.check_group_fields checks its tables)."""
    if isinstance(grid, ptq.GroupGrid):
        grid = res.grid
    else:
        for a, b in zip(res.grid, grid):  # a plain grid is used, and reported, as given
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert res.Q.shape == (N, n) and res.Q.dtype == dtype
    assert res.codes.shape == (N, n) and res.codes.dtype == jnp.int32
    assert res.e.shape == (N, n) and res.e.dtype == dtype
    assert res.W_start.shape == (N, n) and res.W_start.dtype == dtype
    assert res.r.shape == (N,) and res.w_max.shape == (n,)
    assert isinstance(res.order, np.ndarray) and res.order.dtype == np.int64
    assert sorted(res.order.tolist()) == list(range(N))
    assert isinstance(res.lam, float) and res.lam >= 0
    for a in (res.Q, res.e, res.r, res.w_max, res.W_start):
        assert bool(jnp.all(jnp.isfinite(a)))
    assert bool(jnp.all(res.r > 0))
    codes = np.asarray(res.codes)
    # clipping never goes beyond the range: every code is a valid code
    assert np.all(codes >= float(grid.qmin)) and np.all(codes <= float(grid.qmax))
    # Q is exactly the dequantized codes (same two float operations)
    np.testing.assert_array_equal(np.asarray(grid.dequantize(res.codes)), np.asarray(res.Q))
    # on the grid: Q / step is an integer up to a couple of ulps of the quotient
    assert bool(jnp.all(grid.on_grid(res.Q, rtol=8 * float(jnp.finfo(dtype).eps))))


def cond_H(X, lam) -> float:
    """cond(H) of the factorised matrix with the dead-feature convention."""
    Xa = reference.augment(X, lam)
    s = np.linalg.svd(Xa, compute_uv=False)
    return float((s[0] / s[-1]) ** 2)


def tol_for(X, lam) -> float:
    """Agreement tolerance (relative to the neuron's weight scale) between ptq and the oracle.

    ptq factorises H = X^T X + lam I, so its rounded values carry a forward error of order
    eps * cond(H) * scale; the oracle's SVD-based solves on Xa carry eps * cond(Xa). 64 N eps
    cond(H) bounds both with a wide margin: over 300 examples of the family the worst measured
    ratio |e - e_ref| / (scale * eps * cond(H)) was about 2e-3.
    """
    N = X.shape[1]
    return 64 * N * EPS64 * cond_H(X, lam)


@settings(max_examples=settings().max_examples)
@given(C.cases())
def test_invariants(case):
    res = C.run_optq(case)
    check_invariants(res, case.grid, *case.W.shape, jnp.float64)
    # the resolved lam and order are ptq.options' (the one definition)
    sq = np.sum(case.X**2, axis=0)
    assert res.lam == pytest.approx(
        ptq.options.resolve_lam(sq.mean(), case.reg.get("lam"), case.reg.get("percdamp")),
        rel=1e-12,  # the mean of the column norms, summed in another order
    )


@settings(max_examples=4 * settings().max_examples)
@given(C.cases())
def test_agrees_with_reference(case):
    """Identical codes to the float64 oracle except at exact rounding ties (see compare_codes),
    over every family, shape, order, regulariser, grid (clipping included), block size and
    rounding mode; e, r, W_start and w_max agree to the conditioning-based tolerance."""
    res = C.run_optq(case)
    ref = C.ref_optq(case)
    tol = tol_for(case.X[:, ref.order], ref.lam)
    assert res.lam == pytest.approx(ref.lam, rel=1e-12)
    out = C.compare_codes(res, ref, case.grid, z_rtol=tol, u=case.u() if case.stochastic else None)
    np.testing.assert_allclose(np.asarray(res.r), ref.r, rtol=tol)
    np.testing.assert_array_equal(np.asarray(res.W_start), ref.W_start)  # both copy or zero w
    if out["diverged"] == 0:
        scale = np.maximum(ref.w_traj_max, C.step_scale(ref.grid))
        assert np.all(np.abs(np.asarray(res.w_max) - ref.w_max) <= tol * scale)


def test_block_size_does_not_change_the_result(rng):
    """Lazy batching is exact algebra: every block size gives the same codes (float64)."""
    X = rng.standard_normal((60, 40))
    W = rng.standard_normal((40, 6))
    grid = ptq.Grid.fit(W, 3, "asymmetric")
    base = ptq.optq(X, W, grid, block_size=1)
    for B in (3, 16, 17, 32, 40, 1000):
        res = ptq.optq(X, W, grid, block_size=B)
        np.testing.assert_array_equal(np.asarray(res.codes), np.asarray(base.codes))
        # e differs only by summation order: ~eps * cond(H) * |w|, cond(H) ~ 30 here
        np.testing.assert_allclose(np.asarray(res.e), np.asarray(base.e), atol=1e-12)


def test_scalar_step_equals_per_neuron_step(rng):
    X, W = rng.standard_normal((30, 10)), rng.standard_normal((10, 3))
    a = ptq.optq(X, W, ptq.Grid.symmetric(0.2, 3))
    b = ptq.optq(X, W, ptq.Grid.symmetric(np.full(3, 0.2), 3))
    np.testing.assert_array_equal(np.asarray(a.codes), np.asarray(b.codes))
    check_invariants(a, ptq.Grid.symmetric(0.2, 3), 10, 3, jnp.float64)


def test_clipping_happens_and_stays_in_range(rng):
    """A 2-bit fitted grid with little damping: OPTQ's weights grow past max|w| (B3) and are
    clipped to the extreme codes, exactly as the oracle clips them."""
    X = rng.standard_normal((12, 16)) @ np.diag(rng.lognormal(0, 1, 16))
    W = rng.standard_normal((16, 8))
    grid = ptq.Grid.fit(W, 2, "symmetric")
    res = ptq.optq(X, W, grid, percdamp=1e-4)
    ref = reference.optq(X, W, grid, percdamp=1e-4)
    kmax = np.asarray(grid.index_bounds()[1])
    clipped = np.abs(ref.z) / np.asarray(grid.step) > kmax + 0.5
    assert clipped.sum() > 0, "the case is meant to clip"
    check_invariants(res, grid, 16, 8, jnp.float64)
    C.compare_codes(res, ref, grid, z_rtol=tol_for(X, ref.lam))


def test_dead_features_are_zeroed_and_quantized_to_zero(rng):
    X = rng.standard_normal((30, 8))
    X[:, [2, 5]] = 0.0
    W = rng.standard_normal((8, 3))
    for reg in ({"lam": 0.0}, {"percdamp": 0.01}):
        res = ptq.optq(X, W, ptq.Grid.symmetric(0.1), **reg)
        np.testing.assert_array_equal(np.asarray(res.W_start)[[2, 5]], 0.0)
        np.testing.assert_array_equal(np.asarray(res.Q)[[2, 5]], 0.0)
        if reg == {"lam": 0.0}:  # the 1 put on H's diagonal is that feature's own r_t
            np.testing.assert_allclose(np.asarray(res.r)[np.isin(res.order, [2, 5])], 1.0)


def test_column_loop_is_not_unrolled():
    """The kernel's program does not grow with N (lax loops, not Python loops at trace time)."""

    def size(N, B):
        R = jnp.eye(N)
        W = jnp.zeros((N, 3))
        grid = ptq.Grid.symmetric(jnp.full(3, 0.1))
        jaxpr = jax.make_jaxpr(
            lambda R, W: kernel.quantize_ordered(
                R, W, grid, None, None, block_size=B, stochastic=False, first_override=False
            )
        )(R, W)
        return str(jaxpr).count(" = ")  # equations, nested loop bodies included

    # several blocks each time (a single-iteration loop may be simplified away)
    assert size(48, 16) == size(1024, 16)
    assert size(60, 20) == size(4000, 20)


@pytest.mark.parametrize("family", ["gaussian", "correlated"])
@pytest.mark.parametrize("stochastic", [False, True])
def test_float32_agrees_with_float64_reference(float32, family, stochastic):
    """In float32 (the default path) at least 99% of codes equal the float64 oracle's on
    well-conditioned data (the issue's criterion). Differences come from float32 rounding of
    near-boundary values and then propagate within a neuron, so we count codes, not steps."""
    rng = np.random.default_rng(7)
    m, N, n = 192, 64, 32
    X = C.make_X(rng, m, N, family)
    W = rng.standard_normal((N, n))
    grid = ptq.Grid.fit(W, 4, "asymmetric")
    key = jax.random.key(11)
    kw = {"rounding": "stochastic", "key": key} if stochastic else {}
    res = ptq.optq(X, W, grid, order="decreasing_norm", **kw)
    check_invariants(res, grid, N, n, jnp.float32)
    u = np.asarray(ptq.inputs.uniforms(key, N, n, jnp.float32), np.float64) if stochastic else None
    ref = reference.optq(
        X, W, grid, order="decreasing_norm", rounding="stochastic" if stochastic else "nearest", u=u
    )
    same = np.mean(np.asarray(res.codes) == ref.codes)
    assert same >= 0.99, f"only {same:.4f} of codes agree with the float64 reference"


@pytest.mark.parametrize("order", ["natural", "decreasing_norm", "random"])
def test_per_weight_grid_of_equal_rows_is_the_per_neuron_grid(rng, order):
    """A (N, n) grid whose rows all equal the (n,) grid is the same alphabet: identical codes
    and bitwise equal Q and e (the same float operations on the same numbers)."""
    X, W = rng.standard_normal((50, 30)), rng.standard_normal((30, 4))
    grid = ptq.Grid.fit(W, 3, "asymmetric")
    wide = ptq.Grid.asymmetric(jnp.tile(grid.step, (30, 1)), jnp.tile(grid.zero, (30, 1)), 3)
    for B in (7, 128):
        a = ptq.optq(X, W, grid, order=order, block_size=B)
        b = ptq.optq(X, W, wide, order=order, block_size=B)
        np.testing.assert_array_equal(np.asarray(a.codes), np.asarray(b.codes))
        np.testing.assert_array_equal(np.asarray(a.Q), np.asarray(b.Q))
        np.testing.assert_array_equal(np.asarray(a.e), np.asarray(b.e))


def test_per_weight_grid_rounds_each_feature_with_its_own_row(rng):
    """Feature j is rounded with row j whatever the order: with lam huge the feedback vanishes
    (C_ts ~ X^T X / lam -> 0), so OPTQ is RTN on the per-weight grid, row by row."""
    X, W = rng.standard_normal((40, 12)), rng.standard_normal((12, 3))
    step = rng.uniform(0.05, 1.0, (12, 3))
    grid = ptq.Grid.symmetric(step, 3)
    for order in ("natural", "decreasing_norm", rng.permutation(12)):
        res = ptq.optq(X, W, grid, lam=1e14, order=order)
        # feedback of size |X^T X| / lam ~ 1e-12 moves no weight across a rounding boundary
        np.testing.assert_array_equal(np.asarray(res.codes), np.asarray(ptq.rtn(W, grid).codes))
        check_invariants(res, grid, 12, 3, jnp.float64)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("N", [300, 1100])  # 1100: XLA's blocked recursion is taken
def test_gram_products_on_the_host_match_xla_and_the_float64_product(dtype, N):
    """On the CPU, gram_sym / gram go to NumPy's BLAS (syrk / gemm). Both routes agree with
    the float64 product to the dtype's rounding (N eps relative to |X|^T |X|), gram_sym is
    exactly symmetric either way, and under jit (a tracer) XLA computes them."""
    from ptq import gram

    rng = np.random.default_rng(N)
    A64 = rng.standard_normal((257, N))
    B64 = A64 + 0.1 * rng.standard_normal((257, N))
    A, B = jnp.asarray(A64, dtype), jnp.asarray(B64, dtype)
    assert gram._on_host(A, B)
    eps = float(jnp.finfo(dtype).eps)
    a, b = (np.asarray(M, np.float64) for M in (A, B))  # the rounded inputs, exactly
    exact = [(a.T @ a, np.abs(a).T @ np.abs(a)), (a.T @ b, np.abs(a).T @ np.abs(b))]
    routes = {"host": (gram.gram_sym(A), gram.gram(A, B)),
              "xla": (gram._gram_sym_xla(A), gram._gram_xla(A, B)),
              "jit": (jax.jit(gram.gram_sym)(A), jax.jit(gram.gram)(A, B))}
    for name, (H, G) in routes.items():
        assert H.dtype == G.dtype == dtype, name
        H, G = np.asarray(H, np.float64), np.asarray(G, np.float64)
        np.testing.assert_array_equal(H, H.T, err_msg=name)
        for got, (ref, scale) in zip((H, G), exact):
            assert np.all(np.abs(got - ref) <= 257 * eps * scale), name
