"""The causal LM study: SmolLM2-135M quantized end to end, judged by held-out perplexity.

    python -m experiments.studies.lm                  # default size, records in runs/default/lm
    python -m experiments.studies.lm --size smoke     # what CI runs: 210 layers on 1536 tokens
    python -m experiments.studies.lm --size full  # 128 x 512 calibration tokens, bits 2, 3, 4, 8
    python -m experiments.studies.lm --size bits  # bits 2, 3, 4, 8 at 16 x 512 calibration tokens
    python -m experiments.studies.lm --size groups    # 4 bits, groups of 128, at 16 x 512

    from experiments.studies.lm import quantize_lm
    res = quantize_lm("optq", 3, calib=16)    # all 210 linear layers, in forward order
    res.perplexity, res.records[7]["rel_err"]

Each run quantizes the 210 linear layers (30 blocks x q, k, v, o, gate, up, down) with the
one sequential driver (`experiments.driver`, adapter `experiments.models.smollm2`) on
``calib`` random windows of ``length`` tokens of the calibration articles, then scores the
quantized model on the first ``heldout`` non-overlapping windows of the held-out articles:
perplexity ``exp(mean NLL)`` over every predicted token (`smollm2.perplexity`). The text is
the Wikipedia excerpt of `experiments.models.smollm2.text` (disjoint articles). The passes
(practical:
GPTQ's asymmetric grid; bounds: the infinite alphabet in float64, every bound on every layer)
and the records are `experiments.study`'s; figures: `experiments.figures.lm`.

The "full-precision" model is the dequantized GGUF file, whose weights are themselves stored
in Q4_1 (groups of 32, 16 levels each; the token embedding in Q8_0): every bit-width here
re-quantizes those values, so 8 bits is near-lossless by construction and 4 bits per channel
is the first meaningful comparison (see the README).
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any, Callable, NamedTuple

import numpy as np

from experiments.driver import FullPrecisionCache, make_options, quantize_model
from experiments.figures import lm as figures
from experiments.models import Batch, smollm2
from experiments.models.smollm2 import SmolLM2, text
from experiments.study import Outcome, Size, Study, load_sizes

DEFAULT_LENGTH = 512


class LMResult(NamedTuple):
    records: list  # one dict per linear layer (the driver's), forward order
    perplexity: float  # held-out perplexity of the quantized model
    n_tokens: int  # held-out tokens predicted
    params: dict  # the quantized model's parameters
    seconds: float  # wall time of the layer-by-layer quantization


@functools.lru_cache(maxsize=1)
def model():
    return SmolLM2()


def calibration_batch(calib: int, length: int = DEFAULT_LENGTH, seed: int = 0):
    """``calib`` random calibration windows as an `experiments.models.Batch` (no padding)."""
    ids = text.calibration_windows(calib, length, seed)
    return Batch(ids, np.ones_like(ids))


# Keep the full-precision layer inputs and targets across runs on at most this many
# calibration tokens: 30 x 3264 input columns (q/k/v and gate/up share theirs) and 30 x 5184
# target columns, 4 bytes each in float32, about 1 GB per 1000 tokens (twice the targets in
# the float64 bounds pass). The default study's 2048 tokens then compute the full-precision
# forward pass and the 210 products X @ W once for its three runs instead of once per run.
CACHE_MAX_TOKENS = 4096


@functools.lru_cache(maxsize=1)
def _cache(calib: int, length: int, seed: int):
    return FullPrecisionCache()


def full_precision_cache(calib: int, length: int = DEFAULT_LENGTH, seed: int = 0):
    """The driver's `FullPrecisionCache` for this calibration batch, kept for the next run on
    the same batch (one batch at a time), or None above `CACHE_MAX_TOKENS` tokens, where
    every run recomputes them in lockstep with the quantized model."""
    return _cache(calib, length, seed) if calib * length <= CACHE_MAX_TOKENS else None


@functools.lru_cache(maxsize=4)
def full_precision_perplexity(heldout: int, length: int = DEFAULT_LENGTH) -> tuple[float, int]:
    """Perplexity of the unquantized (dequantized GGUF) model on the same held-out windows."""
    ppl, n, _ = smollm2.perplexity(model().params, text.heldout_windows(heldout, length))
    return ppl, n


def quantize_lm(algorithm: str = "optq", bits: int = 4, *, calib: int = 128,
                length: int = DEFAULT_LENGTH, heldout: int | None = 32,
                on_layer: Callable | None = None, progress: bool = False,
                **options) -> LMResult:
    """Quantize all 210 linear layers in forward order; held-out perplexity.

    Args:
      algorithm, bits, **options: as `experiments.driver.make_options` (grid, finite,
        lam, percdamp, order, rounding, variant, seed, block_size).
      calib: calibration windows (GPTQ's usual 128); length: tokens per window (512).
      heldout: held-out windows scored (None: all of them).
      on_layer: the driver's per-layer hook (e.g. `quantize_model.theory_bounds`).
    """
    o = make_options(algorithm, bits, **options)
    batch = calibration_batch(calib, length, o.seed)
    t0 = time.perf_counter()
    records, params = quantize_model(model(), o, batch, on_layer=on_layer, progress=progress,
                                     cache=full_precision_cache(calib, length, o.seed))
    seconds = time.perf_counter() - t0
    ppl, n, _ = smollm2.perplexity(params, text.heldout_windows(heldout, length),
                                   progress=progress)
    return LMResult(records, ppl, n, params, seconds)


def execute(cfg: dict[str, Any], options: dict[str, Any], on_layer) -> Outcome:
    res = quantize_lm(calib=cfg["calib"], length=cfg["length"], heldout=cfg["heldout"],
                      on_layer=on_layer, **options)
    fp, _ = full_precision_perplexity(cfg["heldout"], cfg["length"])
    quality = {"perplexity": res.perplexity, "fp_perplexity": fp, "heldout_tokens": res.n_tokens}
    return Outcome(quality, res.records, res.seconds)


SIZES = load_sizes("lm", Size)  # conf/study/lm.yaml
STUDY = Study("lm", SIZES, execute, figures.build_all, "lm", "perplexity")
main = STUDY.main

__all__ = ["LMResult", "SIZES", "STUDY", "calibration_batch", "execute",
           "full_precision_perplexity", "main", "quantize_lm"]

if __name__ == "__main__":
    sys.exit(main())
