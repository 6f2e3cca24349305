"""The rate-distortion references (theory/README.md section 8) against direct computations.

* reverse waterfilling equals an independent bisection on the water level over the
  eigenvalues of H (eigendecomposition), at rates where every level is active and where some
  are not; the closed form N sigma^2 det(H)^{1/N} 2^{-2R} equals it exactly above
  `LayerLimit.all_active_rate` and lies below it under;
* det(H)^{1/N} from the r_t (identity I3) equals the eigenvalues' geometric mean;
* the m-spacing entropy power is within its stated error of the exact value on laws of known
  entropy;
* on Gaussian weights, no quantizer drawn by hypothesis measures below D_G(R) at its own
  entropy-coded rate at high rate (R about 5 bits) beyond TOL_BITS, and waterfilling OPTQ and
  equal-step OPTQ sit where the high-rate analysis puts them.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ptq
import theory
from theory import rate_distortion as rd

# Allowed shortfall below D_G on Gaussian weights, bits: the estimated rate's residual bias
# (Miller-Madow leaves O(K / s^2)), the per-neuron variances estimated from N samples
# (1/2 log2(N / (N - 1)) <= 0.023 bit at N >= 32) and finite-sample spread of D.
TOL_BITS = 0.05
# The high-rate predictions hold to this many bits at R ~ 5 (rounding errors uniform).
HIGH_RATE_BITS = 0.06


def _water_level_bisection(eig, rate):
    """Independent reverse waterfilling: bisection on theta, D = sum min(theta, eig)."""
    lo, hi = 0.0, float(np.max(eig))
    for _ in range(200):
        th = 0.5 * (lo + hi)
        R = np.sum(np.maximum(0.0, 0.5 * np.log2(eig / th))) / eig.size
        lo, hi = (th, hi) if R > rate else (lo, th)
    th = 0.5 * (lo + hi)
    return float(np.sum(np.minimum(th, eig)))


def _layer(rng, m, N, n, spread=1.0):
    X = rng.standard_normal((m, N)) * np.exp(spread * rng.standard_normal(N))
    X = X @ (np.eye(N) + 0.3 * rng.standard_normal((N, N)) / math.sqrt(N))
    return X, rng.standard_normal((N, n))


@pytest.mark.parametrize("rate", [0.05, 0.3, 1.0, 2.0, 4.0, 8.0])
def test_reverse_waterfilling_equals_bisection(rng, rate):
    eig = np.exp(2.0 * rng.standard_normal(24))
    assert rd.reverse_waterfilling(eig, rate) == pytest.approx(
        _water_level_bisection(eig, rate), rel=1e-9)
    assert rd.reverse_waterfilling(eig, 0.0) == pytest.approx(eig.sum(), rel=1e-12)


def test_closed_form_exact_when_all_levels_active(rng):
    X, W = _layer(rng, 200, 20, 12, spread=1.5)
    L = theory.layer_limit(X, W)
    H = X.T @ X + L.lam * np.eye(20)
    eig = np.linalg.eigh(H)[0]
    assert L.log2_gm == pytest.approx(np.mean(np.log2(eig)), abs=1e-9)  # I3: prod r_t^2 = det H
    np.testing.assert_allclose(L.eig, eig, rtol=1e-9)
    Ra = L.all_active_rate
    assert Ra > 0
    for R in (Ra, Ra + 0.5, Ra + 3.0):
        assert L.gaussian(R) == pytest.approx(L.gaussian_closed_form(R), rel=1e-9)
        assert L.gaussian(R) == pytest.approx(
            np.sum(L.var) * _water_level_bisection(eig, R), rel=1e-9)
    for R in (0.1, 0.5 * Ra):
        assert L.gaussian(R) > L.gaussian_closed_form(R)  # some levels inactive
    P = L.entropy_power.power
    assert L.slb(Ra + 1) == pytest.approx(P * L.gaussian_closed_form(Ra + 1), rel=1e-12)


@pytest.mark.parametrize("law,h_nats", [
    ("normal", 0.5 * math.log(2 * math.pi * math.e)),
    ("laplace", 1.0 + math.log(2.0)),  # scale 1
    ("uniform", 0.0),  # on [0, 1]
    ("student5", None),
])
def test_entropy_power_within_stated_error(law, h_nats):
    rng = np.random.default_rng(1)
    s = 60_000
    z = {"normal": rng.standard_normal, "laplace": lambda k: rng.laplace(size=k),
         "uniform": rng.random,
         "student5": lambda k: rng.standard_t(5, k)}[law](s)
    if h_nats is None:  # Student t with 5 degrees of freedom, closed form
        from scipy import stats
        h_nats = float(stats.t(5).entropy())
    est = theory.entropy_power(z)
    err = abs(est.h_bits - h_nats / math.log(2))
    assert err <= est.err_bits, (law, err, est.err_bits)
    assert est.err_bits < 0.06  # the stated error is informative at this size


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="`rate`"):
        rd.reverse_waterfilling([1.0, 2.0], -1.0)
    with pytest.raises(ValueError, match="`eig`"):
        rd.reverse_waterfilling([1.0, 0.0], 1.0)
    with pytest.raises(ValueError, match="`x`"):
        rd.entropy(np.ones(3))
    with pytest.raises(ValueError, match="`measured`"):
        rd.bits_above(0.0, 1.0)
    with pytest.raises(ValueError, match="`per`"):
        ptq.rate.code_entropy(np.zeros((2, 2), int), per="column")


def test_code_entropy_known_distributions():
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 16, size=(8, 20_000))
    assert ptq.rate.code_entropy(codes) == pytest.approx(4.0, abs=2e-3)
    assert ptq.rate.code_entropy(codes, per="layer") == pytest.approx(4.0, abs=1e-3)
    # rows on different supports: one table per row needs 1 bit, a pooled table 2 bits
    two = np.stack([rng.integers(0, 2, 50_000), 2 + rng.integers(0, 2, 50_000)])
    assert ptq.rate.code_entropy(two) == pytest.approx(1.0, abs=2e-3)
    assert ptq.rate.code_entropy(two, per="layer") == pytest.approx(2.0, abs=2e-3)


@settings(max_examples=8)
@given(seed=st.integers(0, 2**31 - 1), N=st.integers(32, 56), spread=st.floats(0.0, 1.5),
       rate=st.floats(4.5, 5.5))
def test_gaussian_weights_never_below_gaussian_reference(seed, N, spread, rate):
    rng = np.random.default_rng(seed)
    X, W = _layer(rng, 4 * N, N, 2048, spread)
    L = theory.layer_limit(X, W)
    if rate < L.all_active_rate + 0.5:
        rate = L.all_active_rate + 0.5  # high rate: every level active
    wf = ptq.optq_waterfill(X, W, rate=rate)
    runs = {"waterfill": (np.asarray(wf.result.Q), np.asarray(wf.result.codes))}
    # equal steps at the rate's high-rate step for unit-variance Gaussian weights
    step = 2.0 ** (0.5 * math.log2(2 * math.pi * math.e) - rate)
    grid = ptq.Grid.symmetric(step)
    for name, res in (("optq", ptq.optq(X, W, grid)), ("rtn", ptq.rtn(W, grid))):
        runs[name] = (np.asarray(res.Q), np.asarray(res.codes))
    above = {}
    for name, (Q, codes) in runs.items():
        D = rd.distortion(X, W, Q, lam=L.lam)
        R = ptq.rate.code_entropy(codes)
        above[name] = rd.bits_above(D, L.gaussian(R))
        assert above[name] >= -TOL_BITS, (name, above[name])
    assert abs(above["waterfill"] - rd.HIGH_RATE_GAP_BITS) <= HIGH_RATE_BITS, above
    assert abs(above["optq"] - rd.HIGH_RATE_GAP_BITS - L.am_gm_bits) <= HIGH_RATE_BITS, above
