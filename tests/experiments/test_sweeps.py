"""Every experiment preset runs at its smallest size (STYLE.md 10), as a Hydra multirun.

The in-process sweeps (the `smoke_runs` fixture, what `experiments.reproduce` does) and
the real `python -m experiments.run -m` command line both write one record per point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from experiments import records, sweep
from experiments.figures import FIGURES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _records(folder):
    return [json.load(open(f)) for f in records.record_files([str(folder)])]


@pytest.mark.parametrize("preset", FIGURES)
def test_smoke_sweep_records_every_point_without_violation(smoke_runs, preset):
    root, results = smoke_runs
    recs = _records(root / preset)
    assert len(recs) == len(sweep.points(preset, "smoke")) == results[preset].ran
    for r in recs:
        assert r["status"] == "ok", r.get("error")
        assert r["versions"]["numpy"] and r["shapes"]["n"] == len(r["measured"]["err2"])
        for name, b in r["bounds"].items():
            assert "values" in b, f"{name}: {b.get('error')}"
            if b["kind"] == "deterministic" and b["checked"]:
                assert b["violations"] == 0, (name, r["config"])


@pytest.mark.study
@pytest.mark.parametrize("preset, launcher", [("mismatch", "basic"), ("bits", "local")])
def test_hydra_multirun_command_line(tmp_path, preset, launcher):
    """The documented command, with the joblib launcher (2 workers) and the basic one."""
    out = tmp_path / "records"
    cmd = [sys.executable, "-m", "experiments.run", "-m", f"+experiment={preset}", "size=smoke",
           f"out_dir={out}", f"hydra.sweep.dir={tmp_path}/hydra", f"hydra/launcher={launcher}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = _records(out)
    assert len(recs) == len(sweep.points(preset, "smoke"))
    assert all(r["status"] == "ok" for r in recs)
    # The in-process sweep names the same runs identically: nothing left to compute.
    again = sweep.run_sweep(preset, "smoke", [f"out_dir={out}"], progress=False)
    assert again.ran == 0 and again.skipped == len(recs)


@pytest.mark.parametrize("preset, size, extra", [
    *((p, "smoke", None) for p in FIGURES),
    # a default size whose points choose config groups (algorithm) besides values, with a
    # value override on the command line (composing each of its 84 points in full is the
    # slow part, about 0.1 s a point; smoke's tightness covers choosing `data`)
    ("bits", "default", ["algorithm.lam=0.5"]),
])
def test_fast_configs_equal_hydra_composed(preset, size, extra):
    """`sweep.configs` (one composition per group choice, values set on a copy) gives, point
    for point, the YAML text Hydra composes in full: same keys, values, types and order."""
    fast = [OmegaConf.to_yaml(c) for c in sweep.configs(preset, size, extra)]
    slow = [OmegaConf.to_yaml(c) for c in sweep.composed_configs(preset, size, extra)]
    assert len(fast) == len(sweep.points(preset, size, extra)) > 0
    for i, (f, s) in enumerate(zip(fast, slow, strict=True)):
        assert f == s, (preset, size, sweep.points(preset, size, extra)[i])
