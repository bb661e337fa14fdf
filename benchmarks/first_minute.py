"""A newcomer's first minute: time from ``python app.py`` to the first successful comparison.

Starts the demo (default: the built-in shapes model, on CPU), opens it in headless Chromium, presses
**Compare** on the ready example (nothing typed), waits for the grid and the scored table, and
prints one JSON object: seconds until the server answers, until the page is usable, and from the
page load to the finished comparison, plus the table's text. ``--screenshot PATH`` saves the page
(the README's picture: ``python benchmarks/first_minute.py --screenshot docs/demo.png``).

Needs chromium, chromium-driver and selenium (as ``tests/test_demo_browser.py``). Runs about a
minute on an idle 2-core machine; the CPU count and load average are printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="load_pipeline source (default: the demo's default model)")
    parser.add_argument("--screenshot", default=None, help="save the page after the comparison to this PNG")
    parser.add_argument("--concept", default=None, help="type this concept instead of the example's")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    from test_demo_browser import CHROME_ARGS, CHROMEDRIVER, CHROMIUM, _free_port, drive_compare

    if not (CHROMIUM and CHROMEDRIVER):
        sys.exit("error: needs chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    port = _free_port()
    command = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--device", "cpu"]
    if args.model:
        command += ["--model", args.model]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    log = Path(tempfile.mkdtemp(prefix="conceptedit-first-minute-")) / "demo.log"
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*CHROME_ARGS, f"--user-data-dir={tempfile.mkdtemp(prefix='conceptedit-chromium-')}"):
        options.add_argument(arg)
    driver = None
    try:
        import urllib.request

        while True:
            if proc.poll() is not None:
                sys.exit(f"error: the demo exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                time.sleep(0.2)
            if time.monotonic() - start > args.timeout:
                sys.exit(f"error: no answer at {url} within {args.timeout} s")
        served = time.monotonic() - start
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        result = drive_compare(driver, url, concept=args.concept, timeout=args.timeout)
        total = time.monotonic() - start
        if args.screenshot:
            driver.set_window_size(1400, 1900)  # the grid and the scored table in one picture
            time.sleep(1.0)
            Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.screenshot)
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(
        json.dumps(
            {
                "model": args.model or "default (shapes)",
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "seconds_to_server": round(served, 1),
                "seconds_page_load_to_comparison": round(result["seconds"], 1),
                "seconds_app_start_to_comparison": round(total, 1),
                "message": result["message"],
                "columns": result["header"],
                "table": result["table"],
                "screenshot": args.screenshot,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
