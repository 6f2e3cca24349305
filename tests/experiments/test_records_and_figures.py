"""Records aggregate into one tidy table; every figure builds from smoke records alone."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from experiments import records, reproduce
from experiments.figures import FIGURES
from experiments.reproduce import build_figure, summarize


def test_aggregate_several_folders_to_parquet_and_csv(smoke_runs, tmp_path):
    root, _ = smoke_runs
    folders = [str(root / "lam_sweep"), str(root / "mismatch")]
    df = records.load(folders)
    n_runs = len(records.record_files(folders))
    assert df["id"].nunique() == n_runs
    # tidy: one row per run and neuron, config flattened into columns
    assert len(df) == int(df.groupby("id")["n"].first().sum())
    for column in ("cfg.data.family", "cfg.algorithm.name", "err2", "errinf", "bound.B1",
                   "ratio.B1", "lam", "wall_s"):
        assert column in df
    for ext in ("parquet", "csv"):
        path = str(tmp_path / f"t.{ext}")
        records.main([*folders, "--out", path])
        back = pd.read_parquet(path) if ext == "parquet" else pd.read_csv(path)
        assert len(back) == len(df)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    class Boom:
        def __repr__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        records.write_atomic(str(tmp_path / "x.json"), {"a": Boom()})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", FIGURES)
def test_figure_builds_from_records(smoke_runs, tmp_path, name):
    root, _ = smoke_runs
    build_figure(name, str(root / name), str(tmp_path))
    for ext in ("png", "pdf", "csv"):
        assert (tmp_path / f"{name}.{ext}").stat().st_size > 0
    assert len(pd.read_csv(tmp_path / f"{name}.csv")) > 0


@pytest.mark.parametrize("name", FIGURES)
def test_summary_reports_no_violation(smoke_runs, name):
    root, _ = smoke_runs
    s = summarize(str(root / name))
    assert s["runs"] > 0 and s["errors"] == 0 and s["violations"] == 0


def test_only_keeps_the_other_figures_summary_rows(tmp_path):
    from experiments import reproduce

    out = str(tmp_path / "figures")
    for name in ("order", "lam_guidance"):
        assert reproduce.main(["--size", "smoke", "--only", name, "--runs",
                               str(tmp_path / "runs"), "--out", out]) == 0
    table = pd.read_csv(os.path.join(out, "summary.csv"))
    assert list(table["figure"]) == ["order", "lam_guidance"]  # FIGURES order, both kept
    assert (table["runs"] > 0).all() and (table["violations"] == 0).all()


NO_DEFAULT = [k for k in reproduce.STUDIES if "default" not in reproduce.study_sizes(k)]


def test_the_studies_without_a_default_size():
    """The long studies define no default size, so the 10-minute default reproduce leaves them
    out (their sizes are named explicitly)."""
    assert {"lm_calibration", "lm_strength", "minilm_strength"} <= set(NO_DEFAULT)


@pytest.mark.parametrize("name", NO_DEFAULT)
def test_default_reproduce_leaves_it_out(name):
    with pytest.raises(SystemExit):  # asked for by name at a size it does not have
        reproduce.main(["--only", name, "--no-figures"])
