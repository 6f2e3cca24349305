"""The one sequential driver: every linear layer of any model, quantized in forward order.

A model is given by an adapter (`experiments.models`: MiniLM, SmolLM2): its embedding, its
blocks written once as generators that stop at each group of linear layers sharing an input,
and a flattening of activations to (m, N) token rows. The driver runs two copies of the model
in lockstep over one calibration batch:

* the full-precision model, whose stop at layer ``l`` gives ``X_l`` (the layer's inputs
  under the full-precision model) and the target ``X_l W_l``;
* the partially quantized model, whose stop gives ``X_hat_l``: the same tokens' inputs once
  every earlier linear layer is replaced by its quantized weights (GPTQ's sequential mode).

Layer ``l`` is quantized from ``(X_l, X_hat_l, W_l)`` and put back into the quantized copy
before that copy's generator resumes, so everything after it runs on the quantized weights.
What each algorithm sees (as practitioners run them):

* ``"rtn"``: only ``W`` (round to nearest, no data);
* ``"optq"``: only ``X_hat``, ``Q = OPTQ(X_hat, W)`` (GPTQ);
* ``"qronos"``: both, ``Q = Qronos(X, X_hat, W)``, which targets ``X W`` from ``X_hat``.

Biases stay in full precision. Grids are fitted per neuron to ``W`` (`ptq.Grid.fit`), by
default GPTQ's asymmetric min-max grid; ``finite=False`` keeps the step on the infinite
alphabet (nothing clips, so every no-clipping bound of THEORY.md section 4 applies).
``group_size`` asks for GPTQ's group-wise grids (`ptq.GroupGrid`, fitted inside the algorithm,
``static_groups`` as GPTQ's flag): the grid a layer used is then the result's ``grid``, its
step (N, n), and records, measurements and bounds take that step.

Measured per layer (per neuron j, in the run's precision, see `measure`): ``err2_j = ||X w_j -
X_hat q_j||_2`` and
``errinf_j`` (the error against the full-precision target), ``self2_j = ||X_hat (w_j -
q_j)||_2`` (the error OPTQ controls) and, for Qronos, the floor ``E_LS,j = sqrt(||X w_j - X_hat
wt_j||^2 + lam ||w_j - wt_j||^2)`` (``wt = result.W_start``), all through
`experiments.measure.measure`. Bounds are the caller's: pass ``on_layer`` (for example
`experiments.bounds.theory_bounds`).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import ptq
from experiments import measure as me
from experiments.data import Layer
from experiments.measure import ALGORITHMS
from experiments.models import Model

log = logging.getLogger(__name__)


class Options(NamedTuple):
    """How every layer is quantized (plain values, so it can be logged and recorded)."""

    algorithm: str = "optq"
    bits: int = 4
    grid: str = "asymmetric"  # ptq.Grid.fit kind: "asymmetric" (GPTQ min-max) | "symmetric"
    mse: bool = False  # GPTQ's clipping search in Grid.fit
    finite: bool = True  # False: the fitted step on the infinite alphabet step*Z (no clipping,
    #                      so every no-clipping bound applies; as conf/grid/unbounded.yaml)
    lam: float | str | None = None  # "auto": chosen per layer (Qronos ls_first, ptq.select)
    percdamp: float | None = None  # neither: ptq's default percdamp = 0.01
    order: str = "natural"
    rounding: str = "nearest"  # "stochastic": stochastic OPTQ / Qronos
    variant: str = "paper"  # Qronos only: "paper" | "ls_first"
    strength: float | str = 1.0  # Qronos ls_first: correction strength in [0, 1] or "auto"
    seed: int = 0  # stochastic rounding: key = fold_in(key(seed), layer index)
    block_size: int = 128
    group_size: int | None = None  # ptq.GroupGrid groups of features; None = per channel
    static_groups: bool = False  # GPTQ's static_groups: groups fitted first, original order


class LayerContext(NamedTuple):
    """Everything about one quantized layer, handed to ``on_layer`` (e.g. to compute bounds)."""

    name: str
    layer: int  # block index
    kind: str
    options: Options
    X: np.ndarray  # (m, N) float32: inputs under the full-precision model
    X_hat: np.ndarray  # (m, N) float32: inputs under the partially quantized model
    W: np.ndarray  # (N, n) float32 full-precision weights (PyTorch weight transposed)
    b: np.ndarray | None  # (n,) bias (kept in full precision), None if the layer has none
    grid: ptq.Grid  # the realised grid (``result.grid``): step (N, n) with group-wise grids
    result: object  # ptq.Result (optq, qronos) or ptq.RTNResult (rtn)
    measured: dict  # per-neuron float64 measurements (`experiments.measure.measure`)


def make_options(algorithm: str = "optq", bits: int = 4, **options) -> Options:
    """`Options` from keywords, checked: unknown names and impossible combinations fail."""
    unknown = set(options) - set(Options._fields)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; expected some of {Options._fields}")
    return check_options(Options(algorithm=algorithm, bits=bits, **options))


def check_options(o: Options) -> Options:
    if o.algorithm not in ALGORITHMS:
        raise ValueError(f"`algorithm` must be one of {ALGORITHMS}; got {o.algorithm!r}")
    if o.algorithm == "rtn" and o.rounding != "nearest":
        raise ValueError(f"`rounding` must be 'nearest' for rtn; got {o.rounding!r}")
    gs = o.group_size
    if gs is not None:
        if isinstance(gs, bool) or not isinstance(gs, int) or gs < 1:
            raise ValueError(f"`group_size` must be an integer >= 1 or None (per channel); "
                             f"got {gs!r}")
        if not o.finite:
            raise ValueError("`group_size` needs `finite=True`: the group steps are fitted "
                             "inside the algorithm, on the range they cover; got finite=False")
    if o.strength != 1.0 and (o.algorithm != "qronos" or o.variant != "ls_first"):
        raise ValueError(f"`strength` other than 1 needs algorithm='qronos' with "
                         f"variant='ls_first'; got strength={o.strength!r} with "
                         f"algorithm={o.algorithm!r}, variant={o.variant!r}")
    if o.strength != "auto" and o.strength != 1.0:
        ptq.options.check_strength(o.strength, o.variant)
    if o.lam == "auto" and (o.algorithm != "qronos" or o.variant != "ls_first"):
        raise ValueError(f"lam='auto' needs algorithm='qronos' with variant='ls_first'; got "
                         f"algorithm={o.algorithm!r}, variant={o.variant!r}")
    if not isinstance(o.static_groups, bool):
        raise ValueError(f"`static_groups` must be a bool; got {o.static_groups!r}")
    return o


def make_grid(o: Options, W) -> ptq.Grid | ptq.GroupGrid:
    """The grid of `Options` ``o`` for ``W`` (`experiments.measure.make_grid`, per neuron)."""
    return me.make_grid(W, o.bits, kind=o.grid, mse=o.mse, finite=o.finite,
                        group_size=o.group_size, static_groups=o.static_groups)


def quantize_layer(o: Options, X, X_hat, W, grid: ptq.Grid | ptq.GroupGrid, key=None, *,
                   sequences=None):
    """One layer with the algorithm of ``o`` (`experiments.measure.quantize_layer`); returns the
    ptq result (``.Q`` is (N, n)). ``sequences`` (m,): the calibration sequence of each row,
    which ``strength="auto"`` / ``lam="auto"`` hold out (`ptq.select`)."""
    options = {} if o.algorithm == "rtn" else dict(
        lam=o.lam, percdamp=o.percdamp, order=o.order, rounding=o.rounding, key=key,
        block_size=o.block_size)
    if o.algorithm == "qronos":
        options["strength"] = o.strength
        if o.strength == "auto" or o.lam == "auto":
            options["sequences"] = sequences
    return me.quantize_layer(o.algorithm, X, X_hat, W, grid, variant=o.variant, **options)


def row_sequences(batch) -> np.ndarray:
    """(m,) the sequence (row of the (B, L) batch) of each token row, in the order the adapters'
    ``rows`` give them (row-major over (B, L), padding left out)."""
    mask = np.asarray(batch.mask)
    ids = np.broadcast_to(np.arange(mask.shape[0])[:, None], mask.shape)
    return ids.reshape(-1)[mask.reshape(-1) > 0]


def selection_record(result) -> dict:
    """The record fields of a Qronos result: the strength used and, when chosen from the data,
    the evidence (`ptq.select.Selection`, sums over held-out rows and neurons)."""
    strength = getattr(result, "strength", None)
    if strength is None:
        return {}
    out = {"strength_used": float(strength)}
    s = getattr(result, "selection", None)
    if s is not None:
        out["selection"] = {
            "strength": s.strength, "lam": s.lam, "lams": s.lams.tolist(),
            "percdamps": s.percdamps.tolist(),
            "strengths": s.strengths.tolist(), "heldout": s.heldout.tolist(),
            "insample": s.insample.tolist(),
            "rounding_heldout": [None if np.isnan(v) else float(v) for v in s.rounding_heldout],
            "rounding_insample": [None if np.isnan(v) else float(v)
                                  for v in s.rounding_insample],
            "folds": s.folds, "sequences": s.sequences, "rows": s.rows, "dead": s.dead,
            "sketched": s.sketched}
    return out


class _Fed(NamedTuple):  # what `experiments.measure.measure` reads of a ptq.Result
    lam: jax.Array
    w_max: jax.Array


@partial(jax.jit, static_argnames="algorithm")
def _measure_on_device(X, X_hat, W, Q, target, step, lam, w_max, W_start, *, algorithm):
    res = None if algorithm == "rtn" else _Fed(lam, w_max)
    out = me.measure(Layer(X, X_hat, W, "model"), Q, res, step, floors=False, target=target,
                     xp=jnp)
    out["rel_err"] = jnp.sqrt(jnp.sum(out["err2"] ** 2) / jnp.sum(target**2))
    out["input_mismatch"] = jnp.linalg.norm(X - X_hat) / jnp.linalg.norm(X)
    if algorithm == "qronos":
        out["e_ls"] = jnp.sqrt(jnp.sum((target - X_hat @ W_start) ** 2, axis=0)
                               + lam * jnp.sum((W - W_start) ** 2, axis=0))
    return out


def measure(X, X_hat, W, Q, result, step, algorithm: str, target=None) -> tuple[dict, dict]:
    """`experiments.measure.measure` of one layer, and the record's fields from it.

    One jitted program on the device, in the run's precision (`ptq.inputs.compute_dtype`):
    float64 in the bounds pass (x64 mode, what the bound checks compare), float32 in the
    practical pass, where a reported norm then carries a relative rounding error of order
    ``sqrt(N) 2^-24`` of the layer's output, below 1e-4 of the error itself down to 8 bits.
    Everything returned is float64 NumPy.

    Returns ``(fields, measured)``: ``fields`` has err2, errinf, self2 (per neuron), rel_err,
    input_mismatch and, for Qronos, e_ls (from ``result.W_start``); ``measured`` is the full
    per-neuron dict the bound checks read. ``target``: ``X @ W`` if known.
    """
    dtype = ptq.inputs.compute_dtype()
    X, X_hat, W, Q = (jnp.asarray(a, dtype) for a in (X, X_hat, W, Q))
    target = X @ W if target is None else jnp.asarray(target, dtype)
    rtn = algorithm == "rtn"
    lam = jnp.asarray(0.0 if rtn else result.lam, dtype)
    w_max = jnp.zeros(W.shape[1], dtype) if rtn else jnp.asarray(result.w_max, dtype)
    W_start = jnp.asarray(result.W_start, dtype) if algorithm == "qronos" else W
    out = _measure_on_device(X, X_hat, W, Q, target, jnp.asarray(step, dtype), lam, w_max,
                             W_start, algorithm=algorithm)
    out = {k: np.asarray(v, np.float64) for k, v in out.items()}
    fields = {"err2": out["err2"], "errinf": out["errinf"], "self2": out["err2_self"],
              "rel_err": float(out.pop("rel_err")),
              "input_mismatch": float(out.pop("input_mismatch"))}
    if "e_ls" in out:
        fields["e_ls"] = out.pop("e_ls")
    return fields, out


class FullPrecisionCache:
    """Per-layer ``X`` and ``X @ W`` of one model and calibration batch, kept across
    runs (they do not depend on the quantization). Worth it for a small model run many times
    (MiniLM: about 0.3 GB at 2048 tokens); a large one recomputes them in lockstep instead."""

    def __init__(self):
        self.inputs: dict[str, np.ndarray] = {}
        self.targets: dict[tuple[str, str], jax.Array] = {}
        self.complete = False  # set by a whole-model run: ``inputs`` has every layer

    def target(self, name: str, X: np.ndarray, W):
        """``X @ W`` in the run's precision (one cache entry per precision)."""
        dtype = ptq.inputs.compute_dtype()
        key = (name, np.dtype(dtype).name)
        if key not in self.targets:
            self.targets[key] = jnp.asarray(X, dtype) @ jnp.asarray(W, dtype)
        return self.targets[key]


