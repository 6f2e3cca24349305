"""Real English text for the real model: prose from the standard library, as committed token ids.

Source: the Language Reference topics in ``pydoc_data.topics`` (shipped with every CPython),
filtered to prose paragraphs by `prose_paragraphs`. They were tokenized once with the model's
own tokenizer (``tokenizer.json`` of the model package, WordPiece, lower case, ``[CLS] ...
[SEP]``, truncated to `MAX_LEN` tokens) by ``python -m experiments.models.minilm.regen``; the ids
live
in ``data/real/tokens.npz`` with ``data/real/PROVENANCE.json`` (source, Python version,
filters, tokenizer, date, SHA-256 of the id file). Runs read the ids only, so they need no
tokenizer and do not drift with the Python version.

Splits (disjoint by construction): paragraphs are de-duplicated (first occurrence kept); those
of every third topic (sorted names, index % 3 == 2) form the held-out split, the rest the
calibration split, shuffled once with ``numpy.random.default_rng(0)`` so that any prefix of it
mixes topics (as GPTQ draws random calibration samples).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from experiments.models.common import file_sha256, verified_ids_file  # noqa: F401 (regen uses file_sha256)

DATA_DIR = Path(__file__).resolve().parents[3] / "data" / "real"
TOKENS_FILE = DATA_DIR / "tokens.npz"
PROVENANCE_FILE = DATA_DIR / "PROVENANCE.json"
MAX_LEN = 128  # tokens per sequence, [CLS] and [SEP] included (the tokenizer's own default)
HELDOUT_EVERY = 3  # topic index % 3 == 2 -> held-out
MIN_WORDS = 20
MIN_LETTER_FRACTION = 0.85


class Tokens(NamedTuple):
    calib: list  # of int32 arrays (length <= MAX_LEN), each [CLS] ... [SEP]
    heldout: list
    cls_id: int
    sep_id: int
    pad_id: int


class Batch(NamedTuple):
    ids: np.ndarray  # (B, L) int32, padded with pad_id
    mask: np.ndarray  # (B, L) int32: 1 on tokens, 0 on padding

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum())

    @property
    def lengths(self) -> np.ndarray:
        return self.mask.sum(axis=1)


def prose_paragraphs(text: str) -> list[str]:
    """Prose paragraphs of one pydoc topic.

    A paragraph is a block between blank lines. Kept: no indented line (indented blocks are
    grammar, code or examples), not a heading (last line made of ``*=-~^``), at least
    `MIN_WORDS` words, at least `MIN_LETTER_FRACTION` letters or spaces, ending with ".".
    Lines are joined with single spaces.
    """
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip("\n").split("\n")
        if any(line.startswith((" ", "\t")) for line in lines):
            continue
        if re.fullmatch(r"[*=\-~^]+", lines[-1].strip()):
            continue
        s = " ".join(line.strip() for line in lines)
        if len(s.split()) < MIN_WORDS or not s.endswith("."):
            continue
        if sum(c.isalpha() or c.isspace() for c in s) / len(s) < MIN_LETTER_FRACTION:
            continue
        out.append(s)
    return out


def split_paragraphs(topics: dict[str, str]) -> tuple[list[str], list[str]]:
    """(calibration, held_out) paragraphs, disjoint, calibration shuffled with seed 0."""
    seen: set[str] = set()
    calib, heldout = [], []
    for i, name in enumerate(sorted(topics)):
        for p in prose_paragraphs(topics[name]):
            if p in seen:
                continue
            seen.add(p)
            (heldout if i % HELDOUT_EVERY == HELDOUT_EVERY - 1 else calib).append(p)
    perm = np.random.default_rng(0).permutation(len(calib))
    return [calib[i] for i in perm], heldout


def load_tokens(path: Path = TOKENS_FILE) -> Tokens:
    """Read the committed token ids, checking the file's SHA-256 against PROVENANCE.json."""
    path = verified_ids_file(
        path, "pip install -e '.[regen]' && python -m experiments.models.minilm.regen")
    with np.load(path) as z:

        def seqs(split):
            ids = z[f"{split}_ids"].astype(np.int32)
            return np.split(ids, np.cumsum(z[f"{split}_lengths"])[:-1])

        return Tokens(seqs("calib"), seqs("heldout"), int(z["cls_id"]), int(z["sep_id"]),
                      int(z["pad_id"]))


def pad(seqs: list, pad_id: int) -> Batch:
    """Right-pad sequences to the longest one."""
    L = max(len(s) for s in seqs)
    ids = np.full((len(seqs), L), pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), L), dtype=np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return Batch(ids, mask)


def calibration_batch(n_tokens: int = 2048, tokens: Tokens | None = None) -> Batch:
    """The first calibration sequences, holding exactly ``n_tokens`` non-padding tokens.

    Sequences are taken in the stored (shuffled) order until ``n_tokens`` is reached; the
    last one is cut to the tokens still needed and closed with ``[SEP]`` (a lone ``[CLS]``
    if one token is left). Rows of X are then these tokens in (sequence, position) order.
    """
    tokens = load_tokens() if tokens is None else tokens
    total = sum(len(s) for s in tokens.calib)
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)) or not (
        1 <= n_tokens <= total
    ):
        raise ValueError(f"`n_tokens` must be an integer in [1, {total}]; got {n_tokens!r}")
    out, need = [], int(n_tokens)
    for s in tokens.calib:
        if len(s) >= need:
            if len(s) > need:
                s = s[:need] if need == 1 else np.append(s[: need - 1], tokens.sep_id)
            out.append(s)
            break
        out.append(s)
        need -= len(s)
    return pad(out, tokens.pad_id)
