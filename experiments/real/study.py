"""The real-model study: whole-encoder sequential runs behind the three ``real_*`` figures.

    python -m experiments.real.study                 # default size, records in runs/default/real
    python -m experiments.real.study --size smoke    # about a minute: 4 bits only
    python -m experiments.real.study --size full     # every algorithm's bounds at bits 2-8

Two passes, each one whole-encoder run (`sequential.quantize_encoder`, float32, calibration
on ``tokens`` tokens, cosine on held-out text) per configuration and bit-width:

* ``practical``: GPTQ's asymmetric min-max grid per neuron, what practitioners deploy. The
  grid clips, so the no-clipping bounds do not apply; these runs give the end-to-end cosine
  (figure ``real_cosine``) and the per-layer errors behind the Qronos gain (``real_gain``).
* ``bounds``: the symmetric max-abs step of the same bit-width on the infinite alphabet
  ``step * Z`` (nothing clips), float64 (the exact algorithms the theorems are about), with
  every applicable bound of THEORY.md section 4 evaluated on every layer
  (`experiments.real.theory_bounds`): violations and tightness (figure ``real_bounds``).

One JSON record per (pass, configuration, bits), written atomically; a recorded run is
skipped, so an interrupted study resumes, and a failed run is written as an ``error`` record
with its traceback and the study goes on. Records keep per-layer summaries only (a few KB).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import time
import traceback
from typing import Any, NamedTuple

import numpy as np

from experiments import console_logging, records
from experiments.real.bounds import P_DEFAULT

log = logging.getLogger(__name__)

# name -> quantize_encoder options (the figures' legend names; colours in figures.style).
CONFIGS: dict[str, dict[str, Any]] = {
    "rtn": dict(algorithm="rtn"),
    "optq": dict(algorithm="optq"),
    "optq_decreasing": dict(algorithm="optq", order="decreasing_norm"),
    "optq_stochastic": dict(algorithm="optq", rounding="stochastic"),
    "qronos": dict(algorithm="qronos", variant="paper"),
    "qronos_ls": dict(algorithm="qronos", variant="ls_first"),
    "qronos_stochastic": dict(algorithm="qronos", variant="paper", rounding="stochastic"),
}
PASSES = {
    "practical": dict(grid="asymmetric", finite=True, precision="float32"),
    "bounds": dict(grid="symmetric", finite=False, precision="float64"),
}


class Size(NamedTuple):
    bits: tuple[int, ...]  # bit-widths of the practical pass
    bounds_bits: tuple[int, ...]  # bit-widths of the bounds pass
    tokens: int  # calibration rows m (>= 1536 keeps B2 in its cheap N <= m form)
    heldout: int | None  # held-out sequences for the cosine (None: all 177)
    practical: tuple[str, ...]  # configurations of each pass
    bounds: tuple[str, ...]


_BITS = tuple(range(2, 9))
_PRACTICAL = ("rtn", "optq", "optq_decreasing", "optq_stochastic", "qronos", "qronos_ls")
_CHECKED = tuple(c for c in CONFIGS if c != "rtn")  # RTN has no bound
# Wall time on 2 cores: smoke about 1 min; default about 6 min (42 practical runs of ~5 s,
# 8 bounds runs of ~13 s), inside reproduce's 10-minute budget; full about 17 min.
SIZES = {
    "smoke": Size((4,), (4,), 2048, 16, ("rtn", "optq", "qronos"), ("optq", "qronos")),
    "default": Size(_BITS, (2, 3, 4, 8), 2048, 64, _PRACTICAL, ("optq", "qronos")),
    "full": Size(_BITS, _BITS, 2048, 64, _PRACTICAL, _CHECKED),
}


def config(pass_: str, name: str, bits: int, size: Size, seed: int = 0) -> dict[str, Any]:
    """The record's config: everything that changes a number (hashed into the file name)."""
    return {"name": name, "pass": pass_, "bits": bits, "tokens": size.tokens,
            "heldout": size.heldout, "seed": seed, **PASSES[pass_], **CONFIGS[name]}


