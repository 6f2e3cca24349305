"""The figure ``lm_strength``: Qronos' correction strength on the causal LM, fixed and chosen
per layer from the calibration data, from `experiments.studies.strength`'s records.

(a) Held-out perplexity against calibration windows per method (log y; mean over the draws of
the windows, bars their range), at the smallest bit-width and natural order run. (b) The
strength chosen per layer (``strength="auto"``) against depth (forward order, 7 layers per
block), one line per number of calibration windows (mean over draws; dashed: with the damping
chosen too).

Tables, from the records only:

* ``figures/lm_strength.csv``, one row per run: config (the `experiments.study.CONFIGS`
  name), algorithm (``rtn``, ``optq``, ``qronos_paper``, ``qronos_ls_first``, ``qronos_s0.25``,
  ``qronos_s0.5``, ``qronos_s0.75``, ``qronos_auto``, ``qronos_auto_lam``), strength (the fixed
  strength: 0 for OPTQ, 1 for both Qronos forms; for the chosen rows the median over layers of
  the strength used; empty for RTN), order, bits, calib_windows, calib_tokens, seed (of the
  calibration windows), percdamp (the damping; for ``qronos_auto_lam`` the median over layers
  of the chosen one; empty for RTN), perplexity, fp_perplexity, quantize_s.
* ``figures/lm_strength_layers.csv``, one row per layer of each run whose strength was chosen:
  config, algorithm, bits, calib_windows, seed, order, index (forward order), name, layer (block),
  kind, strength, lam_percdamp (the damping the strength was chosen at), and the predicted
  squared error summed over neurons (`ptq.select.Selection`): held out by calibration window
  (``heldout_0``, ``heldout_1``, ``heldout_chosen``: at strength 0, 1 and the chosen one) and
  in sample (``insample_*``).

    python -m experiments.figures.lm_strength --runs runs/study/lm_strength --out figures
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib import colormaps, ticker

from experiments import advice
from experiments.figures import real, style

DEFAULT_PERCDAMP = 0.01  # ptq's default when neither lam nor percdamp is given
PER_BLOCK = 7  # q, k, v, o, gate, up, down
# the table's algorithm names, in the order rows and legends list them
ALGORITHMS = ("rtn", "optq", "qronos_s0.25", "qronos_s0.5", "qronos_s0.75", "qronos_ls_first",
              "qronos_paper", "qronos_auto", "qronos_auto_lam")
LAYER_COLUMNS = ["config", "algorithm", "bits", "calib_windows", "seed", "order", "index", "name",
                 "layer", "kind", "strength", "lam_percdamp", "heldout_0", "heldout_1",
                 "heldout_chosen", "insample_0", "insample_1", "insample_chosen"]


def algorithm_name(c: dict) -> str:
    """The table's name of a record config's method (module docstring)."""
    alg, strength = c["algorithm"], c.get("strength", 1.0)
    if alg != "qronos":
        name = alg
    elif strength == "auto":
        name = "qronos_auto_lam" if c.get("lam") == "auto" else "qronos_auto"
    elif c.get("variant", "paper") == "paper":
        name = "qronos_paper"
    elif float(strength) == 1.0:
        name = "qronos_ls_first"
    else:
        name = f"qronos_s{float(strength):g}"
    return name + ("_stochastic" if c.get("rounding", "nearest") != "nearest" else "")


def fixed_strength(c: dict) -> float:
    """The strength a run's config fixes (NaN: RTN, or chosen per layer)."""
    if c["algorithm"] == "rtn" or c.get("strength") == "auto":
        return np.nan
    return 0.0 if c["algorithm"] == "optq" else float(c.get("strength", 1.0))


def run_strength(r: dict) -> float:
    """A run's strength: the fixed one, or for a chosen strength the median over layers of the
    strength used (NaN: RTN)."""
    c = r["config"]
    used = [lyr["strength_used"] for lyr in r["layers"] if "strength_used" in lyr]
    if c.get("strength") == "auto" and used:
        return float(np.median(used))
    return fixed_strength(c)


def layer_table(recs: list[dict]) -> pd.DataFrame:
    """One row per layer of each run whose strength was chosen (lm_strength_layers.csv)."""
    rows = []
    for r in recs:
        c = r["config"]
        for i, lyr in enumerate(r["layers"]):
            sel = lyr.get("selection")
            if sel is None:
                continue
            k = advice.chosen_candidate(sel)
            held, ins = sel["heldout"][k], sel["insample"][k]
            rows.append({"config": c["name"], "algorithm": algorithm_name(c), "bits": c["bits"],
                         "calib_windows": c["calib"], "seed": c["seed"],
                         "order": c.get("order", "natural"), "index": i, "name": lyr["name"],
                         "layer": lyr["layer"], "kind": lyr["kind"],
                         "strength": lyr.get("strength_used", sel["strength"]),
                         "lam_percdamp": sel["percdamps"][k],
                         "heldout_0": held[0], "heldout_1": held[1], "heldout_chosen": held[2],
                         "insample_0": ins[0], "insample_1": ins[1], "insample_chosen": ins[2]})
    return pd.DataFrame(rows, columns=LAYER_COLUMNS)


