"""The figure ``allocation``: held-out quality against average bits for three bit allocations.

Left: the held-out cosine of MiniLM quantized by OPTQ with per-layer bits from seed 002's
formula, from the theory (the exact budgeted minimiser of the predicted loss increase) and
uniform bits, against the average bits per weight (median over the calibration seeds, bars
from the lowest to the highest seed). Right: the bits each allocation gives each layer at the
largest budget (first seed), over the layer's sensitivity alpha (log scale, dotted).

Tables: ``figures/allocation.csv`` (one row per seed, allocation and budget: average bits,
quality, predicted and measured calibration loss, seconds, the dynamic override as JSON) and
``figures/allocation_layers.csv`` (one row per seed and layer: weights, sigma^2, alpha at both
noise levels and their ratio, the predicted error at each width, and the bits of every
allocation at every budget).

    python -m experiments.studies.allocation --size default --out figures
"""

from __future__ import annotations

import json
import os

import pandas as pd

from experiments import records
from experiments.figures import style

COLORS = {"uniform": "#7f7f7f", "seed": "#ff7f0e", "theory": "#1f77b4"}
LABELS = {"uniform": "uniform", "seed": "seed 002's formula", "theory": "theory (exact, budgeted)"}


def tables(recs: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    ok = [r for r in recs if r.get("status") == "ok"]
    if not ok:
        raise ValueError("no ok allocation records to draw")
    runs, layers = [], []
    for r in ok:
        seed = r["config"]["seed"]
        bits = {}
        for run in r["runs"]:
            runs.append({"seed": seed, **{k: v for k, v in run.items()
                                          if k not in ("bits", "self_err2", "dynamic")},
                         "dynamic": json.dumps(run["dynamic"], sort_keys=True)})
            bits[f"bits_{run['allocation']}_{run['budget']:g}"] = run["bits"]
        for i, lyr in enumerate(r["layers"]):
            layers.append({"seed": seed, "index": i, **lyr,
                           **{k: v[i] for k, v in bits.items()}})
    return (pd.DataFrame(runs).sort_values(["seed", "allocation", "budget"]).reset_index(drop=True),
            pd.DataFrame(layers))


def build_all(recs: list[dict], out_dir: str = "figures") -> pd.DataFrame:
    t, lay = tables(recs)
    fig, (ax, bx) = style.figure(ncols=2, width=3.6, height=2.8)
    for alloc, g in t.groupby("allocation", sort=False):
        s = g.groupby("budget").agg(x=("avg_bits", "median"), q=("quality", "median"),
                                    lo=("quality", "min"), hi=("quality", "max")).reset_index()
        ax.errorbar(s.x, s.q, yerr=[s.q - s.lo, s.hi - s.q], marker="o", ms=4, capsize=2,
                    lw=1.0, color=COLORS[alloc], label=LABELS[alloc],
                    ls="-" if alloc == "uniform" else "none")
    ax.set_xlabel("average bits per weight")
    ax.set_ylabel("held-out cosine (median over seeds)")
    ax.legend(loc="lower right")
    first = lay[lay.seed == lay.seed.min()]
    top = max(t.budget[t.allocation != "uniform"])
    for alloc in ("seed", "theory"):
        col = f"bits_{alloc}_{top:g}"
        if col in first:
            bx.step(first["index"], first[col], where="mid", color=COLORS[alloc],
                    label=f"{LABELS[alloc]}, {top:g} bits")
    bx.set_xlabel("layer (forward order)")
    bx.set_ylabel("bits")
    bx.set_yticks([2, 3, 4, 8])
    cx = bx.twinx()
    cx.semilogy(first["index"], first["alpha"], ls=":", color="k", lw=0.8)
    cx.set_ylabel("alpha (dotted)")
    bx.legend(loc="upper left")
    style.save(fig, "allocation", t, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    lay.to_csv(os.path.join(out_dir, "allocation_layers.csv"), index=False,
               float_format="%.6g")
    return t


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/default")
    p.add_argument("--out", default="figures")
    a = p.parse_args(argv)
    build_all(records.load_records(os.path.join(a.runs, "allocation")), a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
