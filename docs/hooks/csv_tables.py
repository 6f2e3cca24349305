"""Results tables and numbers of the documentation, rendered from the committed figures/*.csv.

A page writes a marker where a table or a number goes; the build replaces it (hook
`tables.py`), so no result in the docs is typed by hand::

    {{ csv_table("figures/lm_perplexity.csv", columns=["algorithm", "perplexity"], round=1) }}
    {{ csv_value("figures/lm_perplexity.csv", "perplexity", query="algorithm == 'optq'") }}

The arguments are Python literals (parsed with `ast`, never evaluated). `csv_table` runs, in
this order (every step optional except `columns`):

1. ``query``: keep the rows matching a pandas query (``"bits == 3 and checked"``).
2. ``by`` + ``agg``: group by these columns (first-appearance order) and aggregate the others
   named in ``agg``: a function name for all of them or ``{column: name}``; names are
   median, mean, min, max, sum, count, nunique, first, gmean (geometric mean) and
   median_range (the median, followed by ``[min, max]`` when those differ).
3. ``scale``: ``{column: factor}`` multiplies a numeric column (bytes -> MB).
4. ``fmt`` / ``round``: a format spec for the numbers (``".4g"``), for all columns or
   ``{column: spec}``; ``round=n`` is ``".{n}f"``. Integers print as integers.
5. ``ranges``: ``{column: [low, high]}`` prints ``value [low, high]`` (the value alone when the
   two bounds print the same).
6. ``labels``: ``{column: {printed value: label}}`` renames values
   (``{"config": {"optq": "OPTQ"}}``).
7. ``cells``: ``{new column: "template"}`` builds a column from the printed ones
   (``"{in_memory} / {reloaded}"``).
8. ``pivot``: ``{"index": column(s), "columns": column, "values": column(s)}``: one row per
   index, one column per value of ``columns`` (named by that value, or ``"<values> <value>"``
   when several value columns are pivoted); cells that several rows share are joined by ", ".
9. ``columns``: the columns shown, in order (after a pivot: the index columns and the pivoted
   column names); ``headers``: ``{column: header}``.

`csv_value(path, column, query=None, agg=None, fmt=None, round=None, scale=None)` prints one
number: the query must leave one row unless ``agg`` reduces them.

Every missing file, column, or value raises `TableError` naming the CSV and what is missing;
the MkDocs hook turns it into a failed build.
"""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

MARKER = re.compile(r"\{\{\s*(csv_(?:table|value)\s*\(.*?\))\s*\}\}", re.DOTALL)
AGGREGATES = ("median", "mean", "min", "max", "sum", "count", "nunique", "first", "gmean",
              "median_range")


class TableError(ValueError):
    """A marker that cannot be rendered: missing CSV, column, or bad arguments."""


def _read(root: Path, path: str) -> pd.DataFrame:
    file = (Path(root) / path).resolve()
    if not file.is_file():
        raise TableError(f"{path}: no such CSV (looked for {file})")
    return pd.read_csv(file)


def _need(df: pd.DataFrame, path: str, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TableError(f"{path}: no column {', '.join(map(repr, missing))} (needed by {what}); "
                         f"its columns are {', '.join(df.columns)}")


def _as_list(x) -> list:
    return [] if x is None else [x] if isinstance(x, str) else list(x)


def _query(df: pd.DataFrame, path: str, query: str | None) -> pd.DataFrame:
    if query is None:
        return df
    try:
        out = df.query(query, engine="python")
    except pd.errors.UndefinedVariableError as err:
        name = re.search(r"'(.*?)'", str(err))
        raise TableError(f"{path}: no column {name.group(1) if name else err!r} (needed by the "
                         f"query {query!r}); its columns are {', '.join(df.columns)}") from None
    except Exception as err:  # pandas raises several types for a bad expression
        raise TableError(f"{path}: query {query!r} failed: {err}") from err
    if out.empty:
        raise TableError(f"{path}: query {query!r} matches no row")
    return out


def _gmean(s: pd.Series) -> float:
    return float(np.exp(np.log(s.astype(float)).mean()))


def _reducer(name: str):
    """A function pandas' Series.agg and GroupBy.agg both accept, for an aggregate's name."""
    return {"gmean": _gmean, "first": lambda s: s.iloc[0]}.get(name, name)


def _aggregate(df, path, by, agg):
    by = _as_list(by)
    if isinstance(agg, str):
        agg = {c: agg for c in df.columns if c not in by}
    _need(df, path, by + list(agg), "by/agg")
    for column, name in agg.items():
        if name not in AGGREGATES:
            raise TableError(f"{path}: unknown aggregate {name!r} for column {column!r}; "
                             f"expected one of {', '.join(AGGREGATES)}")
    groups = df.groupby(by, sort=False, dropna=False) if by else None
    out = {}
    ranges = {}
    for column, name in agg.items():
        funcs = ["median", "min", "max"] if name == "median_range" else [name]
        for func in funcs:
            f = _reducer(func)
            key = column if func == funcs[0] else f"{column}_{func}"
            out[key] = groups[column].agg(f) if by else pd.Series([df[column].agg(f)])
        if name == "median_range":
            ranges[column] = [f"{column}_min", f"{column}_max"]
    table = pd.DataFrame(out)
    table = table.reset_index() if by else table
    return table, ranges


def _format_number(x, spec: str | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)) or (isinstance(x, (float, np.floating))
                                            and float(x).is_integer() and spec is None):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return format(float(x), spec) if spec else f"{float(x):g}"
    return str(x)


