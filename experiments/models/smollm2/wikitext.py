"""Wikitext to plain text: `strip_markup`, the deterministic reduction of one article's
MediaWiki markup that `experiments.models.smollm2.text` applies before tokenizing (its
docstring lists the rules, in the order they apply): the wikitext parsed with
``mwparserfromhell``, its tree walked to text, then plain-text rules per line.
"""

from __future__ import annotations

import html
import re

import mwparserfromhell as mwp

# Elements dropped with their content (references, formulas, galleries, code, scores, reference
# lists).
_DROP_TAGS = frozenset({"ref", "math", "chem", "ce", "gallery", "imagemap", "timeline", "score",
                        "hiero", "syntaxhighlight", "source", "graph", "mapframe", "references",
                        "table", "templatedata", "inputbox"})
_QUOTES = re.compile(r"'''''|'''|''")
_MAGIC = re.compile(r"__[A-Z]+__")
_RULE = re.compile(r"-{4,}")
_GONE = "\x00"  # what removed markup leaves until the line pass (XML text never holds NUL)
_HEADING = re.compile(r"^(={1,6})\s*(.+?)\s*\1$")
_LIST_MARKER = re.compile(r"^[*#:;]+\s*")
_NONPROSE_PREFIXES = ("file", "image", "media", "category")
_INTERLANGUAGE = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*")
# Appendix sections: from the first heading with one of these titles to the end is dropped.
APPENDIX_TITLES = frozenset({
    "see also", "notes", "footnotes", "references", "citations", "sources", "bibliography",
    "further reading", "external links", "notes and references", "references and notes",
    "works cited",
})
_SPACES = str.maketrans({"\t": " ", "\xa0": " ", "\u2002": " ", "\u2003": " ", "\u2007": " ",
                         "\u2009": " ", "\u200a": " ", "\u202f": " ", "\u200b": None,
                         "\u200e": None, "\u200f": None, "\u00ad": None, "\ufeff": None})
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


def _link(target: str, label: str | None) -> str:
    """``[[target|label]]`` -> label, ``[[target]]`` -> target; files, categories and
    interlanguage links -> nothing."""
    target = target.strip()
    prefix, colon, _ = target.partition(":")
    prefix = prefix.strip()
    if colon and not target.startswith(":") and (
            prefix.lower() in _NONPROSE_PREFIXES or _INTERLANGUAGE.fullmatch(prefix)):
        return _GONE
    target = target.lstrip(":")
    if label is None:
        return target
    if label.strip():
        return label
    # the pipe trick: [[Paris, Texas|]] -> Paris, [[Help:Foo (bar)|]] -> Foo
    name = target.partition(":")[2] if colon else target
    return re.sub(r"\s*\(.*\)$", "", name.split(",")[0]).strip()


def _convert(pos: list[str], named: dict) -> str:
    units = {"C": "°C", "F": "°F", "K": "K", "sqmi": "sq mi", "sqkm": "km2", "sqft": "sq ft",
             "sqm": "m2", "km2": "km2", "m2": "m2"}
    if len(pos) >= 4 and pos[1] in ("-", "–", "to", "and", "or", "by", "x", "×", "+/-", "±"):
        sep = {"-": "–", "–": "–", "x": " × ", "×": " × ", "+/-": " ± ", "±": " ± "}.get(
            pos[1], f" {pos[1]} ")
        number, unit = f"{pos[0]}{sep}{pos[2]}", pos[3]
    elif len(pos) >= 2:
        number, unit = pos[0], pos[1]
    else:
        return pos[0] if pos else ""
    return f"{number} {units.get(unit, unit)}"


def _as_of(pos: list[str], named: dict) -> str:
    words = "as of" if named.get("lc", "").lower() in ("y", "yes", "on", "true") else "As of"
    if not pos:
        return words
    date = pos[0]
    if len(pos) >= 2 and pos[1].isdigit() and 1 <= int(pos[1]) <= 12:
        date = f"{_MONTHS[int(pos[1]) - 1]} {date}"
        if len(pos) >= 3 and pos[2].isdigit():
            date = f"{int(pos[2])} {date}"
    return f"{words} {date}"


def _val(pos: list[str], named: dict) -> str:
    s = pos[0] if pos else ""
    if named.get("e"):
        s = f"{s}×10^{named['e']}" if s else f"10^{named['e']}"
    unit = named.get("u") or named.get("ul")
    return f"{s} {unit}" if unit else s


def _first(pos, named):
    return pos[0] if pos else ""


def _last(pos, named):
    return pos[-1] if pos else ""


def _frac(pos, named):
    if len(pos) == 3:
        return f"{pos[0]} {pos[1]}/{pos[2]}"
    if len(pos) == 2:
        return f"{pos[0]}/{pos[1]}"
    return f"1/{pos[0]}" if pos else ""


