"""The calibration advisor's judgement, from the selection evidence alone (NumPy only).

`ptq.select` records, per layer, the predicted held-out and in-sample errors of the corrected
start at strength 0, 1 and the chosen one (the driver's ``selection`` field). This module turns
them into per-layer rows and one per-model verdict; `experiments.advisor` (the command) and the
strength study's tables (`experiments.figures.lm_strength`) both use it. See
`experiments.advisor` for what each quantity means.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Full correction is "enough" when it helps in the median layer and in this share of layers.
ENOUGH_SHARE = 2 / 3
COLUMNS = ("name", "layer", "kind", "m", "N", "rows_per_feature", "dead", "sequences", "folds",
           "chosen", "percdamp", "insample_none", "insample_full", "heldout_none", "heldout_full",
           "heldout_chosen", "overfit", "full_vs_none", "chosen_vs_none", "guidance_percdamp")


def chosen_candidate(sel: dict) -> int:
    """The index of the candidate damping a selection chose: the candidate ``lam`` it returned,
    or (records without ``lams``) its smallest criterion."""
    if "lams" in sel:
        return int(np.argmin(np.abs(np.asarray(sel["lams"], float) - sel["lam"])))
    crit = np.asarray(sel["heldout"], float)[:, 2]
    rho = np.array([np.nan if v is None else v for v in sel["rounding_heldout"]], float)
    return int(np.argmin(crit + np.nan_to_num(rho))) if crit.size > 1 else 0


def layer_rows(records: list[dict]) -> list[dict[str, Any]]:
    """One row per layer from driver records (or a study record's ``layers``) that carry a
    ``selection``: Qronos at strength "auto"."""
    rows = []
    for r in records:
        s = r.get("selection")
        if s is None:
            raise ValueError(f"record {r.get('name')!r} has no `selection`: the advisor needs "
                             "records of Qronos with strength='auto'")
        i = chosen_candidate(s)
        ins, ho = s["insample"][i], s["heldout"][i]
        none = ho[0] if ho[0] > 0 else np.nan
        rows.append({
            "name": r["name"], "layer": r["layer"], "kind": r["kind"], "m": r["m"], "N": r["N"],
            "rows_per_feature": r["m"] / r["N"], "dead": s["dead"], "sequences": s["sequences"],
            "folds": s["folds"], "chosen": s["strength"], "percdamp": s["percdamps"][i],
            "insample_none": ins[0],
            "insample_full": ins[1], "heldout_none": ho[0], "heldout_full": ho[1],
            "heldout_chosen": ho[2],
            "overfit": ho[1] / ins[1] if ins[1] > 0 else np.nan,
            "full_vs_none": ho[1] / none, "chosen_vs_none": ho[2] / none,
            "guidance_percdamp": r.get("guidance_percdamp", np.nan)})
    return rows


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-model answer: is the calibration set big enough for full-strength Qronos?

    Layers whose inputs carry no mismatch (``X_hat = X`` on every row: the first block's, before
    anything is quantized) have nothing to correct and are left out."""
    every = rows
    rows = [r for r in rows if r["heldout_none"] > 0]
    if not rows:
        raise ValueError("no layer has an input mismatch (X_hat = X everywhere): there is "
                         "nothing for the correction to fit")
    ratio = np.array([r["full_vs_none"] for r in rows], dtype=float)
    chosen = np.array([r["chosen"] for r in rows], dtype=float)
    helps = float(np.mean(ratio < 1))
    median = float(np.nanmedian(ratio))
    enough = median < 1 and helps >= ENOUGH_SHARE
    worst = sorted(rows, key=lambda r: -r["full_vs_none"])[:3]
    return {
        "enough_for_full_strength": bool(enough),
        "layers": len(rows), "without_mismatch": len(every) - len(rows),
        "share_full_helps": helps, "median_full_vs_none": median,
        "median_chosen": float(np.median(chosen)),
        "median_chosen_vs_none": float(np.nanmedian([r["chosen_vs_none"] for r in rows])),
        "median_overfit": float(np.nanmedian([r["overfit"] for r in rows])),
        "median_rows_per_feature": float(np.median([r["rows_per_feature"] for r in rows])),
        "median_percdamp": float(np.median([r["percdamp"] for r in every])),
        "median_guidance_percdamp": float(np.nanmedian(
            [r["guidance_percdamp"] for r in every])) if any(
            np.isfinite(r["guidance_percdamp"]) for r in every) else None,
        "worst": [(r["name"], r["full_vs_none"]) for r in worst],
    }


def _guidance_words(value) -> str:
    if value is None:
        return ""
    return f"; theory.lam_guidance's bound-driven choice {value:.3g}"


def summary_lines(v: dict[str, Any], what: str) -> list[str]:
    """The verdict in words."""
    head = ("enough for full-strength Qronos" if v["enough_for_full_strength"]
            else "too few for full-strength Qronos")
    lines = [
        f"{what}: {head}.",
        f"  full correction predicted to help on new inputs in {v['share_full_helps']:.0%} of "
        f"{v['layers']} layers with an input mismatch (median held-out error ratio full/none "
        f"{v['median_full_vs_none']:.3f}; needs < 1 in the median layer and in "
        f"{ENOUGH_SHARE:.0%} of layers)",
        f"  median rows per feature {v['median_rows_per_feature']:.2f}, median overfit "
        f"(held-out / in-sample error of the full fit) {v['median_overfit']:.2f}",
        f"  the data choose strength {v['median_chosen']:.2f} (median over layers), predicted "
        f"held-out ratio to OPTQ's start {v['median_chosen_vs_none']:.3f}",
        "  layers where full correction is predicted worst: "
        + ", ".join(f"{n} ({x:.2f})" for n, x in v["worst"]),
        f"  damping: percdamp {v['median_percdamp']:.3g} (median over layers; GPTQ's default "
        "0.01)" + _guidance_words(v["median_guidance_percdamp"]),
    ]
    return lines
