"""What every model package shares: the error for a missing model package, and the check of a
committed token-id file against the SHA-256 its PROVENANCE.json records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


class ModelMissingError(RuntimeError):
    """The model package is not installed, or its weights file is absent or altered."""


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verified_ids_file(path: Path, regenerate: str) -> Path:
    """``path``, a committed token-id file, after checking its SHA-256 against the
    ``tokens_sha256`` of the PROVENANCE.json beside it; ``regenerate`` is the command named
    when the file is missing. Shared by every committed text (MiniLM's and SmolLM2's)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; it is committed with the repository (regenerate it with "
            f"`{regenerate}`)"
        )
    prov = json.loads((path.parent / "PROVENANCE.json").read_text())
    digest = file_sha256(path)
    if digest != prov["tokens_sha256"]:
        raise ValueError(
            f"{path} has SHA-256 {digest} but PROVENANCE.json records {prov['tokens_sha256']}"
        )
    return path
