"""The figure ``lm_calibration``: the causal LM's OPTQ and Qronos against the number of
calibration tokens and against damping, from `experiments.studies.lm_calibration`'s records.

Left: held-out perplexity against calibration tokens (m = calib x length) at the default
``percdamp = 0.01``. Right: against ``percdamp`` at the calibration size that was run with
several. Table (``figures/lm_calibration.csv``), one row per run: config, algorithm, bits,
calib_windows, calib_tokens, seed (of the calibration windows), percdamp, perplexity,
fp_perplexity, and, from the per-layer
records on the calibration tokens, ``gain_median`` (the median over the 210 layers of
rel_err(OPTQ) / rel_err(Qronos) at the same calibration windows and damping) and, for Qronos,
``floor_median`` (the median of its error over its least-squares floor E_LS, THEORY.md I5).

    python -m experiments.figures.lm_calibration --runs runs/full/lm_calibration --out figures
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import ticker

from experiments.figures import real, style

DEFAULT_PERCDAMP = 0.01  # ptq's default when neither lam nor percdamp is given


def calibration_table(recs: list[dict]) -> pd.DataFrame:
    rows = []
    for r in recs:
        if r["status"] != "ok" or r["config"]["pass"] != "practical":
            continue
        c = r["config"]
        err = np.array([lyr["rel_err"] for lyr in r["layers"]])
        floor = np.array([lyr["err2_fro"] / lyr["e_ls_fro"] if "e_ls_fro" in lyr else np.nan
                          for lyr in r["layers"]])
        rows.append({"config": c["name"], "algorithm": c["algorithm"], "bits": c["bits"],
                     "calib_windows": c["calib"], "calib_tokens": c["calib"] * c["length"],
                     "seed": c["seed"],
                     "percdamp": c.get("percdamp") or DEFAULT_PERCDAMP,
                     "perplexity": r["perplexity"], "fp_perplexity": r["fp_perplexity"],
                     "floor_median": float(np.median(floor)), "_err": err})
    t = pd.DataFrame(rows)
    keys = ["bits", "calib_windows", "percdamp", "seed"]
    gains = []
    for _, row in t.iterrows():
        optq = t[(t.config == "optq") & (t[keys] == row[keys]).all(axis=1)]
        gains.append(float(np.median(optq["_err"].iloc[0] / row["_err"]))
                     if row.config == "qronos" and len(optq) else np.nan)
    t["gain_median"] = gains
    t.loc[t.config != "qronos", "floor_median"] = np.nan
    return t.drop(columns="_err").sort_values(["config", *keys]).reset_index(drop=True)


def _plot(ax, t: pd.DataFrame, x: str, **kw) -> None:
    """Mean over seeds, with the range of the seeds as an error bar."""
    g = t.groupby(x).perplexity.agg(["mean", "min", "max"]).reset_index().sort_values(x)
    ax.errorbar(g[x], g["mean"], yerr=[g["mean"] - g["min"], g["max"] - g["mean"]], capsize=2,
                **kw)


def _plain_ticks(ax, xs) -> None:
    """Log axes labelled with plain numbers: x at the measured values, y at its decades."""
    ax.xaxis.set_major_locator(ticker.FixedLocator(sorted(set(xs))))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def build(t: pd.DataFrame, out_dir: str) -> pd.DataFrame:
    fig, (left, right) = style.figure(ncols=2)
    by_calib = t[t.percdamp == DEFAULT_PERCDAMP]
    counts = t.groupby("calib_windows").percdamp.nunique()
    damp_calib = counts.idxmax() if counts.max() > 1 else None
    for name in t.config.unique():
        kw = dict(marker="o", color=style.COLORS.get(name), label=style.LABELS.get(name, name))
        _plot(left, by_calib[by_calib.config == name], "calib_tokens", **kw)
        if damp_calib is not None:
            _plot(right, t[(t.config == name) & (t.calib_windows == damp_calib)], "percdamp", **kw)
    for ax in (left, right):
        ax.axhline(t.fp_perplexity.iloc[0], color="k", lw=0.8, ls="--",
                   label="full precision (Q4_1 file)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel(f"held-out perplexity ({int(t.bits.iloc[0])} bits)")
    _plain_ticks(left, by_calib.calib_tokens)
    if damp_calib is not None:
        _plain_ticks(right, t[t.calib_windows == damp_calib].percdamp)
    left.set_xlabel(f"calibration tokens (percdamp {DEFAULT_PERCDAMP}; bars: seeds)")
    left.legend(loc="best", fontsize=7)
    if damp_calib is None:
        right.set_visible(False)
    else:
        length = int(t.calib_tokens.iloc[0] // t.calib_windows.iloc[0])
        right.set_xlabel(f"percdamp ({damp_calib} x {length} calibration tokens)")
    style.save(fig, "lm_calibration", t, out_dir)
    return t


def build_all(recs: list[dict], out_dir: str = "figures") -> dict[str, pd.DataFrame]:
    t = calibration_table(recs)
    if t.empty:
        raise FileNotFoundError("no successful records: run "
                                "`python -m experiments.studies.lm_calibration`")
    return {"lm_calibration": build(t, out_dir)}


def main(argv: list[str] | None = None) -> None:
    real.figures_cli(build_all, "lm_calibration", argv)


if __name__ == "__main__":
    main()
