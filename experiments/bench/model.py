"""Scale: a whole model quantized end to end, and one large layer (issue 15, part 4).

    python -m experiments.bench --only model         # figures/bench_model.{md,csv,json}
    python -m experiments.bench.model --calib 1 --length 128 --blocks 2 --layer-N 512 \
        --layer-n 256 --heldout 1 --out /tmp/bm      # a small run, every flag of its own

(a) **Whole model.** SmolLM2-135M (`experiments.models.smollm2`), every one of its 210 linear
layers in forward order through the project's one sequential driver
(`experiments.quantize_model.quantize_model`), at the LM study's default calibration
(`experiments.lm.SIZES["default"]`: 4 windows of 512 tokens, m = 2048 rows per layer), 4 bits,
GPTQ's per-neuron min-max grid, natural order, percdamp 0.01. Three methods on the same batch:

* ``optq``: ``ptq.optq`` per layer (GPTQ: ``Q = OPTQ(X_hat, W)``);
* ``qronos``: ``ptq.qronos`` per layer (``X`` and ``X_hat``);
* ``torch``: the canonical PyTorch GPTQ (`peers.torch_gptq`, ``H = X_hat^T X_hat`` formed in
  torch) as the driver's ``quantizer``: the same driver, forward passes, captured inputs and
  grid, only each layer's quantization done by the reference code (`torch_quantizer`), with
  one torch thread (``torch_threads``): at these widths its per-column updates are too small
  to split, and on a shared 2-core machine two OpenMP threads wait on each other (one
  576 x 576 layer: 0.08 s with one thread, 2-3 s with two while another process held a core);
  `threads_check` measures both settings on SmolLM2's layer shapes in every run.

Each method first runs on the first block alone (a warm-up that compiles every jitted shape:
the forward stages, the quantizer, the measurement; reported as "warm-up"), then on the whole
model once. The wall time of that run is split with timestamps taken at the driver's two
hooks: **quantizer** = the driver's own per-layer ``seconds`` (the quantizer call and the wait
for its ``Q``), **measure** = the driver's per-layer error measurement (from the quantizer's
return to the ``on_layer`` hook), **check** = the hook itself (the on-grid check and, for
torch, ``ptq.optq`` on the same inputs to compare codes: excluded from the total), and
**forward** = the rest: the two copies' forward passes and the capture of X and X_hat.
Peak memory: the process's resident high-water mark during the run (Linux ``VmHWM``, reset
through ``/proc/self/clear_refs`` just before, so sampling misses nothing and no thread runs
beside the timed code) minus the resident size before it (the loaded model and the batch).
The held-out perplexity of each quantized model (the study's 8 windows of 512 tokens, not
timed) shows that the three did the same work.

(b) **One large layer**: N = 11008 (the Llama-7B MLP down-projection's input width), n = 4096,
m = 2N = 22016 rows (the benchmark's m = 2N, so X^T X has full rank as with a real
calibration set of more tokens than features; X and X_hat are 0.97 GB each in float32, H and
the other N x N matrices 0.48 GB each, which leaves room on a 24 GB machine), synthetic data as
`options.make_data` (standard normal X and W, ``X_hat = X + 0.1 noise``), float32, 4-bit
per-neuron min-max grid, block size 128: ``ptq.optq`` and ``ptq.qronos`` each called twice,
the first call (compilation included) and a second one (with the peak memory above the inputs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shlex
import sys
import time
from typing import NamedTuple

import jax
import numpy as np
import pandas as pd

import ptq
from experiments.bench import flops, peers, timing
from experiments.bench.report import md_table

METHODS = ("optq", "qronos", "torch")
LABELS = {"optq": "ptq.optq", "qronos": "ptq.qronos", "torch": "torch GPTQ, same driver"}
MIB = 2.0**20


def _lm_default(key: str) -> int:
    from experiments import lm

    return lm.SIZES["default"].data[key]


@dataclasses.dataclass(frozen=True)
class Options:
    """What ``--only model`` measures; None calibration sizes mean the LM study's default."""

    calib: int | None = None  # calibration windows (LM default: 4)
    length: int | None = None  # tokens per window (LM default: 512)
    heldout: int | None = None  # held-out windows scored (LM default: 8); 0 skips perplexity
    blocks: int | None = None  # the first blocks only (tests); None: all 30
    methods: tuple[str, ...] = METHODS
    warmup: bool = True  # each method first on block 0 alone (compiles every shape)
    check: bool = True  # torch: compare each layer's codes with ptq.optq on the same inputs
    # torch's intra-op threads in the whole-model run (None: torch's default, 2 here). One:
    # the GPTQ loop's per-column updates are (n, <= 128) at these widths, too small to split,
    # and on a shared machine two OpenMP threads wait on each other (see `threads_check`).
    torch_threads: int | None = 1
    threads_shapes: tuple[tuple[int, int], ...] = ((576, 576), (1536, 576))  # () skips it
    bits: int = 4
    block_size: int = 128
    layer_N: int = 11008  # (b): Llama-7B down_proj input width
    layer_n: int = 4096
    layer_m: int | None = None  # None: 2 N
    layer_algorithms: tuple[str, ...] = ("optq", "qronos")  # () skips part (b)
    seed: int = 0

    def resolved(self) -> Options:
        return dataclasses.replace(
            self, calib=self.calib or _lm_default("calib"),
            length=self.length or _lm_default("length"),
            heldout=_lm_default("heldout") if self.heldout is None else self.heldout,
            layer_m=self.layer_m or 2 * self.layer_N)


