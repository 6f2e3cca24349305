"""PTQ against QAT on MiniLM, and the output scales gamma and least squares.

    python -m experiments.studies.qat                        # default size, records in runs/default/qat
    python -m experiments.studies.qat --size smoke           # what CI runs (under a minute)
    python -m experiments.studies.qat --size full            # longer QAT schedule, every scale variant
    python -m experiments.studies.qat --size default sizes.default.train.steps=80   # Hydra overrides

The sizes are the Hydra preset ``conf/study/qat.yaml``. One record per (method, bits, seed):

* ``rtn``, ``optq``, ``qronos``: the sequential driver (`experiments.driver`, RTN
  layer by layer without data) on GPTQ's asymmetric min-max grid per output channel, as the
  practical pass of the MiniLM study.
* ``qat_rtn``, ``qat_optq``, ``qat_qronos``: quantization-aware training (`train`), the
  latent weights initialised from the full-precision weights (QAT from RTN: its first forward
  is RTN) or from what PTQ rounded (PTQ then QAT: ``z = Q + e``, each weight's value when
  OPTQ / Qronos rounded it, so the first forward is the PTQ model; `run_ptq`); the grid is the one PTQ used, fixed
  (straight-through, `ptq.qat.fake_quant`), or with learned steps (``lsq=true``, LSQ,
  `ptq.qat.lsq_quant`). The loss is distillation on the calibration text only::

      L = sum_tokens ||h_6(student) - h_6(teacher)||^2 / sum_tokens ||h_6(teacher)||^2,

  the last hidden states of the quantized and the full-precision encoder (non-padding tokens).
  Adam (optax) on the latent weights in units of their grid step (``w = step * v``, so a
  learning rate of 0.01 moves a weight by about 0.01 steps at most per update at every
  bit-width and layer; the presets use 0.001: at 0.01 QAT from RTN at 4 bits ended worse
  than it started), cosine decay to 0, mini-batches of whole calibration sequences drawn
  by a seeded shuffle. The final weights are ``Q(w)`` (`ptq.qat.project`, which raises unless
  every weight is on the grid).

After each method, every scale variant of the size (``gamma``, ``gamma_channel``, ``ls``,
``ls_channel``; `ptq.qat.output_scale`) is computed in forward order on the calibration
tokens, ``T = X W`` under the full-precision model and ``Y = X_hat Q`` under the quantized
model with the earlier layers' scales applied, and applied as ``Q diag(c)``; each variant is
scored on the same held-out text. Quality is the MiniLM study's: the mean cosine of the
quantized and full-precision sentence embeddings over the first ``heldout`` held-out sequences.

Seeds: seed ``s`` draws the calibration text (seed 0: the first ``tokens`` calibration tokens,
the MiniLM study's; seed s > 0: the calibration sequences in the order of
``numpy.random.default_rng(s).permutation``) and QAT's mini-batch order; so the spread over
seeds is that of the calibration draw for every method (and of the shuffle for QAT).

Time and memory per method (``seconds``, ``peak_mb``): wall time of the method alone, the
full-precision activations and the held-out scoring excluded, and JIT compilation included
where it happens (the first run of a shape in a process; the persistent compilation cache of
`experiments.reproduce` removes most of it); for PTQ then QAT, the PTQ run's time plus the
training's. Peak memory is `experiments.timing.peak_memory`: the peak resident size of
the process sampled every 1 ms during the method, minus the resident size just before it
(host memory of the whole process; what was already resident, such as the model, does not
count; for PTQ then QAT the larger of the PTQ run's and the training's).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import ptq
from experiments import console_logging
from experiments import driver as qm
from experiments.timing import peak_memory
from experiments.figures import qat as figures
from experiments.models import run_block
from experiments.models.minilm import MiniLM, activations, text
from experiments.studies.minilm import heldout_cosine
from experiments.study import Study
from experiments.study import load_sizes as study_sizes
from ptq import qat as fq

log = logging.getLogger(__name__)

PTQ_METHODS = ("rtn", "optq", "qronos")
QAT_METHODS = {"qat_rtn": "rtn", "qat_optq": "optq", "qat_qronos": "qronos"}  # -> init
METHODS = (*PTQ_METHODS, *QAT_METHODS)
SCALES = {"gamma": ("gamma", "layer"), "gamma_channel": ("gamma", "channel"),
          "ls": ("ls", "layer"), "ls_channel": ("ls", "channel")}


class Size(NamedTuple):
    """One size of the study (a block of ``conf/study/qat.yaml``)."""

    bits: tuple[int, ...]
    seeds: tuple[int, ...]  # seeds at every bit-width ...
    bits_one_seed: tuple[int, ...]  # ... except these, run at seeds[0] only
    methods: tuple[str, ...]
    scales: tuple[str, ...]  # scale variants scored besides the unscaled model
    data: dict[str, Any]  # tokens (calibration), heldout (sequences)
    train: dict[str, Any]  # steps, lr, batch (sequences per step), lsq


# --------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=1)
def _model():
    return MiniLM()


@functools.lru_cache(maxsize=4)
def calibration(tokens: int, seed: int):
    """The calibration batch of ``seed`` (see the module docstring), exactly ``tokens``,
    padded to `experiments.models.minilm.text.MAX_LEN` (one compiled shape whatever the draw; padding
    changes no token's activations, the keys being masked)."""
    tok = activations.model().tokens
    if seed:
        perm = np.random.default_rng(seed).permutation(len(tok.calib))
        tok = tok._replace(calib=[tok.calib[i] for i in perm])
    b = text.calibration_batch(tokens, tok)
    pad = text.MAX_LEN - b.ids.shape[1]
    return b._replace(ids=np.pad(b.ids, ((0, 0), (0, pad)), constant_values=tok.pad_id),
                      mask=np.pad(b.mask, ((0, 0), (0, pad))))


def heldout_quality(params, heldout: int) -> float:
    """Mean held-out cosine with the full-precision embeddings (the MiniLM study's)."""
    p = {"embeddings": params["embeddings"], "layers": params["blocks"]}
    return float(np.mean(heldout_cosine(p, heldout)))


def _measured(fn):
    """``(fn(), seconds, peak_mb)`` of one call (`experiments.timing.peak_memory`)."""
    out = []
    t0 = time.perf_counter()
    peak = peak_memory(lambda: out.append(jax.block_until_ready(fn())))
    return out[0], time.perf_counter() - t0, peak / 2**20


# --------------------------------------------------------------------------- PTQ
def layer_grids(model, bits: int) -> dict[str, ptq.Grid]:
    """Per layer name, the grid every method uses: GPTQ's asymmetric min-max per channel,
    fitted to the full-precision W (`experiments.driver.make_grid`)."""
    o = qm.make_options("rtn", bits)
    return {model.layer_name(i, k): qm.make_grid(o, p[k][0])
            for i, p in enumerate(model.params["blocks"]) for k in model.kinds}


class PTQRun(NamedTuple):
    """One PTQ method on the whole model."""

    params: dict  # the quantized params (adapter layout)
    rounded: dict  # layer name -> (N, n) the value each weight had when it was rounded


def _rounded(ctx) -> dict:
    """``z = Q + e`` in the original feature order: what OPTQ / Qronos rounded (ptq.Result)."""
    r = ctx.result
    z = np.array(r.Q, np.float32)
    z[np.asarray(r.order)] += np.asarray(r.e, np.float32)
    return {"rounded": z}


def run_ptq(model, algorithm: str, bits: int, batch) -> PTQRun:
    """One PTQ method on the whole model: the quantized params and the rounded values.

    ``rounded`` is the latent start of PTQ then QAT: W for RTN; for OPTQ and Qronos the
    updated weight ``z_t = q_t + e_t`` each feature had when it was rounded (identity I3's
    ``e``), so that the first fake-quantized forward is the PTQ model and every latent weight
    sits where PTQ left it inside its rounding interval, as W does for RTN (a start at ``Q``
    itself, the middle of the interval, needs half a step of travel to change any code).
    """
    names = [[model.layer_name(i, k) for k in model.kinds] for i in range(model.n_blocks)]
    if algorithm == "rtn":  # no data: each layer rounded on its grid, as the driver would
        grids = layer_grids(model, bits)
        blocks = [dict(p, **{k: (ptq.rtn(p[k][0], grids[n]).Q, p[k][1])
                             for k, n in zip(model.kinds, row)})
                  for p, row in zip(model.params["blocks"], names)]
        rounded = {n: p[k][0] for p, row in zip(model.params["blocks"], names)
                   for k, n in zip(model.kinds, row)}
        return PTQRun({**model.params, "blocks": blocks}, rounded)
    records, params = qm.quantize_model(model, qm.make_options(algorithm, bits), batch,
                                        on_layer=_rounded)
    return PTQRun(params, {r["name"]: r["rounded"] for r in records})


@functools.lru_cache(maxsize=2)
def _ptq_cached(algorithm: str, bits: int, tokens: int, seed: int):
    """PTQ run with its seconds and peak MB, kept for the QAT run that starts from it."""
    model = _model()
    return _measured(lambda: run_ptq(model, algorithm, bits, calibration(tokens, seed)))


# --------------------------------------------------------------------------- QAT
class _Batch(NamedTuple):  # the calibration rows of one step (ids, mask (b, L)), a pytree
    ids: jax.Array
    mask: jax.Array


class TrainResult(NamedTuple):
    params: dict  # the model's params with every linear layer's W replaced by Q (on the grid)
    grids: dict  # layer name -> the final ptq.Grid (LSQ: the learned step)
    losses: np.ndarray  # (steps,) mini-batch loss at each step, before its update
    loss_initial: float  # the loss on the whole calibration batch before training ...
    loss_final: float  # ... and after (the projected weights)
    grad_norms: dict  # layer name -> ||dL/dv|| at the first step (every layer gets a gradient)
    codes_changed: float  # fraction of weights whose integer code differs from the start's


def _names(model):
    return [[model.layer_name(i, k) for k in model.kinds] for i in range(model.n_blocks)]


def _student(model, frozen, latent, grids, lsq: bool):
    """The model params with every linear layer fake-quantized from its latent weights.

    ``w = step * v`` (v in grid steps); with LSQ the step is ``s = step * (1 + u / Q_P)``,
    ``u`` learned from 0, so that an update of ``lr`` to ``u`` moves the grid's outermost
    level by about ``lr`` steps, as an update of ``v`` moves a weight (with Adam the LSQ
    gradient scale ``g`` changes little besides, Adam being invariant to a gradient's scale).
    ``frozen``, ``latent`` and ``grids`` are arguments of the jitted step, never constants.
    """
    blocks = []
    for i, p in enumerate(frozen["blocks"]):
        q = dict(p)
        for k in model.kinds:
            g = grids[i][k]
            w = latent["v"][i][k] * g.step
            if lsq:
                g_scale = fq.lsq_grad_scale(g, w.shape[0])
                q[k] = (fq.lsq_quant(w, _lsq_step(g, latent["u"][i][k]), g, g_scale), p[k][1])
            else:
                q[k] = (fq.fake_quant(w, g), p[k][1])
        blocks.append(q)
    return {**frozen, "blocks": blocks}


def _lsq_step(g: ptq.Grid, u):
    return g.step * (1.0 + u / (g.qmax - g.qmin))


def _hidden(model, params, batch):
    h = model.embed(params, batch)
    for p in params["blocks"]:
        h = run_block(model, p, h, batch)
    return h


def _sq_errors(model, params, batch, target):
    """``(sum_tokens ||h - target||^2, sum_tokens ||target||^2)`` over a batch's tokens."""
    m = batch.mask.astype(target.dtype)[..., None]
    return jnp.sum(m * (_hidden(model, params, batch) - target) ** 2), jnp.sum(m * target**2)


@functools.lru_cache(maxsize=8)
def _step_fns(model, lsq: bool, lr: float, steps: int):
    """The jitted training step, teacher and loss, compiled once per (model, mode, schedule)
    and mini-batch shape (fixed: ``batch_size`` rows of the padded length)."""
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps))

    def loss_of(lat, fr, gt, b, t):
        num, den = _sq_errors(model, _student(model, fr, lat, gt, lsq), b, t)
        return num / den

    @jax.jit
    def step(lat, state, fr, gt, b, t):
        loss, grad = jax.value_and_grad(loss_of)(lat, fr, gt, b, t)
        updates, state = opt.update(grad, state, lat)
        return optax.apply_updates(lat, updates), state, loss, grad

    teacher = jax.jit(lambda fr, b: _hidden(model, fr, b))
    errors = jax.jit(lambda pr, b, t: _sq_errors(model, pr, b, t))
    return step, teacher, errors, opt.init


