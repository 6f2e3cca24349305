"""The whole-model benchmark (part (a) of `experiments.bench.model`, described there).

SmolLM2 quantized end to end through the project's one sequential driver, once per method:
``ptq.optq``, ``ptq.qronos`` and the canonical PyTorch GPTQ as the driver's ``quantizer``
(`torch_quantizer`). `run_model` times each run split at the driver's hooks (`_Hooks`) and
scores the quantized models; `threads_check` times the torch GPTQ with one thread and with
torch's default on SmolLM2's layer shapes.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, NamedTuple

import jax
import numpy as np

import ptq
from experiments import timing
from experiments.bench import peers
from experiments.driver import make_options, quantize_layer, quantize_model
from experiments.models import smollm2
from experiments.models.smollm2 import text
from experiments.studies import lm
from experiments.timing import MIB, peak_rss

if TYPE_CHECKING:  # the model benchmark's options (bench.model imports this module)
    from experiments.bench.model import Options

METHODS = ("optq", "qronos", "torch")
LABELS = {"optq": "ptq.optq", "qronos": "ptq.qronos", "torch": "torch GPTQ, same driver"}


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


# ----------------------------------------------------------------------------- the model
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


def method_label(method: str, torch_threads: int | None) -> str:
    if method == "torch":
        return f"{LABELS[method]}, {torch_threads or 'default'} thread(s)"
    return LABELS[method]


def _truncated(model, blocks: int | None):
    """SmolLM2 restricted to its first ``blocks`` blocks (the model itself for None)."""
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
    row = {"method": method_label(method, opt.torch_threads), "layers": len(recs),
           "m": recs[0]["m"], "total_s": total,
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
    keep = ("name", "layer", "kind", "seconds", "rel_err", "off_grid_steps", "codes_in_range",
            "codes_equal_frac", "own_zero_diffs", "m", "N", "n")
    layers = [{"method": method, **{k: r[k] for k in keep if k in r}} for r in recs]
    return row, layers, out["params"]


def run_model(opt: Options, progress=lambda msg: None) -> tuple[list[dict], list[dict]]:
    """Part (a): one summary row per method (ratios to ptq.optq added) and per-layer rows."""
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
