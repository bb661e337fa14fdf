"""End to end: start ``python app.py`` on the tiny model on a free local port, drive it in headless
Chromium, fit the ``negative-prompt`` plugin and check that the original and the edited images both
appear and differ. The screenshot is kept as a test artifact (its path is printed).

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the pip package ``selenium``
(``.ci/run`` installs them). Skipped, with the reason, only where they are absent and ``CI`` is unset.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
CHROME_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1200",
)


def _browser_or_skip():
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not path]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        how = "apt-get install chromium chromium-driver; pip install selenium"
        reason = f"demo browser test needs {', '.join(missing)} ({how})"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the demo did not answer at {url} within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def demo_url(tiny_model_dir, tmp_path):
    port = _free_port()
    log = tmp_path / "demo.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("GRADIO_SERVER_NAME", None)
    command = [sys.executable, str(ROOT / "app.py"), "--model", str(tiny_model_dir), "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(command + ["--device", "cpu"], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_server(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def browser():
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="conceptedit-chromium-")
    for arg in (*CHROME_ARGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _image(src: str) -> np.ndarray:
    with urllib.request.urlopen(src, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


def _open_tab(browser, wait, title: str) -> None:
    from selenium.webdriver.common.by import By

    tab = wait.until(
        lambda d: next(
            (b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == title), None
        )
    )
    tab.click()


def drive_compare(browser, url: str, concept: str | None = None, timeout: float = 600) -> dict:
    """Open the page, (optionally type ``concept``), press Compare with the preselected methods and
    wait for the grid and the table. Returns the cells' image URLs (row-major), the column header,
    the message and table texts, and the seconds from page load to the finished comparison."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, timeout, poll_frequency=0.3)
    browser.get(url)
    targets = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#cmp-targets textarea, #cmp-targets input"))
    loaded = time.monotonic()
    if concept is not None:
        targets.clear()
        targets.send_keys(concept)
    browser.find_element(By.CSS_SELECTOR, "#cmp-run").click()

    def message(d) -> str:
        return d.find_element(By.CSS_SELECTOR, "#cmp-message").text

    # first the grid (fits and a few images), then the scored table
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#cmp-gallery img")) >= 2 or "Error" in message(d))
    assert "Error" not in message(browser), message(browser)
    grid_seconds = time.monotonic() - loaded
    wait.until(
        lambda d: "scoring every column" not in message(d) and "method(s) in" in message(d) or "Error" in message(d)
    )
    text = message(browser)
    assert "Error" not in text, text
    seconds = time.monotonic() - loaded
    time.sleep(1.0)  # let the images finish loading for the screenshot
    return {
        "cells": [e.get_attribute("src") for e in browser.find_elements(By.CSS_SELECTOR, "#cmp-gallery img")],
        "header": browser.find_element(By.CSS_SELECTOR, "#cmp-header").text,
        "message": text,
        "table": browser.find_element(By.CSS_SELECTOR, "#cmp-table").text,
        "seconds_to_grid": grid_seconds,
        "seconds": seconds,
    }


def test_compare_two_fast_methods_in_the_browser(demo_url, browser, tmp_path, capsys):
    from selenium.webdriver.common.by import By

    result = drive_compare(browser, demo_url, concept="cat")
    screenshot = tmp_path / "demo-compare.png"
    browser.save_screenshot(str(screenshot))
    with capsys.disabled():
        print(f"\ncompare screenshot: {screenshot} ({result['seconds']:.1f} s from page load)")
    boxes = browser.find_elements(By.CSS_SELECTOR, "#cmp-methods input:checked")
    checked = [e.find_element(By.XPATH, "..").text.strip() for e in boxes]
    assert sorted(checked) == ["negative-prompt", "uce"], checked  # the fast methods are preselected
    assert "2 of 2 method(s)" in result["message"]
    assert result["header"].endswith("original · uce · negative-prompt"), result["header"]
    cells = result["cells"]
    assert len(cells) % 3 == 0 and len(cells) >= 3  # a row per prompt and seed, three columns
    original, uce, negative = (_image(src) for src in cells[:3])
    assert original.shape == uce.shape == negative.shape and original.shape[0] >= 64
    assert not np.array_equal(original, uce), "the uce column equals the original"
    assert not np.array_equal(original, negative), "the negative-prompt column equals the original"
    assert "uce" in result["table"] and "negative-prompt" in result["table"]


def test_fit_negative_prompt_in_the_browser(demo_url, browser, tmp_path, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 150, poll_frequency=0.3)
    browser.get(demo_url)
    _open_tab(browser, wait, "Erase")  # the page opens on Compare
    targets = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#erase-targets textarea, #erase-targets input"))

    def text(selector: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, selector).text

    # Choose the plugin in the dropdown: its summary and paper appear.
    browser.find_element(By.CSS_SELECTOR, "#erase-plugin input").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "li[role=option][aria-label='negative-prompt']")).click()
    wait.until(lambda d: "Safe Latent Diffusion" in text("#erase-plugin-info"))

    # A user error is shown as a message and the app keeps running.
    browser.find_element(By.CSS_SELECTOR, "#erase-fit").click()
    wait.until(lambda d: "no target concept" in text("#erase-fit-message"))

    targets.send_keys("cat")
    browser.find_element(By.CSS_SELECTOR, "#erase-fit").click()
    wait.until(lambda d: "fitted" in text("#erase-fit-message"))
    wait.until(
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "#gallery-original img")) >= 4
            and len(d.find_elements(By.CSS_SELECTOR, "#gallery-edited img")) >= 4
        )
    )
    assert "negative-prompt" in text("#stack-table") and "cat" in text("#stack-table")
    prompts = browser.find_element(By.CSS_SELECTOR, "#compare-prompts textarea").get_attribute("value")
    assert "a picture of cat" in prompts

    time.sleep(1.0)  # let the images finish loading for the screenshot
    screenshot = tmp_path / "demo-screenshot.png"
    browser.save_screenshot(str(screenshot))
    with capsys.disabled():
        print(f"\ndemo screenshot: {screenshot}")

    original = [e.get_attribute("src") for e in browser.find_elements(By.CSS_SELECTOR, "#gallery-original img")]
    edited = [e.get_attribute("src") for e in browser.find_elements(By.CSS_SELECTOR, "#gallery-edited img")]
    first_original, first_edited = _image(original[0]), _image(edited[0])
    assert first_original.shape == first_edited.shape and first_original.shape[0] >= 64
    assert not np.array_equal(first_original, first_edited), "the original and the edited image are identical"
    assert "negative-prompt: cat" in text("#compare-message")