# The inline templates that print prose, rendered to their text; every other template is dropped.
_TEXT_TEMPLATES = {
    "convert": _convert, "cvt": _convert,
    "lang": _last, "rtl-lang": _last, "transl": _last, "resize": _last,
    "nowrap": _first, "nobr": _first, "small": _first, "smaller": _first, "big": _first,
    "sc": _first, "smallcaps": _first, "vr": _first, "angbr": _first, "linktext": _first,
    "nobold": _first, "noitalic": _first, "nastaliq": _first, "sup": _first, "sub": _first,
    "sic": _first, "nq": _first, "nihongo": _first,
    "quote": _first, "cquote": _first, "blockquote": _first,
    "as of": _as_of, "val": _val, "e": lambda p, n: f"×10^{p[0]}" if p else "",
    "frac": _frac, "sfrac": _frac,
    "oldstyledate": lambda p, n: ", ".join(p[:2]),
    "chem": lambda p, n: "".join(p),
    "'": lambda p, n: "'", "'s": lambda p, n: "'s", "' \"": lambda p, n: "' \"",
    "\" '": lambda p, n: "\" '", "=": lambda p, n: "=",
    "nbsp": lambda p, n: " ", "spaces": lambda p, n: " ",
    "ndash": lambda p, n: "–", "snd": lambda p, n: " – ", "spaced ndash": lambda p, n: " – ",
    "mdash": lambda p, n: "—", "mdashb": lambda p, n: "—",
}


def _template(node: mwp.nodes.Template) -> str:
    name = " ".join(_plain(node.name).replace(_GONE, "").replace("_", " ").split()).lower()
    render = _TEXT_TEMPLATES.get(name)
    if render is None and name.startswith("lang-"):
        render = _first  # {{lang-fr|texte}} -> texte (the "French:" label is dropped)
    if render is None:
        return _GONE
    pos, named = [], {}
    for p in node.params:
        if p.showkey:
            named[_plain(p.name).strip()] = _plain(p.value).strip()
        else:
            pos.append(_plain(p.value).strip())
    if name in ("quote", "cquote", "blockquote") and not pos:
        return named.get("text", named.get("quote", ""))
    return render(pos, named)


def _protect_nowiki(s: str) -> str:
    """The literal text of ``<nowiki>``, with markup characters as numeric entities (undone by
    the final `html.unescape`)."""
    return re.sub(r"[\[\]{}|'<>=*#:;&_~]", lambda c: f"&#{ord(c.group())};", s)


def _node(n: mwp.nodes.Node) -> str:
    """One parsed node's text; removed markup leaves `_GONE`."""
    if isinstance(n, mwp.nodes.Text):
        return n.value
    if isinstance(n, mwp.nodes.HTMLEntity):
        return str(n)  # decoded with the line's other entities
    if isinstance(n, mwp.nodes.Wikilink):
        return _link(_plain(n.title), None if n.text is None else _plain(n.text))
    if isinstance(n, mwp.nodes.Template):
        return _template(n)
    if isinstance(n, mwp.nodes.ExternalLink):
        if not n.brackets:
            return str(n.url)
        return _plain(n.title) if n.title is not None and str(n.title).strip() else _GONE
    if isinstance(n, mwp.nodes.Heading):
        return "=" * n.level + _plain(n.title) + "=" * n.level
    if isinstance(n, mwp.nodes.Tag):
        if n.wiki_markup:  # list markers and rules stay for the line pass; tables go
            return _GONE if n.wiki_markup == "{|" else n.wiki_markup
        name = str(n.tag).strip().lower()
        if name == "nowiki":
            return _protect_nowiki(str(n.contents or ""))
        if name == "br":
            return "\n"
        if name in _DROP_TAGS or n.self_closing or n.contents is None:
            return _GONE
        return _GONE + _plain(n.contents) + _GONE
    return _GONE  # comments, template parameters ({{{x}}})


def _plain(code: mwp.wikicode.Wikicode) -> str:
    return "".join(_node(n) for n in code.nodes)


def _inline(line: str) -> str:
    """One line's text: quotes removed, entities decoded, spaces normalised, and what removed
    constructs leave behind (``( ; ``, ``()``, a space before punctuation) tidied."""
    line = _QUOTES.sub("", line.replace(_GONE, ""))
    line = " ".join(html.unescape(line).translate(_SPACES).split())
    line = re.sub(r"\(\s*(?:[,;]\s*)+", "(", line)
    line = re.sub(r"(?:\s*[,;])+\s*\)", ")", line)
    line = re.sub(r"\(\s*\)", "", line)
    line = re.sub(r"\s+([,.;:!?)\]])", r"\1", line)
    line = re.sub(r"([(\[])\s+", r"\1", line)
    return " ".join(line.split())


