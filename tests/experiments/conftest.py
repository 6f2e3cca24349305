"""Shared fixtures: a Hydra compose context on conf/, and every preset's smoke sweep run once."""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_dir

from experiments import run as run_mod
from experiments import sweep
from experiments.figures import FIGURES


@pytest.fixture
def compose_cfg():
    """compose(overrides, hydra=False) -> DictConfig, inside a fresh Hydra context."""

    def _compose(overrides=(), hydra=False):
        with sweep._initialized():
            return compose("config", overrides=list(overrides), return_hydra_config=hydra)

    return _compose


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory):
    """Every figure's sweep at size smoke, in-process, into one temporary records root."""
    root = tmp_path_factory.mktemp("runs")
    results = {name: sweep.run_sweep(name, "smoke", [f"out_dir={root}/{name}"], progress=False)
               for name in FIGURES}
    return root, results


__all__ = ["compose", "initialize_config_dir", "run_mod"]


@pytest.fixture(scope="module")
def reproduce_lm_smoke(tmp_path_factory):
    """``reproduce --size smoke --only <study>`` for an LM study on the real SmolLM2 file, in a
    folder of its own; returns (exit status, the study's records folder, the figures folder).
    A missing model package fails the test with its install command (never a skip)."""
    from experiments import reproduce
    from experiments.models import smollm2

    def run(study: str):
        try:
            smollm2.verify()
        except smollm2.ModelMissingError as exc:
            pytest.fail(f"the LM study needs the model package: {exc}", pytrace=False)
        root = tmp_path_factory.mktemp(study)
        runs, out = str(root / "runs"), str(root / "figures")
        status = reproduce.main(["--size", "smoke", "--only", study, "--runs", runs,
                                 "--out", out])
        return status, os.path.join(runs, "smoke", study), out

    return run
