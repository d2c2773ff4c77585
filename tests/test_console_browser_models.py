"""The spectra and models pages in a real browser (headless Chromium, tests/browser.py) against
the demo run by ``patgw run`` (one gateway for the module): the operator logs in, the spectra
page draws the Raman spectra with uPlot on a Raman-shift axis in cm⁻¹ with the soft sensor's
bands, and the models page shows the soft sensor's glucose prediction with a value. Screenshots
of both pages are kept under the test's temporary folder and checked non-blank."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from browser import screenshot, wait_text
from conftest import demo_copy
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait
from test_browser_smoke import demo_gateway, wait_listening
from test_console_browser import _login

GLUCOSE = "reactor1/softsensor/glucose"


class Demo:
    def __init__(self, base: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.base, self.process, self.log = base, process, log

    def alive(self) -> None:
        assert self.process.poll() is None, self.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    folder = tmp_path_factory.mktemp("demo")
    config, _ = demo_copy(folder)
    port = yaml.safe_load(config.read_text())["http"]["port"]
    log = folder / "patgw.log"
    with demo_gateway(config, log) as process:
        wait_listening(port, process, log, within=60)
        yield Demo(f"http://127.0.0.1:{port}", process, log)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0, log.read_text()[-3000:]


def test_the_spectra_page_draws_spectra_on_a_raman_shift_axis_in_per_cm(
    demo: Demo, browser: WebDriver, tmp_path: Path
) -> None:
    _login(browser, demo.base, "operator")
    browser.get(f"{demo.base}/spectra")
    # The chart appears once the store holds a spectrum (the demo's Raman every 2 s).
    WebDriverWait(browser, 90, poll_frequency=0.5).until(
        lambda d: demo.alive() or d.find_elements(By.CSS_SELECTOR, "#spectrum-chart canvas")
    )
    chart = browser.find_element(By.CSS_SELECTOR, "#spectrum-chart")
    # uPlot draws the axis' label on its canvas and names the x series in its legend: the
    # same label, given as the axis' unit for people.
    legend_x = chart.find_element(By.CSS_SELECTOR, ".u-legend .u-series:first-child .u-label")
    assert "cm⁻¹" in legend_x.text and legend_x.text.startswith("Raman shift"), legend_x.text
    unit = browser.find_element(By.ID, "axis-unit")
    assert unit.text == "Raman shift (cm⁻¹) cm-1"  # the UCUM code beside it
    wait_text(browser, "newest seq", within=30)
    # The overlay: older spectra join the chart as the store gets them (one every 2 s).
    WebDriverWait(browser, 60, poll_frequency=0.5).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#spectrum-chart .u-legend .u-series")) >= 4
    )
    # The soft sensor's bands, from its status, listed under the chart.
    bands = browser.find_element(By.CSS_SELECTOR, "table.bands").text
    assert "prediction" in bands and "reference" in bands and "softsensor" in bands
    screenshot(browser, tmp_path / "spectra.png")


def test_the_models_page_shows_the_soft_sensors_prediction(
    demo: Demo, browser: WebDriver, tmp_path: Path
) -> None:
    _login(browser, demo.base, "operator")
    browser.get(f"{demo.base}/models")
    cell = f'tr[data-signal="{GLUCOSE}"] td.value'

    def value(driver: WebDriver) -> str | bool:
        demo.alive()
        cells = driver.find_elements(By.CSS_SELECTOR, cell)
        if not cells:  # the gateway was still starting (503): its processors show once it runs
            driver.get(f"{demo.base}/models")
            return False
        text = str(cells[0].text)
        try:
            float(text)
        except ValueError:
            return False
        return text

    # models.js refreshes the page's values: no reload once the page shows the processors.
    WebDriverWait(browser, 90, poll_frequency=0.5).until(value)
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-signal="{GLUCOSE}"]').text
    assert "g/L" in row, row
    assert browser.find_element(By.CSS_SELECTOR, 'tr[data-signal$="glucose_t2"] td.limit').text
    screenshot(browser, tmp_path / "models.png")