def _bound_summary(checked: dict[str, dict], measured: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per bound of one layer: Frobenius norms over neurons of measurement and bound, and
    the check (violations, tightness)."""
    out = {}
    for b, v in checked.items():
        if "values" not in v:
            out[b] = {"error": v.get("error", "no values"), "kind": v.get("kind")}
            continue
        vals = np.asarray(v["values"], float)
        meas = np.asarray(measured[v["measured"]], float)
        ratio = meas / vals
        out[b] = {"kind": v["kind"], "measured": v["measured"], "checked": bool(v["checked"]),
                  "violations": int(v["violations"]),
                  "bound_fro": float(np.sqrt(np.sum(vals**2))),
                  "measured_fro": float(np.sqrt(np.sum(meas**2))),
                  "ratio_median": float(np.median(ratio)), "ratio_max": float(np.max(ratio))}
    return out


def _bounds_hook(ctx) -> dict[str, Any]:
    """``on_layer`` of the bounds pass: every applicable bound, summarised per layer."""
    from experiments.real import theory_bounds

    tb = theory_bounds(ctx)
    return {"clipped": tb["clipped"], "bounds": _bound_summary(tb["bounds"], tb["measured"])}


def compute(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration; the body of its record (raises on failure)."""
    import jax

    from experiments.real import quantize_encoder

    opts = {k: cfg[k] for k in ("grid", "finite", "order", "rounding", "variant", "seed")
            if k in cfg}
    hook = _bounds_hook if cfg["pass"] == "bounds" else None

    x64 = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", cfg["precision"] == "float64")
    try:
        res = quantize_encoder(cfg["algorithm"], cfg["bits"], n_tokens=cfg["tokens"],
                               n_heldout=cfg["heldout"], on_layer=hook, **opts)
    finally:
        jax.config.update("jax_enable_x64", x64)
    layers = []
    for r in res.records:
        row = {k: r[k] for k in ("name", "layer", "kind", "m", "N", "n", "lam", "seconds",
                                 "rel_err", "input_mismatch")}
        row["err2_fro"] = float(np.sqrt(np.sum(np.asarray(r["err2"]) ** 2)))
        if "e_ls" in r:
            row["e_ls_fro"] = float(np.sqrt(np.sum(np.asarray(r["e_ls"]) ** 2)))
        for k in ("clipped", "bounds"):
            if k in r:
                row[k] = r[k]
        layers.append(row)
    return {"cosine_mean": res.cosine_mean, "cosine_min": float(res.cosine.min()),
            "heldout_n": int(res.cosine.size), "layers": layers,
            "wall_s": {"quantize": res.seconds}}


def run_one(cfg: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Skip if recorded, else compute and write the record (an error record on failure)."""
    from experiments.run import versions

    path = os.path.join(out_dir, f"{cfg['pass']}-{cfg['name']}-{cfg['bits']}b-"
                                 f"{records.run_id(cfg)}.json")
    old = records.read(path)
    if old is not None and old.get("status") == "ok":
        return dict(old, skipped=True)
    record: dict[str, Any] = {"id": records.run_id(cfg), "config": cfg, "versions": versions(),
                              "created": datetime.datetime.now(datetime.UTC).isoformat()}
    t0 = time.perf_counter()
    try:
        record.update(compute(cfg), status="ok")
    except Exception as exc:  # the study goes on; the record keeps the traceback
        log.error("%s %s %d bits failed: %s: %s", cfg["pass"], cfg["name"],
                  cfg["bits"], type(exc).__name__, exc)
        record.update(status="error", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc())
    record.setdefault("wall_s", {})["total"] = time.perf_counter() - t0
    records.write_atomic(path, record)
    return record


def configs(size: str) -> list[dict[str, Any]]:
    if size not in SIZES:
        raise ValueError(f"`size` must be one of {sorted(SIZES)}; got {size!r}")
    s = SIZES[size]
    bits = {"practical": s.bits, "bounds": s.bounds_bits}
    return [config(p, name, b, s) for p in PASSES for b in bits[p] for name in getattr(s, p)]


def run_study(size: str, out_dir: str) -> tuple[int, float]:
    """Every configuration of ``size`` into ``out_dir``; returns (runs done now, seconds)."""
    todo = configs(size)
    t0 = time.perf_counter()
    ran = 0
    for i, cfg in enumerate(todo, 1):
        t1 = time.perf_counter()
        rec = run_one(cfg, out_dir)
        if rec.get("skipped"):
            continue
        ran += 1
        log.info("[real %d/%d] %-8s %-17s %d bits: %s, cosine %.4f (%.0fs)", i, len(todo),
                 cfg["pass"], cfg["name"], cfg["bits"], rec["status"],
                 rec.get("cosine_mean", float("nan")), time.perf_counter() - t1)
    return ran, time.perf_counter() - t0


def load(out_dir: str) -> list[dict[str, Any]]:
    """Every record of a study folder (ok and error)."""
    recs = [records.read(f) for f in records.record_files([out_dir])]
    return [r for r in recs if r is not None]


def summarize(out_dir: str) -> dict[str, Any]:
    """The reproduce table's row: runs, errors, violations of the deterministic bounds, the
    violation rate of the probability-(1-p) ones, and the median tightness (per layer, the
    median over neurons of measured / bound), over every checked layer of the bounds pass."""
    recs = load(out_dir)
    ok = [r for r in recs if r["status"] == "ok"]
    det = prob = prob_n = 0
    ratios = []
    for r in ok:
        for layer in r["layers"]:
            for b in layer.get("bounds", {}).values():
                if "violations" not in b:
                    det += b.get("kind") == "deterministic"  # a bound that failed to evaluate
                    continue
                if not b["checked"]:
                    continue
                ratios.append(b["ratio_median"])
                if b["kind"] == "deterministic":
                    det += b["violations"]
                elif b["kind"] == "probability":
                    prob += b["violations"]
                    prob_n += layer["n"]
    return {"runs": len(ok), "errors": len(recs) - len(ok), "violations": det,
            "prob_violation_rate": prob / prob_n if prob_n else np.nan,
            "p": P_DEFAULT if prob_n else np.nan,
            "median_tightness": float(np.median(ratios)) if ratios else np.nan}


def run_and_build(size: str, folder: str, out_dir: str | None) -> tuple[int, dict[str, Any]]:
    """The study of ``size`` into ``folder``, its figures into ``out_dir`` (None: none; a
    figure that fails is logged, the records stay), and `summarize`; returns (runs done now,
    summary). What `experiments.reproduce` and this module's command line both run."""
    ran, _ = run_study(size, folder)
    if out_dir is not None:
        try:
            from experiments.figures import real as real_figures

            real_figures.build_all(load(folder), out_dir)
        except Exception:
            log.exception("the real-model figures failed")
    return ran, summarize(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the real-model study and its figures.")
    parser.add_argument("--size", default="default", choices=sorted(SIZES))
    parser.add_argument("--runs", default="runs", help="records root (runs/<size>/real)")
    parser.add_argument("--out", default="figures", help="figure folder")
    args = parser.parse_args(argv)
    console_logging()
    _, s = run_and_build(args.size, f"{args.runs}/{args.size}/real", args.out)
    print(s)
    return int(s["violations"] > 0 or s["errors"] > 0)


if __name__ == "__main__":
    sys.exit(main())
