"""MkDocs hook: replace the csv_table / csv_value markers of each page by tables and numbers
rendered from the committed figures/*.csv (the rendering is `csv_tables.py`), so the site's
results are those CSVs at build time. A missing CSV or column fails the build, naming both."""

from __future__ import annotations

from pathlib import Path

from csv_tables import TableError, expand
from mkdocs.exceptions import PluginError


def on_page_markdown(markdown, *, page, config, files):
    root = Path(config.config_file_path).parent  # paths in markers are from the repository root
    try:
        return expand(markdown, root)
    except TableError as err:
        raise PluginError(f"docs/{page.file.src_uri}: {err}") from None
