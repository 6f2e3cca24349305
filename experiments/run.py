"""The Hydra app: one run = one record (quantize one layer, measure its errors, evaluate every
bound).

    python -m experiments.run                                  # defaults: gaussian, optq, 4 bits
    python -m experiments.run data=low_rank algorithm=qronos data.mismatch=0.1
    python -m experiments.run -m +experiment=order size=smoke  # a figure's sweep (joblib)

`run(cfg)` is the whole job; the Hydra app and `experiments.sweep` (so `experiments.reproduce`)
call it. It validates the config (a bad value raises before anything is written), loads the
layer, and hands the rest to the measurement layer: `experiments.measure.compute` for the
record's body and `experiments.measure.record_run` for the record cycle (skip a recorded run,
write an ``error`` record when the algorithm or a bound fails, so that a sweep goes on). The
library calls get plain keyword arguments, never a DictConfig.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments import data, measure, records, schema
from experiments.studies import minilm

log = logging.getLogger(__name__)
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
schema.register()
# Data families that need a model: family -> loader of (X, X_hat, W, source).
SOURCES = {"real": minilm.layer_source}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Validate, skip if recorded, else compute and write one record; returns the record.

    Raises ValueError (and writes nothing) for an invalid config or unreadable data; any
    other failure is written as an ``error`` record and returned.
    """
    spec = schema.validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    config.pop("hydra", None)
    path = records.record_path(spec.out_dir, config)
    old = records.read(path)
    if old is not None and old.get("status") == "ok":
        log.info("skip %s (recorded)", os.path.basename(path))
        return dict(old, skipped=True)
    layer = data.load(spec.data, SOURCES)  # bad files raise here, before any record is written
    record = measure.record_run(
        path, config, lambda: measure.compute(spec, layer), label=f"run {os.path.basename(path)}",
        header={"name": spec.name, "seed": spec.seed},
        x64=spec.precision == schema.Precision.float64)
    log.info("%s %s", record["status"], path)
    return record


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> str:
    return run(cfg)["status"]


if __name__ == "__main__":
    # Call the app through its importable name, so joblib workers can unpickle the task
    # function (a function of __main__ cannot be found in a worker process).
    from experiments import run as _app

    _app.main()