# ----------------------------------------------------------------------------- memory
def _hwm_bytes() -> int | None:
    """``VmHWM`` of this process after resetting it, None where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident size to the current one (Linux >= 4.0)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return None


MEMORY_METHOD = ("process resident high-water mark (VmHWM, reset via /proc/self/clear_refs "
                 "just before the call) minus the resident size then, after gc.collect() and "
                 "malloc_trim(0); where that is unavailable, the benchmark's sampled RSS")


def peak_rss(fn) -> tuple[float, float, float]:
    """Run ``fn()`` once: (seconds, peak bytes above the resident size before, that size)."""
    timing._trim()
    base = timing._rss()
    if _hwm_bytes() is None:  # no resettable high-water mark: the bench's 1 ms sampling
        out = {}

        def timed():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            out["s"] = time.perf_counter() - t0

        peak = timing.peak_memory(timed)
        return out["s"], peak, float(base)
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    seconds = time.perf_counter() - t0
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    return seconds, float(max(hwm - base, 0)), float(base)


# ----------------------------------------------------------------------------- torch quantizer
class TorchResult(NamedTuple):
    """What the driver reads of one layer quantized by the torch GPTQ (as a `ptq.Result`)."""

    Q: np.ndarray  # (N, n) float32: torch's dequantized weights, transposed to features x neurons
    grid: ptq.Grid  # the driver's grid, the one torch quantized on
    lam: float  # GPTQ's damp: percdamp * mean(diag(X_hat^T X_hat)), ptq's resolved lam too
    w_max: np.ndarray  # (n,) NaN: the reference code does not report the values it rounded
    own_zero_diffs: int  # neurons whose zero point torch's own min-max fit puts elsewhere


def torch_quantizer(o, X, X_hat, W, grid, key=None) -> TorchResult:
    """The canonical PyTorch GPTQ as the driver's ``quantizer`` (`quantize_model`).

    ``H = X_hat^T X_hat`` in torch and ``torch_gptq`` (natural order, lazy blocks of
    ``o.block_size``) on the driver's ``grid`` (``ptq.Grid.fit``, GPTQ's min-max rule): what
    ``ptq.optq(X_hat, W, grid)`` computes in the driver. Only the options that reference code
    has are accepted.

    Differs from the reference: the grid is the driver's, not ``torch_minmax_params``'. The two
    rules are the same, but where ``-xmin / scale`` is a half-integer up to float rounding the
    zero point lands on either side depending on the last bit of ``scale``; SmolLM2's weights,
    dequantized from Q4_1 (16 levels per group of 32), hit such ties on a few neurons per
    layer, so torch's own grid would differ there by one zero step (counted in
    ``own_zero_diffs``; its fit is not timed either way, a min and max per neuron).
    """
    import torch

    want = {"algorithm": "optq", "grid": "asymmetric", "mse": False, "finite": True,
            "lam": None, "order": "natural", "rounding": "nearest", "group_size": None}
    bad = {k: getattr(o, k) for k, v in want.items() if getattr(o, k) != v}
    if bad:
        raise ValueError(f"the torch GPTQ runs only options {want}; got {bad}")
    percdamp = 0.01 if o.percdamp is None else o.percdamp
    Wt = peers.to_torch(np.asarray(W, np.float32).T)  # (n, N), nn.Linear.weight
    scale, zero = (peers.to_torch(np.asarray(a, np.float32).reshape(-1, 1))
                   for a in (grid.step, grid.zero))  # (n, 1), as torch_minmax_params
    H = peers.torch_gram(peers.to_torch(np.asarray(X_hat, np.float32)))
    lam = percdamp * float(torch.mean(torch.diag(H)))
    Q = peers.torch_gptq(Wt, H, scale, zero, bits=o.bits, blocksize=o.block_size,
                         percdamp=percdamp).Q
    own_zero = peers.torch_minmax_params(Wt, o.bits)[1]
    diffs = int(torch.count_nonzero(own_zero != zero))
    return TorchResult(Q.numpy().T, grid, lam, np.full(W.shape[1], np.nan, np.float32), diffs)


# ----------------------------------------------------------------------------- (a) the model
def grid_codes(Q, grid: ptq.Grid) -> tuple[np.ndarray, float, bool]:
    """Integer codes of ``Q`` on ``grid``, the largest distance to the grid in steps, and
    whether every code lies in the grid's range."""
    step, zero = np.asarray(grid.step, np.float64), np.asarray(grid.zero, np.float64)
    c = np.asarray(Q, np.float64) / step + zero
    codes = np.rint(c)
    in_range = bool((codes >= float(grid.qmin)).all() and (codes <= float(grid.qmax)).all())
    return codes, float(np.max(np.abs(c - codes))), in_range


