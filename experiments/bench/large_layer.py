"""The large-layer benchmark (part (b) of `experiments.bench.model`): one (m, N) x (N, n)
float32 layer, ``ptq.optq`` and ``ptq.qronos`` each called twice (first call, then the
second with its peak resident memory above the inputs).
"""

from __future__ import annotations

import time

import jax
import numpy as np

import ptq
from experiments.bench import flops
from experiments.timing import MIB, peak_rss


def large_layer(N: int, n: int, m: int, algorithms, *, bits: int = 4, block_size: int = 128,
                seed: int = 0, progress=lambda msg: None) -> list[dict]:
    """Part (b): ``ptq.optq`` / ``ptq.qronos`` on one (m, N) x (N, n) float32 layer, twice each.

    Returns one row per algorithm: first call (compilation included), second call, their
    difference, the peak resident memory of the second call above the inputs, and the
    counted flops of OPTQ (``n N^2 + m N^2``, the benchmark's limit) over the second call.
    """
    rng = np.random.default_rng(seed + N)
    X = rng.standard_normal((m, N), dtype=np.float32)
    Xd = jax.device_put(X)
    Xhd = None
    if "qronos" in algorithms:
        Xhd = jax.device_put(X + np.float32(0.1) * rng.standard_normal((m, N), dtype=np.float32))
    Wd = jax.device_put(rng.standard_normal((N, n), dtype=np.float32))
    del X
    grid = ptq.Grid.fit(Wd, bits, kind="asymmetric", per="neuron")
    B = min(block_size, N)
    calls = {"optq": lambda: ptq.optq(Xd, Wd, grid, block_size=B).Q,
             "qronos": lambda: ptq.qronos(Xd, Xhd, Wd, grid, block_size=B).Q}
    inputs = sum(a.nbytes for a in (Xd, Xhd, Wd) if a is not None)
    rows = []
    for alg in algorithms:
        t0 = time.perf_counter()
        jax.block_until_ready(calls[alg]())
        first = time.perf_counter() - t0
        second, peak, _ = peak_rss(calls[alg])
        row = {"algorithm": f"ptq.{alg}", "N": N, "n": n, "m": m, "dtype": str(Xd.dtype),
               "first_s": first, "second_s": second, "compile_s": first - second,
               "peak_mib": peak / MIB, "inputs_mib": inputs / MIB}
        if alg == "optq":
            row["counted_gflops"] = flops.optq_limit(m, N, n) / second / 1e9
        rows.append(row)
        progress(f"large layer {alg}: first {first:.1f} s, second {second:.1f} s, peak "
                 f"{peak / MIB:.0f} MiB")
    return rows
