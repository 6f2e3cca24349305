"""Group-wise steps (theory/README.md section 7): identities and bounds with a step per weight.

Every case draws a hidden random grouping (random group sizes and per-group steps; groups
consecutive in the original order, in the processing order (act_order groups), scattered,
or a step per weight) and runs the algorithms on the infinite alphabet with those (N, n)
steps, so nothing clips. Checked: I1-I3/I5 exactly (float64 tolerance), every bound of
section 7 at or above the measured error, the levels / no-clipping answers by rerunning on
the finite grid, and the (N, n) forms agreeing with the scalar / (n,) ones on constant steps.
Runs go through both `ptq.reference` (float64 NumPy, least-squares definitions) and
`ptq.optq` / `ptq.qronos` (JAX, x64 mode from tests/conftest.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_bounds_stochastic import ALPHA, KEYS, assert_rate_at_most, runs
from theory_data import LAYOUTS, layers, make_X, random_grouping, x_hat

import ptq
import theory

REL = 1e-9  # float64: the identities are exact; room for cond(H) ~ 1e6 rounding (as I1-I5 tests)
SLACK = 1 + 1e-9  # float64 rounding of the measured error; the bounds are exact inequalities


# Few sample counts: m < N (lam > 0 needed), and m = 30 > N + 2 where lam = 0 is drawn too
# (compiling the kernel once per shape dominates otherwise).
CASE = layers(m_choices=(5, 16, 30))


def grouped(case, layout):
    """A hidden (N, n) step table for the case (and the group of each feature), drawn from
    the case's generator around its per-neuron step."""
    X, W, opts = case["X"], case["W"], case["opts"]
    order = theory.factorise(X, **opts).order
    step, groups = random_grouping(case["rng"], *W.shape, case["step"], order, layout)
    return step, groups


def ref_grid(step, K=None):
    """The symmetric grid with these steps: K levels in every group, or infinite (None)."""
    return ptq.Grid.symmetric(step, K)


@given(case=CASE, layout=st.sampled_from(LAYOUTS))
def test_identities_hold_with_group_steps(case, layout):
    """I1-I3 with (N, n) steps, against the float64 reference and ptq.optq (x64)."""
    X, W, opts = case["X"], case["W"], case["opts"]
    step, _ = grouped(case, layout)
    grid = ref_grid(step)
    rn = theory.residual_norms(X, M="rows", **opts)
    key = jax.random.key(case["seed"])
    N, n = W.shape
    u = np.asarray(ptq.inputs.uniforms(key, N, n, np.float64))
    for rounding in ("nearest", "stochastic"):
        ref = ptq.reference.optq(X, W, grid, rounding=rounding, u=u, **opts)
        res = ptq.optq(X, W, grid, rounding=rounding, key=key, **opts)
        np.testing.assert_allclose(ref.r, rn.r, rtol=REL)  # I3: projections vs R_tt
        np.testing.assert_allclose(np.asarray(res.r), rn.r, rtol=REL)
        D = step[rn.order]  # the step of the weight rounded at step t
        for run in (ref, res):
            e, Q, W0 = np.asarray(run.e), np.asarray(run.Q), np.asarray(run.W_start)
            # each weight is rounded on its own group's grid: q / delta is an integer and the
            # error is within that grid's rounding interval (1e-9: float64 division)
            k = Q / step
            assert np.all(np.abs(k - np.round(k)) <= 1e-9 * np.maximum(1, np.abs(k)))
            limit = D * (0.5 if rounding == "nearest" else 1.0)
            assert np.all(np.abs(e) <= limit * SLACK)
            meas = theory.output_errors(X, W0, Q, lam=run.lam).augmented
            ident = np.sum(e**2 * rn.r[:, None] ** 2, axis=0)  # I2
            np.testing.assert_allclose(ident, meas**2, rtol=REL, atol=1e-24)
            scale = max(1.0, np.abs(X @ (W0 - Q)).max())
            np.testing.assert_allclose(X @ (W0 - Q), rn.M @ e, rtol=0, atol=REL * scale)  # I1


