"""One builder per figure; each reads its sweep's records and never recomputes.

    figure          preset (conf/experiment)   builder
    lam_sweep       lam_sweep                  experiments/figures/lam_sweep.py
    order           order                      experiments/figures/order.py
    bits            bits                       experiments/figures/bits.py
    stochastic      stochastic                 experiments/figures/stochastic.py
    lam_guidance    lam_guidance               experiments/figures/lam_guidance.py
    mismatch        mismatch                   experiments/figures/mismatch.py
    tightness       tightness                  experiments/figures/tightness.py

Each module has ``build(df, out_dir) -> DataFrame`` (the plotted numbers, also saved as CSV)
and a command line, ``python -m experiments.figures.<name> --runs runs --out figures``.
"""

FIGURES = ("lam_sweep", "order", "bits", "stochastic", "lam_guidance", "mismatch", "tightness")
