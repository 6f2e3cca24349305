"""Figure lam_sweep: OPTQ's error and the bounds B1, B2 against lam, for N > m and m > N.

B1 ``(delta/2) sqrt(sum_t r_t^2)`` grows with lam; B2 (structural, column norms only) is
close to B1 when N < m and, when N > m, falls to the last m columns' norms as lam -> 0.
Plotted: means over neurons and data seeds of the augmented error
``sqrt(||X(w-q)||^2 + lam ||w-q||^2)`` (what B1/B2 bound), the plain ``||X(w-q)||``, B1, B2.
"""

from __future__ import annotations

import pandas as pd

from experiments.figures import common, style

NAME = "lam_sweep"


def table(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(B1=common.col(df, "bound.B1"), B2=common.col(df, "bound.B2"))
    g = df.groupby(["m", "N", "lam"], as_index=False)
    return g.agg(err2=("err2_self", "mean"), err2_aug=("err2_aug", "mean"), B1=("B1", "mean"),
                 B2=("B2", "mean"), runs=("id", "nunique"))


def build(df: pd.DataFrame, out_dir: str = "figures") -> pd.DataFrame:
    t = table(df)
    shapes = sorted(t[["m", "N"]].drop_duplicates().itertuples(index=False), key=lambda s: s.m)
    fig, axes = style.figure(ncols=len(shapes))
    for ax, (m, N) in zip(axes, shapes):
        s = t[(t.m == m) & (t.N == N)].sort_values("lam")
        ax.loglog(s.lam, s.B2, "--", color=style.COLORS["B2"], label="B2 (structural)")
        ax.loglog(s.lam, s.B1, "-", color=style.COLORS["B1"], label="B1 (data-dependent)")
        ax.loglog(s.lam, s.err2_aug, "o-", color=style.COLORS["optq"],
                  label=r"OPTQ, $\sqrt{\|X(w-q)\|^2+\lambda\|w-q\|^2}$")
        ax.loglog(s.lam, s.err2, "s:", color=style.COLORS["optq"], mfc="none",
                  label=r"OPTQ, $\|X(w-q)\|$")
        ax.set_title(common.shape_title(m, N))
        ax.set_xlabel(r"$\lambda$")
        ax.set_ylabel("error per neuron (mean)")
    axes[0].legend(loc="best")
    style.save(fig, NAME, t, out_dir)
    return t


if __name__ == "__main__":
    common.cli(NAME, build)