@given(case=CASE, layout=st.sampled_from(LAYOUTS))
def test_deterministic_bounds_hold_with_group_steps(case, layout):
    """B1', B2', B3' (and levels) on OPTQ with a hidden grouping."""
    X, W, opts = case["X"], case["W"], case["opts"]
    step, _ = grouped(case, layout)
    f = theory.factorise(X, **opts)
    ref = ptq.reference.optq(X, W, ref_grid(step), **opts)
    res = ptq.optq(X, W, ref_grid(step), **opts)
    b1 = theory.optq_l2_bound(X, step, factors=f, **opts)
    b2 = theory.optq_structural_bound(X, step, **opts)
    b3 = theory.optq_weight_bound(X, W, step, factors=f, **opts)
    assert b1.shape == b2.bound.shape == b3.bound.shape == b3.levels.shape == (W.shape[1],)
    assert b3.deviation.shape == W.shape
    np.testing.assert_allclose(theory.optq_l2_bound(X, step, r=np.asarray(res.r), **opts), b1,
                               rtol=1e-9)  # the cheap path from ptq's r (same r to 1e-9)
    assert np.all(b1 <= b2.bound * SLACK)
    for run in (ref, res):
        meas = theory.output_errors(X, np.asarray(run.W_start), np.asarray(run.Q), lam=run.lam)
        assert np.all(meas.augmented <= b1 * SLACK), (meas.augmented, b1)
        assert np.all(np.asarray(run.w_max) <= b3.bound * SLACK)
    assert np.all(ref.w_traj_max <= b3.bound * SLACK)  # every intermediate weight, not only z_t
    # B3' coordinate by coordinate: the value rounded at step t is within deviation_t of w_t
    Wp = np.asarray(ref.W_start)[f.order]
    # (the oracle's lstsq leaves ~1e-16 updates on dead features, where the deviation is 0)
    assert np.all(np.abs(ref.z - Wp) <= b3.deviation * SLACK + 1e-12 * np.abs(Wp).max())
    # levels: a K-level grid in every group with K = levels never clips (same Q as Z)
    K = int(b3.levels.max())
    fin = ptq.optq(X, W, ref_grid(step, K), **opts)
    np.testing.assert_array_equal(np.asarray(fin.Q), np.asarray(res.Q))
    # and the per-weight ratio is what levels measures: max_t |z_t| / delta_t <= levels
    assert np.all(np.max(np.abs(ref.z) / step[f.order], axis=0) <= b3.levels * SLACK)


@given(case=CASE, layout=st.sampled_from(LAYOUTS[:3]), tight=st.booleans())
def test_no_clipping_on_asymmetric_group_grids(case, layout, tight):
    """A shifted (asymmetric) per-group range that no_clipping accepts never clips."""
    X, W, opts = case["X"], case["W"], case["opts"]
    step, groups = grouped(case, layout)
    N, n = W.shape
    res = ptq.optq(X, W, ref_grid(step), **opts)
    W0 = np.asarray(res.W_start)
    b3 = theory.optq_weight_bound(X, W, step, **opts)
    dev = np.empty_like(b3.deviation)
    dev[b3.order] = b3.deviation  # original feature order
    # one zero point per group and neuron, just low enough for the group's lowest reach
    need_low = np.ceil((dev - W0) / step)  # codes below the zero point the weight needs
    need_high = np.ceil((W0 + dev) / step)
    zero = np.zeros((N, n))
    for g in np.unique(groups):
        zero[groups == g] = need_low[groups == g].max(axis=0)
    qmax = float((zero + need_high).max())
    if tight:  # too few codes for some weights: no_clipping must then say "may clip"
        qmax = max(qmax - 3.0, 0.0)
    ok = theory.no_clipping(W0, b3, step, qmin=0.0, qmax=qmax, zero=zero)
    assert tight or ok.all()
    grid = ptq.Grid(*(jnp.asarray(a, jnp.float64) for a in (step, zero, 0.0, qmax)))
    fin = ptq.optq(X, W, grid, **opts)
    same = np.all(np.asarray(fin.Q) == np.asarray(res.Q), axis=0)
    assert np.all(same[ok]), (ok, same)


