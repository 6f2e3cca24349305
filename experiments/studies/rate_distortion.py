r"""Every quantizer against the rate-distortion limit, on every linear layer of MiniLM.

    python -m experiments.studies.rate_distortion  # default: 36 layers, bits 2-4 (~2 min)
    python -m experiments.studies.rate_distortion --size smoke   # 3 layers at 4 bits (seconds)

Per layer (its full-precision calibration input X, m = 2048 tokens, and its weights W) and
per bit-width b, each quantizer's distortion ``D = sum_j ||Xa (w_j - q_j)||^2`` (float64,
``H = X^T X + lam I``, ptq's default damping) is compared with the layer's references
(`theory.rate_distortion`, theory/README.md section 8): the Gaussian reference ``D_G`` and
the Shannon lower bound ``D_SLB``, each at two rates: the fixed rate b and the entropy-coded
rate of the quantizer's own codes (`ptq.rate.code_entropy`, one code table per input feature).
"Bits above" is ``1/2 log2(D / D_ref)``.

The quantizers, on GPTQ's asymmetric b-bit min-max grid per neuron unless said otherwise:

* ``rtn``; ``optq`` (natural order); ``optq_decreasing`` (GPTQ's act_order);
* ``qronos`` (paper variant): here its two inputs are the same X (one layer on its own, no
  earlier quantized layer), where Qronos' correction term vanishes and its codes equal
  OPTQ's; the row is kept as that check;
* ``optq_rotated``: OPTQ after a random orthogonal rotation of the inputs, ``X' = X G``,
  ``W' = G^T W`` (G Haar-distributed, seeded), grid fitted to W'; the output error is the same
  quadratic form, so the references are the layer's own;
* ``waterfill``: `ptq.optq_waterfill`, steps ``c / r_t`` on the infinite alphabet, ``c`` set
  so that its entropy-coded rate equals ``optq``'s at the same b (no fixed rate: ``rate_fixed``
  is empty). Its deterministic bound B1', ``||Xa (w - q)|| <= (c/2) sqrt(N)`` per neuron, is
  checked on every neuron (``violations``, ``tightness`` in the summary).

One record per layer (JSON, atomic, resumable) in ``runs/<size>/rate_distortion/``; the table
``figures/rate_distortion.csv`` and the figure ``figures/rate_distortion.{png,pdf}``
(`experiments.figures.rate_distortion`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from typing import Any, NamedTuple

import numpy as np

import ptq
import theory
from experiments import records
from experiments.figures import rate_distortion as figures
from experiments.measure import record_run
from experiments.models.minilm import activations
from experiments.studies.minilm import LAYER_NAMES, parse_layer
from experiments.study import StudyCommand, load_sizes
from ptq.rate import code_entropy
from theory import rate_distortion as rd

log = logging.getLogger(__name__)

QUANTIZERS = ("rtn", "optq", "optq_decreasing", "qronos", "optq_rotated", "waterfill")
ROTATION_SEED = 0


class Size(NamedTuple):
    layers: tuple[str, ...] | None  # layer names (None: all 36)
    bits: tuple[int, ...]
    tokens: int


SIZES = load_sizes("rate_distortion", Size)  # conf/study/rate_distortion.yaml


def rotation(N: int, seed: int = ROTATION_SEED) -> np.ndarray:
    """A Haar-distributed random orthogonal (N, N) matrix (QR of a Gaussian, signs fixed)."""
    A = np.random.default_rng(seed).standard_normal((N, N))
    Qm, Rm = np.linalg.qr(A)
    return Qm * np.sign(np.diag(Rm))


def _grid(W, bits: int):
    return ptq.Grid.fit(W, bits, kind="asymmetric")


def _symbols(res) -> np.ndarray:
    """Signed grid indices ``codes - zero`` (one symbol per value across neurons)."""
    return np.asarray(res.codes, np.int64) - np.asarray(res.grid.zero, np.float64).astype(np.int64)


def quantize(name: str, X: np.ndarray, W: np.ndarray, bits: int, *,
             rate: float | None = None) -> dict[str, Any]:
    """One quantizer on one layer: ``Q`` (float64, original basis), its symbols, extras."""
    import jax.numpy as jnp

    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if name == "rtn":
        grid = _grid(W, bits)
        res = ptq.rtn(W, grid)._replace(grid=grid)
        Q, sym = np.asarray(res.Q, np.float64), _symbols(res)
    elif name in ("optq", "optq_decreasing"):
        order = "natural" if name == "optq" else "decreasing_norm"
        res = ptq.optq(X, W, _grid(W, bits), order=order)
        Q, sym = np.asarray(res.Q, np.float64), _symbols(res)
    elif name == "qronos":
        res = ptq.qronos(X, X, W, _grid(W, bits), variant="paper")
        Q, sym = np.asarray(res.Q, np.float64), _symbols(res)
    elif name == "optq_rotated":
        G = rotation(W.shape[0])
        Wr = (G.T @ W.astype(np.float64)).astype(np.float32)
        res = ptq.optq((X.astype(np.float64) @ G).astype(np.float32), Wr, _grid(Wr, bits))
        Q, sym = G @ np.asarray(res.Q, np.float64), _symbols(res)
    elif name == "waterfill":
        if rate is None:
            raise ValueError("`rate` is needed for the waterfill quantizer; got None")
        wf = ptq.optq_waterfill(jnp.asarray(X), jnp.asarray(W), rate=rate)
        Q, sym = np.asarray(wf.result.Q, np.float64), np.asarray(wf.result.codes, np.int64)
        extra = {"c": wf.c, "searched": len(wf.history)}
    else:
        raise ValueError(f"`name` must be one of {QUANTIZERS}; got {name!r}")
    return {"Q": Q, "symbols": sym, "seconds": time.perf_counter() - t0, **extra}


def layer_rows(layer: str, X: np.ndarray, W: np.ndarray, bits: tuple[int, ...]) -> list[dict]:
    """The table rows of one layer: every quantizer at every bit-width."""
    L = theory.layer_limit(X, W)
    base = {"layer": layer, "N": L.N, "n": L.n, "lam": L.lam, "am_gm_bits": L.am_gm_bits,
            "entropy_power": L.entropy_power.power,
            "entropy_power_err_bits": L.entropy_power.err_bits,
            "all_active_rate": L.all_active_rate}
    rows = []
    for b in bits:
        optq_rate = None
        for q in QUANTIZERS:
            out = quantize(q, X, W, b, rate=optq_rate)
            D = rd.distortion(X, W, out["Q"], lam=L.lam)
            r_ent = code_entropy(out["symbols"], per="row")
            if q == "optq":
                optq_rate = r_ent
            row = {**base, "bits": b, "quantizer": q, "distortion": D,
                   "rate_fixed": np.nan if q == "waterfill" else float(b),
                   "rate_entropy": r_ent, "seconds": out["seconds"]}
            for tag, R in (("fixed", row["rate_fixed"]), ("entropy", r_ent)):
                if np.isnan(R):
                    row.update({f"d_gaussian_{tag}": np.nan, f"d_slb_{tag}": np.nan,
                                f"above_gaussian_{tag}": np.nan, f"above_slb_{tag}": np.nan})
                    continue
                dg, ds = L.gaussian(R), L.slb(R)
                row.update({f"d_gaussian_{tag}": dg, f"d_slb_{tag}": ds,
                            f"above_gaussian_{tag}": rd.bits_above(D, dg),
                            f"above_slb_{tag}": rd.bits_above(D, ds)})
            if q == "waterfill":
                E = W.astype(np.float64) - out["Q"]
                per = np.sqrt(np.sum((X.astype(np.float64) @ E) ** 2, axis=0)
                              + L.lam * np.sum(E**2, axis=0))
                bound = rd.waterfill_l2_bound(out["c"], L.N)
                row.update({"c": out["c"], "bound_b1": bound,
                            "violations": int(np.sum(per > bound * (1 + 1e-4))),
                            "tightness": float(np.median(per / bound)),
                            "high_rate": float(L.n * rd.waterfill_high_rate(out["c"], L.N))})
            rows.append(row)
    return rows


class RateDistortionStudy(StudyCommand):
    """The study as `experiments.reproduce` runs it (``sizes``, ``run_and_build``)."""

    key = "rate_distortion"
    figures = staticmethod(figures.build_all)
    label = "rate_distortion"
    description = "Every quantizer against the rate-distortion limit on MiniLM."
    in_default_reproduce = False  # `--only rate_distortion` at default size (the budget)
    sizes = SIZES

    def layer_names(self, size: Size) -> tuple[str, ...]:
        if size.layers is None:
            return LAYER_NAMES
        unknown = sorted(set(size.layers) - set(LAYER_NAMES))
        if unknown:
            raise ValueError(f"`layers` must be MiniLM layer names; got {unknown}")
        return size.layers

    def run_study(self, size_name: str, folder: str) -> int:
        size = self.size(size_name)
        names = self.layer_names(size)
        fp = None
        ran = 0
        for i, name in enumerate(names, 1):
            cfg = {"study": self.key, "layer": name, "bits": list(size.bits),
                   "tokens": size.tokens, "quantizers": list(QUANTIZERS),
                   "rotation_seed": ROTATION_SEED}
            path = os.path.join(folder, f"{name}-{records.run_id(cfg)}.json")
            old = records.read(path)
            if old is not None and old.get("status") == "ok":
                continue
            if fp is None:
                fp = activations.full_precision(size.tokens)
                params = activations.model().params
            layer, kind = _parse(name)
            W = np.asarray(params["layers"][layer][kind][0])
            rec = record_run(path, cfg,
                             functools.partial(_rows, name, fp.inputs[name], W, size.bits),
                             label=f"rate_distortion {name}")
            ran += 1
            log.info("[rate_distortion %d/%d] %s: %s (%.1fs)", i, len(names), name,
                     rec["status"], rec["wall_s"]["total"])
        return ran

    def summarize(self, folder: str, ids: set[str] | None = None) -> dict[str, Any]:
        """Rows, errors, violations (B1' exceeded by waterfilling, plus the rows below the SLB
        by more than the entropy-power estimate's error, also counted alone as ``below_slb``)
        and the median B1' tightness."""
        recs = self.load(folder, ids)
        ok = [r for r in recs if r["status"] == "ok"]
        rows = [row for r in ok for row in r["rows"]]
        wf = [row for row in rows if row["quantizer"] == "waterfill"]
        below = sum(1 for row in rows for t in ("fixed", "entropy")
                    if row[f"above_slb_{t}"] == row[f"above_slb_{t}"]  # not NaN
                    and row[f"above_slb_{t}"] < -row["entropy_power_err_bits"])
        return {"runs": len(ok), "errors": len(recs) - len(ok),
                "violations": int(sum(row["violations"] for row in wf)) + below,
                "prob_violation_rate": np.nan, "p": np.nan,
                "median_tightness": float(np.median([row["tightness"] for row in wf]))
                if wf else np.nan, "below_slb": below}


def _rows(name: str, X: np.ndarray, W: np.ndarray, bits: tuple[int, ...]) -> dict:
    """The body of one layer's record: its `layer_rows`."""
    return {"rows": layer_rows(name, X, W, bits)}


def _parse(name: str) -> tuple[int, str]:
    return parse_layer(name)


STUDY = RateDistortionStudy()
main = STUDY.main

if __name__ == "__main__":
    sys.exit(main())