def strip_markup(wikitext: str) -> str:
    """The plain text of one article's wikitext (WikiText-style), deterministic.

    The wikitext is parsed with ``mwparserfromhell`` (bold and italic quotes left as text for
    step 9) and each node of the tree becomes text:

    1. HTML comments are removed; the text of ``<nowiki>`` is kept literally.
    2. ``<ref .../>`` and ``<ref ...>...</ref>`` are removed, and so are these elements with
       their content: ``<math>``, ``<chem>``, ``<gallery>``, ``<timeline>``, ``<source>``,
       ``<syntaxhighlight>``, ``<references>``, ``<table>`` and the like (`_DROP_TAGS`).
    3. Links: ``[[File:...]]``, ``[[Image:...]]``, ``[[Media:...]]``, ``[[Category:...]]`` and
       interlanguage links (``[[de:...]]``) are removed with their captions;
       ``[[target|label]]`` becomes ``label``, ``[[target]]`` ``target`` (a leading colon
       dropped; ``[[a (b)|]]`` the pipe trick's ``a``).
    4. Templates ``{{...}}``, however nested: the few inline ones that print prose are
       rendered to their text from their rendered arguments (`_TEXT_TEMPLATES`: ``convert``
       -> "10 km", ``lang``, ``lang-xx``, ``transl``, ``nowrap``, ``as of``, ``val``,
       ``frac``, ``'``, ``nbsp``, ``ndash`` ...), every other one (infoboxes, citations,
       hatnotes, navigation, pronunciations ...) is removed.
    5. Tables ``{| ... |}`` are removed, nested ones with them.
    6. External links: ``[http://x label]`` becomes ``label``, ``[http://x]`` is removed (a
       bare URL stays).
    7. ``<br>`` becomes a line break; every other HTML element is replaced by its inner text
       (``H<sub>2</sub>O`` -> ``H2O``). A tag the parser does not pair (``<span>`` never
       closed) stays as text.
    8. Magic words (``__NOTOC__``) are removed.
    9. Lines: a heading ``== Title ==`` becomes the line ``Title``, as a paragraph of its own;
       the first heading titled as an appendix (`APPENDIX_TITLES`: "See also", "Notes",
       "References", "Further reading", "External links", "Bibliography", ...) and everything
       after it are dropped, and so is a heading whose section ends up empty. List markers
       (``*``, ``#``, ``:``, ``;``) at the start of a line, bold and italic quotes (``''``,
       ``'''``) and horizontal rules are removed. HTML entities are decoded (``&nbsp;`` and
       the other Unicode spaces become plain spaces, zero-width characters are removed).
    10. Whitespace: runs of spaces collapse to one, lines are stripped, the space before
        ``, . ; : ! ? )`` is removed and so are parentheses left empty (or opened by a lone
        ``,``/``;``) by removed templates; lines with no letter or digit are dropped.
        Paragraphs are separated by exactly one blank line; no leading or trailing space.
    """
    s = _plain(mwp.parse(wikitext, skip_style_tags=True))
    s = _MAGIC.sub(_GONE, s)

    # blocks: ("h", level, text) for headings, ("p", 0, text) for text lines, ("", 0, "") for
    # blank lines (paragraph breaks); a line that only held removed markup is no break
    blocks: list[tuple[str, int, str]] = []
    for raw in s.split("\n"):
        if not raw.strip():
            blocks.append(("", 0, ""))
            continue
        line = raw.replace(_GONE, "").strip()
        m = _HEADING.match(line)
        if m:
            title = _inline(m.group(2))
            if title.lower().rstrip(":") in APPENDIX_TITLES:
                break
            if title:
                blocks.append(("h", len(m.group(1)), title))
            continue
        if _RULE.fullmatch(line):
            continue
        line = _inline(_LIST_MARKER.sub("", line))
        if any(c.isalnum() for c in line):
            blocks.append(("p", 0, line))

    # drop headings whose section is empty: the next heading (of the same or a higher level)
    # comes before any text
    kept: list[tuple[str, int, str]] = []
    nxt: tuple[str, int, str] | None = None  # the next non-blank block kept
    for block in reversed(blocks):
        if block[0] == "h" and (nxt is None or (nxt[0] == "h" and nxt[1] <= block[1])):
            continue
        kept.append(block)
        if block[0]:
            nxt = block
    kept.reverse()

    paragraphs: list[list[str]] = [[]]
    for kind, _, text in kept:
        if kind == "h":
            paragraphs += [[text], []]
        elif kind == "p":
            paragraphs[-1].append(text)
        else:
            paragraphs.append([])
    return "\n\n".join("\n".join(p) for p in paragraphs if p)
