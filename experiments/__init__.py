"""Drivers: Hydra runs, records, sweeps, figures and the reproduce-everything command.

Modules: `schema` (typed configs), `data` (calibration matrices), `bounds` (which theory
bound applies and its check), `run` (one run = one record), `records` (atomic records and
aggregation), `sweep` (expand and run a preset's sweep in-process), `figures` (one builder per
figure), `reproduce` (every sweep, every figure, the summary table).
"""

import logging


def console_logging(level: int = logging.INFO) -> None:
    """The command lines' logging: plain messages on stderr, library chatter (JAX, absl,
    matplotlib) only from warnings up."""
    logging.basicConfig(level=level, format="%(message)s")
    for noisy in ("jax", "absl", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
