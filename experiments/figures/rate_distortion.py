"""The figure ``rate_distortion``: bits above the rate-distortion limit, per MiniLM layer.

Top row, one panel per bit-width: each quantizer's bits above the Gaussian reference at its own
entropy-coded rate, ``1/2 log2(D / D_G(R_entropy))``, against the layer (forward order); the
dotted line is 2 pi e / 12 (0.254 bit), the high-rate floor of entropy-coded scalar
quantization. Bottom row: bits above the Shannon lower bound at the fixed rate b (what the b-bit
grid pays; waterfilling has no fixed rate and is not drawn there). Table
(``figures/rate_distortion.csv``): one row per layer, bit-width and quantizer, every column of
`experiments.studies.rate_distortion.layer_rows`.

    python -m experiments.studies.rate_distortion --size default --out figures
"""

from __future__ import annotations

import pandas as pd

from experiments.figures import style
from experiments.models.minilm.weights import LAYER_NAMES
from theory.rate_distortion import HIGH_RATE_GAP_BITS as FLOOR_BITS  # 1/2 log2(2 pi e / 12)

COLORS = {**style.COLORS, "optq_rotated": "#2ca02c", "waterfill": "#9467bd"}
LABELS = {**style.LABELS, "qronos": "Qronos (X_hat = X)", "optq_rotated": "OPTQ, rotated",
          "optq_decreasing": "OPTQ (act_order)", "waterfill": "waterfilling OPTQ"}


def table(recs: list[dict]) -> pd.DataFrame:
    rows = [row for r in recs if r.get("status") == "ok" for row in r["rows"]]
    t = pd.DataFrame(rows)
    if t.empty:
        raise ValueError("no ok rate_distortion records to draw")
    t["index"] = t["layer"].map({n: i for i, n in enumerate(LAYER_NAMES)})
    return t.sort_values(["bits", "quantizer", "index"]).reset_index(drop=True)


def build_all(recs: list[dict], out_dir: str = "figures") -> pd.DataFrame:
    t = table(recs)
    bits = sorted(t.bits.unique())
    fig, axes = style.figure(ncols=len(bits), nrows=2, width=3.3, height=2.5)
    for i, b in enumerate(bits):
        tb = t[t.bits == b]
        for row, col, title in ((0, "above_gaussian_entropy", "above D_G at entropy rate"),
                                (1, "above_slb_fixed", "above D_SLB at b bits")):
            ax = axes[row * len(bits) + i]
            for q, g in tb.groupby("quantizer", sort=False):
                if g[col].isna().all():
                    continue
                ax.plot(g["index"], g[col], marker=".", lw=0.9, color=COLORS.get(q),
                        label=LABELS.get(q, q), ls="--" if q == "qronos" else "-")
            ax.axhline(FLOOR_BITS, color="k", ls=":", lw=0.8)
            ax.axhline(0.0, color="k", lw=0.6)
            ax.set_title(f"{b} bits: {title}")
            ax.set_xlabel("layer (forward order)")
            ax.set_ylabel("bits per weight")
    axes[0].legend(loc="upper left", ncol=2)
    style.save(fig, "rate_distortion", t.drop(columns="index"), out_dir)
    return t