class _Hooks:
    """The driver's two hooks with timestamps: the quantizer call and ``on_layer``."""

    def __init__(self, method: str, check: bool):
        self.quantize_layer = torch_quantizer if method == "torch" else None
        self.check = check and method == "torch"
        self.t_call: list[float] = []  # quantizer entered
        self.t_hook: list[tuple[float, float]] = []  # on_layer entered, left

    def quantizer(self, o, X, X_hat, W, grid, key=None):
        from experiments.quantize_model import quantize_layer

        self.t_call.append(time.perf_counter())
        return (self.quantize_layer or quantize_layer)(o, X, X_hat, W, grid, key)

    def on_layer(self, ctx) -> dict:
        t0 = time.perf_counter()
        codes, off, in_range = grid_codes(ctx.result.Q, ctx.grid)
        out = {"off_grid_steps": off, "codes_in_range": in_range}
        if hasattr(ctx.result, "own_zero_diffs"):
            out["own_zero_diffs"] = ctx.result.own_zero_diffs
        if self.check:  # ptq.optq on the very inputs the torch GPTQ was given
            o = ctx.options
            ref = ptq.optq(ctx.X_hat, ctx.W, ctx.grid, percdamp=o.percdamp,
                           block_size=o.block_size)
            out["codes_equal_frac"] = float(np.mean(np.asarray(ref.codes) == codes))
        self.t_hook.append((t0, time.perf_counter()))
        return out