def _chunks(batch, size: int) -> list[_Batch]:
    """The rows of ``batch`` in mini-batches of exactly ``size`` rows (the last one filled
    with empty rows, mask 0, which no loss term sees), so one compiled shape serves all."""
    ids, mask = np.asarray(batch.ids), np.asarray(batch.mask)
    out = []
    for i in range(0, ids.shape[0], size):
        r_ids, r_mask = ids[i: i + size], mask[i: i + size]
        pad = size - r_ids.shape[0]
        if pad:
            r_ids = np.concatenate([r_ids, np.repeat(r_ids[:1], pad, axis=0)])
            r_mask = np.concatenate([r_mask, np.zeros((pad, mask.shape[1]), mask.dtype)])
        out.append(_Batch(jnp.asarray(r_ids), jnp.asarray(r_mask)))
    return out


def train(model, batch, init: dict, grids: dict, *, steps: int, lr: float, batch_size: int,
          seed: int = 0, lsq: bool = False, progress: bool | None = None) -> TrainResult:
    """Quantization-aware training of every linear layer by distillation (module docstring).

    Args:
      model: an adapter (`experiments.models`); ``model.params`` is the teacher and supplies
        everything that is not a linear layer's weight (embeddings, biases, norms: frozen).
      batch: the calibration batch (``ids``, ``mask`` (B, L)); each step takes ``batch_size``
        of its rows, in epochs of a shuffle seeded by ``seed``.
      init: layer name -> (N, n) initial latent weights (W for QAT from RTN, the PTQ ``Q``).
      grids: layer name -> `ptq.Grid` (per channel), the grid of the fake quantization.
      steps: Adam updates (>= 1). lr: peak learning rate in grid steps (> 0), cosine decay.
      lsq: learn the steps (LSQ) besides the weights.
      progress: a tqdm bar with the loss (None: only on a terminal).

    Returns:
      `TrainResult`: the projected weights (on the grid, checked by `ptq.qat.project`), the
      final grids, the per-step mini-batch losses, the whole-batch loss before and after, and
      the gradient norm of every layer's latent weights at the first step.
    """
    B = batch.ids.shape[0]
    checks = (("steps", steps, "an integer >= 1", isinstance(steps, int) and steps >= 1),
              ("lr", lr, "a number > 0", isinstance(lr, (int, float)) and lr > 0),
              ("batch_size", batch_size, f"an integer in [1, {B}] (calibration rows)",
               isinstance(batch_size, int) and 1 <= batch_size <= B))
    for name, v, expected, ok in checks:
        if isinstance(v, bool) or not ok:
            raise ValueError(f"`{name}` must be {expected}; got {v!r}")
    names = _names(model)
    if set(init) != {n for row in names for n in row} or set(grids) != set(init):
        raise ValueError(f"`init` and `grids` must have one entry per linear layer "
                         f"({sum(map(len, names))}); got {len(init)} and {len(grids)}")
    frozen = model.params
    g_tree = [{k: grids[n] for k, n in zip(model.kinds, row)} for row in names]
    latent = {"v": [{k: jnp.asarray(init[n], jnp.float32) / grids[n].step
                     for k, n in zip(model.kinds, row)} for row in names]}
    if lsq:
        latent["u"] = [{k: jnp.zeros_like(grids[n].step) for k, n in zip(model.kinds, row)}
                       for row in names]
    step, teacher, errors, opt_init = _step_fns(model, lsq, float(lr), steps)
    rows = _chunks(batch, batch_size)
    targets = [teacher(frozen, b) for b in rows]

    def whole_loss(params):
        num, den = zip(*(errors(params, b, t) for b, t in zip(rows, targets)))
        return float(sum(num) / sum(den))

    loss_initial = whole_loss(_student(model, frozen, latent, g_tree, lsq))
    state = opt_init(latent)
    rng = np.random.default_rng(seed)
    ids, mask = np.asarray(batch.ids), np.asarray(batch.mask)
    target_all = np.concatenate([np.asarray(t) for t in targets])  # (chunks * size, L, D)
    order: list[int] = []
    losses = np.empty(steps)
    grad_norms: dict = {}
    bar = tqdm(range(steps), desc=f"{model.name} QAT", unit="step",
               disable=None if progress is None else not progress, leave=False)
    for t in bar:
        while len(order) < batch_size:
            order += list(rng.permutation(B))
        idx, order = np.asarray(order[:batch_size]), order[batch_size:]
        b = _Batch(jnp.asarray(ids[idx]), jnp.asarray(mask[idx]))
        latent, state, loss, grad = step(latent, state, frozen, g_tree, b,
                                         jnp.asarray(target_all[idx]))
        losses[t] = float(loss)
        if t == 0:
            grad_norms = {n: float(jnp.linalg.norm(grad["v"][i][k]))
                          for i, row in enumerate(names) for k, n in zip(model.kinds, row)}
            if lsq:
                grad_norms.update({f"{n}/step": float(jnp.linalg.norm(grad["u"][i][k]))
                                   for i, row in enumerate(names)
                                   for k, n in zip(model.kinds, row)})
        bar.set_postfix(loss=f"{losses[t]:.4g}")
    bar.close()
    blocks, final = [], {}
    changed = total = 0
    for i, (p, row) in enumerate(zip(frozen["blocks"], names)):
        q = dict(p)
        for k, n in zip(model.kinds, row):
            g = grids[n]
            if lsq:
                g = g._replace(step=_lsq_step(g, latent["u"][i][k]))
            q[k] = (fq.project(latent["v"][i][k] * grids[n].step, g), p[k][1])
            final[n] = g
            # the start's codes (RTN of W, or the PTQ codes) against the final ones
            changed += int(jnp.sum(grids[n].codes(init[n]) != g.codes(q[k][0])))
            total += q[k][0].size
        blocks.append(q)
    params = {**frozen, "blocks": blocks}
    return TrainResult(params, final, losses, loss_initial, whole_loss(params), grad_norms,
                       changed / total)


