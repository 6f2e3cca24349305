"""The docs' table hook (docs/hooks/csv_tables.py): a marker renders the CSV's own values, and a
missing CSV or column stops the build with a message naming it. Exact string comparisons: the
hook only formats the numbers it reads, it computes nothing that could round differently."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

_HOOK = Path(__file__).resolve().parents[1] / "docs" / "hooks" / "csv_tables.py"
_spec = importlib.util.spec_from_file_location("csv_tables", _HOOK)
csv_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(csv_tables)


@pytest.fixture
def root(tmp_path):
    pd.DataFrame({
        "algorithm": ["rtn", "optq", "qronos", "optq"],
        "bits": [3, 3, 3, 4],
        "perplexity": [551.934, 301.742, 602.227, 34.6231],
    }).to_csv(tmp_path / "ppl.csv", index=False)
    return tmp_path


def _rows(markdown):
    """The cells of a rendered markdown table, header row first, separator dropped."""
    lines = markdown.strip().splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]


def test_table_rows_are_the_csv_values(root):
    text = csv_tables.expand(
        'Before.\n\n{{ csv_table("ppl.csv", columns=["algorithm", "perplexity"], '
        'query="bits == 3", headers={"perplexity": "ppl"}) }}\n\nAfter.', root)
    before, table, after = text.split("\n\n")
    assert (before, after) == ("Before.", "After.")
    assert _rows(table) == [["algorithm", "ppl"], ["rtn", "551.934"], ["optq", "301.742"],
                            ["qronos", "602.227"]]


def test_pivot_round_and_value(root):
    table = csv_tables.csv_table(root, "ppl.csv", ["bits", "rtn", "optq", "qronos"],
                                 pivot={"index": "bits", "columns": "algorithm",
                                        "values": "perplexity"}, round=1)
    assert _rows(table) == [["bits", "rtn", "optq", "qronos"], ["3", "551.9", "301.7", "602.2"],
                            ["4", "", "34.6", ""]]
    assert csv_tables.csv_value(root, "ppl.csv", "perplexity", query="algorithm == 'qronos'") \
        == "602.227"
    assert csv_tables.csv_value(root, "ppl.csv", "perplexity", query="algorithm == 'optq'",
                                agg="max", round=2) == "301.74"


def test_median_range_aggregate(root):
    table = csv_tables.csv_table(root, "ppl.csv", ["algorithm", "perplexity"],
                                 by="algorithm", agg={"perplexity": "median_range"}, fmt=".4g")
    assert _rows(table)[1:] == [["rtn", "551.9"], ["optq", "168.2 [34.62, 301.7]"],
                                ["qronos", "602.2"]]


def test_missing_column_or_csv_raises(root):
    with pytest.raises(csv_tables.TableError, match=r"ppl\.csv: no column 'ppl'"):
        csv_tables.csv_table(root, "ppl.csv", ["algorithm", "ppl"])
    with pytest.raises(csv_tables.TableError, match=r"ppl\.csv: no column 'seed'"):
        csv_tables.csv_table(root, "ppl.csv", ["algorithm"], query="seed == 0")
    with pytest.raises(csv_tables.TableError, match=r"missing\.csv: no such CSV"):
        csv_tables.expand('{{ csv_value("missing.csv", "perplexity") }}', root)
    with pytest.raises(csv_tables.TableError, match="matches 2 rows"):
        csv_tables.csv_value(root, "ppl.csv", "perplexity", query="algorithm == 'optq'")
