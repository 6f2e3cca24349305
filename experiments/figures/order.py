"""Figure order: OPTQ error and the bounds B1, B2 for each feature order.

With N > m and small lam, B2 keeps only the last m processed columns, so processing in
decreasing norm (GPTQ's act_order) gives the smallest structural bound; heavy-tailed column
norms make the effect visible. Heavy tails make the scale vary by orders of magnitude from
one data seed to the next, so bars are geometric means over seeds of the per-run mean over
neurons, on a log axis; whiskers span the smallest and largest per-seed value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from experiments.figures import common, style
from ptq import options

NAME = "order"
ORDERS = options.ORDERS  # bars in this order


def table(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(B1=common.col(df, "bound.B1"), B2=common.col(df, "bound.B2"),
                   order=df["cfg.algorithm.order"])
    per_run = df.groupby(["m", "N", "order", "id"], as_index=False)[["err2_aug", "B1", "B2"]].mean()
    g = per_run.groupby(["m", "N", "order"], as_index=False)
    gmean = lambda v: float(np.exp(np.log(v).mean()))  # noqa: E731
    spec = {}
    for key in ("err2_aug", "B1", "B2"):
        spec.update({key: (key, gmean), f"{key}_min": (key, "min"), f"{key}_max": (key, "max")})
    return g.agg(runs=("id", "nunique"), **spec)


def build(df: pd.DataFrame, out_dir: str = "figures") -> pd.DataFrame:
    t = table(df)
    shapes = sorted(t[["m", "N"]].drop_duplicates().itertuples(index=False), key=lambda s: s.m)
    fig, axes = style.figure(ncols=len(shapes))
    for ax, (m, N) in zip(axes, shapes):
        s = t[(t.m == m) & (t.N == N)].set_index("order")
        orders = [o for o in ORDERS if o in s.index]
        x = np.arange(len(orders))
        for k, (key, label) in enumerate([("err2_aug", "OPTQ (measured)"), ("B1", "B1"),
                                          ("B2", "B2")]):
            color = style.COLORS["optq" if key == "err2_aug" else key]
            ax.bar(x + (k - 1) * 0.27, s.loc[orders, key], 0.27,
                   yerr=[s.loc[orders, key] - s.loc[orders, f"{key}_min"],
                         s.loc[orders, f"{key}_max"] - s.loc[orders, key]],
                   color=color, label=label, log=True,
                   capsize=2, error_kw={"lw": 0.8})
        ax.set_xticks(x, [{"decreasing_norm": "decreasing", "increasing_norm": "increasing"}
                          .get(o, o) for o in orders], fontsize=7.5)
        ax.set_title(common.shape_title(m, N))
        ax.set_ylabel("error per neuron")
    axes[0].legend(loc="best")
    style.save(fig, NAME, t, out_dir)
    return t


if __name__ == "__main__":
    common.cli(NAME, build)