def strength_table(recs: list[dict]) -> pd.DataFrame:
    """One row per successful practical run (lm_strength.csv)."""
    rows = []
    for r in recs:
        c = r["config"]
        strength, percdamp = run_strength(r), c.get("percdamp") or DEFAULT_PERCDAMP
        if c.get("lam") == "auto":
            damps = layer_table([r]).lam_percdamp
            percdamp = float(np.median(damps)) if len(damps) else np.nan
        rows.append({"config": c["name"], "algorithm": algorithm_name(c), "strength": strength,
                     "order": c.get("order", "natural"), "bits": c["bits"],
                     "calib_windows": c["calib"], "calib_tokens": c["calib"] * c["length"],
                     "seed": c["seed"],
                     "percdamp": np.nan if c["algorithm"] == "rtn" else percdamp,
                     "perplexity": r["perplexity"], "fp_perplexity": r["fp_perplexity"],
                     "quantize_s": r["wall_s"]["quantize"]})
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    rank = {a: i for i, a in enumerate(ALGORITHMS)}
    t["_rank"] = t.algorithm.map(rank).fillna(len(rank))
    t = t.sort_values(["bits", "order", "calib_windows", "seed", "_rank", "config"])
    return t.drop(columns="_rank").reset_index(drop=True)


def advice_table(recs: list[dict]) -> pd.DataFrame:
    """The calibration advisor's verdict (`experiments.advice`) for every run whose strength
    was chosen: is the calibration set big enough for full-strength Qronos?"""
    rows = []
    for r in recs:
        c = r["config"]
        layers = [lyr for lyr in r["layers"] if "selection" in lyr]
        if not layers:
            continue
        v = advice.verdict(advice.layer_rows(layers))
        rows.append({"config": c["name"], "algorithm": algorithm_name(c), "bits": c["bits"],
                     "order": c.get("order", "natural"), "calib_windows": c["calib"],
                     "seed": c["seed"], "enough_for_full_strength": v["enough_for_full_strength"],
                     "share_full_helps": v["share_full_helps"],
                     "median_full_vs_none": v["median_full_vs_none"],
                     "median_chosen": v["median_chosen"], "median_overfit": v["median_overfit"],
                     "layers": v["layers"], "without_mismatch": v["without_mismatch"]})
    return pd.DataFrame(rows)


def bounds_table(recs: list[dict]) -> pd.DataFrame:
    """The bounds pass, one row per run and bound: layers checked (not clipped), violations
    summed over neurons, the median and maximum over layers of measured / bound."""
    rows = []
    for r in recs:
        c = r["config"]
        if r["status"] != "ok" or c["pass"] != "bounds":
            continue
        per: dict[str, list[dict]] = {}
        for lyr in r["layers"]:
            for b, v in (lyr.get("bounds") or {}).items():
                per.setdefault(b, []).append(v)
        for b, vs in per.items():
            errors = [v for v in vs if "error" in v]
            ok = [v for v in vs if "error" not in v]
            rows.append({"config": c["name"], "algorithm": algorithm_name(c), "bits": c["bits"],
                         "bound": b, "layers": len(vs),
                         "checked": sum(bool(v["checked"]) for v in ok),
                         "errors": len(errors), "violations": sum(v["violations"] for v in ok),
                         "ratio_median": float(np.median([v["ratio_median"] for v in ok]))
                         if ok else np.nan,
                         "ratio_max": float(np.max([v["ratio_max"] for v in ok])) if ok else np.nan,
                         "strength_median": float(np.median(
                             [lyr.get("strength_used", np.nan) for lyr in r["layers"]]))})
    return pd.DataFrame(rows)


def _ok(recs: list[dict]) -> list[dict]:
    return [r for r in recs if r["status"] == "ok" and r["config"]["pass"] == "practical"]


def _plain_ticks(ax, xs) -> None:
    """Log axes labelled with plain numbers: x at the measured values, y at 1, 2, 5 x 10^k
    (a range inside one decade still gets labels)."""
    ax.xaxis.set_major_locator(ticker.FixedLocator(sorted(set(xs))))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _setting(t: pd.DataFrame) -> tuple[int, str]:
    """The bit-width and order the panels show: the smallest bits, natural order if run."""
    order = "natural" if (t.order == "natural").any() else t.order.iloc[0]
    return int(t.bits.min()), order