# One layer's quantization: (options, X, X_hat, W, grid, key) -> result, as `quantize_layer`.
Quantizer = Callable[..., object]


def quantize_model(model: Model, options: Options, batch, *,
                   on_layer: Callable[[LayerContext], dict | None] | None = None,
                   stop_at: str | None = None, cache: FullPrecisionCache | None = None,
                   progress: bool = False, overrides: Mapping[str, Mapping] | None = None,
                   quantizer: Quantizer | None = None):
    """Quantize every linear layer of ``model`` in forward order on one calibration batch.

    Args:
      model: an adapter (`experiments.models.Model`); its ``params`` are left untouched.
      options: `Options` (see `make_options`).
      batch: the calibration batch in the adapter's format (`experiments.models.Batch`).
      on_layer: called with a `LayerContext` after each layer; the dict it returns is merged
        into that layer's record (the hook for the `theory` bounds).
      stop_at: a layer name: return that layer's X_hat once every earlier layer is quantized.
      cache: keeps the full-precision inputs and targets across calls on the same batch; once
        a whole-model run has filled it (``cache.complete``), later calls do not run the
        full-precision copy of the model at all.
      progress: a progress bar over the linear layers.
      overrides: layer name -> {Options field: value} for that layer only (mixed precision:
        ``{"encoder.layer.0.attention.self.query": {"bits": 8}}``); every name must be a
        linear layer of the model, and each layer's options are checked as ``options`` are.
      quantizer: what quantizes one layer, called as ``quantizer(options, X, X_hat, W, grid,
        key)`` in place of `quantize_layer` (the default); the extension point for another
        implementation of the same algorithm on the same captured inputs (the benchmark's
        PyTorch GPTQ, `experiments.bench.model`). Its result needs what the driver reads of a
        ptq result for ``options.algorithm``: ``Q`` (N, n) on ``grid``, ``grid``, ``lam``,
        ``w_max`` (n,) and, for Qronos, ``W_start``. Its call is what ``seconds`` times.

    Returns:
      ``(records, params)``: one dict per linear layer (name, layer, kind, index, the options,
      m, N, n, lam, seconds, step, err2 (n,), errinf (n,), self2 (n,), rel_err,
      input_mismatch, e_ls (n,) for qronos, and whatever ``on_layer`` returned) and the
      quantized parameters (same structure as ``model.params``, float32 weights); or, with
      ``stop_at``, the (m, N) float32 X_hat of that layer.
    """
    o = check_options(options)
    names = [model.layer_name(i, k) for i in range(model.n_blocks) for k in model.kinds]
    if stop_at is not None and stop_at not in names:
        raise ValueError(f"`stop_at` must be a linear layer name such as {names[0]!r}; "
                         f"got {stop_at!r}")
    layer_options = _layer_options(o, names, overrides or {})
    params = model.params
    qblocks = [dict(p) for p in params["blocks"]]
    base = jax.random.key(o.seed)
    records: list[dict] = []
    bar = tqdm(total=len(names), desc=f"{model.name} {o.algorithm} {o.bits}b", unit="layer",
               disable=not progress, leave=False)
    # Once a cache holds every layer's full-precision inputs, the full-precision copy of the
    # model is not run at all: only the quantized one advances.
    fp_needed = cache is None or not cache.complete
    if quantizer is None:
        quantizer = partial(quantize_layer, sequences=row_sequences(batch))
    for i, kinds, x_fp, x_q in lockstep(model, params, qblocks, batch, run_fp=fp_needed):
        X_hat = model.rows(batch, x_q)
        X = _fp_inputs(model, batch, cache, model.layer_name(i, kinds[0]), x_fp)
        for kind in kinds:
            name = model.layer_name(i, kind)
            if name == stop_at:
                bar.close()
                return X_hat
            rec = _quantize_one(layer_options[name], model, i, kind, len(records), X, X_hat,
                                params["blocks"][i][kind], qblocks[i], base, cache, on_layer,
                                quantizer)
            records.append(rec)
            bar.update()
    bar.close()
    if cache is not None:
        cache.complete = True
    return records, {**params, "blocks": qblocks}


