"""Which bounds of THEORY.md section 4 apply to a run, and how each is evaluated and checked.

Each entry of `BOUNDS` names a `theory` function, the measured quantity it bounds (a key of
the run's ``measured`` dict, see `experiments.run.measure`) and the kind of guarantee:

* ``deterministic``: must hold for every neuron whenever no rounding clipped; a violation is a
  failure of the theory or the code (the reproduce table requires 0).
* ``probability``: holds with probability at least 1 - p per neuron; the sweep reports the
  violation rate, which should stay below p.
* ``expectation``: bounds a root mean square over seeds (S1, ``sqrt(E[err2_aug^2])``);
  checked on the aggregate by `experiments.reproduce`, never per run.

B1, B2, Q1 and Q2 bound the augmented error ``sqrt(||.||^2 + lam ||w - q||^2)`` (I2, I5), so
that is what they are checked against; it is at least the plain output error.

The `theory` functions are called with the resolved ``lam`` and the explicit permutation the
algorithm used (``Result.order``), so bound and measurement always describe the same run.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any, NamedTuple

import numpy as np

log = logging.getLogger(__name__)

# Relative slack of a check: measurements and bounds are both float64 sums of O(N m) terms,
# so 1e-9 covers their round-off with a wide margin; float32 runs compare float32 weights.
RTOL = {"float64": 1e-9, "float32": 1e-4}

# Fields of a theory return value that are per neuron, (n,), and go into the record's extras
# with the scalars. The others are per feature (N,) or per weight (N, n) (growth, the update
# norms, B3/S3's deviation, B2's r_sq_bound and s); they are left out, also when N == n, where
# their length alone would make them look per neuron.
PER_NEURON_EXTRAS = frozenset({"levels"})


class Spec(NamedTuple):
    name: str  # THEORY.md label
    function: str  # theory.<function>
    measured: str  # key of the measured dict it bounds
    kind: str  # deterministic | probability | expectation
    pair: bool = False  # takes (X, X_hat): a mismatch bound; else the factorised matrix alone


BOUNDS: dict[str, Spec] = {
    "B1": Spec("B1", "optq_l2_bound", "err2_aug", "deterministic"),
    "B2": Spec("B2", "optq_structural_bound", "err2_aug", "deterministic"),
    "B3": Spec("B3", "optq_weight_bound", "w_max", "deterministic"),
    "S1": Spec("S1", "stochastic_l2_bound", "err2_aug", "expectation"),
    "S2": Spec("S2", "stochastic_linf_bound", "errinf_self", "probability"),
    "S3": Spec("S3", "stochastic_weight_bound", "w_max", "probability"),
    "Q1": Spec("Q1", "qronos_l2_bound", "err2_pair_aug", "deterministic", pair=True),
    "Q2": Spec("Q2", "optq_mismatch_l2_bound", "err2_pair_aug", "deterministic", pair=True),
    "Q3": Spec("Q3", "qronos_linf_bound", "errinf", "probability", pair=True),
    "Q4": Spec("Q4", "qronos_l2_bound", "err2_pair_aug", "deterministic", pair=True),
}


def applicable(method: str, rounding: str, mismatched: bool, strength: float = 1.0) -> list[str]:
    """Names of the bounds that speak about this algorithm's output (THEORY.md section 4;
    Q4: Qronos' least-squares-first form at a strength below 1, theory/README.md section 5)."""
    if method == "optq" and rounding == "nearest":
        return ["B1", "B2", "B3"] + (["Q2"] if mismatched else [])
    if method == "optq":
        return ["S1", "S2", "S3"]
    if method == "qronos" and rounding == "nearest":
        return ["Q1"] if strength == 1 else ["Q4"]
    if method == "qronos":
        return ["Q3"]
    return []  # rtn: no error feedback, no bound here


def _theory():
    try:
        return importlib.import_module("theory")
    except ImportError:  # the theory package is written alongside; runs still record errors
        return None


