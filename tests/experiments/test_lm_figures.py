"""The LM figures from hand-made records: per-channel and group-wise runs are kept apart, the
gain against depth compares per-channel runs only, and ``--prefix`` names the files."""

from __future__ import annotations

import os

import pandas as pd

from experiments.figures import lm as lm_fig


def _record(name, algorithm, bits, group_size, perplexity, rel_errs):
    layers = [{"name": f"l{i}", "layer": i // 7, "kind": "q_proj", "rel_err": e,
               "err2_fro": e} for i, e in enumerate(rel_errs)]
    return {"status": "ok", "perplexity": perplexity, "fp_perplexity": 20.0,
            "heldout_tokens": 100, "wall_s": {"quantize": 1.0}, "layers": layers,
            "config": {"name": name, "algorithm": algorithm, "bits": bits, "pass": "practical",
                       "group_size": group_size, "calib": 16, "length": 512}}


def test_grouped_runs_are_their_own_rows_and_stay_out_of_the_gain(tmp_path):
    recs = [_record("optq", "optq", 4, None, 34.0, [0.2, 0.4]),
            _record("qronos", "qronos", 4, None, 28.0, [0.1, 0.1]),
            _record("optq", "optq", 4, 128, 28.0, [9.0, 9.0]),
            _record("qronos", "qronos", 4, 128, 25.0, [1.0, 1.0])]
    out = lm_fig.build_all(recs, str(tmp_path), prefix="lm_bits")
    assert set(out) == {"lm_bits_perplexity", "lm_bits_gain"}
    for name in out:
        for ext in ("png", "pdf", "csv"):
            assert os.path.getsize(tmp_path / f"{name}.{ext}") > 0
    t = pd.read_csv(tmp_path / "lm_bits_perplexity.csv")
    got = {(r.config, r.group_size): r.perplexity for r in t.itertuples()}
    assert got == {("optq", -1): 34.0, ("qronos", -1): 28.0, ("optq", 128): 28.0,
                   ("qronos", 128): 25.0}
    by_run = {(r["config"]["name"], r["config"]["group_size"] or -1): r for r in recs}
    for row in t.itertuples():  # every other column is the record's field
        r = by_run[(row.config, row.group_size)]
        c = r["config"]
        assert (row.algorithm, row.order, row.bits) == (c["algorithm"], "natural", c["bits"])
        assert (row.fp_perplexity, row.heldout_tokens, row.quantize_s) == (
            r["fp_perplexity"], r["heldout_tokens"], r["wall_s"]["quantize"])
        assert (row.calib_windows, row.length) == (c["calib"], c["length"])
    gain = pd.read_csv(tmp_path / "lm_bits_gain.csv")
    assert gain.gain_qronos.tolist() == [2.0, 4.0]  # per channel: OPTQ / Qronos, not 9 / 1
