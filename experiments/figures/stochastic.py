"""Figure stochastic: stochastic OPTQ's inf-norm error over seeds against S2, and the alphabet.

(a) ``||X(w-q)||_inf / S2`` for every neuron and rounding seed of stochastic OPTQ (S2 holds
with probability >= 1 - p: the fraction above 1 should be <= p), and deterministic OPTQ's
ratio (it ignores the seed) for contrast, against the same S2 value.
(b) The alphabet each run needed (``max |q| / delta`` over the run; over the seeds for the
stochastic one) per neuron, against the K that S3 (probability >= 1 - p) and B3 guarantee.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from experiments.figures import common, style

NAME = "stochastic"


def table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (algorithm, seed, neuron): the inf-norm error, S2 and the alphabet."""
    sto = df[df["cfg.algorithm.name"] == "optq_stochastic"]
    det = df[df["cfg.algorithm.name"] == "optq"]
    # S2 depends on X, lam, order and step only, not on the seed: one value per neuron.
    s2 = sto.groupby("neuron")["bound.S2"].first()
    k_s3 = sto.groupby("neuron")["extra.S3.levels"].first()
    k_b3 = common.col(det, "extra.B3.levels").groupby(det["neuron"]).first()
    parts = [d.assign(algorithm=alg) for alg, d in (("optq_stochastic", sto), ("optq", det))]
    t = pd.concat(parts)[["algorithm", "cfg.seed", "neuron", "errinf_self", "k_used"]]
    t = t.rename(columns={"cfg.seed": "seed", "errinf_self": "errinf"}).reset_index(drop=True)
    t["S2"] = t.neuron.map(s2)
    t["K_S3"] = t.neuron.map(k_s3)
    t["K_B3"] = t.neuron.map(k_b3)
    t["ratio_S2"] = t.errinf / t.S2
    return t


def build(df: pd.DataFrame, out_dir: str = "figures") -> pd.DataFrame:
    t = table(df)
    p = float(df["cfg.p"].iloc[0])
    fig, (a, b) = style.figure(ncols=2, width=3.6)
    sto, det = t[t.algorithm == "optq_stochastic"], t[t.algorithm == "optq"]
    a.hist(sto.ratio_S2, bins=30, color=style.COLORS["optq_stochastic"], alpha=0.8,
           label=f"stochastic OPTQ ({sto.seed.nunique()} seeds x {sto.neuron.nunique()} neurons)")
    for k, v in enumerate(det.groupby("neuron").ratio_S2.first()):
        a.axvline(v, color=style.COLORS["optq"], lw=0.8, alpha=0.7,
                  label="deterministic OPTQ (per neuron)" if k == 0 else None)
    a.axvline(1.0, color=style.COLORS["S2"], lw=2, label=f"S2 (p = {p:g})")
    rate = float((sto.ratio_S2 > 1).mean()) if len(sto) else np.nan
    a.set_title(f"inf-norm error / S2; fraction above S2: {rate:.3f} (p = {p:g})")
    a.set_xlabel(r"$\|X(w-q)\|_\infty$ / S2")
    a.set_ylabel("count")
    a.legend(loc="center right", fontsize=6.5)
    need = sto.groupby("neuron").agg(k_used=("k_used", "max"), K_S3=("K_S3", "first"))
    dneed = det.groupby("neuron").agg(k_used=("k_used", "max"), K_B3=("K_B3", "first"))
    order = np.argsort(need.K_S3.to_numpy())
    x = np.arange(len(order))
    b.plot(x, need.K_S3.to_numpy()[order], "-", color=style.COLORS["S3"], label="K from S3")
    if not dneed.empty:
        b.plot(x, dneed.K_B3.reindex(need.index).to_numpy()[order], "--", color=style.COLORS["B3"],
               label="K from B3")
        b.plot(x, dneed.k_used.reindex(need.index).to_numpy()[order], "s", mfc="none",
               color=style.COLORS["optq"], label="needed, deterministic")
    b.plot(x, need.k_used.to_numpy()[order], "o", color=style.COLORS["optq_stochastic"],
           label="needed, stochastic (max over seeds)")
    b.set_xlabel("neuron (sorted by S3's K)")
    b.set_ylabel(r"alphabet K = max $|q|/\delta$")
    b.set_ylim(0, 1.35 * float(np.nanmax([need.K_S3.max(), dneed.K_B3.max() if len(dneed) else 0])))
    b.legend(loc="upper left", ncol=2, fontsize=6.5)
    style.save(fig, NAME, t, out_dir)
    return t


if __name__ == "__main__":
    common.cli(NAME, build)