def _call(fn, arrays: dict[str, np.ndarray], options: dict[str, Any]):
    """Call a theory function with the positional arrays and options its signature names."""
    params = inspect.signature(fn).parameters
    args = [arrays[p] for p in params if p in arrays and params[p].kind in
            (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    kwargs = {k: v for k, v in options.items() if k in params}
    return fn(*args, **kwargs)


def _split(ret) -> tuple[np.ndarray, dict[str, Any]]:
    """The per-neuron bound of a theory return value, and its scalar and per-neuron fields
    (`PER_NEURON_EXTRAS`)."""
    if hasattr(ret, "_fields"):
        fields = ret._asdict()
        key = "bound" if "bound" in fields else ret._fields[0]
        value = fields.pop(key)
        extra = {k: _jsonable(v) for k, v in fields.items()
                 if np.ndim(v) == 0 or k in PER_NEURON_EXTRAS}
        return np.asarray(value, dtype=np.float64), extra
    return np.asarray(ret, dtype=np.float64), {}


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist() if v.size <= 4096 else f"<array {v.shape}>"
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)


class _Shared:
    """`theory.factorise` of each factorised matrix, computed once per `evaluate` call.

    A failed factorisation gives None, so that each bound factorises again and records the
    error itself."""

    def __init__(self, theory, lam, order):
        self.theory, self.lam, self.order, self.cache = theory, lam, order, []

    def factors(self, A):
        for B, f in self.cache:
            if B is A or (B.shape == A.shape and np.array_equal(B, A)):
                return f
        try:
            f = self.theory.factorise(A, lam=self.lam, order=self.order)
        except Exception:  # noqa: BLE001 (re-raised, and recorded, by the bound that needs it)
            f = None
        self.cache.append((A, f))
        return f


def evaluate(names: list[str], *, X_f, X, X_hat, W, step, lam, order, variant, p,
             measured: dict[str, np.ndarray], clipped: bool, precision: str,
             strength: float = 1.0) -> dict[str, dict]:
    """Evaluate each named bound and compare it with the measurement it bounds.

    Args:
      X_f: (m, N) the matrix the algorithm factorised (X for OPTQ without mismatch, X_hat
        otherwise); the OPTQ bounds B1-B3 and S1-S3 are about ``X_f (w - q)``.
      X, X_hat: (m, N) the two inputs of the mismatch bounds Q1-Q3. W: (N, n) weights.
      step: the grid step delta, passed to the theory functions as is: a scalar, (n,) per
        neuron, or (N, n) per weight (group-wise grids; rows in the original feature order,
        theory/README.md section 7). lam: resolved ridge. order: (N,) permutation.
      variant: Qronos variant for Q1. p: failure probability of S2, S3, Q3.
      strength: Qronos' correction strength (Q3, Q4; 1 is full correction).
      measured: per-neuron measurements (`experiments.run.measure`).
      clipped: whether any rounding clipped (then no-clipping bounds are not checked).

    Returns:
      ``{name: {values, measured, kind, checked, violations, ratio_median, ratio_max, extra}}``;
      a bound whose theory function is missing or raises gets ``{"error": message}``.
    """
    theory = _theory()
    out: dict[str, dict] = {}
    rtol = RTOL[precision]
    shared = _Shared(theory, lam, order)
    for name in names:
        spec = BOUNDS[name]
        fn = getattr(theory, spec.function, None) if theory is not None else None
        if fn is None:
            out[name] = {"error": f"theory.{spec.function} is not available", "kind": spec.kind}
            continue
        arrays = {"X": X if spec.pair else X_f, "X_hat": X_hat, "W": W, "step": step}
        # every bound factorises X_f (B*, S*) or X_hat (Q*): one factorisation each, shared
        options = {"lam": lam, "order": order, "p": p, "variant": variant,
                   "strength": strength}
        if "factors" in inspect.signature(fn).parameters:
            options["factors"] = shared.factors(X_hat if spec.pair else X_f)
        try:
            bound, extra = _split(_call(fn, arrays, options))
        except Exception as exc:  # recorded, never hidden: the record says which bound failed
            log.exception("bound %s failed", name)
            out[name] = {"error": f"{type(exc).__name__}: {exc}", "kind": spec.kind}
            continue
        n = measured[spec.measured].shape[0]
        bound = np.broadcast_to(bound, (n,)).astype(np.float64)
        value = measured[spec.measured]
        ratio = np.divide(value, bound, out=np.full_like(bound, np.nan), where=bound > 0)
        violated = value > bound * (1 + rtol) + 1e-300
        # No-clipping bounds say nothing about a run that clipped (THEORY.md section 4).
        checked = spec.kind != "expectation" and not clipped
        out[name] = {
            "values": bound.tolist(),
            "measured": spec.measured,
            "kind": spec.kind,
            "checked": bool(checked),
            "violations": int(violated.sum()) if checked else 0,
            "ratio_median": float(np.nanmedian(ratio)) if np.isfinite(ratio).any() else None,
            "ratio_max": float(np.nanmax(ratio)) if np.isfinite(ratio).any() else None,
            "extra": extra,
        }
    return out
