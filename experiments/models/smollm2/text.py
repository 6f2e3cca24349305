"""Wikipedia text for the causal LM (SmolLM2-135M), as committed token ids.

Source: the English Wikipedia dump excerpt that the gensim 4.4.0 wheel ships as a test file,
``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``
(pinned by its SHA-256, `SOURCE_SHA256`; gensim is installed with ``--no-deps`` only to carry
it and is never imported). The MediaWiki XML is read with the standard library (bz2 and
``xml.etree.ElementTree.iterparse``).

Filters: main-namespace pages (``<ns>0</ns>``) that are not redirects (no ``<redirect>``
element, text not starting with ``#REDIRECT``): 106 articles. Their wikitext is reduced to
plain text by `wikitext.strip_markup` (mwparserfromhell, deterministic; its docstring lists the
rules), and each article becomes the document ``title + "\\n\\n" + plain text``.

Splits (disjoint by article): articles sorted by page id; those with index % 4 == 3 form the
held-out split (about a quarter), the others the calibration split. Each document is tokenized
once with SmolLM2-135M's own byte-level BPE tokenizer (`experiments.models.smollm2.tokenizer`,
vocabulary 49152) without BOS, and the documents of a split are joined with the eos token
between them (id 2, ``<|im_end|>``, the GGUF file's ``tokenizer.ggml.eos_token_id``): one 1-D
token stream per split. ``python -m experiments.models.smollm2.text`` writes the
streams and the article start offsets to ``data/lm/tokens.npz`` and the provenance (source and
its SHA-256, gensim version, filters, split rule and titles, tokenizer, counts, SHA-256 of the
id file, date, command) to ``data/lm/PROVENANCE.json``; ``python -m experiments.models.smollm2.text
--check``
re-derives the ids and compares them with the committed file.

Runs read the committed ids only (`load_lm_tokens`, `calibration_windows`, `heldout_windows`):
no gensim, no tokenizer. Calibration takes random non-overlapping windows of the calibration
stream (as GPTQ draws random calibration segments); evaluation cuts the held-out stream into
consecutive non-overlapping windows (the standard perplexity protocol).
"""

from __future__ import annotations

import argparse
import bz2
import datetime
import functools
import importlib.metadata
import io
import json
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from experiments.models import smollm2
from experiments.models.common import file_sha256, verified_ids_file
from experiments.models.smollm2.wikitext import strip_markup

DATA_DIR = Path(__file__).resolve().parents[3] / "data" / "lm"
TOKENS_FILE = DATA_DIR / "tokens.npz"
PROVENANCE_FILE = DATA_DIR / "PROVENANCE.json"