def lockstep(model: Model, params: dict, qblocks: list[dict], batch, *, run_fp: bool = True):
    """Run the model with ``params`` and its copy with blocks ``qblocks`` in lockstep.

    Yields ``(i, kinds, x_fp, x_q)`` at every stop of block ``i`` (`experiments.models`): the
    input of layers ``kinds`` under the full-precision model (None when ``run_fp`` is False:
    that copy is not run) and under the copy. Before the walk resumes the caller may replace
    ``qblocks[i][kind]`` (quantized, scaled ...): everything after that stop runs on it, in
    the copy only (GPTQ's sequential mode). Both copies share the embedding of ``params``.
    """
    h_fp = h_q = model.embed(params, batch)
    for i in range(model.n_blocks):
        fp_stages = model.block(params["blocks"][i], h_fp, batch) if run_fp else None
        q_stages = model.block(qblocks[i], h_q, batch)
        while True:
            try:
                kinds, x_q = next(q_stages)
            except StopIteration as done:
                h_q = done.value
                if fp_stages is not None:
                    h_fp = _finish(fp_stages)
                break
            x_fp = None if fp_stages is None else _next_stage(fp_stages, kinds)
            yield i, kinds, x_fp, x_q


def _layer_options(o: Options, names: list[str], overrides: Mapping[str, Mapping]) -> dict:
    """Layer name -> its checked `Options`: ``o`` with that layer's overrides applied."""
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"`overrides` must name linear layers such as {names[0]!r}; got "
                         f"{len(unknown)} others, e.g. {unknown[0]!r}")
    out = {}
    for name in names:
        fields = dict(overrides.get(name, {}))
        bad = sorted(set(fields) - set(Options._fields))
        if bad:
            raise ValueError(f"`overrides[{name!r}]` must set Options fields; got {bad}")
        out[name] = check_options(o._replace(**fields)) if fields else o
    return out


