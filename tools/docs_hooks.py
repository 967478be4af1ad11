"""MkDocs hooks: publish reports/ beside the guides, and keep links that work on GitHub working on the site.

The guides link to the reports as ``../reports/NAME.md`` (right when the Markdown is read in the
repository); the site puts the reports at ``reports/NAME.html``, so those links are rewritten. The
reports link to archived runs under ``studies/runs/``: images among them are published at the same
relative place; folders and data files, which a static site cannot show, become code spans naming
the repository path.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def on_files(files: Files, config: Any) -> Files:
    """Add the README (as ``readme.md``), every report and its figures, and the archived images the reports show."""
    files.append(File.generated(config, "readme.md", abs_src_path=str(ROOT / "README.md")))
    for path in sorted((ROOT / "reports").iterdir()):
        if path.suffix in (".md", ".png"):
            files.append(File.generated(config, f"reports/{path.name}", abs_src_path=str(path)))
    for report in sorted((ROOT / "reports").glob("*.md")):
        for _, _, target in LINK.findall(report.read_text()):
            image = (report.parent / target).resolve()
            if target.startswith("../studies/") and image.suffix == ".png" and image.is_file():
                uri = image.relative_to(ROOT).as_posix()
                if files.get_file_from_path(uri) is None:
                    files.append(File.generated(config, uri, abs_src_path=str(image)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Point the guides' report links at the published reports; in the README and the reports, keep
    links to published pages and name the other repository paths as code."""
    source = page.file.src_uri
    if source == "readme.md":
        folder = ""  # the README sits at the repository root
    elif source.startswith("reports/"):
        folder = "reports"
    else:
        return re.sub(r"\]\(\.\./reports/", "](reports/", markdown)

    def link(match: re.Match[str]) -> str:
        bang, text, target = match.groups()
        if "://" in target or target.startswith("#"):
            return match.group(0)
        path, _, anchor = target.partition("#")
        repo_path = posixpath.normpath(f"{folder}/{path}").lstrip("/")
        site_path = repo_path.removeprefix("docs/")
        if files.get_file_from_path(site_path) is not None:
            relative = "../" if folder else ""  # reports/ is one folder down
            return f"{bang}[{text}]({relative}{site_path}{'#' + anchor if anchor else ''})"
        return f"{text} (`{repo_path}` in the repository)" if not bang else f"`{repo_path}` (in the repository)"

    return LINK.sub(link, markdown)
