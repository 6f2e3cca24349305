"""Waterfilling OPTQ (`ptq.optq_waterfill`, theory/README.md section 8): steps c / r_t.

Checked exactly (float64): every rounding error obeys |e_t| r_t <= c / 2, identity I3 holds
with these per-weight steps, the bound B1' = (c/2) sqrt(N) holds on every neuron and equals
`theory.optq_l2_bound` with the same (N, n) step, the search meets its rate, and bad arguments
fail with their names.
"""

import math

import numpy as np
import pytest

import ptq
import theory
from theory import rate_distortion as rd


def _case(seed=0, m=96, N=24, n=40):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, N)) * np.exp(rng.standard_normal(N))
    return X, rng.laplace(size=(N, n))


@pytest.mark.parametrize("order", ["natural", "decreasing_norm"])
@pytest.mark.parametrize("rate", [1.5, 3.0, 5.0])
def test_steps_identity_and_bound(order, rate):
    X, W = _case()
    wf = ptq.optq_waterfill(X, W, rate=rate, order=order, tol=0.01)
    res = wf.result
    assert abs(wf.rate - rate) <= 0.01
    assert wf.rate == pytest.approx(ptq.rate.code_entropy(np.asarray(res.codes)), abs=1e-12)
    r = np.asarray(res.r)
    e = np.asarray(res.e)
    assert np.all(np.abs(e) * r[:, None] <= wf.c / 2 * (1 + 1e-12))  # |e_t| <= delta_t / 2
    step = np.asarray(res.grid.step)
    np.testing.assert_allclose(step[np.asarray(res.order), 0] * r, wf.c, rtol=1e-12)
    E = W - np.asarray(res.Q)
    per = np.sum((X @ E) ** 2, axis=0) + res.lam * np.sum(E**2, axis=0)
    np.testing.assert_allclose(per, np.sum(e**2 * r[:, None] ** 2, axis=0), rtol=1e-9)  # I3
    bound = rd.waterfill_l2_bound(wf.c, W.shape[0])
    assert np.all(np.sqrt(per) <= bound * (1 + 1e-12))
    b1 = theory.optq_l2_bound(X, step, order=order)
    np.testing.assert_allclose(b1, bound, rtol=1e-9)


def test_high_rate_estimate():
    X, W = _case(1, m=200, N=32, n=800)
    wf = ptq.optq_waterfill(X, W, rate=6.0)
    E = W - np.asarray(wf.result.Q)
    per = np.sum((X @ E) ** 2, axis=0) + wf.result.lam * np.sum(E**2, axis=0)
    # uniform errors: mean N c^2 / 12, to the spread of 800 neurons' sums of 32 uniforms
    assert np.mean(per) == pytest.approx(rd.waterfill_high_rate(wf.c, 32), rel=0.03)


def test_bad_arguments():
    X, W = _case()
    with pytest.raises(ValueError, match="`rate`"):
        ptq.optq_waterfill(X, W, rate=0.0)
    with pytest.raises(ValueError, match="`per`"):
        ptq.optq_waterfill(X, W, rate=2.0, per="column")
    with pytest.raises(ValueError, match="max_iter=1"):
        ptq.optq_waterfill(X, W, rate=2.0, max_iter=1, tol=1e-9)
    with pytest.raises(ValueError, match="`c`"):
        ptq._waterfill.waterfill_steps(np.ones(3), np.arange(3), -1.0)
    with pytest.raises(ValueError, match="`r`"):
        ptq._waterfill.waterfill_steps(np.zeros(3), np.arange(3), 1.0)
    assert math.isfinite(ptq.optq_waterfill(X, W, rate=2.0).c)
