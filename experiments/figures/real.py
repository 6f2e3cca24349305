"""Figures of the real model (all-MiniLM-L6-v2 on real text), from the study's records.

* ``real_cosine``: end-to-end cosine of quantized vs full-precision sentence embeddings on
  held-out text against bits, per algorithm (practical pass: GPTQ's asymmetric grid).
* ``real_gain``: the Qronos gain against depth, ``rel_err(OPTQ) / rel_err(Qronos)`` per
  linear layer in forward order (practical pass); above 1, Qronos has the smaller error
  ``||X W - X_hat Q||_F / ||X W||_F``.
* ``real_bounds``: per-layer error against bound (bounds pass: infinite alphabet, float64),
  Frobenius norms over the neurons at one bit-width, and the largest measured/bound ratio of
  any neuron per layer over every bit-width and algorithm (1 would be a violation).

    python -m experiments.figures.real --runs runs/default/real --out figures

The records come from `experiments.studies.minilm`; nothing is recomputed here.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd

from experiments import records
from experiments.figures import style

BOUND_BITS = 4  # the bit-width of real_bounds' left panels
DETERMINISTIC = ("B1", "B2", "B3", "Q1", "Q2")


def runs_table(recs: list[dict]) -> pd.DataFrame:
    """One row per successful run: pass, configuration, bits, cosine."""
    rows = [{"pass": r["config"]["pass"], "config": r["config"]["name"],
             "bits": r["config"]["bits"], "cosine_mean": r["cosine_mean"],
             "cosine_min": r["cosine_min"], "heldout": r["heldout_n"],
             "quantize_s": r["wall_s"]["quantize"]}
            for r in recs if r["status"] == "ok"]
    return pd.DataFrame(rows)


def layers_table(recs: list[dict]) -> pd.DataFrame:
    """One row per (run, layer) and, in the bounds pass, per bound of that layer."""
    rows = []
    for r in recs:
        if r["status"] != "ok":
            continue
        c = r["config"]
        for i, lyr in enumerate(r["layers"]):
            base = {"pass": c["pass"], "config": c["name"], "bits": c["bits"], "index": i,
                    "name": lyr["name"], "layer": lyr["layer"], "kind": lyr["kind"],
                    "rel_err": lyr["rel_err"], "err2_fro": lyr["err2_fro"],
                    "e_ls_fro": lyr.get("e_ls_fro", np.nan),
                    "clipped": lyr.get("clipped", np.nan)}
            bounds = lyr.get("bounds") or {}
            if not bounds:
                rows.append(base)
            for b, v in bounds.items():
                rows.append({**base, "bound": b, **{k: v.get(k, np.nan) for k in (
                    "kind", "checked", "violations", "bound_fro", "measured_fro",
                    "ratio_median", "ratio_max")}})
    return pd.DataFrame(rows)


def _block_lines(ax, n_layers: int, per_block: int) -> None:
    for x in range(per_block, n_layers, per_block):
        ax.axvline(x - 0.5, color="0.85", lw=0.6, zorder=0)
    ax.set_xlabel(f"linear layer (forward order; blocks of {per_block})")


def build_cosine(runs: pd.DataFrame, out_dir: str) -> pd.DataFrame:
    t = runs[runs["pass"] == "practical"].sort_values(["config", "bits"])
    fig, axes = style.figure(ncols=2)
    for name, g in t.groupby("config", sort=False):
        kw = dict(color=style.COLORS.get(name), label=style.LABELS.get(name, name), marker="o")
        axes[0].plot(g.bits, g.cosine_mean, **kw)
        axes[1].plot(g.bits, 1 - g.cosine_mean, **kw)
    axes[0].set_ylabel("held-out cosine (mean)")
    axes[1].set_ylabel("1 - cosine")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("bits")
    axes[0].legend(loc="lower right")
    style.save(fig, "real_cosine", t.drop(columns="pass"), out_dir)
    return t


def build_gain(layers: pd.DataFrame, out_dir: str, figure: str = "real_gain",
               per_block: int = 6) -> pd.DataFrame:
    """The Qronos gain against depth (any whole-model study's practical pass)."""
    p = layers[layers["pass"] == "practical"]
    wide = p.pivot_table(index=["bits", "index", "name"], columns="config", values="rel_err")
    wide = wide.reset_index()
    t = wide[["bits", "index", "name"]].copy()
    for q in ("qronos", "qronos_ls"):
        if q in wide and "optq" in wide:
            t[f"gain_{q}"] = wide["optq"] / wide[q]
    bits = sorted(t.bits.unique())
    fig, axes = style.figure(ncols=2)
    for ax, q in zip(axes, ("qronos", "qronos_ls")):
        col = f"gain_{q}"
        if col not in t:
            ax.set_visible(False)
            continue
        cmap = style.plt.get_cmap("viridis")
        for k, b in enumerate(bits):
            g = t[t.bits == b]
            ax.plot(g["index"], g[col], color=cmap(k / max(len(bits) - 1, 1)), lw=1,
                    label=f"{b} bits")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_title(f"{style.LABELS[q]} vs OPTQ")
        ax.set_ylabel("rel. error OPTQ / Qronos")
        _block_lines(ax, int(t["index"].max()) + 1, per_block)
    shown = [ax for ax in axes if ax.get_visible()]
    if shown:  # a run without the first Qronos variant hides the first panel
        shown[0].legend(loc="best", ncol=2)
    style.save(fig, figure, t, out_dir)
    return t


def build_bounds(layers: pd.DataFrame, out_dir: str, figure: str = "real_bounds",
                 per_block: int = 6) -> pd.DataFrame:
    """Per-layer error against bound (any whole-model study's bounds pass)."""
    b = layers[(layers["pass"] == "bounds") & layers["bound"].notna()].copy()
    bits = BOUND_BITS if BOUND_BITS in set(b.bits) else int(np.median(sorted(set(b.bits))))
    fig, axes = style.figure(ncols=3, width=3.2)
    panels = [("optq", ("B1", "B2", "Q2"), "OPTQ from X_hat"),
              ("qronos", ("Q1",), "Qronos (paper)")]
    for ax, (cfg, names, title) in zip(axes, panels):
        s = b[(b.config == cfg) & (b.bits == bits)]
        for k, name in enumerate(names):
            g = s[s.bound == name].sort_values("index")
            if g.empty:
                continue
            ax.plot(g["index"], g.bound_fro, color=style.COLORS[name], label=name, lw=1)
            if k == 0 or name == "Q2":  # the measured quantity each group of bounds is about
                label = {"B1": "measured (aug., X_hat)", "Q2": "measured (aug., X vs X_hat)",
                         "Q1": "measured (aug.)"}[name]
                ax.plot(g["index"], g.measured_fro, color=style.COLORS[name], ls=":",
                        marker=".", label=label)
        if cfg == "qronos":
            g = s[s.bound == "Q1"].sort_values("index")
            # zero up to round-off where X_hat = X (block 0's first layers): left out of the
            # log axis
            floor = g.e_ls_fro.where(g.e_ls_fro > 1e-6 * g.measured_fro)
            ax.plot(g["index"], floor, color=style.COLORS["floor"], lw=0.8, label="E_LS floor")
        ax.set_yscale("log")
        ax.set_title(f"{title}, {bits} bits")
        ax.set_ylabel("Frobenius norm over neurons")
        _block_lines(ax, int(b["index"].max()) + 1, per_block)
        if ax.get_legend_handles_labels()[0]:  # a pass without this configuration draws none
            ax.legend(loc="best", fontsize=6.5)
    ax = axes[2]
    d = b[b.bound.isin(DETERMINISTIC) & (b.checked == True)]  # noqa: E712 (object column)
    worst = d.groupby(["index", "bound"], as_index=False).ratio_max.max()
    for name, g in worst.groupby("bound"):
        ax.plot(g["index"], g.ratio_max, color=style.COLORS[name], label=name, lw=1)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"worst neuron over bits {','.join(map(str, sorted(set(b.bits))))}",
                 fontsize=8)
    ax.set_ylabel("max measured / bound")
    _block_lines(ax, int(b["index"].max()) + 1, per_block)
    ax.legend(loc="lower right", ncol=3, fontsize=6.5)
    cols = ["config", "bits", "index", "name", "bound", "kind", "checked", "violations",
            "measured_fro", "bound_fro", "ratio_median", "ratio_max", "e_ls_fro"]
    t = b[cols].sort_values(["config", "bits", "index", "bound"])
    style.save(fig, figure, t, out_dir)
    return t


