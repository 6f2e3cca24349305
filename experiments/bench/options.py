"""What one run of the quantization benchmark measures, and the data it measures on.

`Options` (the flags of ``python -m experiments.bench``), `make_data` (the synthetic layer of
size N that the layer-size benchmark, the agreement checks and the theory timing all use) and
`timer` (`timing.time_call` with the run's repeats and minimum time).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments import timing


@dataclasses.dataclass(frozen=True)
class Options:
    """What one benchmark run measures (the CLI flags of ``python -m experiments.bench``)."""

    sizes: tuple[int, ...] = (512, 1024, 2048, 4096)
    repeats: int = 5  # timed calls after the warm-up; medians are reported
    min_time: float = 1.0  # fast calls are repeated until their runs add up to this [s]
    peers: tuple[str, ...] = ("torch", "qwix", "brevitas")
    qwix_max_n: int = 2048  # qwix runs eagerly only up to this N ...
    qwix_repeats: int = 1  # ... with this many timed calls after its first call ...
    qwix_budget_s: float = 400.0  # ... and is skipped when its predicted time exceeds this
    brevitas_max_n: int = 4096  # Brevitas' Qronos (a Python loop over columns): up to this N,
    brevitas_repeats: int = 1  # with this many timed calls after the first,
    brevitas_budget_s: float = 900.0  # skipped when its predicted time exceeds this
    bits: int = 4
    block_size: int = 128
    sweep_sizes: tuple[int, ...] = (2048, 4096)
    sweep_blocks: tuple[int, ...] = (32, 64, 128, 256, 512)
    check_n: int = 512  # size of the ptq-vs-torch and ptq-vs-Brevitas checks (0: skip)
    theory_n: int | None = 4096  # size at which the theory bounds are timed (None: skip)
    seed: int = 0


def make_data(N: int, seed: int):
    """X (2N, N), X_hat = X + 0.1 noise, W (N, N), all float32 NumPy, standard normal."""
    rng = np.random.default_rng(seed + N)
    X = rng.standard_normal((2 * N, N), dtype=np.float32)
    X_hat = X + np.float32(0.1) * rng.standard_normal((2 * N, N), dtype=np.float32)
    W = rng.standard_normal((N, N), dtype=np.float32)
    return X, X_hat, W


def timer(opt: Options):
    """``time_call`` with the run's repeats and minimum total time."""
    return lambda fn: timing.time_call(fn, opt.repeats, min_time=opt.min_time)
