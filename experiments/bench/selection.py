"""What choosing Qronos' strength from the data costs, against Qronos itself, in one run.

    python -m experiments.bench.selection                  # N = n = 4096, m = 8192, 16 sequences
    python -m experiments.bench.selection --N 1024 --repeats 3 --out figures/bench_selection.csv

One float32 layer (m, N) x (N, n), ``X_hat = X + 0.1 noise``; each call after one warm-up,
``repeats`` times, median wall time: ``ptq.qronos(variant="ls_first")`` (full strength, the
baseline), ``ptq.select.select(strength="auto")`` alone, and ``ptq.qronos(strength="auto")``
(selection, then the run). The ratios are taken against the baseline of the same run
(timings on shared machines are noisy; ratios in one process much less so).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time

import jax
import numpy as np

import ptq
from ptq import select


def bench(N: int = 4096, n: int = 4096, m: int = 8192, sequences: int = 16, repeats: int = 3,
          lam_auto: bool = False, seed: int = 0, progress=print) -> dict:
    """Median seconds of the three calls and their ratios to the full-strength Qronos run."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, N), dtype=np.float32)
    Xh = X + np.float32(0.1) * rng.standard_normal((m, N), dtype=np.float32)
    W = rng.standard_normal((N, n), dtype=np.float32)
    X, Xh, W = (jax.device_put(a) for a in (X, Xh, W))
    grid = ptq.Grid.fit(W, 4, kind="asymmetric", per="neuron")
    lam = "auto" if lam_auto else None
    calls = {
        "qronos_ls": lambda: ptq.qronos(X, Xh, W, grid, variant="ls_first").Q,
        "select": lambda: select.select(X, Xh, W, grid, sequences=sequences, lam=lam).strength,
        "qronos_auto": lambda: ptq.qronos(X, Xh, W, grid, variant="ls_first", strength="auto",
                                          lam=lam, sequences=sequences).Q,
    }
    row = {"N": N, "n": n, "m": m, "sequences": sequences, "lam_auto": lam_auto,
           "repeats": repeats, "device": jax.devices()[0].platform}
    for name, f in calls.items():
        jax.block_until_ready(f())  # warm-up: compilation
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times.append(time.perf_counter() - t0)
        row[f"{name}_s"] = statistics.median(times)
        progress(f"{name}: median {row[f'{name}_s']:.2f} s over {repeats}")
    row["select_over_qronos"] = row["select_s"] / row["qronos_ls_s"]
    row["auto_over_qronos"] = row["qronos_auto_s"] / row["qronos_ls_s"]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--N", type=int, default=4096)
    p.add_argument("--n", type=int, default=None, help="neurons (default: N)")
    p.add_argument("--m", type=int, default=None, help="rows (default: 2 N)")
    p.add_argument("--sequences", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lam-auto", action="store_true", help="lam='auto' as well")
    p.add_argument("--out", default=None, help="append the row to this CSV")
    a = p.parse_args(argv)
    row = bench(a.N, a.n or a.N, a.m or 2 * a.N, a.sequences, a.repeats, a.lam_auto)
    print(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in row.items()))
    if a.out:
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            w.writeheader()
            w.writerow(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