def _finish(stages):
    try:
        next(stages)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the two copies of the model stopped at different places")


def _next_stage(stages, kinds):
    """The full-precision copy's next stage input, which must be for the same layers."""
    try:
        fp_kinds, x = next(stages)
    except StopIteration:
        fp_kinds = None
    if fp_kinds != kinds:
        raise RuntimeError("the two copies of the model stopped at different places")
    return x


def _fp_inputs(model, batch, cache, name, x_fp) -> np.ndarray:
    if cache is None:
        return model.rows(batch, x_fp)
    if name not in cache.inputs:
        if x_fp is None:
            raise RuntimeError(f"`cache` is marked complete but has no inputs for {name!r}")
        cache.inputs[name] = model.rows(batch, x_fp)
    return cache.inputs[name]


def _quantize_one(o: Options, model, i: int, kind: str, index: int, X, X_hat, Wb, qblock: dict,
                  base, cache, on_layer, quantizer: Quantizer = quantize_layer) -> dict:
    """Quantize layer (i, kind), write it into ``qblock`` and return its record."""
    name = model.layer_name(i, kind)
    W, b = Wb
    grid = make_grid(o, W)
    key = jax.random.fold_in(base, index) if o.rounding == "stochastic" else None
    t0 = time.perf_counter()
    res = quantizer(o, X, X_hat, W, grid, key)
    Q = jnp.asarray(res.Q, jnp.float32)
    Q.block_until_ready()
    seconds = time.perf_counter() - t0
    qblock[kind] = (Q, b)
    grid = res.grid  # the grid used: a GroupGrid recipe realised, step (N, n)
    step = me.realised_step(grid, W.shape)
    rec = {"name": name, "layer": i, "kind": kind, "index": index, **o._asdict(),
           "m": X.shape[0], "N": W.shape[0], "n": W.shape[1],
           "lam": float(getattr(res, "lam", 0.0)), "seconds": seconds, "step": step,
           **selection_record(res)}
    target = None if cache is None else cache.target(name, X, W)
    # the algorithm's own Q (float64 in x64 mode), not the float32 copy the model runs
    fields, measured = measure(X, X_hat, W, res.Q, res, step, o.algorithm, target)
    rec.update(fields)
    if on_layer is not None:
        extra = on_layer(LayerContext(name, i, kind, o, X, X_hat, np.asarray(W),
                                      None if b is None else np.asarray(b), grid, res, measured))
        rec.update(extra or {})
    log.debug("%s %s %d bits: rel_err %.4g (%.2fs)", name, o.algorithm, o.bits,
              rec["rel_err"], seconds)
    return rec


