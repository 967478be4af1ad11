"""Open a run's report.html in headless Chromium (from disk, no server) and check every image loaded.

    python scripts/check_report.py RUN_DIR [--browser /usr/bin/chromium]

Prints each image's natural width and exits 1 if the page has no image or any image has width 0.
Install the browser with `apt-get install chromium` (Debian).
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--browser", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    widths = image_widths(args.run_dir / "report.html", args.browser)
    print(f"{len(widths)} images, natural widths: {widths}")
    return 0 if widths and all(w > 0 for w in widths) else 1


if __name__ == "__main__":
    sys.exit(main())
