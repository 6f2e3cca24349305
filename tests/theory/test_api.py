"""Argument checking, shapes, precomputed factors, tightness, and the no-JAX import rule."""

import subprocess
import sys

import numpy as np
import pytest

import ptq
import theory

rng = np.random.default_rng(0)
X = rng.standard_normal((20, 8))
Xh = X + 0.1 * rng.standard_normal((20, 8))
W = rng.standard_normal((8, 3))


def test_theory_does_not_import_jax():
    code = "import theory, sys; assert 'jax' not in sys.modules, 'theory imported jax'"
    root = __import__("pathlib").Path(theory.__file__).parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(root))


def test_shapes_and_step_forms():
    assert np.ndim(theory.optq_l2_bound(X, 0.1)) == 0
    assert theory.optq_l2_bound(X, np.full(3, 0.1)).shape == (3,)
    assert theory.stochastic_linf_bound(X, np.full(3, 0.1)).shape == (3,)
    assert theory.optq_weight_bound(X, W, 0.1).bound.shape == (3,)
    assert theory.qronos_l2_bound(X, Xh, W, 0.1).shape == (3,)
    assert theory.qronos_linf_bound(X, Xh, W, 0.1).shape == (3,)
    assert theory.optq_mismatch_l2_bound(X, Xh, W, 0.1).shape == (3,)
    S = np.full((8, 3), 0.1)  # one step per weight (a group-wise grid): per-neuron results
    for fn in (theory.optq_l2_bound, theory.stochastic_l2_bound, theory.stochastic_linf_bound):
        assert fn(X, S).shape == (3,)
    assert theory.optq_structural_bound(X, S).bound.shape == (3,)
    for fn in (theory.optq_weight_bound, theory.stochastic_weight_bound):
        wb = fn(X, W, S)
        assert wb.bound.shape == wb.levels.shape == (3,) and wb.deviation.shape == (8, 3)
    for fn in (theory.qronos_l2_bound, theory.qronos_linf_bound, theory.optq_mismatch_l2_bound):
        assert fn(X, Xh, W, S).shape == (3,)
    rn = theory.residual_norms(X, M="none")
    assert rn.M is None and rn.r.shape == (8,)
    assert theory.residual_norms(X, M="augmented").M.shape == (28, 8)