SOURCE_PACKAGE = "gensim"
SOURCE_VERSION = "4.4.0"
INSTALL_COMMAND = f"pip install --no-deps {SOURCE_PACKAGE}=={SOURCE_VERSION}"
SOURCE_PATH = (
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
# SHA-256 of that file in the gensim 4.4.0 wheel (1,695,871 bytes).
SOURCE_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"

HELDOUT_EVERY = 4  # article index (sorted by page id) % 4 == 3 -> held-out
EOS_ID = 2  # SmolLM2-135M-Instruct's eos token <|im_end|> (GGUF eos_token_id), between articles
COMMAND = "python -m experiments.models.smollm2.text"


class SourceMissingError(RuntimeError):
    """The gensim package is not installed, or its Wikipedia test file is absent or altered."""


class Article(NamedTuple):
    page_id: int
    title: str
    wikitext: str


class LMTokens(NamedTuple):
    calib: np.ndarray  # (T_calib,) int32: the calibration articles joined by eos_id
    heldout: np.ndarray  # (T_heldout,) int32
    calib_starts: np.ndarray  # (n_calib_articles,) int64: offset of each article's first token
    heldout_starts: np.ndarray
    eos_id: int


# --------------------------------------------------------------------------------------------
# Source file and XML
# --------------------------------------------------------------------------------------------


def source_file() -> Path:
    """The dump excerpt inside the installed gensim package, checked against `SOURCE_SHA256`."""
    try:
        path = Path(importlib.metadata.distribution(SOURCE_PACKAGE).locate_file(SOURCE_PATH))
    except importlib.metadata.PackageNotFoundError:
        raise SourceMissingError(
            f"the package {SOURCE_PACKAGE!r} is not installed; the Wikipedia text ships in its "
            f"wheel: install it with `{INSTALL_COMMAND}`"
        ) from None
    return verify_source(path)


def verify_source(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise SourceMissingError(
            f"{path} is missing; it ships in the gensim {SOURCE_VERSION} wheel: install it with "
            f"`{INSTALL_COMMAND}`"
        )
    digest = file_sha256(path)
    if digest != SOURCE_SHA256:
        raise SourceMissingError(
            f"{path} has SHA-256 {digest}, expected {SOURCE_SHA256} (gensim {SOURCE_VERSION}); "
            f"reinstall it with `{INSTALL_COMMAND}`"
        )
    return path


def is_redirect(wikitext: str) -> bool:
    return wikitext.lstrip().upper().startswith("#REDIRECT")


def read_articles(path: Path | None = None) -> list[Article]:
    """Main-namespace, non-redirect pages of the dump, sorted by page id."""
    path = source_file() if path is None else Path(path)
    out = []
    with bz2.open(path, "rb") as f:
        ns = ""
        for event, el in ET.iterparse(f, events=("start", "end")):
            if event == "start":
                if not ns and el.tag.startswith("{"):  # the root <mediawiki xmlns="...">
                    ns = el.tag[: el.tag.index("}") + 1]
                continue
            if el.tag != f"{ns}page":
                continue
            text = el.findtext(f"{ns}revision/{ns}text") or ""
            if (el.findtext(f"{ns}ns") == "0" and el.find(f"{ns}redirect") is None
                    and not is_redirect(text)):
                out.append(Article(int(el.findtext(f"{ns}id")), el.findtext(f"{ns}title"), text))
            el.clear()
    return sorted(out, key=lambda a: a.page_id)


def split_articles(articles: list[Article]) -> tuple[list[Article], list[Article]]:
    """(calibration, held_out): sorted by page id, index % 4 == 3 held out."""
    articles = sorted(articles, key=lambda a: a.page_id)
    calib = [a for i, a in enumerate(articles) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    heldout = [a for i, a in enumerate(articles) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    return calib, heldout


def document(article: Article) -> str:
    """What is tokenized for one article: the title, a blank line, the plain text."""
    return f"{article.title}\n\n{strip_markup(article.wikitext)}"


# --------------------------------------------------------------------------------------------
# Tokenization (regeneration only) and the committed file
# --------------------------------------------------------------------------------------------


class Derived(NamedTuple):
    calib_titles: list[str]
    heldout_titles: list[str]
    calib: np.ndarray  # uint16 stream
    heldout: np.ndarray
    calib_starts: np.ndarray  # int64
    heldout_starts: np.ndarray


def join_articles(ids: list[list[int]], eos_id: int = EOS_ID) -> tuple[np.ndarray, np.ndarray]:
    """One stream (uint16) with ``eos_id`` between articles, and each article's start offset."""
    stream, starts, pos = [], [], 0
    for i, a in enumerate(ids):
        if i:
            stream.append(eos_id)
            pos += 1
        starts.append(pos)
        stream.extend(a)
        pos += len(a)
    return np.asarray(stream, dtype=np.uint16), np.asarray(starts, dtype=np.int64)


def derive(articles: list[Article] | None = None, tokenizer=None) -> Derived:
    """Strip and tokenize the articles (the dump's by default) into the two split streams."""
    if tokenizer is None:
        if smollm2.EXPECTED.eos_id != EOS_ID:
            raise ValueError(f"SmolLM2's eos id is {smollm2.EXPECTED.eos_id}, not {EOS_ID}")
        tokenizer = smollm2.tokenizer()
    articles = read_articles() if articles is None else articles
    splits = split_articles(articles)
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    out = {}
    for name, arts in zip(("calib", "heldout"), splits):
        encs = tokenizer.encode_batch([document(a) for a in arts], add_special_tokens=False)
        ids = [list(e.ids) for e in encs]
        for a, art in zip(ids, arts):
            if special.intersection(a):
                raise ValueError(f"the article {art.title!r} holds a special token "
                                 f"{sorted(special.intersection(a))} (eos is {EOS_ID})")
        if any(max(a, default=0) >= 2**16 for a in ids):
            raise ValueError("token ids must fit uint16")
        out[name] = join_articles(ids)
    return Derived([a.title for a in splits[0]], [a.title for a in splits[1]],
                   out["calib"][0], out["heldout"][0], out["calib"][1], out["heldout"][1])


def _arrays(d: Derived) -> dict[str, np.ndarray]:
    return {"calib": d.calib, "heldout": d.heldout, "calib_starts": d.calib_starts,
            "heldout_starts": d.heldout_starts, "eos_id": np.asarray(EOS_ID, dtype=np.int64)}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """`numpy.savez_compressed` with fixed zip timestamps, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def provenance(d: Derived, tokens_sha256: str) -> dict:
    import tokenizers

    n_calib, n_held = len(d.calib_titles), len(d.heldout_titles)
    return {
        "source": f"{SOURCE_PATH} in the gensim {SOURCE_VERSION} wheel (English Wikipedia "
                  "pages-articles dump excerpt, MediaWiki XML export 0.10, bz2)",
        "source_sha256": SOURCE_SHA256,
        "gensim_version": importlib.metadata.version(SOURCE_PACKAGE),
        "python_version": sys.version.split()[0],
        "filters": "pages with <ns>0</ns>, no <redirect> element and text not starting with "
                   "#REDIRECT; wikitext reduced to plain text by "
                   "experiments.models.smollm2.wikitext.strip_markup "
                   "(comments, references, math/gallery/code elements, templates except a few "
                   "inline text ones, tables, file/category/interlanguage links, HTML tags, "
                   "bold/italic, list markers, magic words removed; links and external links "
                   "to their labels; headings kept as lines; everything from the first "
                   "appendix heading (See also, Notes, References, Further reading, External "
                   "links, Bibliography, ...) dropped; entities decoded; whitespace collapsed)",
        "document": "title + '\\n\\n' + plain text, tokenized without BOS",
        "split": f"articles sorted by page id; held-out = index % {HELDOUT_EVERY} == "
                 f"{HELDOUT_EVERY - 1}, calibration = the rest; the articles of a split are "
                 f"joined with the eos token (id {EOS_ID}) between them, one stream per split",
        "tokenizer": f"SmolLM2-135M(-Instruct) byte-level BPE (vocabulary 49152) built by "
                     f"experiments.models.smollm2.tokenizer() from the GGUF file, tokenizers "
                     f"{tokenizers.__version__}, add_special_tokens=False",
        "model_sha256": smollm2.MODEL_SHA256,
        "eos_id": EOS_ID,
        "eos_token": smollm2.tokenizer().id_to_token(EOS_ID),
        "date": datetime.date.today().isoformat(),
        "counts": {
            "calib_articles": n_calib, "calib_tokens": int(d.calib.size),
            "heldout_articles": n_held, "heldout_tokens": int(d.heldout.size),
        },
        "calib_titles": d.calib_titles,
        "heldout_titles": d.heldout_titles,
        "tokens_file": TOKENS_FILE.name,
        "tokens_sha256": tokens_sha256,
        "command": COMMAND,
    }


def write(out_dir: Path = DATA_DIR, d: Derived | None = None) -> dict:
    d = derive() if d is None else d
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokens_file = out_dir / TOKENS_FILE.name
    save_npz(tokens_file, _arrays(d))
    prov = provenance(d, file_sha256(tokens_file))
    (out_dir / PROVENANCE_FILE.name).write_text(json.dumps(prov, indent=2, ensure_ascii=False)
                                                + "\n")
    return prov


def check(path: Path = TOKENS_FILE, d: Derived | None = None) -> list[str]:
    """The differences between the committed ids (and provenance) and a fresh derivation."""
    d = derive() if d is None else d
    path = Path(path)
    problems = []
    prov = json.loads((path.parent / PROVENANCE_FILE.name).read_text())
    digest = file_sha256(path)
    if digest != prov["tokens_sha256"]:
        problems.append(f"{path} has SHA-256 {digest}, PROVENANCE.json records "
                        f"{prov['tokens_sha256']}")
    with np.load(path) as z:
        stored = {k: z[k] for k in z.files}
    for k, v in _arrays(d).items():
        if k not in stored:
            problems.append(f"{path} has no array {k!r}")
        elif stored[k].dtype != v.dtype or not np.array_equal(stored[k], v):
            problems.append(f"{k}: committed {stored[k].dtype} {stored[k].shape} differs from "
                            f"the re-derived {v.dtype} {v.shape}")
    for k, v in (("calib_titles", d.calib_titles), ("heldout_titles", d.heldout_titles)):
        if prov.get(k) != v:
            problems.append(f"PROVENANCE.json {k} differ from the re-derived ones")
    counts = {"calib_articles": len(d.calib_titles), "calib_tokens": int(d.calib.size),
              "heldout_articles": len(d.heldout_titles), "heldout_tokens": int(d.heldout.size)}
    if prov.get("counts") != counts:
        problems.append(f"PROVENANCE.json counts {prov.get('counts')} differ from {counts}")
    if prov.get("source_sha256") != SOURCE_SHA256:
        problems.append("PROVENANCE.json source_sha256 differs from SOURCE_SHA256")
    return problems


# --------------------------------------------------------------------------------------------
# Runtime API: the committed ids only
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def load_lm_tokens(path: Path = TOKENS_FILE) -> LMTokens:
    """Read the committed token ids (read-only int32), checking the file's SHA-256 against
    PROVENANCE.json."""
    path = verified_ids_file(path, f"{INSTALL_COMMAND} && {COMMAND}")
    with np.load(path) as z:
        arrays = [z[k].astype(np.int32) if k in ("calib", "heldout") else z[k].astype(np.int64)
                  for k in ("calib", "heldout", "calib_starts", "heldout_starts")]
        eos_id = int(z["eos_id"])
    for a in arrays:
        a.flags.writeable = False  # shared by every caller of the cache
    return LMTokens(*arrays, eos_id)


def _check_int(name: str, value, lo: int, hi: int | None = None, why: str = "") -> int:
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if not ok or value < lo or (hi is not None and value > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"`{name}` must be an integer {rng}{why}; got {value!r}")
    return int(value)


def _windows(stream: np.ndarray, length: int, split: str) -> np.ndarray:
    length = _check_int("length", length, 1, stream.size,
                        f" (the {split} stream holds {stream.size} tokens)")
    k = stream.size // length
    return stream[: k * length].reshape(k, length)


def _check_n(n, windows: np.ndarray, split: str) -> int:
    return _check_int("n", n, 1, len(windows), f" (the {split} stream holds {len(windows)} "
                      f"windows of {windows.shape[1]} tokens)")


def calibration_windows(n: int, length: int = 512, seed: int = 0) -> np.ndarray:
    """``n`` random non-overlapping windows of ``length`` tokens of the calibration stream,
    (n, length) int32.

    The stream is cut into ``len // length`` consecutive windows (the tail shorter than
    ``length`` is unused); ``numpy.random.default_rng(seed).choice(k, n, replace=False)``
    picks which, in that order. Windows may cross article boundaries (an eos token).
    """
    windows = _windows(load_lm_tokens().calib, length, "calibration")
    n = _check_n(n, windows, "calibration")
    seed = _check_int("seed", seed, 0)
    idx = np.random.default_rng(seed).choice(len(windows), size=n, replace=False)
    return windows[idx]


def heldout_windows(n: int | None = None, length: int = 512) -> np.ndarray:
    """The held-out stream cut into consecutive non-overlapping windows of ``length`` tokens,
    the first ``n`` of them (None: all), (k, length) int32."""
    windows = _windows(load_lm_tokens().heldout, length, "held-out")
    if n is not None:
        windows = windows[: _check_n(n, windows, "held-out")]
    return windows.copy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR,
                        help="directory for tokens.npz and PROVENANCE.json")
    parser.add_argument("--check", action="store_true",
                        help="re-derive the ids and compare them with the committed file "
                             "(exit 1 on any difference) instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(Path(args.out) / TOKENS_FILE.name)
        for p in problems:
            print(p, file=sys.stderr)
        print("differences found" if problems else "committed ids match a fresh derivation")
        return 1 if problems else 0
    prov = write(args.out)
    print(f"wrote {args.out} ({json.dumps(prov['counts'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
