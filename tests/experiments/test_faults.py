"""Sweeps survive faults: resume without recomputing, error records, no misleading records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import records, sweep
from experiments import run as run_mod

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRESET = "lam_sweep"


def _mtimes(folder):
    return {f: os.stat(f).st_mtime_ns for f in records.record_files([str(folder)])}


def test_interrupted_sweep_resumes_without_recomputing(tmp_path):
    out = tmp_path / "records"
    first = sweep.run_sweep(PRESET, "smoke", [f"out_dir={out}"], progress=False)
    before = _mtimes(out)
    assert first.ran == len(before) >= 2
    # Simulate a kill: one run never finished, another was killed while writing (temp file).
    lost = sorted(before)[0]
    os.unlink(lost)
    (out / ".tmp-killed.json").write_text('{"status": "o')
    again = sweep.run_sweep(PRESET, "smoke", [f"out_dir={out}"], progress=False)
    assert (again.ran, again.skipped) == (1, len(before) - 1)
    after = _mtimes(out)
    assert set(after) == set(before)
    assert all(after[f] == before[f] for f in before if f != lost)  # untouched


def test_killed_sweep_loses_no_finished_record(tmp_path):
    out = tmp_path / "records"
    cmd = [sys.executable, "-m", "experiments.sweep", "lam_sweep", "--size", "default",
           f"out_dir={out}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(records.record_files([str(out)])) < 3:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = records.record_files([str(out)])
    assert len(done) >= 3
    for f in done:  # every record on disk is whole
        assert json.load(open(f))["status"] == "ok"
    pts = sweep.points("lam_sweep", "default")
    # Resume only the first few points (keeps the test short): the finished ones are skipped.
    first = {os.path.basename(f) for f in done}
    cfgs = list(sweep.configs("lam_sweep", "default", [f"out_dir={out}"]))
    skipped = sum(bool(run_mod.run(c).get("skipped")) for c in cfgs[: len(done) + 2])
    assert skipped >= len(done) - 0 and len(pts) > len(done)
    assert first <= {os.path.basename(f) for f in records.record_files([str(out)])}


def test_failing_run_writes_an_error_record_and_is_retried(compose_cfg, tmp_path):
    # lam = 0 with N > m: H = X^T X is singular, OPTQ must refuse (no silent fallback).
    cfg = compose_cfg([f"out_dir={tmp_path}", "data.m=8", "data.N=16", "algorithm.lam=0"])
    rec = run_mod.run(cfg)
    assert rec["status"] == "error"
    assert "Traceback" in rec["traceback"] and rec["error"].startswith("ValueError")
    files = records.record_files([str(tmp_path)])
    assert len(files) == 1 and json.load(open(files[0]))["status"] == "error"
    assert not records.rows(json.load(open(files[0])))[0].get("err2")
    # An error record is not a result: the next sweep tries the run again.
    assert not run_mod.run(cfg).get("skipped")


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("case", ["missing", "shapes", "nan", "x_hat_shape", "no_x"])
def test_bad_npz_fails_clearly_and_writes_nothing(compose_cfg, tmp_path, case):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, 16))
    path = {
        "missing": str(tmp_path / "absent.npz"),
        "shapes": _npz(tmp_path / "a.npz", X=X, W=rng.standard_normal((8, 4))),
        "nan": _npz(tmp_path / "b.npz", X=np.where(X > 2, np.nan, X)),
        "x_hat_shape": _npz(tmp_path / "c.npz", X=X, X_hat=X[:, :8]),
        "no_x": _npz(tmp_path / "d.npz", Y=X),
    }[case]
    match = {"missing": "existing", "shapes": "W", "nan": "finite", "x_hat_shape": "X_hat",
             "no_x": "'X'"}[case]
    out = tmp_path / "records"
    cfg = compose_cfg(["data=npz", f"data.path={path}", f"out_dir={out}"])
    with pytest.raises(ValueError, match=match):
        run_mod.run(cfg)
    assert records.record_files([str(out)]) == []


def test_npz_layer_runs(compose_cfg, tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 12))
    path = _npz(tmp_path / "layer.npz", X=X, X_hat=X + 0.01 * rng.standard_normal(X.shape),
                W=rng.standard_normal((12, 3)))
    rec = run_mod.run(compose_cfg(["data=npz", f"data.path={path}", "algorithm=qronos",
                                   f"out_dir={tmp_path}/r"]))
    assert rec["status"] == "ok" and rec["shapes"] == {"m": 40, "N": 12, "n": 3}
    assert rec["mismatched"] and rec["bounds"]["Q1"]["violations"] == 0


@pytest.mark.parametrize("override", ["grid.bits=0", "algorithm.lam=-1"])
def test_bad_value_writes_nothing(compose_cfg, tmp_path, override):
    with pytest.raises(ValueError):
        run_mod.run(compose_cfg([override, f"out_dir={tmp_path}"]))
    assert records.record_files([str(tmp_path)]) == []
