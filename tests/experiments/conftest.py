"""Shared fixtures: a Hydra compose context on conf/, and every preset's smoke sweep run once."""

from __future__ import annotations

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