def _label(method: str, torch_threads: int | None) -> str:
    if method == "torch":
        return f"{LABELS[method]}, {torch_threads or 'default'} thread(s)"
    return LABELS[method]


def _truncated(model, blocks: int | None):
    """SmolLM2 restricted to its first ``blocks`` blocks (the model itself for None)."""
    from experiments.models import smollm2

    if blocks is None or blocks >= model.n_blocks:
        return model
    params = {**model.params, "blocks": model.params["blocks"][:blocks]}
    return smollm2.SmolLM2(smollm2.Loaded(model.config, params))


class _TorchThreads:
    """``torch.set_num_threads(k)`` inside the block (nothing for None or without torch)."""

    def __init__(self, k: int | None):
        self.k, self.old = k, None

    def __enter__(self):
        if self.k is not None:
            import torch

            self.old = torch.get_num_threads()
            torch.set_num_threads(self.k)

    def __exit__(self, *exc):
        if self.old is not None:
            import torch

            torch.set_num_threads(self.old)


def quantize_timed(model, method: str, batch, opt: Options) -> tuple[dict, list, dict]:
    """One whole-model run of ``method``: (summary row, per-layer records, quantized params)."""
    with _TorchThreads(opt.torch_threads if method == "torch" else None):
        return _quantize_timed(model, method, batch, opt)


def _quantize_timed(model, method: str, batch, opt: Options) -> tuple[dict, list, dict]:
    from experiments.quantize_model import make_options, quantize_model

    o = make_options("optq" if method == "torch" else method, opt.bits,
                     block_size=opt.block_size)
    hooks = _Hooks(method, opt.check)
    out = {}

    def run():
        out["records"], out["params"] = quantize_model(
            model, o, batch, on_layer=hooks.on_layer, quantizer=hooks.quantizer)

    wall, peak, base = peak_rss(run)
    recs = out["records"]
    quantizer = sum(r["seconds"] for r in recs)
    measure = sum(h0 - t - r["seconds"] for r, t, (h0, _) in zip(recs, hooks.t_call, hooks.t_hook))
    check = sum(h1 - h0 for h0, h1 in hooks.t_hook)
    total = wall - check
    row = {"method": _label(method, opt.torch_threads), "layers": len(recs), "m": recs[0]["m"], "total_s": total,
           "quantizer_s": quantizer, "measure_s": measure, "check_s": check,
           "forward_s": total - quantizer - measure, "quantizer_share": quantizer / total,
           "peak_mib": peak / MIB, "rss_before_mib": base / MIB,
           "mean_rel_err": float(np.mean([r["rel_err"] for r in recs])),
           "on_grid_layers": sum(r["codes_in_range"] and r["off_grid_steps"] < 1e-3
                                 for r in recs)}
    if hooks.check:
        fr = [r["codes_equal_frac"] for r in recs]
        row.update(codes_equal_mean=float(np.mean(fr)), codes_equal_min=float(np.min(fr)))
    if method == "torch":
        row["own_zero_diffs"] = sum(r["own_zero_diffs"] for r in recs)
    keep = ("name", "layer", "kind", "seconds", "rel_err", "off_grid_steps", "codes_in_range", "codes_equal_frac",
            "own_zero_diffs", "m", "N", "n")
    layers = [{"method": method, **{k: r[k] for k in keep if k in r}} for r in recs]
    return row, layers, out["params"]


