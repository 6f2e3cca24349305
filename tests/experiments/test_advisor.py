"""The calibration advisor: per-layer rows from the selection evidence, the per-model verdict,
and a real run on MiniLM's layers (`experiments.advisor`)."""

import numpy as np
import pytest

from experiments import advisor
from experiments.models.minilm import MiniLM
from experiments.models.minilm import text as minilm_text


def _record(name, ho_none, ho_full, chosen=0.5, ins=(4.0, 1.0), m=2048, N=512):
    ho_chosen = min(ho_none, ho_full) * 0.9
    sel = {"strength": chosen, "lam": 2.0, "lams": [2.0], "percdamps": [0.01],
           "strengths": [chosen], "heldout": [[ho_none, ho_full, ho_chosen]],
           "insample": [[ins[0], ins[1], 0.5 * (ins[0] + ins[1])]], "rounding_heldout": [None],
           "rounding_insample": [None], "folds": 4, "sequences": 4, "rows": m, "dead": 0,
           "sketched": False}
    return {"name": name, "layer": 0, "kind": "q", "m": m, "N": N, "selection": sel}


def test_rows_and_verdict_follow_the_evidence():
    helps = [_record(f"l{i}", 10.0, 6.0) for i in range(5)]
    hurts = [_record(f"h{i}", 10.0, 15.0, chosen=0.1) for i in range(2)]
    rows = advisor.layer_rows(helps + hurts)
    assert [r["full_vs_none"] for r in rows] == [0.6] * 5 + [1.5] * 2
    assert rows[0]["overfit"] == pytest.approx(6.0) and rows[0]["rows_per_feature"] == 4.0
    v = advisor.verdict(rows)  # full correction helps in 5 of 7 layers (>= 2/3), median 0.6
    assert v["enough_for_full_strength"] and v["share_full_helps"] == pytest.approx(5 / 7)
    assert v["worst"][0] == ("h0", 1.5)
    v = advisor.verdict(advisor.layer_rows(helps[:3] + hurts))  # 3 of 5: below 2/3
    assert not v["enough_for_full_strength"]
    assert "too few for full-strength Qronos" in advisor.summary_lines(v, "x")[0]


def test_records_without_a_selection_are_refused():
    with pytest.raises(ValueError, match="strength='auto'"):
        advisor.layer_rows([{"name": "a", "layer": 0, "kind": "q", "m": 1, "N": 1}])


@pytest.mark.model
def test_advise_minilm_for_real():
    rows, v = advisor.advise(MiniLM(), minilm_text.calibration_batch(512), bits=3,
                             progress=False)
    assert len(rows) == 36
    # the first block's q, k, v see the unquantized embeddings: nothing to correct
    assert [r["heldout_none"] == 0 for r in rows[:4]] == [True, True, True, False]
    assert v["layers"] + v["without_mismatch"] == 36 and v["without_mismatch"] == 3
    for r in rows[3:]:
        assert 0.0 <= r["chosen"] <= 1.0
        # the chosen strength minimises the predicted held-out error over [0, 1], which
        # contains a = 0 and a = 1
        assert r["chosen_vs_none"] <= 1 + 1e-9
        assert r["heldout_chosen"] <= r["heldout_full"] * (1 + 1e-9)
        # in sample, the full least-squares fit has the smallest error of all strengths
        assert r["insample_full"] <= r["insample_none"] * (1 + 1e-9)
        assert r["sequences"] >= 2 and r["folds"] == min(r["sequences"], 4)
    assert np.isfinite(v["median_full_vs_none"])
    assert isinstance(v["enough_for_full_strength"], bool)
