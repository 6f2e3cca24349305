"""Figure tightness: measured / bound across data families and algorithms.

One box per bound and data family over all neurons, seeds and algorithms the bound applies
to (B1-B3 and Q2 for OPTQ, S2 and S3 for stochastic OPTQ, Q1 for Qronos). A ratio <= 1 means
the bound held; near 1 means it is tight. Deterministic bounds are shown only for runs that
did not clip; S1 (an expectation) is checked on means over seeds, not drawn here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from experiments.figures import common, style

NAME = "tightness"
BOUNDS = ["B1", "B2", "B3", "Q2", "S2", "S3", "Q1", "Q3"]


def table(df: pd.DataFrame) -> pd.DataFrame:
    parts = []
    for b in BOUNDS:
        if f"ratio.{b}" not in df:
            continue
        d = df[df[f"checked.{b}"].astype(bool) & df[f"ratio.{b}"].notna()]
        parts.append(pd.DataFrame({"bound": b, "family": d["cfg.data.family"],
                                   "algorithm": d["cfg.algorithm.name"], "ratio": d[f"ratio.{b}"]}))
    long = pd.concat(parts, ignore_index=True)
    return long.groupby(["bound", "family", "algorithm"], as_index=False)["ratio"].describe()


def build(df: pd.DataFrame, out_dir: str = "figures") -> pd.DataFrame:
    t = table(df)
    families = [f for f in style.FAMILIES if f in set(df["cfg.data.family"])]
    bounds = [b for b in BOUNDS if b in set(t.bound)]
    fig, (ax,) = style.figure(width=6.8, height=3.0)
    width = 0.8 / max(len(families), 1)
    cmap = {"gaussian": "#1f77b4", "low_rank": "#2ca02c", "heavy_tailed": "#d62728",
            "correlated": "#9467bd", "npz": "#7f7f7f", "real": "#ff7f0e"}
    for k, fam in enumerate(families):
        data, pos = [], []
        for i, b in enumerate(bounds):
            col = f"ratio.{b}"
            d = df[(df["cfg.data.family"] == fam) & df.get(f"checked.{b}", False).astype(bool)]
            vals = d[col].dropna().to_numpy() if col in d else np.array([])
            if vals.size:
                data.append(vals)
                pos.append(i + (k - (len(families) - 1) / 2) * width)
        if data:
            bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True,
                            showfliers=False, manage_ticks=False)
            for box in bp["boxes"]:
                box.set(facecolor=cmap.get(fam, "#999999"), alpha=0.7)
            ax.plot([], [], "s", color=cmap.get(fam, "#999999"), label=fam)
    ax.axhline(1.0, color="k", lw=1, ls="--")
    ax.set_xticks(range(len(bounds)), bounds)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("measured / bound")
    ax.legend(loc="lower left", ncol=len(families))
    style.save(fig, NAME, t, out_dir)
    return t


if __name__ == "__main__":
    common.cli(NAME, build)
