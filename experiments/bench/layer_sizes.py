"""The layer-size benchmark: ptq at each size N against the peers and the machine limit.

`run` makes every measurement of one run and returns them as plain rows (dicts): the ptq
parts here (`measure_ptq`, `block_sweep`), the peers (`peer_timing`), the agreement checks
(`agreement`) and the theory timing (`theory_timing`); `derive` adds the limit and ratios.

Per size N (m = 2N calibration rows, n = N neurons, float32, 4-bit GPTQ min-max grid):

* ``ptq.optq`` from X (Gram included) and its parts: the symmetric Gram ``X^T X``, the
  "from H" part (regularise + order + one Cholesky + kernel + mapping back), the kernel alone;
* ``ptq.qronos`` from X and X_hat, and its extra parts (``X_hat^T X``, the least-squares fit);
* the canonical PyTorch GPTQ (`peers.torch_gptq`) from X (``X^T X`` in torch included), its
  ``X^T X`` alone and its three factorisations alone;
* qwix's GPTQ eagerly (H included), first call and steady state, where it fits the budget;
* Brevitas' Qronos (`peers.brevitas_qronos`) from X and X_hat (its hooks accumulating H and
  G included), where it fits its budget, and its agreement with ``ptq.qronos``;
* the machine: the float32 matrix-product rate and one Cholesky of H timed alone, giving

      limit(N) = t_chol(N) + (n N^2 + m N^2) / rate

  ``n N^2`` = the OPTQ updates (``sum_t 2 n (t - 1)`` flops: every strictly triangular
  coefficient times an n-row, once) and ``m N^2`` = the symmetric Gram ``X^T X`` (half of a
  general product's ``2 m N^2``, what a SYRK does); ``rate`` = GFLOP/s of a square float32
  ``jnp.dot`` (precision HIGHEST) measured at the size nearest to N, in the same run.
  Rounding, copies and the Cholesky flops (timed instead) are not counted: it is what OPTQ
  from X would take if every product ran at the measured matrix-product rate.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import ptq
from experiments import timing
from experiments.bench import flops, peers
from experiments.bench.agreement import agreement, brevitas_agreement
from experiments.bench.options import Options, make_data, timer
from experiments.bench.peer_timing import measure_brevitas, measure_qwix, measure_torch
from experiments.bench.theory_timing import theory_times
from ptq import gather, gram
from ptq._optq import _natural_factor, _ordered_factor, run_ordered
from ptq._qronos import _least_squares
from ptq.kernel import quantize_ordered

# ----------------------------------------------------------------------------- ptq
OTHER_ORDERS = ("decreasing_norm", "random")  # timed besides the natural order


def _damp(H) -> float:
    """The damping ptq resolves by default: percdamp 0.01 times the mean of diag(H)."""
    return 0.01 * float(jnp.mean(jnp.diagonal(H)))


def measure_ptq(N: int, opt: Options, row: dict) -> dict:
    """Time ptq.optq / ptq.qronos and their parts at size N; fills ``row``; returns state."""
    X, X_hat, W = make_data(N, opt.seed)
    m, B = X.shape[0], min(opt.block_size, N)
    Xd, Xhd, Wd = (jax.device_put(A) for A in (X, X_hat, W))
    grid = ptq.Grid.fit(Wd, opt.bits, kind="asymmetric", per="neuron")
    row["dtype"] = str(Xd.dtype)

    t = timer(opt)(lambda: ptq.optq(Xd, Wd, grid, block_size=B).Q)
    row.update(optq_s=t.median, optq_best_s=t.best, optq_first_s=t.first,
               optq_compile_s=t.first - t.median)
    t = timer(opt)(lambda: ptq.qronos(Xd, Xhd, Wd, grid, block_size=B).Q)
    row.update(qronos_s=t.median, qronos_best_s=t.best, qronos_first_s=t.first,
               qronos_compile_s=t.first - t.median)
    # The other processing orders pay for gathering H, W and the grid into that order and
    # scattering the results back (`derive` divides by the natural order's median).
    for order in OTHER_ORDERS:
        row[f"optq_{order}_s"] = timer(opt)(
            lambda order=order: ptq.optq(Xd, Wd, grid, block_size=B, order=order).Q).median

    # The parts of optq, with the arguments ptq.optq builds (natural order, percdamp 0.01).
    XtX = gram.gram_sym(Xd)
    lam = _damp(XtX)
    perm = np.arange(N)
    p = gather.gather_index(perm)  # None: the natural order, as ptq.optq passes it
    row["gram_s"] = timer(opt)(lambda: gram.gram_sym(Xd)).median

    def from_h():
        R = _ordered_factor(XtX, lam, p)
        return run_ordered(R, Wd, grid, perm=perm, lam=lam, m=m, name="X", rounding="nearest",
                           key=None, block_size=B).Q

    row["optq_from_h_s"] = timer(opt)(from_h).median
    R = _ordered_factor(XtX, lam, p)
    kernel = _kernel_fn(R, Wd, grid, B)
    row["kernel_s"] = timer(opt)(kernel).median
    H = gram.regularise(XtX, lam)
    row["chol_s"] = timing.cholesky_time(H, opt.repeats, opt.min_time).median
    row["qronos_cross_gram_s"] = timer(opt)(lambda: gram.gram(Xhd, Xd)).median
    XhXh, XhX = gram.gram_sym(Xhd), gram.gram(Xhd, Xd)
    lam_h = _damp(XhXh)
    row["qronos_lsq_s"] = timer(opt)(lambda: _least_squares(XhXh, XhX, Wd, lam_h)).median

    mib = 2.0**20
    row["optq_peak_mb"] = timing.peak_memory(lambda: ptq.optq(Xd, Wd, grid, block_size=B).Q) / mib
    row["qronos_peak_mb"] = (
        timing.peak_memory(lambda: ptq.qronos(Xd, Xhd, Wd, grid, block_size=B).Q) / mib
    )
    dev = timing.device_peak()
    row["device_peak_mb"] = dev / 2**20 if dev is not None else math.nan

    # Compile times of the jitted pieces, from cleared caches (lower + compile each). On the
    # CPU the two Gram products are NumPy's BLAS (ptq.gram.gram_sym / gram): nothing to
    # compile, reported as NaN.
    jax.clear_caches()
    pieces = {
        "gram_sym": lambda: gram._gram_sym_xla.lower(Xd),
        "factor": lambda: _natural_factor.lower(XtX, lam),
        "kernel": lambda: _kernel_lowering(R, Wd, grid, B),
        "cross_gram": lambda: gram._gram_xla.lower(Xhd, Xd),
        "least_squares": lambda: _least_squares.lower(XhXh, XhX, Wd, lam_h),
    }
    if gram._on_host(Xd, Xhd):
        row["compile_gram_sym_s"] = row["compile_cross_gram_s"] = math.nan
        del pieces["gram_sym"], pieces["cross_gram"]
    total = 0.0
    for name, lower in pieces.items():
        t0 = time.perf_counter()
        compiled = lower().compile()
        row[f"compile_{name}_s"] = dt = time.perf_counter() - t0
        total += dt
        if name == "kernel":
            row["kernel_xla_mb"] = _xla_bytes(compiled) / 2**20
    row["compile_pieces_s"] = total
    return {"X": X, "X_hat": X_hat, "W": W, "grid": grid, "B": B}


def _kernel_fn(R, Wd, grid, B):
    return lambda: quantize_ordered(
        R, Wd, grid, None, None, block_size=B, stochastic=False, first_override=False
    )


def _kernel_lowering(R, Wd, grid, B):
    return quantize_ordered.lower(
        R, Wd, grid, None, None, block_size=B, stochastic=False, first_override=False
    )


def _xla_bytes(compiled) -> float:
    """Arguments + outputs + temporaries of a compiled program (XLA's memory analysis)."""
    try:
        a = compiled.memory_analysis()
        return float(a.argument_size_in_bytes + a.output_size_in_bytes + a.temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        return math.nan


def block_sweep(N: int, blocks, opt: Options) -> list[dict]:
    """Kernel time (from R, the only part B changes) and optq end to end, per block size."""
    X, _, W = make_data(N, opt.seed)
    Xd, Wd = jax.device_put(X), jax.device_put(W)
    grid = ptq.Grid.fit(Wd, opt.bits, kind="asymmetric", per="neuron")
    XtX = gram.gram_sym(Xd)
    lam = _damp(XtX)
    R = _ordered_factor(XtX, lam, jnp.arange(N))
    rows = []
    for B in blocks:
        if B > N:
            continue
        k = timer(opt)(_kernel_fn(R, Wd, grid, B))
        e = timer(opt)(lambda B=B: ptq.optq(Xd, Wd, grid, block_size=B).Q)
        rows.append({"N": N, "block_size": B, "kernel_s": k.median, "kernel_best_s": k.best,
                     "optq_s": e.median, "optq_best_s": e.best})
    return rows



# ----------------------------------------------------------------------------- driver
def rate_for(N: int, matmul: list[dict]) -> float:
    """GFLOP/s of the square product measured at the size nearest to N (log scale)."""
    best = min(matmul, key=lambda r: abs(math.log(r["size"] / N)))
    return float(best["gflops"])


def derive(rows: list[dict], matmul: list[dict]) -> None:
    """Add the derived columns (limit, ratios, compile ratios) to the measured rows, in place.

    Only measured numbers go in, so a saved run can be re-derived (``--report-only``).
    """
    for row in rows:
        N = row["N"]
        row["rate_gflops"] = rate_for(N, matmul)
        row["limit_flops"] = flops.optq_limit(row["m"], N, row["n"])
        row["limit_s"] = row["chol_s"] + row["limit_flops"] / (row["rate_gflops"] * 1e9)
        row["optq_over_limit"] = row["optq_s"] / row["limit_s"]
        row["optq_best_over_limit"] = row["optq_best_s"] / row["limit_s"]
        row["qronos_over_optq"] = row["qronos_s"] / row["optq_s"]
        for order in OTHER_ORDERS:
            if f"optq_{order}_s" in row:  # runs saved before these were timed have none
                row[f"optq_{order}_over_natural"] = row[f"optq_{order}_s"] / row["optq_s"]
        row["qronos_limit_s"] = row["chol_s"] + (flops.qronos_limit(row["m"], N, row["n"])
                                                 / (row["rate_gflops"] * 1e9))
        row["qronos_over_limit"] = row["qronos_s"] / row["qronos_limit_s"]
        for peer in ("torch", "qwix"):
            if f"{peer}_s" in row and not math.isnan(row[f"{peer}_s"]):
                row[f"{peer}_over_optq"] = row[f"{peer}_s"] / row["optq_s"]
        if "brevitas_qronos_s" in row and not math.isnan(row["brevitas_qronos_s"]):
            row["brevitas_over_qronos"] = row["brevitas_qronos_s"] / row["qronos_s"]
        row["compile_ratio_vs_first"] = row["optq_compile_s"] / rows[0]["optq_compile_s"]
        row["compile_pieces_ratio_vs_first"] = (
            row["compile_pieces_s"] / rows[0]["compile_pieces_s"]
        )


def run(opt: Options, progress=lambda msg: None) -> dict:
    """Run every measurement of ``opt``; returns ``{"env", "options", "rows", "matmul",
    "sweep", "agreement", "brevitas_agreement", "theory", "skipped"}`` (lists of dict rows)."""
    env = timing.environment()
    skipped = {}
    for peer, why in (("torch", peers.torch_missing()), ("qwix", peers.qwix_missing()),
                      ("brevitas", peers.brevitas_missing())):
        if peer in opt.peers and why:
            skipped[peer] = why
    use = [p for p in opt.peers if p not in skipped]
    if "torch" in use or "brevitas" in use:  # Brevitas runs on torch
        import torch

        env["torch"] = torch.__version__
        env["torch_device"] = "cpu"
    for peer in ("qwix", "brevitas"):
        if peer in use:
            import importlib.metadata

            env[peer] = importlib.metadata.version(peer)
    progress(f"environment: {env}")

    rate_sizes = sorted({min(s, 4096) for s in opt.sizes} | {min(1024, max(opt.sizes))})
    rates = timing.matmul_rate(rate_sizes, opt.repeats, opt.min_time)
    matmul = [{"size": s, "gflops": g} for s, g in rates.items()]
    progress(f"matmul GFLOP/s: {rates}")

    rows, qwix_history, brevitas_history = [], [], []
    for N in opt.sizes:
        row = {"N": N, "m": 2 * N, "n": N, "bits": opt.bits, "block_size": min(opt.block_size, N)}
        state = measure_ptq(N, opt, row)
        progress(f"N={N} ptq: optq {row['optq_s']:.3f} s, qronos {row['qronos_s']:.3f} s")
        if "torch" in use:
            measure_torch(N, state, opt, row)
            progress(f"N={N} torch GPTQ {row['torch_s']:.3f} s")
        if "qwix" in use:
            measure_qwix(N, state, opt, row, qwix_history)
            progress(f"N={N} qwix {row.get('qwix_s', math.nan):.3f} s ({row['qwix_note']})")
        if "brevitas" in use:
            measure_brevitas(N, state, opt, row, brevitas_history)
            progress(f"N={N} brevitas Qronos {row.get('brevitas_qronos_s', math.nan):.3f} s "
                     f"({row['brevitas_note']})")
        rows.append(row)
    derive(rows, matmul)

    sweep = []
    for N in opt.sweep_sizes:
        sweep += block_sweep(N, opt.sweep_blocks, opt)
        progress(f"block sweep N={N}: " + ", ".join(
            f"B={r['block_size']}: {r['kernel_s']:.3f}" for r in sweep if r["N"] == N))

    agree = []
    if opt.check_n and "torch" in use:
        for dtype in ("float32", "float64"):
            agree.append(agreement(opt.check_n, opt, dtype))
            progress(f"agreement: {agree[-1]}")
    elif opt.check_n:
        skipped["agreement"] = skipped.get("torch", "torch peer not requested")
    brevitas_agree = []
    if opt.check_n and "brevitas" in use:
        for dtype in ("float32", "float64"):
            brevitas_agree += brevitas_agreement(opt.check_n, opt, dtype)
            progress(f"brevitas agreement: {brevitas_agree[-2:]}")
    elif opt.check_n:
        skipped["brevitas_agreement"] = skipped.get("brevitas", "brevitas peer not requested")

    theory_rows = []
    if opt.theory_n:
        match = [r for r in rows if r["N"] == opt.theory_n]
        if match:
            theory_rows = theory_times(opt.theory_n, opt, match[0]["optq_s"], match[0]["qronos_s"])
            progress(f"theory at N={opt.theory_n}: done")
        else:
            skipped["theory"] = f"theory_n = {opt.theory_n} is not among the sizes {opt.sizes}"
    return {
        "env": env, "options": dataclasses.asdict(opt), "rows": rows, "matmul": matmul,
        "sweep": sweep, "agreement": agree, "brevitas_agreement": brevitas_agree,
        "theory": theory_rows, "skipped": skipped,
    }