def test_precomputed_factors_and_r_are_checked():
    f = theory.factorise(X, order="decreasing_norm", lam=0.5)
    b = theory.optq_l2_bound(X, 0.1, order="decreasing_norm", lam=0.5, factors=f)
    again = theory.optq_l2_bound(X, 0.1, order="decreasing_norm", lam=0.5)
    np.testing.assert_allclose(b, again, rtol=1e-15)
    with pytest.raises(ValueError, match="processing order"):
        theory.optq_l2_bound(X, 0.1, lam=0.5, factors=f)
    with pytest.raises(ValueError, match="lam"):
        theory.optq_l2_bound(X, 0.1, order="decreasing_norm", lam=0.7, factors=f)
    with pytest.raises(ValueError, match="at most one of `r` and `factors`"):
        theory.optq_l2_bound(X, 0.1, order="decreasing_norm", lam=0.5, factors=f, r=f.r)
    with pytest.raises(ValueError, match="`r` must have shape"):
        theory.optq_l2_bound(X, 0.1, r=np.ones(3))
    with pytest.raises(ValueError, match="`factors` must be"):
        theory.optq_weight_bound(X, W, 0.1, factors=(1, 2))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: theory.optq_l2_bound(X[0], 0.1), "`X` must be a 2-D array"),
        (lambda: theory.optq_l2_bound(np.full((3, 2), np.nan), 0.1), "`X` must be finite"),
        (lambda: theory.optq_l2_bound(X, -1.0), "`step` must be finite and > 0"),
        (lambda: theory.optq_weight_bound(X, W, np.ones(4)),
         r"`step` must be a scalar, one per neuron \(n,\) = \(3,\) or one per feature and "
         r"neuron \(N, n\) = \(8, 3\).*got shape \(4,\)"),
        (lambda: theory.optq_l2_bound(X, np.ones((7, 3))),
         r"\(N, n\) = \(8, n\).*got shape \(7, 3\)"),
        (lambda: theory.qronos_l2_bound(X, Xh, W, np.ones((8, 2))),
         r"\(N, n\) = \(8, 3\).*got shape \(8, 2\)"),
        (lambda: theory.stochastic_linf_bound(X, np.ones((8, 3, 1))), "got shape \\(8, 3, 1\\)"),
        (lambda: theory.optq_l2_bound(X, np.full((8, 3), -0.1)), "`step` must be finite and > 0"),
        (lambda: theory.no_clipping(W, theory.optq_weight_bound(X, W, 0.1), 0.1, qmin=-1,
                                    qmax=1, zero=np.zeros(4)), "`zero` must be a scalar"),
        (lambda: theory.no_clipping(W, theory.optq_weight_bound(X, W, 0.1), 0.1, qmin=1,
                                    qmax=-1), "`qmin` must be <= `qmax`"),
        (lambda: theory.no_clipping(W[:, :2], theory.optq_weight_bound(X, W, 0.1), 0.1,
                                    qmin=-1, qmax=1), "`weight_bound` must come from"),
        (lambda: theory.optq_weight_bound(X, W.T, 0.1), "`W` must have shape"),
        (lambda: theory.optq_l2_bound(X, 0.1, lam=1.0, percdamp=0.1),
         "at most one of `lam` and `percdamp`"),
        (lambda: theory.optq_l2_bound(X, 0.1, lam=-1.0), "`lam` must be a finite number >= 0"),
        (lambda: theory.optq_l2_bound(X, 0.1, order="sideways"), "`order` must be one of"),
        (lambda: theory.optq_l2_bound(X, 0.1, order=[0, 0, 1]), "permutation"),
        (lambda: theory.optq_l2_bound(X[:4], 0.1, lam=0.0), "not positive definite"),
        (lambda: theory.stochastic_linf_bound(X, 0.1, p=1.5), r"`p` \(failure probability\)"),
        (lambda: theory.stochastic_weight_bound(X, W, 0.1, p=0), "`p`"),
        (lambda: theory.qronos_l2_bound(X, Xh, W, 0.1, variant="brevitas"),
         "`variant` must be one of"),
        (lambda: theory.qronos_l2_bound(X, Xh[:5], W, 0.1), "`X_hat` must have the shape of X"),
        (lambda: theory.residual_norms(X, M="all"), "`M` must be"),
        (lambda: theory.optq_structural_bound(X[:4], 0.1, breakpoints=0), "`breakpoints`"),
        (lambda: theory.tightness([1.0, 2.0], [1.0, 2.0, 3.0]), "must broadcast"),
        (lambda: theory.tightness([1.0], [0.0]), "`bound` must be finite and > 0"),
        (lambda: theory.output_errors(X, W, W[:3]), "`Q` must have the shape of W"),
    ],
)
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_tightness_accepts_bound_tuples():
    b3 = theory.optq_weight_bound(X, W, 0.1)
    t = theory.tightness(np.abs(W).max(0), b3)
    assert t.shape == (3,) and np.all((t > 0) & (t <= 1))


def test_lam_and_order_resolution_match_ptq():
    res = ptq.optq(X, W, ptq.Grid.symmetric(0.1), order="random", order_seed=5, percdamp=0.2)
    f = theory.factorise(X, order="random", order_seed=5, percdamp=0.2)
    assert np.array_equal(f.order, res.order) and f.lam == pytest.approx(res.lam, rel=1e-12)
    res = ptq.qronos(X, Xh, W, ptq.Grid.symmetric(0.1), order="increasing_norm")
    f = theory.factorise(Xh, order="increasing_norm")
    assert np.array_equal(f.order, res.order) and f.lam == pytest.approx(res.lam, rel=1e-12)
