"""A newcomer's first minute: time from ``python app.py`` to the first successful comparison.

Starts the demo (default: the built-in shapes model, on CPU), opens it in headless Chromium, presses
**Compare** on the ready example (nothing typed), waits for the grid and the scored table, and
prints one JSON object: seconds until the server answers, and from the page load to the grid (shown
first) and to the scored table, plus the table's text. ``--screenshot PATH`` saves the page
(the README's picture: ``python benchmarks/first_minute.py --screenshot docs/demo.png``).

``--engine-only`` runs the same comparison in-process (no server, no browser) and adds CPU seconds,
which depend less on other load than wall time. Needs chromium, chromium-driver and selenium (as
``tests/test_demo_browser.py``) unless ``--engine-only``. The CPU count and load average are printed
with the figures; on 2 cores shared with a training run (load average ~10) the whole run took 3 min.
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


def engine_only(model: str | None) -> dict:
    """The example's comparison in this process, without server or browser: wall and CPU seconds
    (CPU time depends less on other load than wall time does)."""
    import resource

    from conceptedit.demo import engine
    from conceptedit.toolkit import DEFAULT_MODEL

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    start = time.monotonic()
    demo_model = engine.DemoModel.load(model or DEFAULT_MODEL, device="cpu")
    loaded, loaded_cpu = time.monotonic(), cpu()
    example = engine.first_example(demo_model)
    result = engine.compare_methods(
        demo_model,
        engine.CompareCache(),
        example.targets,
        list(example.methods),
        example.preserve,
        example.prompts,
        example.seeds,
    )
    done, done_cpu = time.monotonic(), cpu()
    return {
        "model": model or DEFAULT_MODEL,
        "torch_threads": __import__("torch").get_num_threads(),
        "load_s": round(loaded - start, 1),
        "compare_wall_s": round(done - loaded, 1),
        "compare_cpu_s": round(done_cpu - loaded_cpu, 1),
        "images": sum(len(c.images) for c in result.columns) + len(result.score_rows) * len(result.columns),
        "verdicts": {c.label: c.verdict.word if c.verdict else c.error for c in result.methods},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="load_pipeline source (default: the demo's default model)")
    parser.add_argument("--screenshot", default=None, help="save the page after the comparison to this PNG")
    parser.add_argument("--concept", default=None, help="type this concept instead of the example's")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--engine-only", action="store_true", help="time the comparison in-process (no browser)")
    args = parser.parse_args()
    if args.engine_only:
        figures = engine_only(args.model)
        print(json.dumps({**figures, "cpus": os.cpu_count(), "load_average": os.getloadavg()}, indent=2))
        return

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
                "seconds_page_load_to_grid": round(result["seconds_to_grid"], 1),
                "seconds_page_load_to_scored_table": round(result["seconds"], 1),
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
