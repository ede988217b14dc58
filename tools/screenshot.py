"""Render an HTML page in headless Chromium (Debian's `chromium` package) to a PNG.

    python tools/screenshot.py page.html shot.png [WIDTH HEIGHT]

Used by tests/test_neighbors.py to check the search pages in a real browser, and by hand to
look at them. Flags as this machine needs them: no sandbox (root), no background networking
(the network is closed), a fresh profile.
"""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("no Chromium: apt-get install chromium")


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 900) -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--window-size={width},{height}", f"--screenshot={Path(png).resolve()}",
               Path(page).resolve().as_uri()]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    if not Path(png).is_file():
        raise RuntimeError(f"Chromium wrote no screenshot for {page}")


if __name__ == "__main__":
    screenshot(Path(sys.argv[1]), Path(sys.argv[2]), *map(int, sys.argv[3:5]))
    print(f"wrote {sys.argv[2]}")
