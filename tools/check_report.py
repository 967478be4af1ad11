"""Open a run's report.html (or any page adarank writes, e.g. compare.html) in headless Chromium,
from disk with no server, and check that every image loaded and every figure has a caption.

    python tools/check_report.py RUN_DIR_OR_HTML [--browser /usr/bin/chromium]

Prints each image's natural width and exits 1 if the page has no image, an image of width 0, or a
figure without a non-empty figcaption. Install the browser with `apt-get install chromium` (Debian).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

PROBE = (
    "<script>window.addEventListener('load', () => document.body.setAttribute('data-widths',"
    " Array.from(document.images).map(i => i.naturalWidth).join(',')));</script>"
)


def image_widths(report: Path, browser: str) -> list[int]:
    """Natural widths of the images of ``report`` as the browser loaded them from disk."""
    probe = report.with_name(".report_probe.html")  # same folder: the relative image links resolve
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    try:
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
             "--dump-dom", probe.resolve().as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        probe.unlink(missing_ok=True)
    match = re.search(r'data-widths="([0-9,]*)"', done.stdout)
    if match is None:
        raise RuntimeError(f"the page did not finish loading in {browser}: {done.stderr[-500:]}")
    return [int(w) for w in match.group(1).split(",") if w]


def uncaptioned(page: str) -> int:
    """Figures of ``page`` without a non-empty figcaption."""
    figures = re.findall(r"<figure>(.*?)</figure>", page, flags=re.S)
    return sum(not re.search(r"<figcaption>\s*\S.*?</figcaption>", f, flags=re.S) for f in figures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("page", type=Path, help="a run directory (its report.html) or an HTML file")
    parser.add_argument("--browser", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    page = args.page / "report.html" if args.page.is_dir() else args.page
    widths = image_widths(page, args.browser)
    missing = uncaptioned(page.read_text())
    print(f"{len(widths)} images, natural widths: {widths}; {missing} figure(s) without a caption")
    return 0 if widths and all(w > 0 for w in widths) and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
