r"""The rate-distortion limit of one layer, and how far a quantizer is from it (README section 8).

The distortion of quantizing neuron ``w`` (a column of W, N weights) to ``q`` is the output
error OPTQ controls, ``d(w, q) = ||Xa (w - q)||^2 = (w - q)^T H (w - q)``,
``H = X^T X + lam I``. The source model: the weights of neuron j are ``w_j = mu_j + s_j z``
with ``z`` of i.i.d. entries of unit variance (density ``p_z``), one scale ``s_j`` per
neuron, and every neuron is coded at the same rate ``R`` bits per weight. Two references,
both summed over the n neurons:

* Gaussian, ``z ~ N(0, I)``: the exact reverse-waterfilling distortion of ``s_j^2 H``'s
  eigenvalues ``lam_i``, ``D_G = sum_j s_j^2 sum_i min(theta, lam_i)`` with
  ``sum_i max(0, 1/2 log2(lam_i / theta)) = N R``. When every level is active
  (``theta <= min_i lam_i``) it is the closed form
  ``D_G(R) = N sum_j s_j^2 det(H)^{1/N} 2^{-2R}``. For a given variance the Gaussian has
  the largest rate-distortion function, so ``D_G`` is what the anchor compares with, not a
  lower bound for other weight laws.
* Shannon lower bound: ``D_SLB(R) = N sum_j s_j^2 P_z det(H)^{1/N} 2^{-2R}``, with
  ``P_z = 2^{2 h(z)} / (2 pi e) <= 1`` the entropy power of ``z`` (``h`` in bits): a lower
  bound on the expected distortion of any code of rate ``R`` for this source, at every rate.

``det(H)^{1/N} = prod_t r_t^{2/N}`` (identity I3), so both depend on the data only through
the geometric mean of the ``r_t^2`` (any processing order). "Bits above" a reference is
``1/2 log2(D_measured / D_ref)``: the extra rate that the reference would need to reach the
measured distortion.

``P_z`` is estimated from the layer's standardised pooled weights ``(w_tj - mu_j) / s_j``
(``N n`` samples) with the m-spacing estimator of the differential entropy (`entropy`); its
stated error (`EntropyPower.err_bits`, bits of ``1/2 log2 P_z``) is twice its standard error
from disjoint parts plus the change of the estimate between the parts and the whole (the
size-dependent bias).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.linalg
import scipy.special

from ptq import options
from ptq.rate import code_entropy  # noqa: F401  (re-exported: the rate reported with D)
from theory._factor import as_matrix, factorise

HIGH_RATE_GAP_BITS = 0.5 * math.log2(2 * math.pi * math.e / 12)  # 0.2546: uniform scalar vs SLB


class EntropyPower(NamedTuple):
    """The entropy power of a sample and the stated error of its estimate."""

    h_bits: float  # differential entropy estimate, bits
    power: float  # 2^{2 h} / (2 pi e)
    err_bits: float  # stated error of 1/2 log2(power) (= error of h), bits


class LayerLimit(NamedTuple):
    """Everything the references of one layer need (float64); see the module docstring."""

    N: int
    n: int
    lam: float  # the resolved regularisation of H
    eig: np.ndarray  # (N,) eigenvalues of H, ascending
    log2_gm: float  # (1/N) log2 det H = mean_t log2 r_t^2
    am_gm_bits: float  # 1/2 log2(AM / GM of r_t^2), natural order: equal-step OPTQ's loss
    var: np.ndarray  # (n,) s_j^2, the per-neuron weight variance
    entropy_power: EntropyPower  # of the standardised pooled weights (P_z)

    @property
    def all_active_rate(self) -> float:
        """The smallest rate at which every waterfilling level is active (closed forms exact)."""
        return 0.5 * (self.log2_gm - math.log2(self.eig[0]))

    def gaussian(self, rate) -> float:
        """``D_G(rate)`` of the layer (sum over neurons), exact reverse waterfilling."""
        return float(np.sum(self.var)) * reverse_waterfilling(self.eig, rate)

    def gaussian_closed_form(self, rate) -> float:
        """``N sum_j s_j^2 det(H)^{1/N} 2^{-2 rate}``: equals `gaussian` when all levels are
        active, and is below it otherwise (it is the SLB of Gaussian weights)."""
        return self.N * float(np.sum(self.var)) * 2.0 ** (self.log2_gm - 2.0 * _rate(rate))

    def slb(self, rate) -> float:
        """``D_SLB(rate) = P_z * gaussian_closed_form(rate)``."""
        return self.entropy_power.power * self.gaussian_closed_form(rate)


def _rate(rate) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) \
            or not math.isfinite(rate) or rate < 0:
        raise ValueError(f"`rate` must be a finite number of bits >= 0; got {rate!r}")
    return float(rate)


def reverse_waterfilling(eig, rate) -> float:
    """Per unit variance: ``sum_i min(theta, eig_i)`` with ``sum_i max(0, 1/2 log2(eig_i /
    theta)) = N rate``: the rate-distortion function of ``N(0, diag(eig))`` at ``N rate``
    bits, inverted. ``theta`` is found in closed form on the active set."""
    lam = np.sort(np.asarray(eig, dtype=np.float64))
    if lam.ndim != 1 or lam.size == 0 or not np.all(np.isfinite(lam)) or lam[0] <= 0:
        raise ValueError("`eig` must be a non-empty 1-D array of finite positive eigenvalues; "
                         f"got shape {lam.shape}, min {lam.min() if lam.size else None}")
    R = _rate(rate)
    N = lam.size
    if R == 0:
        return float(np.sum(lam))
    logs = np.log2(lam)
    # active set: the k largest eigenvalues; log2 theta = (sum_{active} log2 lam - 2 N R) / k,
    # consistent when theta <= the smallest active eigenvalue and > the largest inactive one
    for k in range(N, 0, -1):
        act = logs[N - k:]
        log_theta = (np.sum(act) - 2.0 * N * R) / k
        if log_theta <= act[0] + 1e-12 and (k == N or log_theta > logs[N - k - 1] - 1e-12):
            theta = 2.0 ** log_theta
            return float(k * theta + np.sum(lam[:N - k]))
    raise AssertionError("reverse waterfilling found no consistent active set")


def entropy(x, *, m: int | None = None) -> float:
    """The m-spacing estimate of the differential entropy of a 1-D sample, in nats.

    ``h = (1/(s - m)) sum_i log(x_(i+m) - x_(i)) - psi(m) + psi(s + 1)`` for the sorted
    sample ``x_(1) <= ... <= x_(s)``: ``x_(i+m) - x_(i)`` is about ``U_(i+m) - U_(i)`` over the
    density at ``x_(i)``, and ``E log(U_(i+m) - U_(i)) = psi(m) - psi(s + 1)`` for uniform
    order statistics, so the estimate is unbiased for the uniform law and consistent for
    densities that are smooth where the sample lies. ``m = round(sqrt(s))`` by default.
    Tied values (zero spacings) are spread over the resolution of float64 (their log would
    be -inf).
    """
    x = np.sort(np.asarray(x, dtype=np.float64).ravel())
    s = x.size
    if s < 16 or not np.all(np.isfinite(x)):
        raise ValueError(f"`x` must hold at least 16 finite values; got {s}")
    m = max(1, round(math.sqrt(s))) if m is None else int(m)
    if not 1 <= m < s:
        raise ValueError(f"`m` must be in [1, {s - 1}]; got {m}")
    gaps = x[m:] - x[:-m]
    floor = np.finfo(np.float64).eps * max(1.0, float(np.max(np.abs(x))))
    gaps = np.maximum(gaps, floor)
    return float(np.mean(np.log(gaps)) - scipy.special.digamma(m)
                 + scipy.special.digamma(s + 1))


def entropy_power(z, *, parts: int = 8, seed: int = 0) -> EntropyPower:
    """``P = e^{2h} / (2 pi e)`` of the sample ``z`` (h in nats, `entropy`), with its error.

    The stated error, in bits of ``1/2 log2 P`` (= bits of h): ``2 SE + |h - mean_k h_k|``,
    where ``h_k`` are the estimates on ``parts`` disjoint random parts, ``SE = std_k(h_k) /
    sqrt(parts)`` the standard error of the whole-sample estimate, and the second term the
    change from part size to whole size (a bound on the size-dependent bias that remains).
    """
    z = np.asarray(z, dtype=np.float64).ravel()
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 2:
        raise ValueError(f"`parts` must be an integer >= 2; got {parts!r}")
    if z.size < 16 * parts:
        raise ValueError(f"`z` must hold at least {16 * parts} values for {parts} parts; "
                         f"got {z.size}")
    h = entropy(z)
    idx = np.random.default_rng(seed).permutation(z.size)
    hk = np.array([entropy(z[part]) for part in np.array_split(idx, parts)])
    err_nats = 2 * np.std(hk, ddof=1) / math.sqrt(parts) + abs(h - float(np.mean(hk)))
    return EntropyPower(h / math.log(2), math.exp(2 * h) / (2 * math.pi * math.e),
                        float(err_nats / math.log(2)))


def standardise(W) -> tuple[np.ndarray, np.ndarray]:
    """``((W - mu) / s, s^2)`` per neuron (column): the pooled sample of ``z`` and the
    variances; a neuron of constant weights (s = 0) is left out of the sample."""
    W = as_matrix("W", W)
    mu = W.mean(axis=0)
    var = W.var(axis=0)
    live = var > 0
    return ((W[:, live] - mu[live]) / np.sqrt(var[live])), var


def layer_limit(X, W, *, lam: float | None = None, percdamp: float | None = None,
                parts: int = 8) -> LayerLimit:
    """The references of the layer ``X @ W``: H's spectrum, ``det(H)^{1/N}`` from the ``r_t``
    (I3), the per-neuron variances and the entropy power of the standardised weights.

    Args:
      X: (m, N) calibration inputs (the ones the quantizer sees). W: (N, n) weights.
      lam, percdamp: H's regularisation, resolved as `ptq` does (default percdamp 0.01).
      parts: parts of the entropy-power error estimate (`entropy_power`).
    """
    X = as_matrix("X", X)
    W = as_matrix("W", W)
    options.check_layer_shapes(X, W)
    f = factorise(X, lam=lam, percdamp=percdamp)
    H = X.T @ X + f.lam * np.eye(X.shape[1])
    if not np.all(f.live):
        H[np.diag_indices_from(H)] = np.where(np.diag(H) == 0, 1.0, np.diag(H))
    eig = scipy.linalg.eigvalsh(H)
    r2 = f.r**2
    log2_gm = float(np.mean(np.log2(r2)))
    am_gm = 0.5 * (math.log2(float(np.mean(r2))) - log2_gm)
    z, var = standardise(W)
    return LayerLimit(X.shape[1], W.shape[1], f.lam, eig, log2_gm, am_gm, var,
                      entropy_power(z, parts=parts))


def distortion(X, W, Q, *, lam: float) -> float:
    """``sum_j (w_j - q_j)^T H (w_j - q_j)`` with ``H = X^T X + lam I`` (float64)."""
    X, W, Q = as_matrix("X", X), as_matrix("W", W), as_matrix("Q", Q)
    options.check_layer_shapes(X, W)
    if Q.shape != W.shape:
        raise ValueError(f"`Q` must have the shape of W, {W.shape}; got {Q.shape}")
    E = W - Q
    return float(np.sum((X @ E) ** 2) + lam * np.sum(E**2))


def bits_above(measured, reference) -> float:
    """``1/2 log2(measured / reference)``: bits a reference would need to reach ``measured``."""
    if not (measured > 0 and reference > 0):
        raise ValueError(f"`measured` and `reference` must be > 0; got {measured!r}, "
                         f"{reference!r}")
    return 0.5 * math.log2(measured / reference)


def waterfill_l2_bound(c: float, N: int) -> float:
    """B1' for the steps ``delta_t = c / r_t``: ``||Xa (w - q)|| <= (c/2) sqrt(N)`` per neuron
    (no clipping), the same for every layer of N features."""
    return 0.5 * float(c) * math.sqrt(N)


def waterfill_high_rate(c: float, N: int) -> float:
    """High-rate estimate of ``||Xa (w - q)||^2`` per neuron for ``delta_t = c / r_t``:
    ``N c^2 / 12`` (every rounding error uniform on ``[-delta_t/2, delta_t/2]``)."""
    return float(N) * float(c) ** 2 / 12.0
