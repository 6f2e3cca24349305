"""Quantization-aware training (QAT) of a model adapter on its calibration text, the training
half of the QAT study (`experiments.studies.qat`, whose docstring describes the method).

`train` runs Adam (optax) on the latent weights in units of their grid step, the forward pass
fake-quantized by `ptq.qat.fake_quant` (straight-through) or, with ``lsq``, `ptq.qat.lsq_quant`
(learned steps), on the distillation loss of the last hidden states; `check_on_grid` checks
that the projected weights lie on their grids. `hidden` and `sq_errors` are the loss's parts,
also used by the allocation study's sensitivities.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import ptq
from experiments.models import run_block
from ptq import qat as fq


class Rows(NamedTuple):  # the calibration rows of one step (ids, mask (b, L)), a pytree
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


def layer_names(model):
    return [[model.layer_name(i, k) for k in model.kinds] for i in range(model.n_blocks)]


def student(model, frozen, latent, grids, lsq: bool):
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


def hidden(model, params, batch):
    h = model.embed(params, batch)
    for p in params["blocks"]:
        h = run_block(model, p, h, batch)
    return h


def sq_errors(model, params, batch, target):
    """``(sum_tokens ||h - target||^2, sum_tokens ||target||^2)`` over a batch's tokens."""
    m = batch.mask.astype(target.dtype)[..., None]
    return jnp.sum(m * (hidden(model, params, batch) - target) ** 2), jnp.sum(m * target**2)


@functools.lru_cache(maxsize=8)
def _step_fns(model, lsq: bool, lr: float, steps: int):
    """The jitted training step, teacher and loss, compiled once per (model, mode, schedule)
    and mini-batch shape (fixed: ``batch_size`` rows of the padded length)."""
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps))

    def loss_of(lat, fr, gt, b, t):
        num, den = sq_errors(model, student(model, fr, lat, gt, lsq), b, t)
        return num / den

    @jax.jit
    def step(lat, state, fr, gt, b, t):
        loss, grad = jax.value_and_grad(loss_of)(lat, fr, gt, b, t)
        updates, state = opt.update(grad, state, lat)
        return optax.apply_updates(lat, updates), state, loss, grad

    teacher = jax.jit(lambda fr, b: hidden(model, fr, b))
    errors = jax.jit(lambda pr, b, t: sq_errors(model, pr, b, t))
    return step, teacher, errors, opt.init


def _chunks(batch, size: int) -> list[Rows]:
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
        out.append(Rows(jnp.asarray(r_ids), jnp.asarray(r_mask)))
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
    names = layer_names(model)
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

    loss_initial = whole_loss(student(model, frozen, latent, g_tree, lsq))
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
        b = Rows(jnp.asarray(ids[idx]), jnp.asarray(mask[idx]))
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


