"""B2 explains act_order: with N > m and small lam, decreasing-norm order has the smaller
structural bound, and the measured errors follow.

"Follow" is measured as the mean over 200 neurons (independent Gaussian w, same step) of
||X (w - q)||^2, for each of three data seeds: decreasing-norm < increasing-norm in every seed.
"""

import numpy as np
import pytest
from theory_data import make_X

import ptq
import theory


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decreasing_norm_order_beats_increasing_with_N_gt_m(seed):
    rng = np.random.default_rng(seed)
    m, N, n = 12, 40, 200
    X = make_X(rng, m, N, spread=1.0)  # generic: every m columns span R^m
    W = rng.standard_normal((N, n))
    step = 0.05
    opts = dict(percdamp=1e-5)
    b2 = {o: theory.optq_structural_bound(X, step, order=o, **opts)
          for o in ("decreasing_norm", "increasing_norm")}
    assert b2["decreasing_norm"].bound < b2["increasing_norm"].bound
    # as lam -> 0 only the last m processed columns count: that part dominates here
    tail = b2["decreasing_norm"].r_sq_bound[N - m :].sum()
    assert tail > 0.5 * b2["decreasing_norm"].r_sq_bound.sum()
    mean_sq = {}
    for o in b2:
        res = ptq.optq(X, W, ptq.Grid.symmetric(step), order=o, **opts)
        meas = theory.output_errors(X, W, np.asarray(res.Q))
        assert np.all(meas.l2 <= b2[o].bound * (1 + 1e-9))
        mean_sq[o] = np.mean(meas.l2**2)
    assert mean_sq["decreasing_norm"] < mean_sq["increasing_norm"]
    # B1 (data-dependent) orders them the same way
    b1 = {o: theory.optq_l2_bound(X, step, order=o, **opts) for o in b2}
    assert b1["decreasing_norm"] < b1["increasing_norm"]
