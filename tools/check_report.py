"""Open a run's report.html (or any page adarank writes, e.g. compare.html) in headless Chromium,
from disk with no server, and check that every image loaded and every figure has a caption; or, with
``--site``, every page of a built documentation site (pages without figures allowed).

    python tools/check_report.py RUN_DIR_OR_HTML [--browser /usr/bin/chromium]
    python tools/check_report.py --site SITE_DIR [--browser /usr/bin/chromium]

A report page fails if it has no image, an image of width 0, or a figure without a non-empty
figcaption. A site page fails if it does not finish loading, a stylesheet did not load, a script
raised, an image has width 0, a figure has no caption, a link points at a file the site lacks, or it
loads a script, stylesheet, font or image from the web (the site must read offline). Exits 1 on any
failure, naming it. Install the browser with `apt-get install chromium` (Debian).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse

PROBE = (
    "<script>window.addEventListener('load', () => document.body.setAttribute('data-widths',"
    " Array.from(document.images).map(i => i.naturalWidth).join(',')));</script>"
)


def _dump_dom(probe: Path, html: str, browser: str, budget_ms: int) -> subprocess.CompletedProcess[str]:
    """Write ``html`` to ``probe``, load it from disk in headless ``browser`` for ``budget_ms`` of virtual
    time, and return the run (its stdout is the DOM after load); the probe file is removed."""
    probe.write_text(html)
    try:
        return subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--virtual-time-budget={budget_ms}",
             "--dump-dom", probe.resolve().as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        probe.unlink(missing_ok=True)


def image_widths(report: Path, browser: str) -> list[int]:
    """Natural widths of the images of ``report`` as the browser loaded them from disk."""
    probe = report.with_name(".report_probe.html")  # same folder: the relative image links resolve
    done = _dump_dom(probe, report.read_text().replace("</body>", PROBE + "</body>"), browser, 10000)
    match = re.search(r'data-widths="([0-9,]*)"', done.stdout)
    if match is None:
        raise RuntimeError(f"the page did not finish loading in {browser}: {done.stderr[-500:]}")
    return [int(w) for w in match.group(1).split(",") if w]


def uncaptioned(page: str) -> int:
    """Figures of ``page`` without a non-empty figcaption."""
    figures = re.findall(r"<figure>(.*?)</figure>", page, flags=re.S)
    return sum(not re.search(r"<figcaption>\s*\S.*?</figcaption>", f, flags=re.S) for f in figures)


# Inserted first in <head>: records script errors and failed loads (capture phase) from the start, then
# on load the images' widths and how many stylesheets loaded (a <link> whose sheet is null did not).
SITE_PROBE = (
    "<script>window.__errors = []; window.addEventListener('error', e => window.__errors.push(e.target &&"
    " e.target !== window ? 'failed to load ' + (e.target.href || e.target.src) : String(e.message)), true);"
    "window.addEventListener('load', () => { const b = document.body;"
    " b.setAttribute('data-widths', Array.from(document.images).map(i => i.naturalWidth).join(','));"
    " const links = Array.from(document.querySelectorAll('link[rel=stylesheet]'));"
    " b.setAttribute('data-sheets', links.filter(l => l.sheet !== null).length + '/' + links.length);"
    " b.setAttribute('data-errors', window.__errors.join(' | ')); });</script>"
)


def page_problems(page: Path, site: Path, browser: str) -> list[str]:
    """What is wrong with one built documentation page, loaded from disk in the browser."""
    html = page.read_text()
    remote = re.findall(r'<(?:script|img|link)[^>]+(?:src|href)="(https?://[^"]+)"', html)
    problems = [f"{page.relative_to(site)}: loads {url} from the web" for url in remote]
    for href in re.findall(r'<a [^>]*href="([^"]+)"', html):
        target = urlparse(href)
        if target.scheme or href.startswith(("#", "mailto:")) or not target.path:
            continue
        if not (page.parent / unquote(target.path)).exists():
            problems.append(f"{page.relative_to(site)}: link to `{href}`, which the site lacks")
    probe = page.with_name(f".probe_{page.name}")  # same folder: relative links resolve
    done = _dump_dom(probe, html.replace("<head>", "<head>" + SITE_PROBE, 1), browser, 5000)
    fields = dict(re.findall(r'data-(widths|sheets|errors)="([^"]*)"', done.stdout))
    name = page.relative_to(site)
    if "sheets" not in fields:
        return [*problems, f"{name}: did not finish loading"]
    loaded, total = fields["sheets"].split("/")
    if total == "0" or loaded != total:
        problems.append(f"{name}: {loaded} of {total} stylesheets loaded")
    if fields.get("errors"):
        problems.append(f"{name}: script errors or failed loads: {fields['errors']}")
    widths = [int(w) for w in fields.get("widths", "").split(",") if w]
    if any(w == 0 for w in widths):
        problems.append(f"{name}: an image did not load (natural widths {widths})")
    if uncaptioned(html):
        problems.append(f"{name}: a figure without a caption")
    return problems


def check_site(site: Path, browser: str, jobs: int = 4) -> list[str]:
    """The problems of every page of a built site (its 404 page aside), checked ``jobs`` at a time."""
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html" and not p.name.startswith(".probe_"))
    if not pages:
        return [f"{site} holds no HTML page: build the site first (make docs)"]
    with ThreadPoolExecutor(jobs) as pool:
        found = list(pool.map(lambda page: page_problems(page, site, browser), pages))
    print(f"{len(pages)} pages checked")
    return [problem for problems in found for problem in problems]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("page", type=Path, nargs="?", help="a run directory (its report.html) or an HTML file")
    parser.add_argument("--site", type=Path, help="a built documentation site: check every page")
    parser.add_argument("--browser", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    if (args.page is None) == (args.site is None):
        parser.error("give a report page or --site SITE_DIR")
    if args.site is not None:
        problems = check_site(args.site, args.browser)
        print("\n".join(problems) or "no problems")
        return 1 if problems else 0
    page = args.page / "report.html" if args.page.is_dir() else args.page
    widths = image_widths(page, args.browser)
    missing = uncaptioned(page.read_text())
    print(f"{len(widths)} images, natural widths: {widths}; {missing} figure(s) without a caption")
    return 0 if widths and all(w > 0 for w in widths) and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