def run_model(opt: Options, progress=lambda msg: None) -> tuple[list[dict], list[dict]]:
    """Part (a): one summary row per method (ratios to ptq.optq added) and per-layer rows."""
    from experiments import lm, text
    from experiments.models import smollm2

    opt = opt.resolved()
    model = _truncated(lm.model(), opt.blocks)
    batch = lm.calibration_batch(opt.calib, opt.length, opt.seed)
    windows = text.heldout_windows(opt.heldout, opt.length) if opt.heldout else None
    fp_ppl = smollm2.perplexity(model.params, windows)[0] if windows is not None else math.nan
    progress(f"model: {model.n_blocks} blocks, {batch.n_tokens} calibration tokens, "
             f"full-precision perplexity {fp_ppl:.3f}")
    rows, layers = [], []
    for method in opt.methods:
        t0 = time.perf_counter()
        if opt.warmup:  # block 0 holds every layer shape: compiles all of them
            quantize_timed(_truncated(model, 1), method, batch, opt)
        warm = time.perf_counter() - t0 if opt.warmup else math.nan
        row, recs, params = quantize_timed(model, method, batch, opt)
        row["warmup_s"] = warm
        row["perplexity"] = (smollm2.perplexity(params, windows)[0] if windows is not None
                             else math.nan)
        row["fp_perplexity"] = fp_ppl
        del params
        rows.append(row)
        layers += recs
        progress(f"{row['method']}: total {row['total_s']:.1f} s, quantizer "
                 f"{row['quantizer_s']:.1f} s, peak {row['peak_mib']:.0f} MiB, perplexity "
                 f"{row['perplexity']:.3f}")
    base = next((r for r, m in zip(rows, opt.methods) if m == "optq"), None)
    for r in rows:
        if base is not None and r is not base:
            for k in ("total_s", "quantizer_s", "peak_mib"):
                r[f"{k.removesuffix('_s')}_over_optq"] = r[k] / base[k]
    return rows, layers


THREADS_REPEATS = 3


def _median(quantizer, o, X, W, grid) -> float:
    """Median seconds of ``quantizer(o, X, X, W, grid)`` (`THREADS_REPEATS` after a warm-up)."""
    return timing.time_call(lambda: quantizer(o, X, X, W, grid).Q, THREADS_REPEATS).median


def threads_check(shapes, m: int, *, bits: int = 4, block_size: int = 128,
                  seed: int = 0) -> list[dict]:
    """One SmolLM2-shaped layer (synthetic X (m, N), W (N, n)) per shape: ``ptq.optq`` and the
    torch GPTQ (X^T X included) with one thread and with torch's default, medians of
    `THREADS_REPEATS` calls after a warm-up: why the whole-model run sets torch's threads."""
    import torch

    from experiments.quantize_model import make_options, quantize_layer

    o = make_options("optq", bits, block_size=block_size)
    rng = np.random.default_rng(seed)
    rows = []
    for N, n in shapes:
        X = rng.standard_normal((m, N), dtype=np.float32)
        W = jax.device_put(rng.standard_normal((N, n), dtype=np.float32))
        grid = ptq.Grid.fit(W, bits, kind="asymmetric", per="neuron")
        row = {"N": N, "n": n, "m": m, "torch_default_threads": torch.get_num_threads()}
        row["optq_s"] = _median(quantize_layer, o, X, W, grid)
        for key, k in (("torch_1_thread_s", 1), ("torch_default_s", None)):
            with _TorchThreads(k):
                row[key] = _median(torch_quantizer, o, X, W, grid)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- (b) one layer
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


