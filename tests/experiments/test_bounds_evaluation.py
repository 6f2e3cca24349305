"""`experiments.bounds.evaluate`: one factorisation per call, the same numbers as the theory
functions called alone, and failures recorded per bound."""

from __future__ import annotations

import numpy as np
import pytest

import ptq
import theory
from experiments import bounds, data, measure


@pytest.fixture
def problem(rng):
    m, N, n = 96, 40, 7
    X = rng.standard_normal((m, N)) * rng.uniform(0.2, 3.0, N)
    X_hat = X + 0.05 * rng.standard_normal((m, N))
    W = rng.standard_normal((N, n))
    grid = ptq.Grid.fit(W, 4, kind="symmetric", per="neuron")
    step = np.asarray(grid.step, np.float64)
    res = ptq.optq(X_hat, W, ptq.Grid.symmetric(step), percdamp=0.01, order="decreasing_norm")
    Q = np.asarray(res.Q, np.float64)
    measured = measure.measure(data.Layer(X, X_hat, W, "t"), Q, res, step, floors=False)
    return dict(X_f=X_hat, X=X, X_hat=X_hat, W=W, step=step, lam=float(res.lam),
                order=np.asarray(res.order), variant="paper", p=0.05, measured=measured,
                clipped=False, precision="float64")


def test_one_shared_factorisation_same_values(problem, monkeypatch):
    calls = []
    original = theory.factorise

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    names = ["B1", "B2", "B3", "Q2"]
    monkeypatch.setattr(theory, "factorise", counting)
    shared = bounds.evaluate(names, **problem)
    assert len(calls) == 1  # B1, B3 and Q2 all factorise X_hat: once
    monkeypatch.setattr(theory, "factorise", original)
    X_hat, W, step = problem["X_hat"], problem["W"], problem["step"]
    kw = dict(lam=problem["lam"], order=problem["order"])
    alone = {"B1": theory.optq_l2_bound(X_hat, step, **kw),
             "B2": theory.optq_structural_bound(X_hat, step, **kw).bound,
             "B3": theory.optq_weight_bound(X_hat, W, step, **kw).bound,
             "Q2": theory.optq_mismatch_l2_bound(problem["X"], X_hat, W, step, **kw)}
    for name in names:
        assert "error" not in shared[name], shared[name]
        np.testing.assert_allclose(shared[name]["values"], alone[name], rtol=1e-12)
        assert shared[name]["checked"] and shared[name]["violations"] == 0


def test_failed_factorisation_is_recorded_per_bound(problem):
    # lam = 0 with N > m: H is singular, every bound that needs it records the error
    X = problem["X"][:20]
    bad = dict(problem, X_f=X, X=X, X_hat=X, lam=0.0)
    out = bounds.evaluate(["B1", "B3"], **bad)
    for name in ("B1", "B3"):
        assert "positive definite" in out[name]["error"]


@pytest.mark.parametrize("square", [False, True])
def test_group_wise_steps_pass_through(rng, square):
    """An (N, n) step (a group-wise grid, rows in original feature order) reaches the theory
    functions as is: the same values as calling them alone, no violation on a run with those
    steps on the infinite alphabet, and only scalar / per-neuron extras in the record (also
    when N == n, where per-feature fields would have the length of a per-neuron one)."""
    m, N = 60, 24
    n = N if square else 5
    X = rng.standard_normal((m, N)) * rng.uniform(0.2, 3.0, N)
    X_hat = X + 0.05 * rng.standard_normal((m, N))
    W = rng.standard_normal((N, n))
    group = np.arange(N) // 8  # groups of 8 consecutive features, a step per group and neuron
    table = np.stack([np.abs(W[group == g]).max(0) / 7 for g in range(3)])
    step = table[group]
    res = ptq.optq(X_hat, W, ptq.Grid.symmetric(step), percdamp=0.01, order="decreasing_norm")
    Q = np.asarray(res.Q, np.float64)
    measured = measure.measure(data.Layer(X, X_hat, W, "t"), Q, res, step, floors=False)
    kw = dict(lam=float(res.lam), order=np.asarray(res.order))
    names = ["B1", "B2", "B3", "Q2"]
    out = bounds.evaluate(names, X_f=X_hat, X=X, X_hat=X_hat, W=W, step=step, variant="paper",
                          p=0.05, measured=measured, clipped=False, precision="float64", **kw)
    alone = {"B1": theory.optq_l2_bound(X_hat, step, **kw),
             "B2": theory.optq_structural_bound(X_hat, step, **kw).bound,
             "B3": theory.optq_weight_bound(X_hat, W, step, **kw).bound,
             "Q2": theory.optq_mismatch_l2_bound(X, X_hat, W, step, **kw)}
    for name in names:
        assert "error" not in out[name], out[name]
        np.testing.assert_allclose(out[name]["values"], alone[name], rtol=1e-12)
        assert out[name]["checked"] and out[name]["violations"] == 0
    assert set(out["B3"]["extra"]) == {"lam", "levels"} and len(out["B3"]["extra"]["levels"]) == n
    assert set(out["B2"]["extra"]) == {"lam"}
