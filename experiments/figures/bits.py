"""Figure bits: error against bit-width for RTN and OPTQ, with B1 and B2.

"OPTQ, b-bit grid" uses the finite symmetric grid (K = 2^(b-1) - 1, delta = max|w|/K) and may
clip (hollow markers: some rounding clipped, so no bound is claimed for that run);
"OPTQ, no range" keeps the same step with the infinite alphabet, where B1 and B2 apply.
"""

from __future__ import annotations

import pandas as pd

from experiments.figures import common, style

NAME = "bits"


def table(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(B1=common.col(df, "bound.B1"), B2=common.col(df, "bound.B2"),
                   bits=df["cfg.grid.bits"], finite=df["cfg.grid.finite"].astype(bool),
                   algorithm=df["cfg.algorithm.name"], clipped=df["clipped"].astype(bool))
    runs = df.groupby("id").first()  # `clipped` is per run
    clip = runs.groupby(["algorithm", "finite", "bits"])["clipped"].sum().rename("clipped_runs")
    g = df.groupby(["algorithm", "finite", "bits"], as_index=False)
    t = g.agg(err2=("err2", "mean"), B1=("B1", "mean"), B2=("B2", "mean"), runs=("id", "nunique"))
    return t.merge(clip.reset_index(), on=["algorithm", "finite", "bits"])


def build(df: pd.DataFrame, out_dir: str = "figures") -> pd.DataFrame:
    t = table(df)
    fig, (ax,) = style.figure(width=4.2, height=3.0)
    rtn = t[(t.algorithm == "rtn") & t.finite].sort_values("bits")
    ax.semilogy(rtn.bits, rtn.err2, "^-", color=style.COLORS["rtn"], label="RTN")
    for finite, marker, label in [(True, "o", "OPTQ, b-bit grid"), (False, "s", "OPTQ, no range")]:
        s = t[(t.algorithm == "optq") & (t.finite == finite)].sort_values("bits")
        if s.empty:
            continue
        ax.semilogy(s.bits, s.err2, marker + ("-" if finite else ":"), color=style.COLORS["optq"],
                    mfc="none" if not finite else None, label=label)
        clip = s[s.clipped_runs > 0]
        if finite and not clip.empty:
            ax.semilogy(clip.bits, clip.err2, "o", mfc="white", mec=style.COLORS["optq"],
                        ms=7, label="clipped (no bound claimed)")
    bnd = t[(t.algorithm == "optq")].groupby("bits", as_index=False)[["B1", "B2"]].mean()
    ax.semilogy(bnd.bits, bnd.B1, "-", color=style.COLORS["B1"], label="B1")
    ax.semilogy(bnd.bits, bnd.B2, "--", color=style.COLORS["B2"], label="B2")
    ax.set_xlabel("bits b")
    ax.set_ylabel(r"$\|X(w-q)\|$ per neuron (mean)")
    ax.legend(loc="best")
    style.save(fig, NAME, t, out_dir)
    return t


if __name__ == "__main__":
    common.cli(NAME, build)
