"""The calibration advisor: is this calibration set big enough for this method?

    python -m experiments.advisor --model smollm2 --calib 4             # 4 windows of 512 tokens
    python -m experiments.advisor --model smollm2 --calib 16 --bits 3 --csv advice.csv
    python -m experiments.advisor --model minilm --calib 2048
    python -m experiments.advisor --records runs/study/lm_strength   # from a study's records

It quantizes the model layer by layer with Qronos' least-squares-first form at
``strength="auto"`` (`ptq.select`), which for every layer predicts, from calibration
sequences held out one fold at a time, the error the layer's continuous start ``w_a`` makes on
new inputs at ``a = 0`` (OPTQ on the quantized model's inputs), ``a = 1`` (full Qronos) and the
chosen ``a``, beside the same errors on the calibration rows themselves. Per layer it reports

* ``rows_per_feature`` m / N and the dead features of ``X_hat`` (zero columns);
* ``overfit``: the predicted held-out error of the full correction over its in-sample error
  (the part of the mismatch the least-squares fit explains on these rows only);
* ``full_vs_none``: predicted held-out error at ``a = 1`` over that at ``a = 0``: below 1, full
  correction is predicted to help on new text; above 1, to hurt;
* ``chosen``: the strength `ptq.select` picks, and ``chosen_vs_none`` its predicted ratio.

and per model one answer (:func:`verdict`): **enough for full-strength Qronos** when full
correction is predicted to help on new inputs (``full_vs_none < 1``) in the median layer and
in at least two thirds of the layers, else **too few for full-strength Qronos**, with the
strength the data choose instead. The predictions are of the continuous start's held-out
error only; the rounding term, which does not depend on the strength, is left out. Nothing
here reads the held-out evaluation text: the predictions use the calibration rows only.
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np

import theory
from experiments import console_logging, records
from experiments.advice import COLUMNS, layer_rows, summary_lines, verdict
from experiments.driver import make_options, quantize_model
from experiments.models import Batch
from experiments.models.minilm import MiniLM
from experiments.models.minilm import text as minilm_text
from experiments.models.smollm2 import SmolLM2
from experiments.models.smollm2 import text as smollm2_text


def guidance_hook(ctx) -> dict:
    """An ``on_layer`` hook: the lam `theory.lam_guidance` picks for the layer (B1 subject to B3
    on its ``X_hat``, a symmetric grid of the run's bits), as a percdamp."""
    X_hat = np.asarray(ctx.X_hat, np.float64)
    g = theory.lam_guidance(X_hat, np.asarray(ctx.W, np.float64), bits=ctx.options.bits,
                            order=ctx.options.order)
    diag_mean = float(np.mean(np.sum(X_hat**2, axis=0)))
    return {"guidance_percdamp": np.nan if g.lam is None or diag_mean == 0
            else g.lam / diag_mean}


def advise(model, batch: Batch, *, bits: int = 3, percdamp: float | None = None,
           lam_auto: bool = False, guidance: bool = False, order: str = "natural",
           progress: bool = True) -> tuple[list[dict], dict]:
    """Quantize ``model`` on ``batch`` with Qronos at strength "auto" (and lam "auto" with
    ``lam_auto``); the per-layer rows and the verdict. ``guidance``: also the lam of
    `theory.lam_guidance` per layer (a float64 factorisation per candidate: slow on wide
    layers)."""
    lam = "auto" if lam_auto else None
    o = make_options("qronos", bits, variant="ls_first", strength="auto", percdamp=percdamp,
                     lam=lam, order=order)
    records, _ = quantize_model(model, o, batch, progress=progress,
                                on_layer=guidance_hook if guidance else None)
    rows = layer_rows(records)
    return rows, verdict(rows)


def _model_and_batch(name: str, calib: int, length: int, seed: int):
    """SmolLM2: ``calib`` random windows of ``length`` tokens; MiniLM: its calibration
    paragraphs up to ``calib`` tokens (each paragraph one sequence)."""
    if name == "smollm2":
        ids = smollm2_text.calibration_windows(calib, length, seed)
        return SmolLM2(), Batch(ids, np.ones_like(ids))
    if name == "minilm":
        return MiniLM(), minilm_text.calibration_batch(calib)
    raise ValueError(f"`--model` must be 'smollm2' or 'minilm'; got {name!r}")


def from_records(folder: str) -> list[tuple[dict, list[dict], dict]]:
    """``(config, rows, verdict)`` for every study record under ``folder`` whose layers carry a
    selection (its Qronos "auto" runs); nothing is recomputed."""
    out = []
    for rec in records.load_records(folder):
        layers = rec.get("layers") or []
        if rec.get("status") != "ok" or not layers or "selection" not in layers[0]:
            continue
        rows = layer_rows(layers)
        out.append((rec.get("config", {}), rows, verdict(rows)))
    if not out:
        raise ValueError(f"`--records` {folder!r} holds no ok record with per-layer selections "
                         "(a study's Qronos strength='auto' runs)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", choices=["smollm2", "minilm"])
    p.add_argument("--calib", type=int, default=16,
                   help="smollm2: calibration windows (sequences); minilm: calibration tokens")
    p.add_argument("--length", type=int, default=512, help="tokens per window (smollm2)")
    p.add_argument("--seed", type=int, default=0, help="which calibration windows")
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--percdamp", type=float, default=None)
    p.add_argument("--order", default="natural")
    p.add_argument("--lam-auto", action="store_true", help="choose the damping too")
    p.add_argument("--guidance", action="store_true",
                   help="report theory.lam_guidance's lam per layer beside the chosen one")
    p.add_argument("--csv", default=None, help="write the per-layer rows here")
    p.add_argument("--records", default=None,
                   help="advise from a study's records in this folder instead of running")
    a = p.parse_args(argv)
    console_logging()
    if a.records:
        for cfg, _, v in from_records(a.records):
            what = ", ".join(f"{k} {cfg[k]}" for k in ("config", "bits", "calib", "seed", "order")
                             if k in cfg)
            print("\n".join(summary_lines(v, what or "record")))
        return 0
    model, batch = _model_and_batch(a.model, a.calib, a.length, a.seed)
    rows, v = advise(model, batch, bits=a.bits, percdamp=a.percdamp, lam_auto=a.lam_auto,
                     guidance=a.guidance, order=a.order)
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
    what = (f"{a.model}, {batch.ids.shape[0]} calibration sequences "
            f"({int(np.asarray(batch.mask).sum())} tokens)")
    print("\n".join(summary_lines(v, what)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
