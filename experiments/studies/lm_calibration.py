"""How the causal LM's OPTQ and Qronos depend on the calibration set and on damping.

    python -m experiments.studies.lm_calibration --size full  # records in runs/full/lm_calibration
    python -m experiments.studies.lm_calibration --size smoke   # what CI runs (tiny windows)

Qronos has the smaller error on almost every layer of SmolLM2-135M at default size
(``figures/lm_gain``) yet the larger held-out perplexity (``figures/lm_perplexity``). Both
algorithms see the same calibration tokens; the per-layer errors are measured on those tokens,
the perplexity on held-out articles. Qronos' correction step fits ``X w`` from ``X_hat``
by least squares over the calibration rows (THEORY.md section 2), N up to 1536 coefficients
per neuron on m = calib x length rows, so with few rows it fits the calibration tokens
rather than the text. This study measures that directly: the same two algorithms at 3 bits
(practical pass) with more calibration windows, and with more damping (``percdamp``, the
ridge ``lam = percdamp * mean diag(X_hat^T X_hat)`` of both algorithms), everything else as
the ``lm`` study (`experiments.studies.lm`); at the default calibration size three seeds (three
draws
of the calibration windows) give the spread of one setting. Figure: ``lm_calibration``
(`experiments.figures.lm_calibration`).

It has no default size: its full size is 16 whole-model runs up to 128 x 512 calibration
tokens (hours on 2 cores), beyond the 10-minute default reproduce, so
``python -m experiments.reproduce`` leaves it out and ``--size full`` runs it.
"""

from __future__ import annotations

import sys

from experiments.figures import lm_calibration as figures
from experiments.studies import lm
from experiments.study import Size, Study, load_sizes

SIZES = load_sizes("lm_calibration", Size)  # conf/study/lm_calibration.yaml

STUDY = Study("lm_calibration", SIZES, lm.execute, figures.build_all,
              "lm calibration", "perplexity")
main = STUDY.main

__all__ = ["SIZES", "STUDY", "main"]

if __name__ == "__main__":
    sys.exit(main())
