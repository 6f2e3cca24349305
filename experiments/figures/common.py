"""Reading a figure's records (never recomputing) and the command line every builder shares."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Callable

import pandas as pd

from experiments import records


def load_ok(folder: str) -> pd.DataFrame:
    """The successful runs of a sweep folder, one row per run and neuron."""
    df = records.load(folder)
    if df.empty or "status" not in df:
        raise FileNotFoundError(f"no records in {folder!r}: run its sweep first")
    ok = df[df["status"] == "ok"].copy()
    if ok.empty:
        raise FileNotFoundError(f"no successful records in {folder!r}")
    return ok


def col(df: pd.DataFrame, name: str) -> pd.Series:
    """A column, or NaN when no record has it (a bound that did not apply)."""
    return df[name] if name in df else pd.Series(float("nan"), index=df.index)


def shape_title(m: int, N: int) -> str:
    """The panel title of one layer shape, saying which regime it is in."""
    return f"m = {m}, N = {N} ({'N > m' if N > m else 'm > N'})"


def cli(name: str, build: Callable[[pd.DataFrame, str], pd.DataFrame]) -> None:
    """``python -m experiments.figures.<name> [--runs runs] [--out figures]``."""
    parser = argparse.ArgumentParser(description=f"Build figures/{name}.* from its records.")
    parser.add_argument("--runs", default="runs", help="folder holding runs/<experiment>/")
    parser.add_argument("--out", default="figures", help="output folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(load_ok(os.path.join(args.runs, name)), args.out)