P_DEFAULT = 0.05  # failure probability of the high-probability bounds (S2, S3, Q3)


def theory_bounds(ctx: LayerContext, *, p: float = P_DEFAULT) -> dict:
    """Every applicable bound of THEORY.md section 4 for one quantized layer (an ``on_layer``
    hook of `quantize_model`)::

        records, _ = quantize_model(model, make_options("qronos", 4, finite=False), batch,
                                    on_layer=theory_bounds)
        records[7]["bounds"]["Q1"]["violations"]

    It is the synthetic runs' judgement (`experiments.measure.check_bounds`: clipping, which
    bound applies and how it is checked), so synthetic and model layers are judged alike; the
    measurements are the driver's (``ctx.measured``). X, X_hat and W enter in float64.

    Returns ``{"measured": {name: (n,) array}, "clipped": bool, "bounds": {B1: {...}, ...}}``
    with, per bound, the per-neuron values, violations and tightness ratios (measured /
    bound), as `experiments.bounds.evaluate`. RTN has no bound (empty ``bounds``).
    """
    o = ctx.options
    X = np.asarray(ctx.X, np.float64)
    X_hat = np.asarray(ctx.X_hat, np.float64)
    W = np.asarray(ctx.W, np.float64)
    step = me.realised_step(ctx.grid, W.shape)  # (N, n) with group-wise grids, else (n,)
    res = None if o.algorithm == "rtn" else ctx.result
    precision = "float64" if jax.config.read("jax_enable_x64") else "float32"
    clip, checked = me.check_bounds(
        Layer(X, X_hat, W, ctx.name), res, step, ctx.measured, algorithm=o.algorithm,
        rounding=o.rounding, variant=o.variant, mismatched=not np.array_equal(X, X_hat), p=p,
        precision=precision)
    return {"measured": ctx.measured, "clipped": clip, "bounds": checked}


__all__ = ["ALGORITHMS", "P_DEFAULT", "FullPrecisionCache", "LayerContext", "Options", "Quantizer",
           "check_options", "make_grid", "make_options", "measure", "quantize_layer",
           "quantize_model", "theory_bounds"]
