"""bench/tensorboard_screenshot.py: a screenshot of TensorBoard's own page showing a run's scalars,
for docs/runs.md.

It starts TensorBoard on a free loopback port for the run's events, opens its Scalars dashboard in
headless Chromium (driven by Playwright: `pip install playwright`; Chromium from the system, e.g.
Debian's `chromium` package), shows every point (no smoothing, no outliers left out), saves the
page, and stops TensorBoard.

    python bench/tensorboard_screenshot.py runs/latest docs/runs-tensorboard-page.png
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from swarm_rl.launcher import free_port

HOST = "127.0.0.1"


def wait_until_served(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"TensorBoard exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise TimeoutError(f"TensorBoard did not answer at {url} within {timeout:.0f} s")


def screenshot(url: str, out: Path, chromium: str, tag_filter: str) -> None:
    from playwright.sync_api import sync_playwright

    # Chromium's own background connections would go to hosts this machine cannot reach.
    quiet = ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=quiet)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{url}?darkMode=false#scalars&tagFilter={tag_filter}&_smoothingWeight=0", timeout=60_000)
            page.get_by_text("Ignore outliers in chart scaling").click(timeout=60_000)  # show every point
            page.wait_for_timeout(3000)  # the charts redraw
            page.screenshot(path=str(out))
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run's folder (its tensorboard/ holds the events)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--tags", default="round/", help="the dashboard's tag filter (default: the per-round scalars)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    events = args.run.resolve() / "tensorboard"
    if not events.is_dir():
        raise SystemExit(f"no TensorBoard events in {events}")
    port = free_port()
    url = f"http://{HOST}:{port}/"
    tensorboard = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(events),
                                    "--host", HOST, "--port", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_served(url, tensorboard)
        screenshot(url, args.out, args.chromium, args.tags)
    finally:
        tensorboard.terminate()
        try:
            tensorboard.wait(10)
        except subprocess.TimeoutExpired:
            tensorboard.kill()
            tensorboard.wait()
    print(f"TensorBoard's Scalars page for {args.run} saved to {args.out}")


if __name__ == "__main__":
    main()
