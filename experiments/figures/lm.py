"""Figures of the causal LM (SmolLM2-135M on Wikipedia text), from `experiments.studies.lm`'s
records.

* ``lm_perplexity``: held-out perplexity against bits per algorithm (practical pass: GPTQ's
  asymmetric grid per channel), with the full-precision (dequantized Q4_1) perplexity.
* ``lm_gain``: the Qronos gain against depth, ``rel_err(OPTQ) / rel_err(Qronos)`` per linear
  layer in forward order (blocks of 7).
* ``lm_bounds``: per-layer error against bound (bounds pass: infinite alphabet, float64).

    python -m experiments.figures.lm --runs runs/default/lm --out figures
    python -m experiments.figures.lm --runs runs/bits/lm runs/groups/lm --prefix lm_bits

Nothing is recomputed here; the layer tables and the gain and bounds panels are those of
`experiments.figures.real`.
"""

from __future__ import annotations

import pandas as pd

from experiments.figures import real, style

PER_BLOCK = 7  # q, k, v, o, gate, up, down


def perplexity_table(recs: list[dict]) -> pd.DataFrame:
    """One row per successful practical run (the columns of figures/lm_perplexity.csv)."""
    rows = [{"config": r["config"]["name"], "algorithm": r["config"]["algorithm"],
             "order": r["config"].get("order", "natural"), "bits": r["config"]["bits"],
             "group_size": r["config"].get("group_size") or -1,
             "perplexity": r["perplexity"], "fp_perplexity": r["fp_perplexity"],
             "heldout_tokens": r["heldout_tokens"], "calib_windows": r["config"]["calib"],
             "length": r["config"]["length"], "quantize_s": r["wall_s"]["quantize"]}
            for r in recs if r["status"] == "ok" and r["config"]["pass"] == "practical"]
    t = pd.DataFrame(rows).sort_values(["config", "group_size", "bits"])
    return t.reset_index(drop=True)


def build_perplexity(t: pd.DataFrame, out_dir: str, figure: str = "lm_perplexity"
                     ) -> pd.DataFrame:
    """Perplexity against bits, a line per configuration; group-wise runs (group_size > 0)
    are drawn as open markers of the same colour, labelled with their group size."""
    fig, axes = style.figure()
    ax = axes[0] if hasattr(axes, "__len__") else axes
    for (name, gs), g in t.groupby(["config", "group_size"], sort=False):
        label = style.LABELS.get(name, name)
        grouped = gs > 0
        ax.plot(g.bits, g.perplexity, marker="o", color=style.COLORS.get(name),
                mfc="none" if grouped else None, ls=":" if grouped else "-",
                label=f"{label}, groups of {gs}" if grouped else label)
    ax.axhline(t.fp_perplexity.iloc[0], color="k", lw=0.8, ls="--",
               label="full precision (Q4_1 file)")
    ax.set_yscale("log")
    ax.set_xlabel("bits (per channel unless grouped)")
    ax.set_ylabel("held-out perplexity")
    ax.set_xticks(sorted(t.bits.unique()))
    ax.legend(loc="best", fontsize=7)
    style.save(fig, figure, t, out_dir)
    return t


def build_all(recs: list[dict], out_dir: str = "figures", prefix: str = "lm"
              ) -> dict[str, pd.DataFrame]:
    """The figures whose pass has records (at least one successful run is needed), named
    ``<prefix>_perplexity`` etc. The gain against depth compares per-channel runs only."""
    if not any(r["status"] == "ok" for r in recs):
        raise FileNotFoundError("no successful LM records: run `python -m experiments.studies.lm`")
    layers = real.layers_table(recs)
    out = {}
    if (layers["pass"] == "practical").any():
        out[f"{prefix}_perplexity"] = build_perplexity(perplexity_table(recs), out_dir,
                                                       f"{prefix}_perplexity")
        per_channel = [r for r in recs if not r["config"].get("group_size")]
        if any(r["config"]["pass"] == "practical" for r in per_channel):
            out[f"{prefix}_gain"] = real.build_gain(real.layers_table(per_channel), out_dir,
                                                    f"{prefix}_gain", PER_BLOCK)
    if (layers["pass"] == "bounds").any():
        out[f"{prefix}_bounds"] = real.build_bounds(layers, out_dir, f"{prefix}_bounds",
                                                    PER_BLOCK)
    return out


def main(argv: list[str] | None = None) -> None:
    real.figures_cli(build_all, "lm", argv, prefix=True)


if __name__ == "__main__":
    main()
