"""provable-ptq theory: closed-form error bounds for OPTQ, stochastic OPTQ and Qronos.

NumPy/SciPy, float64; never imports JAX (it imports `ptq.options` only, for the one shared
definition of orders and lam). Statements and proofs: theory/README.md. Every ``step`` is a
scalar, one per neuron (n,) or one per weight (N, n) (a group-wise grid; rows in the
original feature order), README section 7. Public API::

    residual_norms(X, ...)                       r_t and M (I3, I4)
    factorise(X, ...)                            the shared factor H = R R^T (Factors)
    optq_l2_bound(X, step, ...)                  B1
    optq_structural_bound(X, step, ...)          B2
    optq_weight_bound(X, W, step, ...)           B3 (and the K that prevents clipping)
    no_clipping(W, weight_bound, step, ...)      B3/S3: can a (group-wise) grid clip?
    stochastic_l2_bound(X, step, ...)            S1
    stochastic_linf_bound(X, step, p=, ...)      S2
    stochastic_weight_bound(X, W, step, p=, ...) S3 (and K)
    qronos_l2_bound(X, X_hat, W, step, variant=, ...)      Q1; Q4 with strength= < 1
    optq_mismatch_l2_bound(X, X_hat, W, step, ...)         Q2
    qronos_linf_bound(X, X_hat, W, step, p=, variant=, ...) Q3
    lam_guidance(X, W, bits=|levels=, ...)       lam minimising B1/S1 subject to B3/S3
    output_errors(X, W, Q, ...), tightness(measured, bound)
    layer_limit(X, W, ...)                       the rate-distortion references (section 8):
                                                 .gaussian(R), .slb(R); bits_above(D, D_ref)
    reverse_waterfilling(eig, R), entropy_power(z), waterfill_l2_bound(c, N)
"""

from theory._factor import Factors, ResidualNorms, factorise, residual_norms
from theory.guidance import LamGuidance, lam_guidance
from theory.measure import OutputErrors, output_errors, tightness
from theory.optq_bounds import (
    StructuralBound,
    WeightBound,
    no_clipping,
    optq_l2_bound,
    optq_structural_bound,
    optq_weight_bound,
)
from theory.qronos_bounds import optq_mismatch_l2_bound, qronos_l2_bound, qronos_linf_bound
from theory.rate_distortion import (
    EntropyPower,
    LayerLimit,
    bits_above,
    entropy_power,
    layer_limit,
    reverse_waterfilling,
    waterfill_l2_bound,
)
from theory.stochastic import stochastic_l2_bound, stochastic_linf_bound, stochastic_weight_bound

__all__ = [
    "EntropyPower",
    "Factors",
    "LayerLimit",
    "LamGuidance",
    "OutputErrors",
    "ResidualNorms",
    "StructuralBound",
    "bits_above",
    "entropy_power",
    "layer_limit",
    "reverse_waterfilling",
    "waterfill_l2_bound",
    "WeightBound",
    "factorise",
    "lam_guidance",
    "no_clipping",
    "optq_l2_bound",
    "optq_mismatch_l2_bound",
    "optq_structural_bound",
    "optq_weight_bound",
    "output_errors",
    "qronos_l2_bound",
    "qronos_linf_bound",
    "residual_norms",
    "stochastic_l2_bound",
    "stochastic_linf_bound",
    "stochastic_weight_bound",
    "tightness",
]
