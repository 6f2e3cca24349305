"""Timers, peak memory (sampled, or the resettable high-water mark), the matrix-product
rate and the factorisation times.

Everything here is backend-neutral: JAX work is timed with ``jax.block_until_ready`` on the
outputs (asynchronous dispatch on a GPU would otherwise time only the launch), and arrays
are created with ``jax.device_put`` on the default device, whatever it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ptq.kernel import HIGHEST


class Timing(NamedTuple):
    """Wall-clock times of one callable, in seconds."""

    first: float  # the first call (compilation included for a fresh shape)
    median: float  # median of the timed calls after the warm-up
    best: float  # the fastest timed call (least disturbed by other load on the machine)
    runs: tuple[float, ...]  # every timed call after the warm-up


def _ready(out: Any) -> Any:
    """Wait for JAX arrays anywhere in ``out`` (other leaves, e.g. torch tensors, pass)."""
    return jax.block_until_ready(out)


MAX_RUNS = 200


def time_call(
    fn: Callable[[], Any], repeats: int, warmup: int = 1, min_time: float = 0.0
) -> Timing:
    """Time ``fn()``: ``warmup`` calls (the first is reported), then at least ``repeats``
    timed calls, more (up to `MAX_RUNS`) while they add up to less than ``min_time`` seconds,
    so that fast calls get a stable median. ``repeats >= 1``, ``warmup >= 1``."""
    if repeats < 1 or warmup < 1:
        raise ValueError(f"`repeats` and `warmup` must be >= 1; got {repeats}, {warmup}")
    t0 = time.perf_counter()
    _ready(fn())
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        _ready(fn())
    runs: list[float] = []
    while len(runs) < repeats or (sum(runs) < min_time and len(runs) < MAX_RUNS):
        t0 = time.perf_counter()
        _ready(fn())
        runs.append(time.perf_counter() - t0)
    return Timing(first, statistics.median(runs), min(runs), tuple(runs))


# ----------------------------------------------------------------------------- memory
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MIB = 2.0**20
MEMORY_METHOD = (
    "sampled RSS: peak of /proc/self/statm resident size, polled every 1 ms during one call, "
    "minus the resident size just before it, after gc.collect() and glibc malloc_trim(0) "
    "have returned freed memory to the system (host memory of the whole process: XLA CPU "
    "buffers, torch tensors, temporaries; inputs already resident are not counted)"
    if os.path.exists("/proc/self/statm")
    else "ru_maxrss delta (process high-water mark; 0 when an earlier call peaked higher)"
)


def _trim() -> None:
    """Give freed heap memory back to the system, so that RSS is close to live memory."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: RSS keeps freed pages, deltas read low
            pass


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def peak_memory(fn: Callable[[], Any]) -> float:
    """Peak host memory (bytes) that one call of ``fn`` adds above the current resident size.

    See `MEMORY_METHOD`. On a GPU, device memory is reported separately by `device_peak`.
    """
    if not os.path.exists("/proc/self/statm"):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        _ready(fn())
        return float(max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, 0))
    _trim()
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        _ready(fn())
    finally:
        stop.set()
        thread.join()
    peak[0] = max(peak[0], _rss())
    return float(peak[0] - base)


def _read_hwm() -> int:
    """``VmHWM`` of this process: its peak resident size [bytes]."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def _hwm_bytes() -> int | None:
    """``VmHWM`` of this process after resetting it, None where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident size to the current one (Linux >= 4.0)
        return _read_hwm()
    except (OSError, StopIteration):
        return None


PEAK_RSS_METHOD = ("process resident high-water mark (VmHWM, reset via /proc/self/clear_refs "
                   "just before the call) minus the resident size then, after gc.collect() and "
                   "malloc_trim(0); where that is unavailable, the benchmark's sampled RSS")


def peak_rss(fn) -> tuple[float, float, float]:
    """Run ``fn()`` once: (seconds, peak bytes above the resident size before, that size)."""
    _trim()
    base = _rss()
    if _hwm_bytes() is None:  # no resettable high-water mark: the bench's 1 ms sampling
        out = {}

        def timed():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            out["s"] = time.perf_counter() - t0

        peak = peak_memory(timed)
        return out["s"], peak, float(base)
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    seconds = time.perf_counter() - t0
    hwm = _read_hwm()
    return seconds, float(max(hwm - base, 0)), float(base)


def device_peak() -> float | None:
    """``peak_bytes_in_use`` of the default device (GPU/TPU), None where not reported (CPU)."""
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return float(stats["peak_bytes_in_use"])


# ----------------------------------------------------------------------------- machine
_dot = jax.jit(lambda A, B: jnp.dot(A, B, precision=HIGHEST))
_chol = jax.jit(jnp.linalg.cholesky)


def matmul_rate(sizes, repeats: int, min_time: float = 0.0, dtype=jnp.float32) -> dict[int, float]:
    """GFLOP/s of a square ``jnp.dot`` (``2 s^3`` flops, precision HIGHEST) at each size."""
    rates = {}
    rng = np.random.default_rng(1)
    for s in sizes:
        A = jax.device_put(rng.standard_normal((s, s)).astype(dtype))
        B = jax.device_put(rng.standard_normal((s, s)).astype(dtype))
        t = time_call(lambda A=A, B=B: _dot(A, B), repeats, min_time=min_time)
        rates[int(s)] = 2.0 * s**3 / t.median / 1e9
    return rates


def cholesky_time(H: jax.Array, repeats: int, min_time: float = 0.0) -> Timing:
    """One Cholesky factorisation of the (N, N) matrix ``H`` (jitted ``jnp.linalg.cholesky``)."""
    return time_call(lambda: _chol(H), repeats, min_time=min_time)


def environment() -> dict[str, str]:
    """Device, backend and versions, printed and stored with the table."""
    dev = jax.devices()[0]
    info = {
        "backend": jax.default_backend(),
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '?')} x{jax.device_count()}",
        "jax": jax.__version__,
        "numpy": np.__version__,
        "cpu_count": str(os.cpu_count()),
        "x64": str(bool(jax.config.read("jax_enable_x64"))),
    }
    try:
        info["load_avg_1m"] = f"{os.getloadavg()[0]:.2f}"
    except OSError:  # pragma: no cover - platforms without getloadavg
        pass
    return info
