"""Write one run of the model benchmark: the Markdown report and ``<stem>.{csv,md,json}``.

The tables of the whole model (`MODEL_COLS`, its ratios to ptq.optq, the quantizer time per
block from `per_block`), of torch's threads and of the large layer.
"""

from __future__ import annotations

import os

import pandas as pd

from experiments.bench.report import md_table, write_md_json
from experiments.bench.whole_model import THREADS_REPEATS, method_label
from experiments.timing import PEAK_RSS_METHOD

MODEL_COLS = [
    ("method", "method"), ("layers", "layers"), ("m", "m (tokens)"), ("total_s", "total [s]"),
    ("quantizer_s", "quantizer [s]"), ("forward_s", "forward + capture [s]"),
    ("measure_s", "measure [s]"), ("quantizer_share", "quantizer / total"),
    ("peak_mib", "peak RSS [MiB]"), ("warmup_s", "warm-up, 1 block [s]"),
    ("perplexity", "held-out ppl"), ("mean_rel_err", "mean rel_err"),
    ("codes_equal_mean", "codes = ptq.optq (mean)"), ("codes_equal_min", "(min layer)"),
    ("own_zero_diffs", "own-grid zero diffs"),
]
RATIO_COLS = [("method", "method"), ("total_over_optq", "total / optq"),
              ("quantizer_over_optq", "quantizer / optq"), ("peak_mib_over_optq", "peak / optq")]
THREAD_COLS = [("N", "N"), ("n", "n"), ("m", "m"), ("optq_s", "ptq.optq [s]"),
               ("torch_1_thread_s", "torch, 1 thread [s]"),
               ("torch_default_s", "torch, default threads [s]"),
               ("torch_default_threads", "default threads")]
LARGE_COLS = [
    ("algorithm", "algorithm"), ("N", "N"), ("n", "n"), ("m", "m"), ("first_s", "first call [s]"),
    ("second_s", "second call [s]"), ("compile_s", "first - second [s]"),
    ("peak_mib", "peak RSS above inputs [MiB]"), ("inputs_mib", "inputs [MiB]"),
    ("counted_gflops", "(n N^2 + m N^2) / t [GFLOP/s]"),
]


def per_block(layers: list[dict], torch_threads: int | None = None) -> list[dict]:
    """Quantizer seconds per block (its 7 layers summed), per method: median, lower quartile,
    fastest and slowest block. On a shared machine another process's load comes and goes
    during a run; the lower quartile over the blocks is the time of a block when it did not
    interfere, and ``n_blocks`` times it estimates the quantizer total without that load."""
    if not layers:
        return []
    df = pd.DataFrame(layers)
    rows = []
    for method, d in df.groupby("method", sort=False):
        t = d.groupby("layer")["seconds"].sum()
        rows.append({"method": method_label(method, torch_threads), "blocks": len(t),
                     "median_s": t.median(), "q25_s": t.quantile(0.25), "min_s": t.min(),
                     "max_s": t.max(),
                     "q25_total_s": len(t) * t.quantile(0.25), "sum_s": t.sum()})
    return rows


BLOCK_COLS = [("method", "method"), ("blocks", "blocks"), ("median_s", "median [s]"),
              ("q25_s", "lower quartile [s]"), ("min_s", "fastest [s]"),
              ("max_s", "slowest [s]"), ("sum_s", "sum = quantizer [s]"),
              ("q25_total_s", "blocks x lower quartile [s]")]


def markdown(res: dict, command: str, note: str = "") -> str:
    o, env, rows = res["options"], res["env"], res["model"]
    out = [
        "# ptq at scale: a whole model and one large layer\n",
        f"Command: `{command}`\n",
        f"{note}\n" if note else "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + "\n",
        "## Whole model: SmolLM2-135M, every linear layer in forward order\n",
        (f"{o['calib']} calibration windows of {o['length']} tokens, {o['bits']} bits, per-neuron "
         "min-max grid, natural order, percdamp 0.01, block size "
         f"{o['block_size']}, one run per method after a one-block warm-up; held-out perplexity "
         f"on {o['heldout']} windows (full precision: "
         f"{rows[0]['fp_perplexity'] if rows else float('nan'):.3f}).\n"),
        md_table(rows, MODEL_COLS),
        "\n" + md_table([r for r in rows if "total_over_optq" in r], RATIO_COLS),
        "\n### Quantizer time per block\n",
        md_table(per_block(res["layers"], o["torch_threads"]), BLOCK_COLS),
        ("\nThe quantizer seconds of each block's 7 layers summed, over the blocks of each run: "
         "a process sharing the machine slows the blocks it overlaps, and the lower quartile "
         "is a block's time without it (see `per_block`).\n"),
        ("\nquantizer = the driver's per-layer `seconds` summed (the quantizer call and the wait "
         "for its Q; torch: X_hat^T X_hat, the min-max grid and the GPTQ loop in torch); "
         "forward + capture = total - quantizer - measure (both copies' forward passes, the "
         "capture of X and X_hat); measure = the driver's per-layer error measurement. The "
         "checks run in the on_layer hook (on the grid for every layer; torch: ptq.optq on "
         "the same X_hat, W and grid, codes compared) are timed and left out of the total. "
         "torch quantizes on the driver's grid; \"own-grid zero diffs\" counts the neurons, "
         "over all layers, where torch's own min-max fit would have put the zero point one "
         "step away (a tie -xmin/scale = k + 1/2 broken by float rounding). "
         f"Peak: {PEAK_RSS_METHOD}; above the loaded model "
         f"({rows[0]['rss_before_mib'] if rows else float('nan'):.0f} MiB resident before).\n"),
        "### torch's threads\n",
        md_table(res.get("threads", []), THREAD_COLS),
        (f"\nOne synthetic layer per shape, m = {o['calib'] * o['length']} rows, medians of "
         f"{THREADS_REPEATS} calls after a warm-up (torch: X^T X in torch included). The "
         f"whole-model torch row ran with torch_threads = {o['torch_threads']} (None: torch's "
         "default).\n"),
        "## One large layer\n",
        md_table(res["large"], LARGE_COLS),
        ("\nSynthetic standard normal X, X_hat = X + 0.1 noise and W, float32, "
         f"{o['bits']}-bit per-neuron min-max grid, block size {o['block_size']}; m = "
         f"{o['layer_m']} rows. Second call: peak resident memory above the inputs, "
         "measured as in the whole-model table. counted flops: the benchmark's limit "
         "(OPTQ updates n N^2 + symmetric Gram m N^2).\n"),
    ]
    if res["skipped"]:
        out.append("## Skipped\n")
        out += [f"- {k}: {v}\n" for k, v in res["skipped"].items()]
    return "\n".join(s for s in out if s)


def write(res: dict, out_dir: str, command: str, note: str = "", stem: str = "bench_model"):
    """``<stem>.csv`` (the whole-model rows, part "model", and the large-layer rows, part
    "layer"), ``<stem>.md`` and ``<stem>.json`` (everything, per-layer rows included)."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, stem)
    table = [{"part": "model", **r} for r in res["model"]] + [
        {"part": "layer", **r} for r in res["large"]]
    pd.DataFrame(table).to_csv(base + ".csv", index=False)
    return [base + ".csv", *write_md_json(base, markdown(res, command, note),
                                          {**res, "command": command, "note": note})]
