"""The QAT-against-PTQ figure and table, from the records of `experiments.studies.qat`.

* ``figures/qat.csv``: one row per (method, bits, seed, scale): ``method``, ``bits``,
  ``gamma`` (the output scale applied: ``none``, ``gamma``, ``gamma_channel``, ``ls``,
  ``ls_channel``), ``seed``, ``quality`` (mean held-out cosine), ``seconds`` (the method's
  wall time; a scale's own pass is in ``scale_seconds``), ``peak_mb``, and for QAT the
  calibration loss before and after training and the fraction of weights whose code changed.
* ``figures/qat.png/pdf``: left, quality against bits, median over seeds with the range as
  error bars, solid unscaled and dashed with gamma; right, at 2 and 3 bits, quality against
  the method's seconds (log), every seed a point.
* ``figures/qat_summary.csv``: medians and ranges over seeds per (method, bits, scale), the
  numbers the README table quotes.

    python -m experiments.figures.qat --runs runs/default/qat --out figures

Nothing is recomputed here.
"""

from __future__ import annotations

import argparse
import logging
import os

import numpy as np
import pandas as pd

from experiments import records
from experiments.figures import style

COLORS = {"rtn": "#7f7f7f", "optq": "#1f77b4", "qronos": "#d62728", "qat_rtn": "#2ca02c",
          "qat_optq": "#9467bd", "qat_qronos": "#ff7f0e"}
LABELS = {"rtn": "RTN", "optq": "OPTQ", "qronos": "Qronos", "qat_rtn": "QAT from RTN",
          "qat_optq": "QAT from OPTQ", "qat_qronos": "QAT from Qronos"}
COLUMNS = ["method", "bits", "gamma", "seed", "quality", "seconds", "scale_seconds",
           "peak_mb", "steps", "loss_initial", "loss_final", "codes_changed"]


def table(recs: list[dict]) -> pd.DataFrame:
    """One row per (record, scale variant); ``gamma == "none"`` is the unscaled model."""
    rows = []
    for r in recs:
        if r.get("status") != "ok":
            continue
        c = r["config"]
        base = {"method": c["name"], "bits": c["bits"], "seed": c["seed"],
                "seconds": r["seconds"], "peak_mb": r["peak_mb"], "steps": c.get("steps", 0),
                "loss_initial": r.get("loss_initial", np.nan),
                "loss_final": r.get("loss_final", np.nan),
                "codes_changed": r.get("codes_changed", np.nan)}
        rows.append({**base, "gamma": "none", "quality": r["cosine_mean"],
                     "scale_seconds": 0.0})
        for v, s in r.get("scaled", {}).items():
            rows.append({**base, "gamma": v, "quality": s["cosine_mean"],
                         "scale_seconds": s["seconds"]})
    t = pd.DataFrame(rows, columns=COLUMNS)
    order = {m: i for i, m in enumerate(COLORS)}
    return t.sort_values(["bits", "method", "gamma", "seed"],
                         key=lambda s: s.map(order) if s.name == "method" else s,
                         kind="stable").reset_index(drop=True)


def summary(t: pd.DataFrame) -> pd.DataFrame:
    """Median, min and max over seeds of quality, seconds and peak memory."""
    g = t.groupby(["method", "bits", "gamma"], sort=False)
    out = g.agg(seeds=("seed", "size"), quality=("quality", "median"),
                quality_min=("quality", "min"), quality_max=("quality", "max"),
                seconds=("seconds", "median"), peak_mb=("peak_mb", "median"))
    return out.reset_index()


def build_all(recs: list[dict], out_dir: str) -> pd.DataFrame:
    t = table(recs)
    if t.empty:
        raise ValueError("no successful qat records")
    s = summary(t)
    os.makedirs(out_dir, exist_ok=True)
    s.to_csv(os.path.join(out_dir, "qat_summary.csv"), index=False, float_format="%.6g")
    fig, axes = style.figure(ncols=2, width=3.8)
    for method, g in s.groupby("method", sort=False):
        for scale, ls in (("none", "-"), ("gamma", "--")):
            h = g[g.gamma == scale].sort_values("bits")
            if h.empty:
                continue
            err = np.vstack([h.quality - h.quality_min, h.quality_max - h.quality])
            axes[0].errorbar(h.bits, h.quality, yerr=err, color=COLORS.get(method), ls=ls,
                             marker="o", capsize=2,
                             label=LABELS.get(method, method) + (" + gamma" if scale != "none"
                                                                 else ""))
    axes[0].set_xlabel("bits")
    axes[0].set_ylabel("held-out cosine (median over seeds)")
    axes[0].set_xticks(sorted(s.bits.unique()))
    axes[0].legend(loc="upper left", ncol=2, fontsize=6)
    u = t[(t.gamma == "none") & t.bits.isin([2, 3])]
    for (method, bits), g in u.groupby(["method", "bits"], sort=False):
        axes[1].scatter(g.seconds, g.quality, color=COLORS.get(method),
                        marker="o" if bits == 2 else "^", s=14,
                        label=f"{LABELS.get(method, method)}, {bits} bits")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("method wall time [s] (2 cores)")
    axes[1].set_ylabel("held-out cosine")
    axes[1].set_title("circles 2 bits, triangles 3 bits")
    style.save(fig, "qat", t, out_dir)
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="runs/default/qat")
    parser.add_argument("--out", default="figures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_all(records.load_records(args.runs), args.out)


if __name__ == "__main__":
    main()
