"""Write one benchmark run: CSV tables, a Markdown report, a JSON dump and the figure.

Files (``<out>/<stem>...``): ``.csv`` (one row per N), ``_sweep.csv``, ``_matmul.csv``,
``_agreement.csv``, ``_brevitas_agreement.csv``, ``_theory.csv``, ``.md`` (all tables and
the definitions), ``.json``
(everything, with the environment and options) and ``.png`` / ``.pdf`` (time vs N).

Shared with the other benchmarks (`intmm`, `model`): `md_table`, `write_md_json` (the report
and the JSON record), `command_line` (the command a run records) and `load_run` (a saved
run, for ``--report-only``).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys

import pandas as pd

from experiments import timing
from experiments.bench.options import Options

MAIN = [
    ("N", "N"), ("optq_s", "ptq.optq [s]"), ("optq_best_s", "optq best [s]"),
    ("optq_from_h_s", "optq from H [s]"),
    ("kernel_s", "kernel [s]"), ("gram_s", "X^T X [s]"), ("chol_s", "Cholesky [s]"),
    ("rate_gflops", "rate [GFLOP/s]"), ("limit_s", "limit [s]"),
    ("optq_over_limit", "optq / limit"),
    ("optq_best_over_limit", "optq best / limit"),
    ("qronos_s", "ptq.qronos [s]"), ("qronos_over_optq", "qronos / optq"),
    ("torch_s", "torch GPTQ [s]"), ("torch_best_s", "torch best [s]"),
    ("torch_from_h_s", "torch from H [s]"),
    ("torch_gram_s", "torch X^T X [s]"), ("torch_factor_s", "torch 3 factorisations [s]"),
    ("torch_over_optq", "torch / optq"), ("qwix_s", "qwix eager [s]"),
    ("qwix_first_s", "qwix first call [s]"), ("qwix_over_optq", "qwix / optq"),
    ("brevitas_qronos_s", "Brevitas Qronos [s]"), ("brevitas_over_qronos", "brevitas / qronos"),
]
QRONOS = [
    ("N", "N"), ("qronos_s", "ptq.qronos [s]"), ("gram_s", "X_hat^T X_hat (sym) [s]"),
    ("qronos_cross_gram_s", "X_hat^T X [s]"), ("qronos_lsq_s", "factor + G W + 2 solves [s]"),
    ("kernel_s", "kernel [s]"), ("qronos_over_optq", "qronos / optq"),
    ("qronos_limit_s", "qronos limit [s]"), ("qronos_over_limit", "qronos / its limit"),
    ("brevitas_qronos_s", "Brevitas Qronos [s]"), ("brevitas_gram_s", "Brevitas H, G hooks [s]"),
    ("brevitas_update_s", "Brevitas update [s]"), ("brevitas_over_qronos", "brevitas / qronos"),
]
BREVITAS_AGREEMENT = [
    ("N", "N"), ("dtype", "dtype"), ("ptq_variant", "ptq.qronos variant"),
    ("grid_scale_max_rel_diff", "scale max rel diff"), ("grid_zero_max_diff", "zero max diff"),
    ("codes_equal_frac", "codes equal"), ("first_codes_equal_frac", "first feature's codes equal"),
    ("neurons_equal_frac", "neurons all equal"), ("err_ptq", "ptq rel err"),
    ("err_brevitas", "Brevitas rel err"), ("err_rel_diff", "err rel diff"),
]
THEORY = [
    ("N", "N"), ("function", "function"), ("seconds", "seconds"),
    ("flops_formula", "flops counted"), ("gflop", "GFLOP"),
    ("limit64_s", "float64 limit [s]"), ("over_limit64", "ratio to limit"),
    ("vs_quantization", "/ quantization"), ("note", "note"),
]
ORDERS = [
    ("N", "N"), ("optq_s", "natural [s]"), ("optq_decreasing_norm_s", "decreasing_norm [s]"),
    ("optq_decreasing_norm_over_natural", "decreasing / natural"),
    ("optq_random_s", "random [s]"), ("optq_random_over_natural", "random / natural"),
]
COMPILE = [
    ("N", "N"), ("optq_first_s", "optq first call [s]"),
    ("optq_compile_s", "optq first - steady [s]"), ("compile_ratio_vs_first", "vs smallest N"),
    ("qronos_compile_s", "qronos first - steady [s]"), ("compile_gram_sym_s", "gram_sym [s]"),
    ("compile_factor_s", "factor [s]"), ("compile_kernel_s", "kernel [s]"),
    ("compile_cross_gram_s", "cross gram [s]"), ("compile_least_squares_s", "least squares [s]"),
    ("compile_pieces_s", "all pieces [s]"),
    ("compile_pieces_ratio_vs_first", "pieces vs smallest N"),
]
MEMORY = [
    ("N", "N"), ("optq_peak_mb", "optq peak [MiB]"), ("qronos_peak_mb", "qronos peak [MiB]"),
    ("torch_peak_mb", "torch GPTQ peak [MiB]"), ("kernel_xla_mb", "kernel XLA args+out+temp [MiB]"),
    ("device_peak_mb", "device peak [MiB]"),
]


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        a = abs(v)
        return f"{v:.3g}" if a < 10 else f"{v:.1f}" if a < 1000 else f"{v:.0f}"
    return str(v)


def md_table(rows: list[dict], cols: list[tuple[str, str]] | None = None) -> str:
    if not rows:
        return "(none)\n"
    cols = cols or [(k, k) for k in rows[0]]
    cols = [(k, h) for k, h in cols if any(k in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def command_line(prog: str, argv: list[str] | None) -> str:
    """The command a run records: ``prog`` and its arguments (``sys.argv[1:]`` for None),
    shell-quoted."""
    argv = sys.argv[1:] if argv is None else argv
    return (prog + " " + " ".join(shlex.quote(x) for x in argv)).strip()


def load_run(path: str, note: str = "") -> tuple[dict, str, str]:
    """A run saved as JSON: (its results without command and note, its command, ``note`` or
    else its saved note)."""
    with open(path) as f:
        res = json.load(f)
    command, note = res.pop("command"), note or res.pop("note", "")
    res.pop("note", None)
    return res, command, note


def write_md_json(base: str, text: str, record: dict) -> list[str]:
    """``<base>.md`` (the report ``text``) and ``<base>.json`` (``record``); their paths."""
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump(record, f, indent=1, default=str)
    return [base + ".md", base + ".json"]


def markdown(res: dict, command: str, note: str) -> str:
    env, rows, opt = res["env"], res["rows"], Options(**_tuples(res["options"]))
    out = [
        "# ptq benchmark\n",
        f"Command: `{command}`\n",
        f"{note}\n" if note else "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + "\n",
        (f"Shapes: m = 2N calibration rows, n = N neurons, {rows[0]['dtype'] if rows else '?'}, "
         f"{opt.bits}-bit per-neuron min-max asymmetric grid (qwix: its symmetric absmax default), "
         f"natural order, percdamp 0.01, block size {opt.block_size}. Times are medians of "
         f"at least {opt.repeats} calls (more while they add up to under {opt.min_time:g} s) "
         f"after one warm-up call, \"best\" the fastest of them (qwix: {opt.qwix_repeats} "
         "after its first call), all in one process.\n"),
        "## Time\n",
        md_table(rows, MAIN),
        ("\nLimit = Cholesky of H timed alone + (n N^2 + m N^2) / rate(N): n N^2 flops for the "
         "OPTQ updates (each strictly triangular coefficient times an n-row, once), m N^2 for "
         "the symmetric Gram X^T X (half a general product, as a SYRK); rate(N) = GFLOP/s of "
         "a square float32 `jnp.dot` (precision HIGHEST) at the size nearest to N (table below). "
         "Rounding, copies and the Cholesky flops are not counted. \"optq from H\" = "
         "regularise + one Cholesky + kernel + mapping back (what remains once X^T X is formed); "
         "torch GPTQ = X^T X in torch + the canonical algorithm (three factorisations, Python "
         "loop over columns), \"torch from H\" = the difference of the two medians. "
         "Brevitas Qronos = `brevitas.graph.qronos.Qronos` through `gpfq_mode` on a "
         "`QuantLinear` (layer set-up, the two hooked passes accumulating H and G, "
         "`single_layer_update`; eager torch on the CPU), against ptq.qronos: "
         "\"brevitas / qronos\" is its time over ptq's, like \"torch / optq\".\n"),
        "## Where Qronos' time goes\n",
        md_table(rows, QRONOS),
        ("\nQronos factorises Hh = X_hat^T X_hat + lam I like OPTQ, and also forms "
         "G = X_hat^T X (2 m N^2 flops, a general product), G W (2 N^2 n) and two triangular "
         "solves (2 n N^2) for the least-squares start wt = Hh^{-1} G W: about "
         "11 N^3 flops besides the Cholesky against OPTQ's 3 N^3 at m = 2N, n = N. Its own "
         "limit, \"qronos limit\", is OPTQ's limit plus those products at the same rate: the "
         "measured Cholesky + (3 m N^2 + 5 n N^2) / rate. Brevitas forms H and G "
         "(two general products) in its forward hooks, then inverts Hh, re-fits the later "
         "weights after step 1 and runs GPTQ's loop over columns in `single_layer_update`.\n"),
        "## Processing order\n",
        md_table(rows, ORDERS),
        ("\nptq.optq from X in GPTQ's act_order (decreasing column norm) and a random order: "
         "H, W and the grid are gathered into that order before the factorisation and the "
         "results scattered back; the natural order gathers nothing.\n"),
        "## Compile time\n",
        md_table(rows, COMPILE),
        ("\n\"first - steady\" = first call at a new shape minus the steady median. The pieces "
         "are `lower(...).compile()` of each jitted function after `jax.clear_caches()`.\n"),
        "## Peak memory\n",
        md_table(rows, MEMORY),
        (f"\nMethod: {timing.MEMORY_METHOD}. \"device peak\" is the accelerator's "
         "`peak_bytes_in_use` (blank on CPU). The XLA column is the compiled kernel's own "
         "memory analysis.\n"),
        "## Matrix-product rate\n",
        md_table(res["matmul"], [("size", "size"), ("gflops", "GFLOP/s")]),
        "\n## Block size sweep\n",
        md_table(res["sweep"], [("N", "N"), ("block_size", "B"), ("kernel_s", "kernel [s]"),
                                ("kernel_best_s", "kernel best [s]"), ("optq_s", "ptq.optq [s]"),
                                ("optq_best_s", "optq best [s]")]),
        "\n## Same work: ptq.optq vs the torch GPTQ\n",
        md_table(res["agreement"]),
        ("\nSame min-max grid (scale and zero compared above), natural order, percdamp 0.01. "
         "Codes can differ only where float rounding moves a value across a rounding boundary "
         "(ptq rounds ties up, torch to even), and a flipped code changes the later steps of its "
         "neuron; codes_equal_frac is the fraction of identical integer codes.\n"),
        "\n## Same work: ptq.qronos vs Brevitas' Qronos\n",
        md_table(res.get("brevitas_agreement", []), BREVITAS_AGREEMENT),
        ("\nBrevitas' `Qronos` (through `gpfq_mode`, see `experiments/bench/peers.py`) and "
         "ptq.qronos on the same X, X_hat, W, the same 4-bit per-neuron min-max grid (Brevitas' "
         "`ShiftedUint8WeightPerChannelFloat`, its scale and zero point fixed from W; the "
         "differences above), the same damping lam = 0.01 mean(diag(X_hat^T X_hat)) (Brevitas' "
         "alpha set to give it), natural order, each in the dtype shown. One row per ptq "
         "variant: Brevitas implements the one whose codes agree (step 1 rounds the correction "
         "z_1, the paper's form); the other differs at the first feature and, through the "
         "re-fit, in the rest of those neurons. Errors are ||X W - X_hat Q||_F / ||X W||_F.\n"),
        "\n## Theory bounds\n",
        md_table(res["theory"], THEORY),
        ("\n\"/ quantization\" divides by ptq.optq (OPTQ and stochastic bounds) or ptq.qronos "
         "(Qronos bounds, float32) at the same N, from the table above. \"float64 limit\" = "
         "the flops the function does / NumPy's float64 matrix-product rate measured in the "
         "first row (2 N^3 / its median), and \"ratio to limit\" = seconds / limit. Counts "
         "(experiments/bench/flops.py, read from theory/; X, X_hat (m, N), W (N, n)): "
         "general product 2abc, Gram X^T X by SYRK m N^2, Cholesky and triangular inverse "
         "N^3/3 each, triangular solve N^2 per right-hand side, the column norms every call "
         "starts from 2mN. Element-wise work, copies and the float32 to float64 conversion "
         "are not counted, so the O(m N) rows are memory-bound passes whose ratio is large "
         "by nature, and LAPACK's potrf/trtri/trsm run below the product rate, so the "
         "limit is a floor.\n"),
    ]
    if res["skipped"]:
        out.append("\n## Skipped\n")
        out += [f"- {k}: {v}\n" for k, v in res["skipped"].items()]
    for peer, title in (("qwix", "qwix"), ("brevitas", "Brevitas")):
        notes = [f"- N = {r['N']}: {title} {r[peer + '_note']}\n" for r in rows
                 if peer + "_note" in r]
        if notes:
            out.append(f"\n## {title}\n")
            out += notes
    return "\n".join(s for s in out if s)


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def figure(res: dict, path_stem: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.DataFrame(res["rows"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series = [
        ("optq_s", "ptq.optq (from X)", "C0", "o-"),
        ("optq_from_h_s", "ptq.optq from H", "C0", "o:"),
        ("qronos_s", "ptq.qronos", "C1", "s-"), ("torch_s", "PyTorch GPTQ (from X)", "C3", "^-"),
        ("torch_from_h_s", "PyTorch GPTQ from H", "C3", "^:"),
        ("qwix_s", "qwix GPTQ, eager", "C4", "v-"),
        ("brevitas_qronos_s", "Brevitas Qronos", "C5", "D-"),
        ("limit_s", "machine limit", "k", "--"),
    ]
    for col, label, color, style in series:
        if col in df and df[col].notna().any():
            d = df[["N", col]].dropna()
            ax.plot(d["N"], d[col], style, color=color, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("N (features = neurons; m = 2N rows)")
    ax.set_ylabel("time [s] (median)")
    env = res["env"]
    ax.set_title(f"{res['rows'][0]['dtype']}, {res['options']['bits']}-bit, {env['device']}",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path_stem + ".png", dpi=150)
    fig.savefig(path_stem + ".pdf")
    plt.close(fig)


def write(res: dict, out_dir: str, stem: str, command: str, note: str = "") -> list[str]:
    """Write every file of one run; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, stem)
    paths = []
    for key, suffix in (("rows", ""), ("sweep", "_sweep"), ("matmul", "_matmul"),
                        ("agreement", "_agreement"), ("brevitas_agreement", "_brevitas_agreement"),
                        ("theory", "_theory")):
        path = f"{base}{suffix}.csv"
        pd.DataFrame(res.get(key, [])).to_csv(path, index=False)
        paths.append(path)
    paths += write_md_json(base, markdown(res, command, note),
                           {**res, "command": command, "note": note})
    if res["rows"]:
        figure(res, base)
        paths += [base + ".png", base + ".pdf"]
    return paths