def check_on_grid(params, grids: dict, model) -> None:
    """Raise unless every linear layer's weights lie on their grid (the final QAT weights)."""
    for i, p in enumerate(params["blocks"]):
        for k in model.kinds:
            n = model.layer_name(i, k)
            ok = grids[n].on_grid(p[k][0], rtol=1e-6)
            if not bool(jnp.all(ok)):
                raise RuntimeError(f"{n}: {int(ok.size - jnp.sum(ok))} weights off the grid")


# --------------------------------------------------------------------------- output scales
@functools.partial(jax.jit, static_argnames=("kind", "per"))
def _scale_layer(X, X_hat, W, Q, kind, per):
    T, Y = X @ W, X_hat @ Q
    c = fq.output_scale(T, Y, kind, per)
    tt = jnp.sum(T * T)
    errs = {"none": fq.scaled_error(T, Y, 1.0), "applied": jnp.sum(fq.scaled_error(T, Y, c, per))}
    for name, (k, p) in SCALES.items():
        errs[name] = jnp.sum(fq.scaled_error(T, Y, fq.output_scale(T, Y, k, p), p))
    return c, {n: jnp.sqrt(e / tt) for n, e in errs.items()}


def apply_scales(model, params, batch, kind: str, per: str) -> tuple[dict, list[dict]]:
    """``params`` with every linear layer's output scaled, in forward order (module docstring).

    At each layer ``T = X W`` (full-precision model) and ``Y = X_hat Q`` (the quantized model
    with every earlier layer already scaled); ``c = output_scale(T, Y, kind, per)`` and the
    layer becomes ``Q diag(c)``. Returns the scaled params and per layer the scale's summary
    and the relative errors ``||T - c Y||_F / ||T||_F`` of every scale on the same ``Y``.
    """
    fp = model.params
    qblocks = [dict(p) for p in params["blocks"]]
    layers = []
    h_fp = h_q = model.embed(fp, batch)
    for i in range(model.n_blocks):
        fp_stages = model.block(fp["blocks"][i], h_fp, batch)
        q_stages = model.block(qblocks[i], h_q, batch)
        while True:
            try:
                kinds, x_fp = next(fp_stages)
            except StopIteration as done:
                h_fp = done.value
                try:
                    next(q_stages)
                except StopIteration as q_done:
                    h_q = q_done.value
                break
            _, x_q = next(q_stages)
            X, X_hat = (jnp.asarray(model.rows(batch, x)) for x in (x_fp, x_q))
            for k in kinds:
                Q, b = qblocks[i][k]
                c, errs = _scale_layer(X, X_hat, fp["blocks"][i][k][0], Q, kind, per)
                qblocks[i][k] = (Q * c, b)
                c = np.asarray(c)
                layers.append({"name": model.layer_name(i, k), "scale_mean": float(c.mean()),
                               "scale_min": float(c.min()), "scale_max": float(c.max()),
                               "rel_err": {n: float(e) for n, e in errs.items()}})
    return {**params, "blocks": qblocks}, layers