def build_all(recs: list[dict], out_dir: str = "figures") -> dict[str, pd.DataFrame]:
    """The three figures from the study's records (a pass with no records is skipped)."""
    if not any(r["status"] == "ok" for r in recs):
        raise FileNotFoundError("no successful real-model records: run the study first")
    runs, layers = runs_table(recs), layers_table(recs)
    out = {}
    if (runs["pass"] == "practical").any():
        out["real_cosine"] = build_cosine(runs, out_dir)
        out["real_gain"] = build_gain(layers, out_dir)
    if (runs["pass"] == "bounds").any():
        out["real_bounds"] = build_bounds(layers, out_dir)
    return out


def figures_cli(build, key: str, argv: list[str] | None = None, *,
                prefix: bool = False) -> None:
    """The command line of a whole-model study's figures: ``build(records, out_dir)`` on the
    records of every folder of ``--runs`` (default ``runs/default/<key>``); with ``prefix``,
    ``--prefix`` names the figures (``build(records, out_dir, prefix=...)``)."""
    parser = argparse.ArgumentParser(description=f"Build figures/{key}_*.* from the {key} "
                                                 "study's records.")
    parser.add_argument("--runs", nargs="+", default=[f"runs/default/{key}"],
                        help="the study's records (one or more folders)")
    parser.add_argument("--out", default="figures", help="output folder")
    if prefix:
        parser.add_argument("--prefix", default=key,
                            help=f"figure names <prefix>_*.* (default {key})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recs = [r for folder in args.runs for r in records.load_records(folder)]
    build(recs, args.out, **({"prefix": args.prefix} if prefix else {}))


def main(argv: list[str] | None = None) -> None:
    figures_cli(build_all, "real", argv)


if __name__ == "__main__":
    main()
