"""Screenshot a report's ``index.html`` with headless Chromium (Debian's ``chromium`` package).

Usage::

    python scripts/screenshot_report.py reports/NAME/index.html reports/NAME/screenshot.png \
        [--width 1400] [--height 2400] [--browser chromium]

Runs ``chromium --headless --no-sandbox --disable-gpu --screenshot=OUT --window-size=W,H
file://INDEX``. Needs Chromium: ``apt-get install chromium`` (Debian/Ubuntu).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

BROWSERS: tuple[str, ...] = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class ScreenshotError(RuntimeError):
    """Chromium is missing or did not write the screenshot."""


def find_browser(preferred: str | None = None) -> str:
    """Path of a Chromium executable (``preferred`` first); raises :class:`ScreenshotError` if none is installed."""
    for name in ([preferred] if preferred else []) + list(BROWSERS):
        found = shutil.which(name)
        if found:
            return found
    raise ScreenshotError("no Chromium found (looked for " + ", ".join(([preferred] if preferred else []) + list(BROWSERS))
                          + "); install it with: apt-get install chromium")


def screenshot(index_html: Path, output_png: Path, width: int = 1400, height: int = 2400,
               browser: str | None = None, timeout_s: float = 120.0) -> Path:
    """Render ``index_html`` headless at ``width`` x ``height`` pixels into ``output_png``; returns it."""
    index_html, output_png = Path(index_html).resolve(), Path(output_png).resolve()
    if not index_html.is_file():
        raise ScreenshotError(f"{index_html}: no such file")
    output_png.parent.mkdir(parents=True, exist_ok=True)
    output_png.unlink(missing_ok=True)
    command = [find_browser(browser), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--screenshot={output_png}", f"--window-size={width},{height}", index_html.as_uri()]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if completed.returncode != 0 or not output_png.is_file():
        raise ScreenshotError(f"chromium exited with {completed.returncode} and wrote no {output_png}:\n"
                              f"{completed.stderr.strip()[-2000:]}")
    return output_png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index_html", type=Path, help="the report's index.html")
    parser.add_argument("output_png", type=Path, help="where to write the screenshot")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2400)
    parser.add_argument("--browser", default=None, help="Chromium executable (default: first of " + ", ".join(BROWSERS) + ")")
    arguments = parser.parse_args(argv)
    try:
        path = screenshot(arguments.index_html, arguments.output_png, arguments.width, arguments.height,
                          arguments.browser)
    except ScreenshotError as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