def build(t: pd.DataFrame, layers: pd.DataFrame, out_dir: str) -> pd.DataFrame:
    fig, (left, right) = style.figure(ncols=2, width=4.0)
    bits, order = _setting(t)
    shown = t[(t.bits == bits) & (t.order == order)]
    for name in dict.fromkeys(shown.config):  # first-appearance order (the table's)
        g = shown[shown.config == name].groupby("calib_windows").perplexity
        g = g.agg(["mean", "min", "max"]).reset_index()
        left.errorbar(g.calib_windows, g["mean"], yerr=[g["mean"] - g["min"], g["max"] - g["mean"]],
                      capsize=2, marker="o", color=style.COLORS.get(name),
                      label=style.LABELS.get(name, name))
    left.axhline(t.fp_perplexity.iloc[0], color="k", lw=0.8, ls="--",
                 label="full precision (Q4_1 file)")
    left.set_xscale("log")
    left.set_yscale("log")
    _plain_ticks(left, shown.calib_windows)
    length = int(t.calib_tokens.iloc[0] // t.calib_windows.iloc[0])
    left.set_xlabel(f"calibration windows of {length} tokens (bars: draws)")
    left.set_ylabel("held-out perplexity")
    left.set_title(f"(a) {bits} bits, {order} order")
    left.legend(loc="best", fontsize=6)
    lay = layers[(layers.bits == bits) & (layers.order == order)]
    if lay.empty:
        right.set_visible(False)
    else:
        calibs = sorted(lay.calib_windows.unique())
        cmap = colormaps["viridis"]
        for j, calib in enumerate(calibs):
            color = cmap(j / max(len(calibs) - 1, 1) * 0.85)
            for alg, ls in (("qronos_auto", "-"), ("qronos_auto_lam", "--")):
                g = lay[(lay.calib_windows == calib) & (lay.algorithm == alg)]
                if g.empty:
                    continue
                s = g.groupby("index").strength.mean()
                right.plot(s.index, s.to_numpy(), ls=ls, lw=0.9, color=color,
                           label=f"{calib} windows" + (", damping chosen" if ls == "--" else ""))
        right.set_ylim(-0.03, 1.03)
        right.set_xlabel(f"layer in forward order ({PER_BLOCK} per block)")
        right.set_ylabel("chosen strength a")
        right.set_title("(b) strength chosen per layer")
        right.legend(loc="best", fontsize=6)
    style.save(fig, "lm_strength", t, out_dir)
    return t


def build_all(recs: list[dict], out_dir: str = "figures") -> dict[str, pd.DataFrame]:
    ok = _ok(recs)
    t = strength_table(ok)
    out = {}
    bt = bounds_table(recs)
    if not bt.empty:
        bt.to_csv(os.path.join(out_dir, "lm_strength_bounds.csv"), index=False,
                  float_format="%.6g")
        out["lm_strength_bounds"] = bt
    if t.empty:
        if out:
            return out
        raise FileNotFoundError("no successful records: run "
                                "`python -m experiments.studies.strength --size study`")
    layers = layer_table(ok)
    build(t, layers, out_dir)
    adv = advice_table(ok)
    if not adv.empty:
        adv.to_csv(os.path.join(out_dir, "lm_strength_advice.csv"), index=False,
                   float_format="%.4g")
        out["lm_strength_advice"] = adv
    layers.to_csv(os.path.join(out_dir, "lm_strength_layers.csv"), index=False,
                  float_format="%.6g")
    return {**out, "lm_strength": t, "lm_strength_layers": layers}


def minilm_table(recs: list[dict]) -> pd.DataFrame:
    """One row per successful practical MiniLM run: the method, its strength (median chosen
    for ``qronos_auto``) and the held-out cosine (minilm_strength.csv)."""
    rows = []
    for r in _ok(recs):
        c = r["config"]
        strength = run_strength(r)
        rows.append({"config": c["name"], "algorithm": algorithm_name(c), "strength": strength,
                     "order": c.get("order", "natural"), "bits": c["bits"],
                     "tokens": c["tokens"], "cosine_mean": r["cosine_mean"],
                     "cosine_min": r["cosine_min"], "quantize_s": r["wall_s"]["quantize"]})
    t = pd.DataFrame(rows)
    if not t.empty:
        rank = {a: i for i, a in enumerate(ALGORITHMS)}
        t = t.assign(_rank=t.algorithm.map(rank)).sort_values(["bits", "_rank"])
        t = t.drop(columns="_rank").reset_index(drop=True)
    return t


def build_minilm(recs: list[dict], out_dir: str = "figures") -> dict[str, pd.DataFrame]:
    """``figures/minilm_strength.csv`` (end to end) and ``minilm_strength_bounds.csv`` (Q4 on
    every layer) from the MiniLM strength study's records."""
    t, bt = minilm_table(recs), bounds_table(recs)
    if t.empty and bt.empty:
        raise FileNotFoundError("no successful records: run "
                                "`python -m experiments.studies.strength --model minilm "
                                "--size study`")
    os.makedirs(out_dir, exist_ok=True)
    if not t.empty:
        t.to_csv(os.path.join(out_dir, "minilm_strength.csv"), index=False, float_format="%.6g")
    if not bt.empty:
        bt.to_csv(os.path.join(out_dir, "minilm_strength_bounds.csv"), index=False,
                  float_format="%.6g")
    return {"minilm_strength": t, "minilm_strength_bounds": bt}


def main(argv: list[str] | None = None) -> None:
    real.figures_cli(build_all, "lm_strength", argv)


if __name__ == "__main__":
    main()