# --------------------------------------------------------------------------- one record
def execute(cfg: dict[str, Any]) -> dict[str, Any]:
    """One method at one bit-width and seed: quality unscaled and per scale variant."""
    model = _model()
    batch = calibration(cfg["tokens"], cfg["seed"])
    name, bits = cfg["name"], cfg["bits"]
    out: dict[str, Any] = {}
    if name in PTQ_METHODS:
        run, seconds, peak = _ptq_cached(name, bits, cfg["tokens"], cfg["seed"])
        params = run.params
    else:
        init_alg = QAT_METHODS[name]
        grids = layer_grids(model, bits)
        if init_alg == "rtn":  # latent = W: the first forward is RTN on the same grid
            init = {model.layer_name(i, k): p[k][0]
                    for i, p in enumerate(model.params["blocks"]) for k in model.kinds}
            init_s = init_peak = 0.0
        else:  # latent = what PTQ rounded: the first forward is the PTQ model
            run, init_s, init_peak = _ptq_cached(init_alg, bits, cfg["tokens"], cfg["seed"])
            init = run.rounded
        res, train_s, train_peak = _measured(lambda: train(
            model, batch, init, grids, steps=cfg["steps"], lr=cfg["lr"],
            batch_size=cfg["batch"], seed=cfg["seed"], lsq=cfg["lsq"]))
        check_on_grid(res.params, res.grids, model)
        params, seconds, peak = res.params, init_s + train_s, max(init_peak, train_peak)
        out.update(on_grid=True, init_s=init_s, train_s=train_s,
                   losses=res.losses.tolist(), loss_initial=res.loss_initial,
                   loss_final=res.loss_final, grad_norm_min=min(res.grad_norms.values()),
                   codes_changed=res.codes_changed)
    out.update(cosine_mean=heldout_quality(params, cfg["heldout"]), seconds=seconds,
               peak_mb=peak)
    scaled, layers = {}, {}
    for v in cfg["scales"]:
        t0 = time.perf_counter()
        sp, layers[v] = apply_scales(model, params, batch, *SCALES[v])
        scale_s = time.perf_counter() - t0
        scaled[v] = {"cosine_mean": heldout_quality(sp, cfg["heldout"]), "seconds": scale_s}
    out.update(scaled=scaled, scale_layers=layers)
    return out