@given(case=CASE, layout=st.sampled_from(LAYOUTS), noise=st.floats(0.0, 1.0))
def test_qronos_identity_and_Q1_Q2_with_group_steps(case, layout, noise):
    X, W, opts = case["X"], case["W"], case["opts"]
    Xh = x_hat(case["rng"], X, noise)
    order = theory.factorise(Xh, **opts).order  # Qronos' order is resolved from X_hat
    step, _ = random_grouping(case["rng"], *W.shape, case["step"], order, layout)
    f = theory.factorise(Xh, **opts)
    ls = theory.qronos_bounds.least_squares(X, Xh, W, opts.get("lam"), opts.get("percdamp"),
                                            opts["order"], opts["order_seed"], None)
    for variant in ("paper", "ls_first"):
        ref = ptq.reference.qronos(X, Xh, W, ref_grid(step), variant=variant, **opts)
        res = ptq.qronos(X, Xh, W, ref_grid(step), variant=variant, **opts)
        q1 = theory.qronos_l2_bound(X, Xh, W, step, variant=variant, factors=f, **opts)
        for run in (ref, res):
            e = np.asarray(run.e)
            meas = theory.output_errors(X, W, np.asarray(run.Q), X_hat=Xh, lam=run.lam).augmented
            ident = ls.E_ls**2 + np.sum(e**2 * f.r[:, None] ** 2, axis=0)  # I5
            np.testing.assert_allclose(ident, meas**2, rtol=1e-8, atol=1e-20)
            assert np.all(meas <= q1 * SLACK), (variant, meas, q1)
    res = ptq.optq(Xh, W, ref_grid(step), **opts)  # OPTQ ignoring the mismatch
    meas = theory.output_errors(X, W, np.asarray(res.Q), X_hat=Xh, lam=res.lam)
    q2 = theory.optq_mismatch_l2_bound(X, Xh, W, step, factors=f, **opts)
    assert np.all(meas.l2 <= q2 * SLACK), (meas.l2, q2)


@given(case=CASE, layout=st.sampled_from(LAYOUTS))
def test_constant_tables_reduce_to_per_neuron_forms(case, layout):
    """An (N, n) table with one value per neuron gives the (n,) numbers (to rounding: the
    per-weight path sums the same terms in another association, 1e-13), and the scalar /
    (n,) paths keep their shapes."""
    X, W, opts = case["X"], case["W"], case["opts"]
    N, n = W.shape
    s = np.broadcast_to(case["step"], (n,)).astype(float)
    S = np.tile(s, (N, 1))
    Xh = x_hat(case["rng"], X, 0.3)
    tol = dict(rtol=1e-13, atol=0)
    for fn in (theory.optq_l2_bound, theory.stochastic_l2_bound,
               lambda X, st, **k: theory.optq_structural_bound(X, st, **k).bound,
               lambda X, st, **k: theory.stochastic_linf_bound(X, st, p=0.1, **k)):
        np.testing.assert_allclose(fn(X, S, **opts), fn(X, s, **opts), **tol)
        assert np.ndim(fn(X, float(s[0]), **opts)) == 0
    for fn in (theory.optq_weight_bound, theory.stochastic_weight_bound):
        a, b = fn(X, W, s, **opts), fn(X, W, S, **opts)
        np.testing.assert_allclose(b.bound, a.bound, **tol)
        np.testing.assert_allclose(b.deviation, a.deviation, **tol)
        np.testing.assert_array_equal(b.growth, a.growth)  # step-free
        # levels are ceilings: equal unless a ratio sits within rounding of an integer
        ratio = np.max((np.abs(W[a.order]) * (theory.factorise(X, **opts).live[:, None])
                        + a.deviation) / s, axis=0)
        exact = np.abs(ratio - np.round(ratio)) > 1e-9 * ratio
        np.testing.assert_array_equal(b.levels[exact], a.levels[exact])
    for variant in ("paper", "ls_first"):
        for fn in (theory.qronos_l2_bound, theory.qronos_linf_bound):
            np.testing.assert_allclose(fn(X, Xh, W, S, variant=variant, **opts),
                                       fn(X, Xh, W, s, variant=variant, **opts), **tol)
    np.testing.assert_allclose(theory.optq_mismatch_l2_bound(X, Xh, W, S, **opts),
                               theory.optq_mismatch_l2_bound(X, Xh, W, s, **opts), **tol)