def _spec(fmt, round, column):
    if isinstance(fmt, dict):
        if column in fmt:
            return fmt[column]
    elif fmt is not None:
        return fmt
    return None if round is None else f".{round}f"


def _format(df, fmt, round):
    return pd.DataFrame({c: [_format_number(x, _spec(fmt, round, c)) for x in df[c]]
                         for c in df.columns}, index=df.index)


def _scale(df, path, scale):
    scale = scale or {}
    _need(df, path, list(scale), "scale")
    df = df.copy()
    for column, factor in scale.items():
        df[column] = df[column] * factor
    return df


def _template(template: str, row: dict, path: str) -> str:
    try:
        return template.format(**row)
    except KeyError as err:
        raise TableError(f"{path}: no column {err.args[0]!r} (needed by the template "
                         f"{template!r}); columns here are {', '.join(row)}") from None


def _markdown(df: pd.DataFrame, headers: dict) -> str:
    head = [str(headers.get(c, c)) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def build_table(root, path, columns, *, query=None, by=None, agg=None, scale=None, fmt=None,
                round=None, ranges=None, labels=None, cells=None, pivot=None, headers=None,
                sort=None) -> pd.DataFrame:
    """The table a `csv_table` marker shows, as a DataFrame of printed strings."""
    df = _query(_read(root, path), path, query)
    ranges = dict(ranges or {})
    if by is not None or agg is not None:
        if agg is None:
            raise TableError(f"{path}: by={by!r} needs agg")
        df, more = _aggregate(df, path, by, agg)
        ranges.update(more)
    df = _scale(df, path, scale)
    if sort is not None:
        _need(df, path, _as_list(sort), "sort")
        df = df.sort_values(_as_list(sort), kind="stable")
    _need(df, path, [c for pair in ranges.values() for c in pair] + list(ranges), "ranges")
    text = _format(df, fmt, round)
    for column, (lo, hi) in ranges.items():
        text[column] = [v if a == b else f"{v} [{a}, {b}]"
                        for v, a, b in zip(text[column], text[lo], text[hi])]
    for column, mapping in (labels or {}).items():
        _need(text, path, [column], "labels")
        text[column] = [mapping.get(v, v) for v in text[column]]
    for column, template in (cells or {}).items():
        text[column] = [_template(template, row, path) for row in text.to_dict("records")]
    if pivot is not None:
        index, key, values = (_as_list(pivot.get("index")), pivot.get("columns"),
                              _as_list(pivot.get("values")))
        _need(text, path, index + [key] + values, "pivot")
        wide = text.pivot_table(index=index, columns=key, values=values, sort=False,
                                aggfunc=lambda s: ", ".join(v for v in s if v))
        wide.columns = [k if len(values) == 1 else f"{v} {k}" for v, k in wide.columns]
        text = wide.reset_index().fillna("")
    _need(text, path, columns, "columns")
    return text[list(columns)]


def csv_table(root, path, columns, *, headers=None, **options) -> str:
    """Markdown for a `csv_table` marker (see the module docstring)."""
    return _markdown(build_table(root, path, columns, **options), headers or {})


def csv_value(root, path, column, *, query=None, agg=None, fmt=None, round=None,
              scale=None) -> str:
    """The printed number for a `csv_value` marker (see the module docstring)."""
    df = _query(_read(root, path), path, query)
    _need(df, path, [column], "csv_value")
    df = _scale(df, path, {column: scale} if scale is not None else None)
    if agg is None:
        if len(df) != 1:
            raise TableError(f"{path}: csv_value of {column!r} matches {len(df)} rows "
                             f"(query {query!r}); narrow the query or give agg")
        value = df[column].iloc[0]
    elif agg in AGGREGATES and agg != "median_range":
        value = df[column].agg(_reducer(agg))
    else:
        raise TableError(f"{path}: unknown aggregate {agg!r} for csv_value of {column!r}")
    return _format_number(value, _spec(fmt, round, column))


RENDERERS = {"csv_table": csv_table, "csv_value": csv_value}


def _call(expr: str):
    """Parse ``name(literal, ..., key=literal)``; anything else is an error, never evaluated."""
    try:
        node = ast.parse(expr, mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in RENDERERS):
            raise ValueError("expected csv_table(...) or csv_value(...)")
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except (SyntaxError, ValueError) as err:
        raise TableError(f"cannot read the marker {{{{ {expr} }}}}: {err}") from None
    return node.func.id, args, kwargs


def expand(markdown: str, root) -> str:
    """Replace every csv_table / csv_value marker of a page by what it renders."""

    def render(match: re.Match) -> str:
        name, args, kwargs = _call(match.group(1))
        try:
            return RENDERERS[name](root, *args, **kwargs)
        except TypeError as err:  # wrong or missing argument names
            raise TableError(f"{name}: {err}") from None

    return MARKER.sub(render, markdown)
