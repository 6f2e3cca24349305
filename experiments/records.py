"""Run records: deterministic names, atomic writes, and aggregation into one tidy DataFrame.

A record is one JSON file per run, ``{out_dir}/{algorithm}-{id}.json``, where ``id`` hashes
the resolved config minus the keys that do not change the result (where records go, which
sweep size chose the point). A sweep re-run therefore finds the records of finished runs and
skips them. Files are written to a temporary name in the same folder and renamed
(``os.replace`` is atomic on POSIX), so a killed sweep leaves whole records or none.

    python -m experiments.records runs/lam_sweep runs/order --out table.parquet
"""

from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from typing import Any, Iterable

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

# Config keys that do not change what a run computes.
UNHASHED = ("out_dir", "size", "sizes", "hydra")


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    """Versions of everything that can change a number, and the git commit if in a clone."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("provable-ptq", "numpy", "scipy", "jax", "jaxlib", "hydra-core", "omegaconf"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out["git_commit"] = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def run_id(config: dict[str, Any]) -> str:
    """A 16-hex-digit hash of the config's result-relevant keys (canonical JSON)."""
    body = {k: v for k, v in config.items() if k not in UNHASHED}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_path(out_dir: str, config: dict[str, Any]) -> str:
    algorithm = config.get("algorithm", {}).get("name", "run")
    return os.path.join(out_dir, f"{algorithm}-{run_id(config)}.json")


def write_atomic(path: str, record: dict[str, Any]) -> None:
    """Write JSON to a temporary file in the target folder, fsync it, then rename it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, allow_nan=True, default=_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _default(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    return str(v)


def read(path: str) -> dict[str, Any] | None:
    """A record, or None when the file is missing or unreadable (then the run is redone)."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable record %s: %s", path, exc)
        return None


def record_files(folders: Iterable[str]) -> list[str]:
    files: list[str] = []
    for folder in folders:
        files += sorted(glob.glob(os.path.join(folder, "*.json")))
    return files


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def rows(record: dict[str, Any], file: str = "") -> list[dict[str, Any]]:
    """One row per neuron of a run (one row for an error record).

    Columns: the flattened config (``data.family``, ``algorithm.lam`` ...), run-level fields
    (``status``, ``lam``, ``wall_s``, ``clipped``, ``K`` ...), per-neuron measurements
    (``err2``, ``errinf`` ...) and, per bound ``B``, ``bound.B``, ``ratio.B`` and ``checked.B``.
    """
    cfg = {k: v for k, v in record.get("config", {}).items() if k not in ("sizes",)}
    base = {f"cfg.{k}": v for k, v in _flatten(cfg).items()}
    base.update(
        id=record.get("id"), status=record.get("status"), name=record.get("name"), file=file,
        error=record.get("error"), lam=record.get("lam"), K=record.get("K"),
        clipped=record.get("clipped"), wall_s=record.get("wall_s", {}).get("total"),
        m=record.get("shapes", {}).get("m"), N=record.get("shapes", {}).get("N"),
        n=record.get("shapes", {}).get("n"),
    )
    for k, v in record.get("run", {}).items():
        if not isinstance(v, (list, dict)):
            base[f"run.{k}"] = v
    if record.get("status") != "ok":
        return [base]
    measured = record["measured"]
    bounds = {k: b for k, b in record.get("bounds", {}).items() if "values" in b}
    n = len(measured["err2"])
    out = []
    for j in range(n):
        row = dict(base, neuron=j)
        for k, v in measured.items():
            if isinstance(v, list) and len(v) == n:
                row[k] = v[j]
        for name, b in bounds.items():
            row[f"bound.{name}"] = b["values"][j]
            meas = row.get(b["measured"])
            row[f"ratio.{name}"] = meas / b["values"][j] if b["values"][j] > 0 else np.nan
            row[f"checked.{name}"] = b["checked"]
            for ek, ev in b.get("extra", {}).items():
                if isinstance(ev, list) and len(ev) == n:
                    row[f"extra.{name}.{ek}"] = ev[j]
                elif isinstance(ev, (int, float)):
                    row[f"extra.{name}.{ek}"] = ev
        out.append(row)
    return out


def current(recs: list[dict], ids: set[str] | None, folder: str = "") -> list[dict]:
    """The records whose ``id`` is in ``ids`` (all of them for None): a folder also holds the
    records of configurations a preset no longer has, which the figures must not mix in; how
    many are left out is logged."""
    if ids is None:
        return recs
    kept = [r for r in recs if r.get("id") in ids]
    if len(kept) < len(recs):
        log.info("%s: %d records of other configurations left out", folder or "records",
                 len(recs) - len(kept))
    return kept


def load_records(folder: str, ids: set[str] | None = None) -> list[dict[str, Any]]:
    """Every record of a folder (ok and error); with ``ids``, only the records of those
    configurations (`current`)."""
    recs = [read(f) for f in record_files([folder])]
    return current([r for r in recs if r is not None], ids, folder)


def load(folders: str | Iterable[str]) -> pd.DataFrame:
    """Every record under the folder(s) as one tidy DataFrame (one row per run and neuron)."""
    if isinstance(folders, str):
        folders = [folders]
    all_rows: list[dict[str, Any]] = []
    for file in record_files(folders):
        record = read(file)
        if record is not None:
            all_rows += rows(record, file)
    return pd.DataFrame(all_rows)


def save(df: pd.DataFrame, path: str) -> None:
    """Parquet for .parquet, CSV otherwise."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".parquet"):
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", help="record folders (runs/<experiment>)")
    parser.add_argument("--out", required=True, help="output .parquet or .csv")
    args = parser.parse_args(argv)
    df = load(args.folders)
    save(df, args.out)
    logging.basicConfig(level=logging.INFO)
    log.info("%d rows from %d runs -> %s", len(df), df["id"].nunique() if len(df) else 0, args.out)


if __name__ == "__main__":
    main()
