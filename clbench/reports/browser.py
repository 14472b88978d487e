"""Look at an HTML report as a person would: headless Chromium (Debian's ``chromium`` package)
opens the page from its file and takes a screenshot, or dumps the DOM it built.

Each call starts a fresh browser with a throwaway profile (no sandbox: it often runs as root in
containers; no network services: the pages are local files) and waits for it to end.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--disable-dev-shm-usage",
)


class BrowserError(Exception):
    """No browser, or the browser failed (one line)."""


def find_chromium() -> str | None:
    """The path of a Chromium-like browser on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(extra: list[str], page: Path, timeout_s: float) -> subprocess.CompletedProcess:
    browser = find_chromium()
    if browser is None:
        raise BrowserError(f"no Chromium found (looked for {', '.join(BROWSERS)}): apt-get install chromium")
    url = Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="clbench-chromium-") as profile:
        cmd = [browser, *_FLAGS, f"--user-data-dir={profile}", *extra, url]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BrowserError(f"{browser} did not finish with {url} within {timeout_s:.0f} s") from None
    if done.returncode != 0:
        raise BrowserError(f"{browser} failed on {url} (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    return done


def screenshot(
    page: str | Path, png: str | Path, *, width: int = 1280, height: int = 1600, timeout_s: float = 60.0
) -> Path:
    """Open ``page`` (an HTML file) in headless Chromium with a ``width`` x ``height`` window and
    save what it shows as ``png``."""
    out = Path(png).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--window-size={width},{height}", f"--screenshot={out}"], Path(page), timeout_s)
    if not out.is_file():
        raise BrowserError(f"Chromium wrote no screenshot of {page}")
    return out


def dump_dom(page: str | Path, *, timeout_s: float = 60.0) -> str:
    """The DOM Chromium built from ``page`` after loading it, serialised as HTML."""
    return _run(["--dump-dom"], Path(page), timeout_s).stdout
