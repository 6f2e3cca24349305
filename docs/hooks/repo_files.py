"""MkDocs hook: serve the repository files the pages show or link to, and keep one link that
works both on GitHub and in the built site.

Pages link to files outside docs/ by their path in the repository (``../figures/bits.png``
from docs/, ``../../figures/bits.png`` from docs/studies/), which is right on GitHub. The site
copies figures/*.png and figures/*.csv under ``figures/`` and CITATION.cff at its root, and
this hook rewrites those links to the copies; a link to theory/README.md or README.md goes to
the page that renders it. Any other link out of docs/ is left alone, so `--strict` reports it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

SERVED = ("figures/*.png", "figures/*.csv", "CITATION.cff")
PAGES = {"theory/README.md": "theory.md", "README.md": "index.md"}
LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(\s+\"[^\"]*\")?\)")


def _root(config) -> Path:
    return Path(config.config_file_path).parent


def _served(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for pattern in SERVED for p in root.glob(pattern))


def on_files(files, *, config):
    root = _root(config)
    for path in _served(root):
        if files.get_file_from_path(path) is None:
            files.append(File.generated(config, path, abs_src_path=str(root / path)))
    return files


def on_page_markdown(markdown, *, page, config, files):
    served = set(_served(_root(config)))
    page_dir = posixpath.dirname(page.file.src_uri)
    depth = len(page_dir.split("/")) if page_dir else 0

    def rewrite(match: re.Match) -> str:
        opening, target, anchor, title = match.groups()
        if "://" in target or target.startswith(("/", "mailto:")):
            return match.group(0)
        in_docs = posixpath.normpath(posixpath.join(page_dir, target))
        if not in_docs.startswith("../"):
            return match.group(0)  # a link inside docs/: MkDocs checks it
        repo_path = in_docs[len("../"):]
        if repo_path in PAGES:
            site_path = PAGES[repo_path]
        elif repo_path in served:
            site_path = repo_path
        else:
            return match.group(0)
        new = posixpath.join("../" * depth, site_path) if depth else site_path
        return f"{opening}{new}{anchor or ''}{title or ''})"

    return LINK.sub(rewrite, markdown)