class QATStudy(Study):
    """`experiments.study.Study` with this study's configurations and records."""

    def configs(self, size: str) -> list[dict[str, Any]]:
        if size not in self.sizes:
            raise ValueError(f"`size` must be one of {sorted(self.sizes)}; got {size!r}")
        s = self.sizes[size]
        out = []
        for seed in s.seeds:
            for b in s.bits:
                if seed != s.seeds[0] and b in s.bits_one_seed:
                    continue
                for name in s.methods:
                    cfg = {"name": name, "pass": "qat", "bits": b, **s.data, "seed": seed,
                           "grid": "asymmetric", "scales": list(s.scales)}
                    if name in QAT_METHODS:
                        cfg.update(s.train)
                    out.append(cfg)
        return out

    def compute(self, cfg: dict[str, Any]) -> dict[str, Any]:
        out = execute(cfg)
        return {**out, "layers": [], "wall_s": {"method": out["seconds"]}}

    def x64(self, cfg: dict[str, Any]) -> bool:
        return False  # the float32 deployment the study measures


def load_sizes(overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Size]:
    """The sizes of ``conf/study/qat.yaml`` (`experiments.study.load_sizes`), with dotted
    overrides (``sizes.full.train.steps=80``), methods and scales checked."""
    sizes = study_sizes("qat", Size, overrides)
    for name, s in sizes.items():
        bad = sorted(set(s.methods) - set(METHODS)) + sorted(set(s.scales) - set(SCALES))
        if bad:
            raise ValueError(f"size {name}: unknown methods or scales {bad}; expected methods "
                             f"from {METHODS} and scales from {tuple(SCALES)}")
    return sizes


STUDY = QATStudy("qat", load_sizes(), None, figures.build_all, "qat", "cosine_mean")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the QAT-against-PTQ study and its figure.")
    parser.add_argument("--size", default="default", choices=sorted(STUDY.sizes))
    parser.add_argument("--runs", default="runs", help="records root (runs/<size>/qat)")
    parser.add_argument("--out", default="figures", help="figure folder")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/study/qat.yaml")
    args = parser.parse_args(argv)
    console_logging()
    study = STUDY if not args.overrides else QATStudy(
        "qat", load_sizes(args.overrides), None, figures.build_all, "qat", "cosine_mean")
    _, s = study.run_and_build(args.size, f"{args.runs}/{args.size}/qat", args.out)
    print(s)
    return int(s["errors"] > 0)


__all__ = ["METHODS", "SCALES", "STUDY", "Size", "TrainResult", "apply_scales", "calibration",
           "check_on_grid", "execute", "heldout_quality", "layer_grids", "load_sizes", "main",
           "PTQRun", "run_ptq", "train"]

if __name__ == "__main__":
    sys.exit(main())
