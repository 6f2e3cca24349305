"""Figure mismatch: Qronos, OPTQ and RTN as the input mismatch ``X_hat - X`` grows.

The error is the layer's, ``||X w - X_hat q||`` (mean over neurons and seeds). Q1 bounds
Qronos, Q2 bounds OPTQ run on X_hat ignoring the mismatch; both contain the floor
``E_LS``, which no quantizer (nor a real-valued re-fit) can beat. The floor drawn is the
plain ``min_v ||X w - X_hat v||`` (lam = 0), a lower bound for every method.
"""

from __future__ import annotations

import pandas as pd

from experiments.figures import common, style

NAME = "mismatch"
ALGORITHMS = ["rtn", "optq", "qronos", "qronos_ls"]


def table(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(algorithm=df["cfg.algorithm.name"], mismatch=df["cfg.data.mismatch"],
                   Q1=common.col(df, "bound.Q1"), Q2=common.col(df, "bound.Q2"),
                   floor=common.col(df, "e_ls0").fillna(0.0))
    g = df.groupby(["algorithm", "mismatch"], as_index=False)
    return g.agg(err2=("err2", "mean"), Q1=("Q1", "mean"), Q2=("Q2", "mean"),
                 floor=("floor", "mean"), runs=("id", "nunique"))


def build(df: pd.DataFrame, out_dir: str = "figures") -> pd.DataFrame:
    t = table(df)
    fig, (ax,) = style.figure(width=4.4, height=3.1)
    for alg in ALGORITHMS:
        s = t[t.algorithm == alg].sort_values("mismatch")
        if not s.empty:
            ax.plot(s.mismatch, s.err2, "o-", color=style.COLORS[alg], label=style.LABELS[alg])
    for alg, bound in (("qronos", "Q1"), ("optq", "Q2")):
        s = t[t.algorithm == alg].sort_values("mismatch")
        if not s.empty:
            ax.plot(s.mismatch, s[bound], "--", color=style.COLORS[bound],
                    label=f"{bound} ({style.LABELS[alg]})")
    fl = t.groupby("mismatch", as_index=False)["floor"].mean()
    ax.plot(fl.mismatch, fl.floor, ":", color=style.COLORS["floor"], label=r"floor $E_{LS}$")
    ax.set_yscale("log")
    ax.set_xlabel(r"mismatch $\|\hat X - X\|$ / rms(X), per entry")
    ax.set_ylabel(r"$\|Xw - \hat X q\|$ per neuron (mean)")
    ax.legend(loc="best", ncol=2)
    style.save(fig, NAME, t, out_dir)
    return t


if __name__ == "__main__":
    common.cli(NAME, build)
