"""Figure lam_guidance: the lam trade-off and the lam `theory.lam_guidance` chooses.

(a) Error against lam: OPTQ's measured augmented error and B1 at the b-bit step (B1 grows
with lam), and the guidance curve: B1 at the smallest step for which B3 guarantees that the
K-level grid never clips (rms over neurons; infinite where no step works).
(b) Weight growth beyond ``||w||_inf`` in units of delta (independent of the step), which
shrinks like 1/sqrt(lam): measured ``(max_t |w(t)| - ||w||_inf) / delta``, B3's
``(B3 - ||w||_inf) / delta`` (max over neurons) and the guidance's ``max_j c_j / 2``; a K-level
grid with the adaptive step is feasible where the latter is below K.
The chosen lam (minimum of the guidance curve) is the dashed vertical line.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from experiments.figures import common, style

NAME = "lam_guidance"


def _guidance(df: pd.DataFrame) -> dict:
    """The guidance stored in the first record of the first data seed (it is per layer)."""
    first = df.sort_values(["cfg.data.seed", "lam"]).iloc[0]
    with open(first["file"]) as f:
        return json.load(f)["guidance"] | {"data_seed": int(first["cfg.data.seed"])}


def table(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    g = _guidance(df)
    d = df[df["cfg.data.seed"] == g["data_seed"]]
    step = d["w_max"] / d["w_max_over_step"]
    d = d.assign(growth=(d["w_max"] - d["w_inf"]) / step,
                 growth_B3=(d["bound.B3"] - d["w_inf"]) / step)
    t = d.groupby("lam", as_index=False).agg(
        err2_aug=("err2_aug", "mean"), B1=("bound.B1", "mean"), growth=("growth", "max"),
        growth_B3=("growth_B3", "max"), runs=("id", "nunique"))
    t["data_seed"] = g["data_seed"]
    return t, g


def build(df: pd.DataFrame, out_dir: str = "figures") -> pd.DataFrame:
    t, g = table(df)
    n = int(df["n"].iloc[0])
    K = int(g["levels"])
    lams = np.asarray(g["lams"], dtype=float)
    total = np.asarray(g["total"], dtype=float) / np.sqrt(n)  # rms over neurons
    fig, (a, b) = style.figure(ncols=2, width=3.5)
    a.loglog(t.lam, t.B1, "-", color=style.COLORS["B1"], label="B1 at the b-bit step")
    a.loglog(t.lam, t.err2_aug, "o-", color=style.COLORS["optq"], label="OPTQ (measured)")
    a.loglog(lams, total, "-", color="k", lw=1, label=f"B1 at the smallest no-clip step (K={K})")
    b.loglog(lams, g["growth"], "-", color="k", lw=1, label=r"guidance $\max_j c_j/2$")
    b.loglog(t.lam, t.growth_B3, "--", color=style.COLORS["B3"], label="B3")
    b.loglog(t.lam, t.growth, "o-", color=style.COLORS["optq"], label="OPTQ (measured)")
    b.axhline(K, color="k", lw=1, ls=":", label=f"K = {K} ({df['cfg.grid.bits'].iloc[0]} bits)")
    for ax in (a, b):
        if g["lam"] is not None:
            ax.axvline(g["lam"], color="k", ls="--", lw=1, label=f"chosen lam = {g['lam']:.3g}")
        ax.set_xlabel(r"$\lambda$")
    a.set_ylabel("error per neuron")
    b.set_ylabel(r"growth beyond $\|w\|_\infty$, units of $\delta$")
    a.legend(loc="best")
    b.legend(loc="best")
    out = pd.concat([t.assign(curve="sweep"),
                     pd.DataFrame({"lam": lams, "guidance_bound_rms": total,
                                   "guidance_growth": g["growth"], "curve": "guidance",
                                   "chosen_lam": g["lam"]})], ignore_index=True)
    style.save(fig, NAME, out, out_dir)
    return out


if __name__ == "__main__":
    common.cli(NAME, build)