# ----------------------------------------------------------------------------- run and write
def run(opt: Options, progress=lambda msg: None) -> dict:
    """Both parts: ``{"env", "options", "model", "layers", "threads", "large", "skipped"}``
    (``model``: one row per method; ``layers``: one per method and layer; ``threads``:
    `threads_check`; ``large``: one row per algorithm of part (b))."""
    opt = opt.resolved()
    env = timing.environment()
    skipped = {}
    methods = opt.methods
    if "torch" in methods and (why := peers.torch_missing()):
        skipped["torch"] = why
        methods = tuple(m for m in methods if m != "torch")
    if "torch" in methods:
        import torch

        env.update(torch=torch.__version__, torch_threads=str(torch.get_num_threads()))
    progress(f"environment: {env}")
    opt = dataclasses.replace(opt, methods=methods)
    model_rows, layers = run_model(opt, progress) if methods else ([], [])
    threads = []
    if "torch" in methods and opt.threads_shapes:
        threads = threads_check(opt.threads_shapes, opt.calib * opt.length, bits=opt.bits,
                                block_size=opt.block_size, seed=opt.seed)
        progress(f"torch threads: {threads}")
    large = large_layer(opt.layer_N, opt.layer_n, opt.layer_m, opt.layer_algorithms,
                        bits=opt.bits, block_size=opt.block_size, seed=opt.seed,
                        progress=progress) if opt.layer_algorithms else []
    env["process_maxrss_mib"] = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
    env["load_avg_1m_end"] = f"{os.getloadavg()[0]:.2f}"
    return {"env": env, "options": dataclasses.asdict(opt), "model": model_rows,
            "layers": layers, "threads": threads, "large": large, "skipped": skipped}


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
        rows.append({"method": _label(method, torch_threads), "blocks": len(t), "median_s": t.median(),
                     "q25_s": t.quantile(0.25), "min_s": t.min(), "max_s": t.max(),
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
        f"{o['calib']} calibration windows of {o['length']} tokens, {o['bits']} bits, per-neuron "
        "min-max grid, natural order, percdamp 0.01, block size "
        f"{o['block_size']}, one run per method after a one-block warm-up; held-out perplexity "
        f"on {o['heldout']} windows (full precision: "
        f"{rows[0]['fp_perplexity'] if rows else float('nan'):.3f}).\n",
        md_table(rows, MODEL_COLS),
        "\n" + md_table([r for r in rows if "total_over_optq" in r], RATIO_COLS),
        "\n### Quantizer time per block\n",
        md_table(per_block(res["layers"], o["torch_threads"]), BLOCK_COLS),
        "\nThe quantizer seconds of each block's 7 layers summed, over the blocks of each run: "
        "a process sharing the machine slows the blocks it overlaps, and the lower quartile "
        "is a block's time without it (see `per_block`).\n",
        "\nquantizer = the driver's per-layer `seconds` summed (the quantizer call and the wait "
        "for its Q; torch: X_hat^T X_hat, the min-max grid and the GPTQ loop in torch); "
        "forward + capture = total - quantizer - measure (both copies' forward passes, the "
        "capture of X and X_hat); measure = the driver's per-layer error measurement. The "
        "checks run in the on_layer hook (on the grid for every layer; torch: ptq.optq on "
        "the same X_hat, W and grid, codes compared) are timed and left out of the total. "
        "torch quantizes on the driver's grid; \"own-grid zero diffs\" counts the neurons, "
        "over all layers, where torch's own min-max fit would have put the zero point one "
        "step away (a tie -xmin/scale = k + 1/2 broken by float rounding). "
        f"Peak: {MEMORY_METHOD}; above the loaded model "
        f"({rows[0]['rss_before_mib'] if rows else float('nan'):.0f} MiB resident before).\n",
        "### torch's threads\n",
        md_table(res.get("threads", []), THREAD_COLS),
        f"\nOne synthetic layer per shape, m = {o['calib'] * o['length']} rows, medians of "
        f"{THREADS_REPEATS} calls after a warm-up (torch: X^T X in torch included). The "
        f"whole-model torch row ran with torch_threads = {o['torch_threads']} (None: torch's "
        "default).\n",
        "## One large layer\n",
        md_table(res["large"], LARGE_COLS),
        "\nSynthetic standard normal X, X_hat = X + 0.1 noise and W, float32, "
        f"{o['bits']}-bit per-neuron min-max grid, block size {o['block_size']}; m = "
        f"{o['layer_m']} rows. Second call: peak resident memory above the inputs, "
        "measured as in the whole-model table. counted flops: the benchmark's limit "
        "(OPTQ updates n N^2 + symmetric Gram m N^2).\n",
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
    with open(base + ".md", "w") as f:
        f.write(markdown(res, command, note))
    with open(base + ".json", "w") as f:
        json.dump({**res, "command": command, "note": note}, f, indent=1, default=str)
    return [base + ".csv", base + ".md", base + ".json"]


def cli(opt: Options, out: str, command: str, note: str = "", stem: str = "bench_model") -> int:
    res = run(opt, progress=lambda msg: print(msg, flush=True))
    paths = write(res, out, command, note, stem)
    print(markdown(res, command, note))
    print("wrote " + ", ".join(paths))
    return 0


def main(argv=None) -> int:
    d = Options()
    p = argparse.ArgumentParser(prog="python -m experiments.bench.model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib", type=int, default=None, help="calibration windows (LM default)")
    p.add_argument("--length", type=int, default=None, help="tokens per window (LM default)")
    p.add_argument("--heldout", type=int, default=None, help="held-out windows; 0: none")
    p.add_argument("--blocks", type=int, default=None, help="only the first blocks")
    p.add_argument("--methods", nargs="*", default=list(d.methods), choices=METHODS)
    p.add_argument("--no-check", action="store_true", help="no torch-vs-ptq code comparison")
    p.add_argument("--no-warmup", action="store_true", help="no one-block warm-up run")
    p.add_argument("--torch-threads", type=int, default=d.torch_threads,
                   help="torch's threads in the whole-model run; 0: torch's default")
    p.add_argument("--threads-shapes", nargs="*", default=[f"{N}x{n}" for N, n in
                                                            d.threads_shapes],
                   help="layer shapes NxN_out of the torch threads check (none: skip it)")
    p.add_argument("--layer-N", type=int, default=d.layer_N)
    p.add_argument("--layer-n", type=int, default=d.layer_n)
    p.add_argument("--layer-m", type=int, default=None, help="rows of the large layer (2N)")
    p.add_argument("--layer-algorithms", nargs="*", default=list(d.layer_algorithms),
                   choices=["optq", "qronos"])
    p.add_argument("--bits", type=int, default=d.bits)
    p.add_argument("--block-size", type=int, default=d.block_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default="figures")
    p.add_argument("--stem", default="bench_model")
    p.add_argument("--note", default="")
    p.add_argument("--report-only", metavar="JSON", default=None,
                   help="measure nothing: rewrite the outputs of a saved run")
    a = p.parse_args(argv)
    if a.report_only:
        with open(a.report_only) as f:
            res = json.load(f)
        command, note = res.pop("command"), a.note or res.pop("note", "")
        res.pop("note", None)
        paths = write(res, a.out, command, note, a.stem)
        print(markdown(res, command, note))
        print("wrote " + ", ".join(paths))
        return 0
    opt = Options(calib=a.calib, length=a.length, heldout=a.heldout, blocks=a.blocks,
                  methods=tuple(a.methods), check=not a.no_check, warmup=not a.no_warmup,
                  torch_threads=a.torch_threads or None,
                  threads_shapes=tuple(tuple(map(int, x.lower().split("x")))
                                       for x in a.threads_shapes), bits=a.bits,
                  block_size=a.block_size, layer_N=a.layer_N, layer_n=a.layer_n,
                  layer_m=a.layer_m, layer_algorithms=tuple(a.layer_algorithms), seed=a.seed)
    argv = sys.argv[1:] if argv is None else argv
    command = ("python -m experiments.bench.model " + " ".join(map(shlex.quote, argv))).strip()
    return cli(opt, a.out, command, a.note, a.stem)


__all__ = ["METHODS", "Options", "TorchResult", "cli", "grid_codes", "large_layer", "main",
           "markdown", "peak_rss", "quantize_timed", "run", "run_model", "threads_check",
           "torch_quantizer", "write"]

if __name__ == "__main__":
    sys.exit(main())
