"""Qronos' correction strength on the causal LM: which strength, chosen how.

    python -m experiments.studies.strength --size smoke   # what CI runs (tiny windows, 4 runs)
    python -m experiments.studies.strength --size study   # the committed figure (16 runs)
    python -m experiments.studies.strength --size full    # the complete grid (tens of hours)

`ptq.qronos` with ``variant="ls_first"`` starts OPTQ on ``X_hat`` from ``w + a (wt - w)``,
``wt`` the ridge least-squares fit of the full-precision layer's outputs on the quantized
model's inputs: ``a = 0`` is OPTQ on ``X_hat`` (``optq``), ``a = 0.5`` is QEP, ``a = 1`` the
least-squares-first Qronos (``qronos_ls``). With few calibration tokens the fit at ``a = 1``
follows the calibration tokens rather than the text (`experiments.studies.lm_calibration`);
this study measures held-out perplexity across the family, fixed strengths against the strength
chosen per layer by predicted held-out error on calibration windows left out of the fit
(``strength="auto"``, `ptq.select`; ``qronos_auto_lam`` chooses the damping with it), next to
the paper form of Qronos (``qronos``, its own first step at ``a = 1``) and RTN. Everything else
is the ``lm`` study's (`experiments.studies.lm`: SmolLM2-135M, the practical pass, the
held-out windows): the configurations are `experiments.study.CONFIGS`, the sizes
``conf/study/lm_strength.yaml`` (smoke, study, full). Each layer's record keeps the strength
used and, where it was chosen, the evidence (``selection``). Figure and tables:
``lm_strength`` (`experiments.figures.lm_strength`).

It has no default size (``python -m experiments.reproduce`` leaves it out); ``reproduce --only
lm_strength --size smoke`` runs the smoke size, ``--size study`` is this module's command line.
"""

from __future__ import annotations

import sys

from experiments.figures import lm_strength as figures
from experiments.studies import lm, minilm
from experiments.study import Size, Study, load_sizes

SIZES = load_sizes("lm_strength", Size)  # conf/study/lm_strength.yaml

STUDY = Study("lm_strength", SIZES, lm.execute, figures.build_all, "lm strength", "perplexity")
# The same configurations on MiniLM's 36 layers, judged by the held-out cosine, with the bound
# of every strength checked on every layer (conf/study/minilm_strength.yaml).
MINILM_SIZES = load_sizes("minilm_strength", Size)
STUDY_MINILM = Study("minilm_strength", MINILM_SIZES, minilm.execute, figures.build_minilm,
                     "minilm strength", "cosine_mean")


def main(argv: list[str] | None = None) -> int:
    """``--model minilm`` runs `STUDY_MINILM`; otherwise (``--model smollm2``, the default) the
    causal LM study."""
    argv = list(sys.argv[1:] if argv is None else argv)
    model = "smollm2"
    if "--model" in argv:
        i = argv.index("--model")
        if i + 1 >= len(argv) or argv[i + 1] not in ("smollm2", "minilm"):
            raise SystemExit("--model must be followed by 'smollm2' or 'minilm'")
        model = argv.pop(i + 1)
        argv.pop(i)
    return (STUDY_MINILM if model == "minilm" else STUDY).main(argv)

__all__ = ["MINILM_SIZES", "SIZES", "STUDY", "STUDY_MINILM", "main"]

if __name__ == "__main__":
    sys.exit(main())