def test_levels_need_the_per_weight_ratio():
    """Why levels is max_t (|w_t| + d_t) / delta_t and not bound / delta: with a coarse and a
    fine group, K = ceil(bound / largest step) clips, K = levels does not."""
    rng = np.random.default_rng(0)
    m, N, n = 30, 12, 8
    X = make_X(rng, m, N, cond=1.0)
    W = rng.standard_normal((N, n))
    step = np.where(np.arange(N)[:, None] < N // 2, 0.4, 0.02) * np.ones((N, n))
    b3 = theory.optq_weight_bound(X, W, step)
    naive = int(np.ceil(b3.bound / step.max(axis=0)).max())
    K = int(b3.levels.max())
    assert naive < K
    inf = np.asarray(ptq.optq(X, W, ref_grid(step)).Q)
    assert not np.array_equal(np.asarray(ptq.optq(X, W, ref_grid(step, naive)).Q), inf)
    np.testing.assert_array_equal(np.asarray(ptq.optq(X, W, ref_grid(step, K)).Q), inf)


# ---------------------------------------------------------------- stochastic (S1'-S3', Q3')
T = 600  # copies of one neuron per run: independent trials (own uniforms)
CASES = {
    # name: (m, N, cond, dead, layout, kwargs); "wide" has m < N (lam > 0 needed),
    # "tall" lam = 0 with m > N
    "tall_lam0_static": (40, 13, 1.0, 0, "static", dict(lam=0.0, order="natural")),
    "act_order": (30, 20, 3.0, 1, "act_order", dict(percdamp=1e-3, order="decreasing_norm")),
    "wide_scattered": (8, 20, 0.0, 1, "scattered", dict(lam=0.05, order="random",
                                                        order_seed=3)),
    "per_weight": (25, 13, 2.0, 0, "per_weight", dict(percdamp=0.01, order="increasing_norm")),
}


def stochastic_problem(name):
    m, N, cond, dead, layout, opts = CASES[name]
    rng = np.random.default_rng(7 + len(name))
    X = make_X(rng, m, N, cond=cond, dead=dead, spread=0.5)
    w = rng.standard_normal(N)
    order = theory.factorise(X, **opts).order
    col, _ = random_grouping(rng, N, 1, 0.3 * np.abs(w).max() / 7, order, layout)
    W = np.tile(w[:, None], (1, T))
    return X, W, np.tile(col, (1, T)), opts, rng


def stochastic_runs(X, W, grid, opts, X_hat=None, variant=None):
    """Keys of their own (2000 + k), independent of test_bounds_stochastic's draws."""
    return runs(X, W, grid, opts, X_hat=X_hat, variant=variant, seed0=2000)


@pytest.mark.parametrize("name", sorted(CASES))
def test_S1_S2_S3_with_group_steps(name):
    """S2', S3' violation rates at most p (binomial test, level ALPHA as in
    test_bounds_stochastic), S1' via its compensator on every path and the mean over T copies
    (Azuma-Hoeffding tolerance, stated below), and no clipping at S3's levels."""
    p = 0.05
    X, W, step, opts, _ = stochastic_problem(name)
    f = theory.factorise(X, **opts)
    one = step[:, :1]
    s1 = theory.stochastic_l2_bound(X, one, factors=f, **opts)[0]
    s2 = theory.stochastic_linf_bound(X, one, p=p, factors=f, **opts)[0]
    s3 = theory.stochastic_weight_bound(X, W[:, :1], one, p=p, factors=f, **opts)
    K = int(s3.levels[0])
    D = one[f.order, 0]  # step of step t
    r = np.where(f.live, f.r, 0.0)
    v2 = v3 = fails = 0
    fin_runs = stochastic_runs(X, W, ref_grid(step, K), opts)
    for res, fin in zip(stochastic_runs(X, W, ref_grid(step), opts), fin_runs):
        W0, Q, e = np.asarray(res.W_start), np.asarray(res.Q), np.asarray(res.e)
        meas = theory.output_errors(X, W0, Q, lam=res.lam)
        v2 += int(np.sum(meas.linf > s2))
        v3 += int(np.sum(np.asarray(res.w_max) > s3.bound[0]))
        # the same uniforms on the K-level grid: a difference means it clipped
        clipped = np.any(np.asarray(fin.Q) != Q, axis=0)
        fmeas = theory.output_errors(X, np.asarray(fin.W_start), np.asarray(fin.Q))
        fails += int(np.sum(clipped | (fmeas.linf > s2)))
        # S1': compensator A = sum_t delta_t^2 f_t (1 - f_t) r_t^2 <= S1'^2 on every path
        x = (Q[f.order] + e) / D[:, None]
        frac = x - np.floor(x)
        A = np.sum((D**2 * r**2)[:, None] * frac * (1 - frac), axis=0)
        assert np.all(A <= s1**2 * (1 + 1e-12))  # 1e-12: float64 sums of N terms
        # err^2 - A is a sum of martingale increments in intervals of length delta_t^2 r_t^2;
        # the mean of T copies is within tol of 0 except with probability ALPHA
        tol = np.sqrt(np.log(2 / ALPHA) * np.sum(D**4 * r**4) / (2 * T))
        err2 = meas.augmented**2
        assert abs(np.mean(err2 - A)) <= tol
        assert np.mean(err2) <= s1**2 + tol
    trials = T * len(KEYS)
    assert_rate_at_most(v2, trials, p)
    assert_rate_at_most(v3, trials, p)
    assert_rate_at_most(fails, trials, 2 * p)  # no clipping and S2', together >= 1 - 2p


@pytest.mark.parametrize("variant", ["paper", "ls_first"])
@pytest.mark.parametrize("name", ["act_order", "wide_scattered"])
def test_Q3_with_group_steps(name, variant):
    p = 0.05
    X, W, step, opts, rng = stochastic_problem(name)
    Xh = x_hat(rng, X, 0.5)
    # the grouping was drawn for X's order; any fixed (N, n) table is allowed
    q3 = theory.qronos_linf_bound(X, Xh, W[:, :1], step[:, :1], p=p, variant=variant,
                                  **opts)[0]
    v = 0
    for res in stochastic_runs(X, W, ref_grid(step), opts, X_hat=Xh, variant=variant):
        v += int(np.sum(theory.output_errors(X, W, np.asarray(res.Q), X_hat=Xh).linf > q3))
    assert_rate_at_most(v, T * len(KEYS), p)


def test_S2_harness_detects_too_small_weighted_bound():
    """The rate check has power on grouped steps too: S2' with the smallest step everywhere
    (a wrong, too small bound) is rejected."""
    X, W, step, opts, _ = stochastic_problem("per_weight")
    wrong = theory.stochastic_linf_bound(X, step.min(), p=0.05, **opts)
    res = next(stochastic_runs(X, W, ref_grid(step), opts))
    meas = theory.output_errors(X, np.asarray(res.W_start), np.asarray(res.Q))
    with pytest.raises(AssertionError):
        assert_rate_at_most(int(np.sum(meas.linf > wrong)), T, 0.05)


# ---------------------------------------------------------------- lam guidance
def test_lam_guidance_with_a_fixed_group_step():
    rng = np.random.default_rng(4)
    X = make_X(rng, 30, 13, cond=2.0, spread=0.5)
    W = rng.standard_normal((13, 4))
    order = theory.factorise(X).order
    step, _ = random_grouping(rng, 13, 4, np.abs(W).max(0) / 7, order, "static")
    lams = np.mean(X**2) * 30 * np.logspace(-4, 2, 13)
    K = 30
    for rounding in ("nearest", "stochastic"):
        g = theory.lam_guidance(X, W, levels=K, step=step, lams=lams, rounding=rounding, p=0.1)
        assert g.lam is not None and g.best_step.shape == step.shape
        assert g.step.shape == (lams.size, 13, 4)
        wb = (theory.optq_weight_bound if rounding == "nearest" else
              lambda *a, **k: theory.stochastic_weight_bound(*a, p=0.1, **k))
        for i in np.flatnonzero(g.feasible):  # feasibility is B3'/S3' levels <= K
            lv = wb(X, W, step, lam=float(lams[i])).levels
            assert np.all(lv <= K)
            np.testing.assert_allclose(g.bound[i], theory.optq_l2_bound(X, step, lam=lams[i]),
                                       rtol=1e-12)
        for i in np.flatnonzero(~g.feasible):
            assert np.any(wb(X, W, step, lam=float(lams[i])).levels > K)
        assert g.lam == lams[g.feasible].min()  # B1' is non-decreasing in lam
    g = theory.lam_guidance(X, W, levels=K, step=step, lams=lams)
    fin = ptq.optq(X, W, ref_grid(step, K), lam=g.lam)
    inf = ptq.optq(X, W, ref_grid(step), lam=g.lam)
    np.testing.assert_array_equal(np.asarray(fin.Q), np.asarray(inf.Q))
