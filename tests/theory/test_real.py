"""Bounds on data the tests were not designed on: real all-MiniLM-L6-v2 activations and weights.

Layer 0's attention output projection: X is (256, 384) (N > m, so lam matters and B2's
N > m form applies), W its real (384, 384) weights, 16 neurons. X_hat is X with its
activations rounded to a 6-bit per-tensor grid (a quantized previous layer).
"""

import jax
import numpy as np
import pytest

import ptq
import theory

pytestmark = pytest.mark.model
SLACK = 1 + 1e-9  # float64 rounding of the measured error


@pytest.fixture(scope="module")
def layer():
    activations = pytest.importorskip("experiments.models.minilm.activations")
    fp = activations.full_precision(256)
    name = "encoder.layer.0.attention.output.dense"
    X = np.asarray(fp.inputs[name], dtype=np.float64)
    W = np.asarray(activations.model().params["layers"][0]["attn_out"][0], dtype=np.float64)[:, :16]
    s = np.abs(X).max() / 31
    X_hat = s * np.round(X / s)
    return X, X_hat, W


@pytest.mark.parametrize("order", ["natural", "decreasing_norm"])
def test_real_layer_bounds(layer, order):
    X, X_hat, W = layer
    opts = dict(percdamp=0.01, order=order)
    grid = ptq.Grid.fit(W, 4)
    step = np.asarray(grid.step, dtype=np.float64)
    f = theory.factorise(X, **opts)
    res = ptq.optq(X, W, ptq.Grid.symmetric(step), **opts)
    meas = theory.output_errors(X, np.asarray(res.W_start), np.asarray(res.Q), lam=res.lam)
    b1 = theory.optq_l2_bound(X, step, factors=f, **opts)
    assert np.all(meas.augmented <= b1 * SLACK)
    assert np.all(b1 <= theory.optq_structural_bound(X, step, breakpoints=8, **opts).bound * SLACK)
    b3 = theory.optq_weight_bound(X, W, step, factors=f, **opts)
    assert np.all(np.asarray(res.w_max) <= b3.bound * SLACK)
    sres = ptq.optq(X, W, ptq.Grid.symmetric(step), rounding="stochastic",
                    key=jax.random.key(0), **opts)
    slinf = theory.output_errors(X, np.asarray(sres.W_start), np.asarray(sres.Q)).linf
    # p = 1e-6 per neuron: a false failure (16 neurons) has probability <= 1.6e-5 if S2 is right
    assert np.all(slinf <= theory.stochastic_linf_bound(X, step, p=1e-6, factors=f, **opts))
    fh = theory.factorise(X_hat, **opts)
    for variant in ("paper", "ls_first"):
        q = ptq.qronos(X, X_hat, W, ptq.Grid.symmetric(step), variant=variant, **opts)
        mq = theory.output_errors(X, W, np.asarray(q.Q), X_hat=X_hat, lam=q.lam)
        q1 = theory.qronos_l2_bound(X, X_hat, W, step, variant=variant, factors=fh, **opts)
        assert np.all(mq.augmented <= q1 * SLACK)
    o = ptq.optq(X_hat, W, ptq.Grid.symmetric(step), **opts)
    mo = theory.output_errors(X, W, np.asarray(o.Q), X_hat=X_hat)
    q2 = theory.optq_mismatch_l2_bound(X, X_hat, W, step, factors=fh, **opts)
    assert np.all(mo.l2 <= q2 * SLACK)
