"""PTQ against QAT on MiniLM, and the output scales gamma and least squares.

    python -m experiments.studies.qat  # default size, records in runs/default/qat
    python -m experiments.studies.qat --size smoke           # what CI runs (under a minute)
    python -m experiments.studies.qat --size full  # longer QAT schedule, every scale variant
    # dot-list overrides
    python -m experiments.studies.qat --size default sizes.default.train.steps=80

The sizes are ``conf/study/qat.yaml``. One record per (method, bits, seed):

* ``rtn``, ``optq``, ``qronos``: the sequential driver (`experiments.driver`, RTN
  layer by layer without data) on GPTQ's asymmetric min-max grid per output channel, as the
  practical pass of the MiniLM study.
* ``qat_rtn``, ``qat_optq``, ``qat_qronos``: quantization-aware training
  (`experiments.studies.qat_training.train`), the
  latent weights initialised from the full-precision weights (QAT from RTN: its first forward
  is RTN) or from what PTQ rounded (PTQ then QAT: ``z = Q + e``, each weight's value when
  OPTQ / Qronos rounded it, so the first forward is the PTQ model; `run_ptq`); the grid is the one
  PTQ used, fixed
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

import ptq
from experiments import console_logging
from experiments import driver as qm
from experiments.figures import qat as figures
from experiments.models.minilm import MiniLM, activations, text
from experiments.studies.minilm import heldout_cosine
from experiments.studies.qat_training import TrainResult, check_on_grid, train
from experiments.study import Study
from experiments.study import load_sizes as study_sizes
from experiments.timing import peak_memory
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
    padded to `experiments.models.minilm.text.MAX_LEN` (one compiled shape whatever the draw;
    padding
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
    for i, kinds, x_fp, x_q in qm.lockstep(model, fp, qblocks, batch):
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
        s = self.size(size)
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
