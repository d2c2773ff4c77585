"""A device command from the web console in a real browser (headless Chromium,
tests/browser.py) against the demo run by ``patgw run``, with the feed pump's stop and start
declared in the test's copy of the demo (start signed): the operator stops the pump with the
button on its instrument page and sees its ``running`` signal fall to 0, starts it again with a
signature, and an engineer finds both on the audit page. Screenshots of the instrument page and
the outcome are kept under the test's temporary folder and checked non-blank."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import yaml
from browser import screenshot, wait_connected, wait_text
from conftest import demo_copy
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait
from test_browser_smoke import demo_gateway, wait_listening
from test_console_browser import _login

STOP = "reactor1/feed_pump/stop"
START = "reactor1/feed_pump/start"
RUNNING = '#signals tr[data-signal="reactor1/feed_pump/running"] td.value'
PASSWORD = "operator-password"  # the demo's


def _form(browser: WebDriver, target: str) -> WebElement:
    return browser.find_element(
        By.XPATH, f'//form[@action="/command"][.//input[@name="target" and @value="{target}"]]'
    )


def test_the_operator_stops_and_starts_the_pump_with_its_buttons(
    browser: WebDriver, tmp_path: Path
) -> None:
    config, _ = demo_copy(tmp_path)
    document = yaml.safe_load(config.read_text())
    document["commands"] = [
        {"target": STOP, "role": "operator"},
        {"target": START, "role": "operator", "signature": "required"},
    ]
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    port = document["http"]["port"]
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "patgw.log"
    with demo_gateway(config, log) as gateway:
        wait_listening(port, gateway, log, within=60)
        _login(browser, base, "operator")

        # The feed_pump connected (the demo starts it): else the command would find it down.
        wait_connected(browser, base, "feed_pump", lambda: _alive(gateway, log))
        page = f"{base}/signals?instrument=feed_pump"
        browser.get(page)
        WebDriverWait(browser, 30).until(
            lambda d: d.find_element(By.CSS_SELECTOR, RUNNING).text == "1"
        )
        stop = _form(browser, STOP)
        assert "role operator" in stop.text and "acts on the process" in stop.text
        screenshot(browser, tmp_path / "pump-commands.png")
        stop.find_element(By.NAME, "reason").send_keys("browser test: bottle change")
        stop.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        outcome = wait_text(browser, "audit records", within=30)
        assert f"{STOP} done" in outcome, outcome
        screenshot(browser, tmp_path / "stop-outcome.png")
        browser.get(page)
        WebDriverWait(browser, 30).until(
            lambda d: d.find_element(By.CSS_SELECTOR, RUNNING).text == "0"
        )

        start = _form(browser, START)
        assert "signature required" in start.text
        start.find_element(By.NAME, "reason").send_keys("browser test: bottle on")
        Select(start.find_element(By.NAME, "meaning")).select_by_value("performed")
        start.find_element(By.NAME, "signature_password").send_keys(PASSWORD)
        start.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        outcome = wait_text(browser, "audit records", within=30)
        assert f"{START} done" in outcome, outcome
        assert PASSWORD not in browser.page_source

        _login(browser, base, "engineer")  # the audit page is for those who may audit
        browser.get(f"{base}/audit?action=command.*")
        text = wait_text(browser, "command.executed", within=10)
        rows = browser.find_elements(By.CSS_SELECTOR, "table.audit tbody tr")
        executed = [r.text for r in rows if "command.executed" in r.text]
        assert len(executed) == 2, text
        signed = [
            r.text for r in rows if "command.requested" in r.text and "performed by" in r.text
        ]
        assert len(signed) == 1 and START in signed[0], text
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
    output = log.read_text()
    assert gateway.returncode == 0, output[-3000:]
    assert "command.outcome" in output and PASSWORD not in output


def _alive(gateway: subprocess.Popen[bytes], log: Path) -> None:
    assert gateway.poll() is None, log.read_text()[-3000:]
