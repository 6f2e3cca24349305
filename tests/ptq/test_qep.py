"""QEP (arXiv:2504.09629) as qwix 0.1.8 implements it is ptq.qronos(variant="ls_first",
strength=a, percdamp=0.01), in float64 (x64 from tests/conftest.py).

qwix's ``qep_core.weight_correct`` computes ``W + a W H_delta H^{-1}`` with
``H = X_hat^T X_hat + damp I``, ``H_delta = (X - X_hat)^T X_hat`` and
``damp = damping_factor * mean diag(X_hat^T X_hat)`` (its layout: activations
(in_features, samples), weights (out, in) = our W.T). Transposed, that is
``w + a Hh^{-1} X_hat^T (X - X_hat) w = w + a (wt - w)``: our start ``w_a`` with
``lam = percdamp * mean diag(X_hat^T X_hat)``. Then QEP runs GPTQ (``gptq_core.quantize_weight``)
on the corrected weights with ``H``, which is OPTQ on X_hat from ``w_a``: our run.

The GPTQ stage is compared code for code on qwix's grid: its symmetric absmax per-row
quantizer (``HowToQuantize(qtype=int4, channelwise_axes=(0,))``, as
`experiments.bench.peers.qwix_runner`) has ``scale = max_j |W_c[i, j]| / 7.5`` (the
corrected weights', computed before any GPTQ update), round half to even and a saturating
cast to int4's codes [-8, 7]: ``ptq.Grid(step=scale, zero=0, qmin=-8, qmax=7)``, except at
exact ties (we round ties up). Every column after the first is updated by the error feedback,
so on random float64 data only the first column could hold an exact tie (``w / scale = ±7.5``
where a row's max |w| lies there); the test makes that column small and checks it.

qwix is in the test extra (pinned to 0.1.8): a missing qwix is an error here, not a skip.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import ptq

try:
    from qwix._src.core import qarray
    from qwix.contrib import gptq_core, qep_core
except ImportError as err:  # pragma: no cover - the test extra installs it
    raise ImportError(
        "qwix (0.1.8) is required by tests/ptq/test_qep.py and listed in the `test` extra: "
        "pip install -e '.[test]'"
    ) from err

M, N, NN = 64, 10, 6
STRENGTHS = (0.25, 0.5, 1.0)


def layer(seed=0, dead=()):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((M, N)) * np.exp(0.3 * rng.standard_normal(N))
    X_hat = X + 0.3 * X.std(axis=0) * rng.standard_normal((M, N))
    X[:, list(dead)] = 0.0
    X_hat[:, list(dead)] = 0.0
    W = rng.standard_normal((N, NN))
    W[0] *= 0.1  # the first column never holds a row's max |w| (no exact tie there)
    return X, X_hat, W


def qep_correct(X, X_hat, W, a):
    """qwix's corrected weights, (N, n) (transposed back to our layout)."""
    stats = qep_core.compute_qep_stats(jnp.asarray(X_hat.T), jnp.asarray(X.T))
    Wc = qep_core.weight_correct(jnp.asarray(W.T), stats["hessian"], stats["hessian_delta"],
                                 correction_factor=a, damping_factor=0.01)
    assert Wc.dtype == jnp.float64
    return np.asarray(Wc).T, stats["hessian"]


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("a", STRENGTHS)
def test_weight_correct_is_the_start_w_a(a):
    X, X_hat, W = layer()
    Wc, _ = qep_correct(X, X_hat, W, a)
    ours = ptq.qronos(X, X_hat, W, ptq.Grid.fit(W, 4), variant="ls_first", strength=a,
                      percdamp=0.01)
    d = rel(np.asarray(ours.W_start), Wc)
    assert d <= 1e-6, d  # measured 2e-16 to 7e-16 (qwix 0.1.8, CPU)


@pytest.mark.parametrize("a", STRENGTHS)
def test_qep_pipeline_equals_ours_code_for_code(a):
    X, X_hat, W = layer()
    Wc, H = qep_correct(X, X_hat, W, a)
    how = qarray.HowToQuantize(qtype=jnp.int4, channelwise_axes=(0,))
    q, _ = gptq_core.quantize_weight(jnp.asarray(Wc.T), H, how, blocksize=128, percdamp=0.01)
    scale = np.asarray(q.scale)[:, 0]  # (n,): max |W_c| of each neuron / 7.5
    np.testing.assert_allclose(scale, np.abs(Wc).max(axis=0) / 7.5, rtol=1e-15)
    assert np.all(np.abs(Wc[0]) < np.abs(Wc).max(axis=0))  # no exact tie at the first column
    grid = ptq.Grid(jnp.asarray(scale), jnp.zeros(NN), jnp.asarray(-8.0), jnp.asarray(7.0))
    ours = ptq.qronos(X, X_hat, W, grid, variant="ls_first", strength=a, percdamp=0.01)
    codes = np.asarray(q.qvalue).astype(np.int64).T
    assert np.any(codes == -8) or np.any(codes == 7)  # the ends of the range are reached
    np.testing.assert_array_equal(np.asarray(ours.codes), codes)
    deq = np.asarray(qarray.dequantize(q)).T
    d = rel(np.asarray(ours.Q), deq)
    assert d <= 1e-6, d  # measured 0 (the same codes times the same scale)


@pytest.mark.parametrize("a", [0.5])
def test_dead_features_differ_only_where_x_hat_cannot_see(a):
    """A feature dead in X and X_hat: qwix zeroes its weight (w'_t = 0, no correction), we
    start it at w'_t + a (wt_t - w'_t) = a w_t (the ridge row's fit wt_t = w_t). The live
    weights agree, and X_hat W_start is the same. (A feature dead in X_hat only differs more:
    qwix then corrects towards X w' instead of the target X w.)"""
    dead = [4]
    X, X_hat, W = layer(1, dead=dead)
    Wc, _ = qep_correct(X, X_hat, W, a)
    ours = np.asarray(ptq.qronos(X, X_hat, W, ptq.Grid.fit(W, 4), variant="ls_first",
                                 strength=a, percdamp=0.01).W_start)
    live = np.ones(N, bool)
    live[dead] = False
    assert rel(ours[live], Wc[live]) <= 1e-6
    np.testing.assert_array_equal(Wc[dead], 0.0)
    np.testing.assert_allclose(ours[dead], a * W[dead], rtol=1e-12)
    assert rel(X_hat @ ours, X_hat @ Wc) <= 1e-6

