"""The theory-bounds timing: the `theory` bounds (float64 NumPy) next to ptq's own time.

`theory_times` times each bound alone and what one run of each algorithm computes, at one size
N of the layer-size benchmark; `derive_theory` adds each row's float64 limit, its counted
flops (`flops.THEORY`) at NumPy's float64 matrix-product rate.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import ptq
import theory
from experiments import timing
from experiments.bench import flops
from experiments.bench.options import Options, make_data

THEORY_REPEATS = 3  # timed calls per theory function (NumPy: no compilation, no warm-up)


def theory_times(N: int, opt: Options, optq_s: float, qronos_s: float) -> list[dict]:
    """Time the `theory` bounds (float64 NumPy) at size N next to the quantization itself.

    Medians of `THEORY_REPEATS` calls on float64 copies of the benchmark's inputs. Besides
    each function alone, the rows "run: ..." time what `experiments.bounds.evaluate` computes
    for one run of each algorithm (one factorisation shared by every bound of the run), and
    "float64 matmul" gives NumPy's float64 matrix-product rate (GFLOP/s in the note), the
    rate the bounds are limited by.
    Each row is compared with ptq's float32 time (``vs_quantization``) and with its own
    float64 limit, its counted flops (`flops.THEORY`) at that rate (`derive_theory`).
    """
    X, X_hat, W = make_data(N, opt.seed)
    with jax.enable_x64(False):
        grid = ptq.Grid.fit(jnp.asarray(W), opt.bits, kind="asymmetric", per="neuron")
        r = np.asarray(ptq.optq(X, W, grid).r)
    step = np.asarray(grid.step, np.float64)
    # `theory` works in float64: the inputs are converted once here, as a float64 bounds pass
    # holds them (each call would otherwise copy X to float64 again).
    X, X_hat, W = (A.astype(np.float64) for A in (X, X_hat, W))
    rows = []

    def timed(name, fn, compare, note=""):
        runs = []
        for _ in range(THEORY_REPEATS):
            t0 = time.perf_counter()
            out = fn()
            runs.append(time.perf_counter() - t0)
        dt = statistics.median(runs)
        rows.append({"N": N, "function": name, "seconds": dt,
                     "vs_quantization": dt / compare if compare else float("nan"), "note": note})
        return out, dt

    # The float64 rate every limit divides by: a warm-up call, then repeated until the runs
    # add up to min_time (a lone small product is too short to time on a loaded machine).
    A = np.random.default_rng(opt.seed).standard_normal((N, N))
    dt = timing.time_call(lambda: A @ A, THEORY_REPEATS, min_time=opt.min_time).median
    rows.append({"N": N, "function": "float64 matmul (N, N) x (N, N)", "seconds": dt,
                 "vs_quantization": float("nan"), "note": f"{2 * N**3 / dt / 1e9:.0f} GFLOP/s"})
    f, _ = timed("factorise(X)", lambda: theory.factorise(X), optq_s,
                 "shared float64 factor of H")
    fh, _ = timed("factorise(X_hat)", lambda: theory.factorise(X_hat, name="X_hat"), qronos_s)
    timed("optq_l2_bound(r=Result.r)", lambda: theory.optq_l2_bound(X, step, r=r), optq_s,
          "reuses ptq's factor: O(m N)")
    timed("optq_l2_bound", lambda: theory.optq_l2_bound(X, step), optq_s, "own factorisation")
    timed("optq_l2_bound(factors)", lambda: theory.optq_l2_bound(X, step, factors=f), optq_s)
    timed("optq_weight_bound(factors)", lambda: theory.optq_weight_bound(X, W, step, factors=f),
          optq_s)
    timed("stochastic_l2_bound(factors)", lambda: theory.stochastic_l2_bound(X, step, factors=f),
          optq_s)
    timed("stochastic_linf_bound(factors)",
          lambda: theory.stochastic_linf_bound(X, step, factors=f), optq_s)
    timed("stochastic_weight_bound(factors)",
          lambda: theory.stochastic_weight_bound(X, W, step, factors=f), optq_s)
    timed("qronos_l2_bound(factors)",
          lambda: theory.qronos_l2_bound(X, X_hat, W, step, factors=fh), qronos_s)
    timed("optq_mismatch_l2_bound(factors)",
          lambda: theory.optq_mismatch_l2_bound(X, X_hat, W, step, factors=fh), qronos_s)
    timed("qronos_linf_bound(factors)",
          lambda: theory.qronos_linf_bound(X, X_hat, W, step, factors=fh), qronos_s)

    def optq_run():  # B1, B2, B3 (B2 is free here: N <= m)
        g = theory.factorise(X)
        return (theory.optq_l2_bound(X, step, factors=g), theory.optq_structural_bound(X, step),
                theory.optq_weight_bound(X, W, step, factors=g))

    def stochastic_run():  # S1, S2, S3
        g = theory.factorise(X)
        return (theory.stochastic_l2_bound(X, step, factors=g),
                theory.stochastic_linf_bound(X, step, factors=g),
                theory.stochastic_weight_bound(X, W, step, factors=g))

    timed("run: OPTQ (factorise + B1 + B2 + B3)", optq_run, optq_s, "what a sweep run computes")
    timed("run: stochastic OPTQ (factorise + S1 + S2 + S3)", stochastic_run, optq_s)
    timed("run: Qronos (factorise(X_hat) + Q1)", lambda: theory.qronos_l2_bound(X, X_hat, W, step),
          qronos_s)
    for row in rows:
        row.update(m=X.shape[0], n=W.shape[1])
    derive_theory(rows)
    return rows


def derive_theory(rows: list[dict]) -> None:
    """Add each theory row's float64 limit (`flops.THEORY`), in place.

    ``gflop`` = the row's counted flops; ``rate64_gflops`` = NumPy's float64 rate from the
    row "float64 matmul (N, N) x (N, N)" of the same run (``2 N^3`` / its median);
    ``limit64_s = flops / rate`` and ``over_limit64 = seconds / limit64_s``. Rows of saved
    runs without m, n take the benchmark's m = 2N, n = N; rows without a count are left as
    they are.
    """
    rate = {r["N"]: flops.gemm(r["N"], r["N"], r["N"]) / r["seconds"] for r in rows
            if r["function"] == "float64 matmul (N, N) x (N, N)" and r["seconds"] > 0}
    for row in rows:
        count = flops.THEORY.get(row["function"])
        if count is None or row["N"] not in rate:
            continue
        N = row["N"]
        f = count.flops(row.get("m", 2 * N), N, row.get("n", N))
        row.update(gflop=f / 1e9, flops_formula=count.formula,
                   rate64_gflops=rate[N] / 1e9, limit64_s=f / rate[N],
                   over_limit64=row["seconds"] * rate[N] / f)
