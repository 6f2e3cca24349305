"""The MiniLM study: whole-encoder sequential runs behind the three ``real_*`` figures.

    python -m experiments.real.study                 # default size, records in runs/default/real
    python -m experiments.real.study --size smoke    # about a minute: 4 bits only
    python -m experiments.real.study --size full     # every algorithm's bounds at bits 2-8

The passes, records and resumption are `experiments.study`'s; each run is one
`sequential.quantize_encoder` (calibration on ``tokens`` tokens, the cosine of the sentence
embeddings on held-out text). Figures: `experiments.figures.real`.
"""

from __future__ import annotations

import sys
from typing import Any

from experiments.study import CONFIGS, PASSES, Outcome, Size, Study

_BITS = tuple(range(2, 9))
_PRACTICAL = ("rtn", "optq", "optq_decreasing", "optq_stochastic", "qronos", "qronos_ls")
_CHECKED = tuple(c for c in CONFIGS if c != "rtn")  # RTN has no bound


def _data(tokens: int, heldout: int | None) -> dict[str, Any]:
    # tokens: calibration rows m (>= 1536 keeps B2 in its cheap N <= m form);
    # heldout: held-out sequences for the cosine (None: all 177)
    return {"tokens": tokens, "heldout": heldout}


# Wall time on 2 cores: smoke about 1 min; default about 2 min (12 practical runs of 3-6 s at
# 3 and 4 bits, 2 bounds runs of about 18 s at 4 bits, the bit-width of real_bounds, plus
# compilation; the first 32 held-out sequences, as the QAT study), sized for reproduce's
# 10-minute budget beside the LM and QAT studies; full (every bit-width 2-8, every
# algorithm's bounds, 64 held-out sequences) about 17 min.
SIZES = {
    "smoke": Size((4,), (4,), ("rtn", "optq", "qronos"), ("optq", "qronos"), _data(2048, 16)),
    "default": Size((3, 4), (4,), _PRACTICAL, ("optq", "qronos"), _data(2048, 32)),
    "full": Size(_BITS, _BITS, _PRACTICAL, _CHECKED, _data(2048, 64)),
}


def execute(cfg: dict[str, Any], options: dict[str, Any], on_layer) -> Outcome:
    """One whole-encoder run and its held-out cosine."""
    from experiments.real import quantize_encoder

    res = quantize_encoder(n_tokens=cfg["tokens"], n_heldout=cfg["heldout"], on_layer=on_layer,
                           **options)
    quality = {"cosine_mean": res.cosine_mean, "cosine_min": float(res.cosine.min()),
               "heldout_n": int(res.cosine.size)}
    return Outcome(quality, res.records, res.seconds)


STUDY = Study("real", SIZES, execute, "experiments.figures.real", "real", "cosine_mean")
config, configs, load, summarize = STUDY.config, STUDY.configs, STUDY.load, STUDY.summarize
run_one, run_study, run_and_build, main = (STUDY.run_one, STUDY.run_study, STUDY.run_and_build,
                                           STUDY.main)

__all__ = ["CONFIGS", "PASSES", "SIZES", "STUDY", "config", "configs", "execute", "load",
           "main", "run_and_build", "run_one", "run_study", "summarize"]

if __name__ == "__main__":
    sys.exit(main())
