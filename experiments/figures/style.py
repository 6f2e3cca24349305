"""The shared look of every figure, and the one way figures are saved.

Every builder calls `figure` for its axes and `save` for its output: ``figures/<name>.png``
(150 dpi), ``.pdf`` and ``.csv`` (the numbers plotted, so a figure can be checked or
re-plotted without the records).
"""

from __future__ import annotations

import logging
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

log = logging.getLogger(__name__)

RC = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
    "lines.markersize": 4,
}

# One colour per algorithm and per bound, the same in every figure.
COLORS = {
    "rtn": "#7f7f7f",
    "optq": "#1f77b4",
    "optq_stochastic": "#17becf",
    "optq_decreasing": "#393b79",
    "qronos": "#d62728",
    "qronos_ls": "#ff7f0e",
    "qronos_stochastic": "#e7969c",
    "qronos_s025": "#6baed6",
    "qronos_s05": "#2ca02c",
    "qronos_s075": "#fdae6b",
    "qronos_auto": "#9467bd",
    "qronos_auto_lam": "#e377c2",
    "B1": "#2ca02c",
    "B2": "#9467bd",
    "B3": "#8c564b",
    "S1": "#bcbd22",
    "S2": "#e377c2",
    "S3": "#8c564b",
    "Q1": "#d62728",
    "Q2": "#1f77b4",
    "Q3": "#ff7f0e",
    "floor": "#000000",
}
LABELS = {
    "rtn": "RTN",
    "optq": "OPTQ",
    "optq_stochastic": "stochastic OPTQ",
    "optq_decreasing": "OPTQ (decreasing norm)",
    "qronos": "Qronos (paper)",
    "qronos_ls": "Qronos (LS first)",
    "qronos_stochastic": "stochastic Qronos",
    "qronos_s025": "Qronos (LS first), a = 0.25",
    "qronos_s05": "QEP (LS first, a = 0.5)",
    "qronos_s075": "Qronos (LS first), a = 0.75",
    "qronos_auto": "Qronos (LS first), a chosen",
    "qronos_auto_lam": "Qronos (LS first), a and damping chosen",
}
FAMILIES = ["gaussian", "low_rank", "heavy_tailed", "correlated", "npz", "real"]


def figure(ncols: int = 1, nrows: int = 1, width: float = 3.4, height: float = 2.7, **kw):
    """A figure with the shared style and ``nrows x ncols`` axes of the given size (inches)."""
    plt.rcParams.update(RC)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             squeeze=False, constrained_layout=True, **kw)
    return fig, axes.ravel()


def save(fig, name: str, table: pd.DataFrame, out_dir: str = "figures") -> list[str]:
    """Write ``<name>.png``, ``<name>.pdf`` and ``<name>.csv`` into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{name}.{ext}") for ext in ("png", "pdf", "csv")]
    # Fixed metadata: re-running on the same records gives the same PDF bytes.
    fig.savefig(paths[0], metadata={"Software": None})
    fig.savefig(paths[1], metadata={"Creator": None, "Producer": None, "CreationDate": None})
    plt.close(fig)
    table.to_csv(paths[2], index=False, float_format="%.6g")
    log.info("wrote %s", ", ".join(paths))
    return paths
