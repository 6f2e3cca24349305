"""ptq.select: the held-out-by-sequence choice of Qronos' strength (and lam), against a
brute-force NumPy recomputation of every quantity its module docstring defines (float64).

Brute force: the sequences are dealt round-robin, in order of first appearance, into
``K = min(#sequences, 4)`` folds; for each fold g the ridge fit on the OTHER folds' rows,
``wt_{-g} - w = solve(X_hat_{-g}^T X_hat_{-g} + lam I, X_hat_{-g}^T u_{-g})`` with
``u = (X - X_hat) W``, and ``d_g = X_hat_g (wt_{-g} - w)``; ``A0 = sum ||u_g||^2``,
``A1 = sum <u_g, d_g>``, ``A2 = sum ||d_g||^2``, ``C(a) = A0 - 2 a A1 + a^2 A2``.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ptq
from ptq import select

SEQ, ROWS, N, NN = 8, 24, 20, 6  # m = 192 rows of 8 sequences, N = 20 features, n = 6
REL = 1e-9


def layer(seed=0, m=SEQ * ROWS, N=N, n=NN, noise=0.3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, N)) * np.exp(0.3 * rng.standard_normal(N))
    X_hat = X + noise * X.std(axis=0) * rng.standard_normal((m, N))
    W = rng.standard_normal((N, n))
    return X, X_hat, W


def folds_of(ids, K=4):
    """Fold of each row: sequences in order of first appearance, dealt round-robin."""
    seen = list(dict.fromkeys(np.asarray(ids).tolist()))
    k = min(len(seen), K)
    rank = {s: i for i, s in enumerate(seen)}
    return np.array([rank[s] % k for s in np.asarray(ids).tolist()]), k


def brute_force(X, X_hat, W, lam, ids):
    """(A0, A1, A2) held out by fold, and the same fitted and evaluated on all rows."""
    fold, K = folds_of(ids)
    U = (X - X_hat) @ W
    I = lam * np.eye(X.shape[1])
    A = np.zeros(3)
    for g in range(K):
        i, o = fold == g, fold != g
        delta = np.linalg.solve(X_hat[o].T @ X_hat[o] + I, X_hat[o].T @ U[o])
        d = X_hat[i] @ delta
        A += [np.sum(U[i] ** 2), np.sum(U[i] * d), np.sum(d**2)]
    d = X_hat @ np.linalg.solve(X_hat.T @ X_hat + I, X_hat.T @ U)
    return A, np.array([np.sum(U**2), np.sum(U * d), np.sum(d**2)])


def curve(A, a):
    """C(0), C(1), C(a)."""
    return np.array([A[0], A[0] - 2 * A[1] + A[2], A[0] - 2 * a * A[1] + a**2 * A[2]])


def check_against_brute_force(X, X_hat, W, ids, sel):
    lam = 0.01 * np.mean(np.sum(X_hat**2, axis=0))
    assert sel.lam == pytest.approx(lam, rel=1e-14)
    A, A_in = brute_force(X, X_hat, W, sel.lam, ids)  # the lam the Selection reports
    a_star = float(np.clip(A[1] / A[2], 0.0, 1.0))
    assert 0.0 < a_star < 1.0  # an interior optimum: the clip does not hide an error
    assert sel.strength == pytest.approx(a_star, rel=REL)
    np.testing.assert_allclose(sel.heldout[0], curve(A, sel.strength), rtol=REL)
    np.testing.assert_allclose(sel.insample[0], curve(A_in, sel.strength), rtol=REL)
    assert sel.heldout.shape == sel.insample.shape == (1, 3)
    np.testing.assert_array_equal(sel.strengths, [sel.strength])
    assert sel.folds == 4 and sel.sequences == SEQ and sel.rows == X.shape[0]
    assert sel.dead == 0 and not sel.sketched


@pytest.mark.parametrize("order", ["natural", "decreasing_norm"])
def test_coefficients_and_strength_equal_brute_force(order):
    """8 consecutive sequences of 24 rows (sequences=8): the folds, C(0), C(1), C(a*) held
    out and in sample, and a* = clip(A1/A2, 0, 1), to 1e-9; qronos uses what select chose."""
    X, X_hat, W = layer(0)
    grid = ptq.Grid.fit(W, 4)
    res = ptq.qronos(X, X_hat, W, grid, variant="ls_first", strength="auto", sequences=SEQ,
                     order=order)
    sel = res.selection
    assert isinstance(sel, select.Selection)
    check_against_brute_force(X, X_hat, W, np.repeat(np.arange(SEQ), ROWS), sel)
    assert res.strength == sel.strength and res.lam == sel.lam
    # the run is ptq.qronos at that strength (the same program)
    fixed = ptq.qronos(X, X_hat, W, grid, variant="ls_first", strength=sel.strength,
                       order=order)
    np.testing.assert_array_equal(np.asarray(res.codes), np.asarray(fixed.codes))
    np.testing.assert_array_equal(np.asarray(res.W_start), np.asarray(fixed.W_start))
    assert fixed.selection is None


def test_shuffled_sequence_ids_equal_brute_force():
    """Sequence ids as an array, interleaved (rows of one sequence not consecutive) and with
    arbitrary labels: the folds follow the order of first appearance."""
    X, X_hat, W = layer(1)
    rng = np.random.default_rng(11)
    labels = rng.permutation(100)[:SEQ] * 7 - 50  # arbitrary, negative ones included
    ids = labels[rng.permutation(np.repeat(np.arange(SEQ), ROWS))]
    sel = select.select(X, X_hat, W, ptq.Grid.fit(W, 4), sequences=ids, lam=None)
    check_against_brute_force(X, X_hat, W, ids, sel)
    fold, K = select.sequence_folds(ids, X.shape[0])
    np.testing.assert_array_equal(fold, folds_of(ids)[0])
    assert K == SEQ
    # the same rows and ids in another row order is another problem, but relabelling the
    # sequences (same first-appearance order) is the same one
    relabelled = np.unique(ids, return_inverse=True)[1] + 1000
    again = select.select(X, X_hat, W, ptq.Grid.fit(W, 4), sequences=relabelled, lam=None)
    np.testing.assert_array_equal(again.heldout, sel.heldout)


def test_a_given_strength_is_evaluated_not_chosen():
    X, X_hat, W = layer(2)
    sel = select.select(X, X_hat, W, ptq.Grid.fit(W, 4), sequences=SEQ, strength=0.25,
                        lam=None)
    A, _ = brute_force(X, X_hat, W, sel.lam, np.repeat(np.arange(SEQ), ROWS))
    assert sel.strength == 0.25
    np.testing.assert_allclose(sel.heldout[0], curve(A, 0.25), rtol=REL)


def test_rounding_term_equals_brute_force():
    """rho = sum_g sum_t ||(X_hat_g R_{-g}^{-T})_{:,t}||^2 r_{-g,t}^2 sum_j delta_tj^2 / 12 in
    decreasing-norm processing order, R_{-g} upper triangular with Hh_{-g} = R R^T; a step
    per weight so that the order of the steps matters; in sample sum_t r_t^2 s_t."""
    X, X_hat, W = layer(3)
    rng = np.random.default_rng(3)
    step = rng.uniform(0.05, 0.5, W.shape)
    sel = select.select(X, X_hat, W, ptq.Grid.symmetric(step, 7), sequences=SEQ, lam=None,
                        order="decreasing_norm", rounding_term=True)
    p = np.argsort(-np.sum(X_hat**2, axis=0), kind="stable")
    s = np.sum(step[p] ** 2, axis=1) / 12  # processing order
    fold, K = folds_of(np.repeat(np.arange(SEQ), ROWS))
    Xp = X_hat[:, p]

    def factor(rows):
        H = Xp[rows].T @ Xp[rows] + sel.lam * np.eye(N)
        return np.linalg.cholesky(H[::-1, ::-1])[::-1, ::-1]  # upper, H = R R^T

    rho = 0.0
    for g in range(K):
        R = factor(fold != g)
        np.testing.assert_allclose(R @ R.T, Xp[fold != g].T @ Xp[fold != g]
                                   + sel.lam * np.eye(N), rtol=1e-12, atol=1e-9)
        B = np.linalg.solve(R, Xp[fold == g].T).T  # X_hat_g R^{-T}
        rho += np.sum(np.sum(B**2, axis=0) * np.diag(R) ** 2 * s)
    np.testing.assert_allclose(sel.rounding_heldout, [rho], rtol=REL)
    R = factor(np.ones(X.shape[0], bool))
    np.testing.assert_allclose(sel.rounding_insample, [np.sum(np.diag(R) ** 2 * s)], rtol=REL)
    # the order matters (the check above would not see a wrong order otherwise)
    nat = select.select(X, X_hat, W, ptq.Grid.symmetric(step, 7), sequences=SEQ, lam=None,
                        order="natural", rounding_term=True)
    assert abs(nat.rounding_heldout[0] - rho) > 1e-6 * rho
    # without it: NaN, and the strength does not depend on it
    off = select.select(X, X_hat, W, ptq.Grid.symmetric(step, 7), sequences=SEQ, lam=None,
                        order="decreasing_norm")
    assert np.isnan(off.rounding_heldout).all() and off.strength == sel.strength


def test_sketch_is_an_estimate_near_the_exact_coefficients():
    """n = 40 > sketch = 8: C's coefficients are computed on W S (S Gaussian, 40 x 8, fixed
    seed): an unbiased ESTIMATE of the sums over neurons, not the exact values, so only a
    loose agreement (within a factor 2 on the squared norms C(0) = A0 and C(1)) is checked,
    and that the chosen strength stays in [0, 1]."""
    X, X_hat, W = layer(4, n=40)
    grid = ptq.Grid.fit(W, 4)
    exact = select.select(X, X_hat, W, grid, sequences=SEQ, lam=None)
    sk = select.select(X, X_hat, W, grid, sequences=SEQ, lam=None, sketch=8)
    assert sk.sketched and not exact.sketched
    assert 0.0 <= sk.strength <= 1.0
    for got, want in ((sk.heldout, exact.heldout), (sk.insample, exact.insample)):
        ratio = got[0, :2] / want[0, :2]
        assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio
    assert sk.lam == exact.lam  # the sketch is of the neurons only
    # deterministic: the same layer gets the same estimate
    np.testing.assert_array_equal(
        select.select(X, X_hat, W, grid, sequences=SEQ, lam=None, sketch=8).heldout, sk.heldout)


def test_lam_auto_picks_the_smallest_predicted_error():
    X, X_hat, W = layer(5)
    grid = ptq.Grid.fit(W, 4)
    res = ptq.qronos(X, X_hat, W, grid, variant="ls_first", lam="auto", strength="auto",
                     sequences=SEQ)
    sel = res.selection
    diag_mean = np.mean(np.sum(X_hat**2, axis=0))
    np.testing.assert_allclose(sel.lams, np.asarray(select.PERCDAMPS) * diag_mean, rtol=1e-14)
    np.testing.assert_array_equal(sel.percdamps, select.PERCDAMPS)
    assert sel.heldout.shape == (len(select.PERCDAMPS), 3)
    assert np.all(np.isfinite(sel.rounding_heldout))  # rho is part of the criterion
    np.testing.assert_allclose(sel.predicted, sel.heldout[:, 2] + sel.rounding_heldout)
    best = int(np.argmin(sel.predicted))
    assert sel.lam == sel.lams[best] == res.lam
    assert sel.strength == sel.strengths[best] == res.strength
    assert res.lam == pytest.approx(select.PERCDAMPS[best] * diag_mean, rel=1e-14)
    # every candidate's C is the brute force's at that lam
    ids = np.repeat(np.arange(SEQ), ROWS)
    for c, lam in enumerate(sel.lams):
        A, _ = brute_force(X, X_hat, W, lam, ids)
        np.testing.assert_allclose(sel.heldout[c], curve(A, sel.strengths[c]), rtol=REL)
    fixed = ptq.qronos(X, X_hat, W, grid, variant="ls_first", lam=res.lam,
                       strength=res.strength)
    np.testing.assert_array_equal(np.asarray(res.codes), np.asarray(fixed.codes))
    # lam="auto" at a given strength: that strength for every candidate
    given = ptq.qronos(X, X_hat, W, grid, variant="ls_first", lam="auto", strength=0.5,
                       sequences=SEQ)
    assert given.strength == 0.5 and np.all(given.selection.strengths == 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_few_sequences_overfit_and_get_a_smaller_strength(seed):
    """The selection means something: X_hat = X + independent noise, so the correction wt - w
    is real but estimated from the calibration rows. From 4 sequences of 6 rows (m = 24 ~ N)
    the ridge fit overfits and the held-out criterion takes little of it; from 32 sequences
    of 16 rows (m = 512 >> N) it takes much more. Only the ordering is asserted."""
    def chosen(k, rows):
        X, X_hat, W = layer(100 + seed, m=k * rows)
        return select.select(X, X_hat, W, ptq.Grid.fit(W, 4), sequences=k, lam=None).strength

    assert chosen(4, 6) < chosen(32, 16)


@pytest.mark.parametrize("sequences", [5, 1, 0, -2, True, 2.0, "4",
                                       np.zeros(SEQ * ROWS - 1, int),
                                       np.zeros((SEQ * ROWS, 1), int),
                                       np.repeat(np.arange(SEQ), ROWS).astype(float),
                                       np.zeros(SEQ * ROWS, int)])
def test_bad_sequences_are_named(sequences):
    """An int must be >= 2 and divide m = 192 (5 does not); an array must be (m,) integer
    ids naming at least two sequences."""
    X, X_hat, W = layer(6)
    with pytest.raises(ValueError, match="`sequences`"):
        ptq.qronos(X, X_hat, W, ptq.Grid.fit(W, 4), variant="ls_first", strength="auto",
                   sequences=sequences)


def test_select_is_reachable_as_ptq_select():
    """``ptq.select`` (named in ptq.qronos' docstring) in a fresh interpreter, before
    anything has imported ptq._qronos."""
    code = "import ptq; print(ptq.select.PERCDAMPS, ptq.select.select.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert "select" in out.stdout


def test_singular_fold_is_a_clear_error():
    """lam = 0 with fewer rows per training fold than features: no NaN strength, an error."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 30))
    X_hat = X + 0.1 * rng.standard_normal((20, 30))
    W = rng.standard_normal((30, 4))
    with pytest.raises(ValueError, match="not positive definite at lam=0"):
        ptq.select.select(X, X_hat, W, ptq.Grid.fit(W, 3), sequences=4, lam=0.0)
