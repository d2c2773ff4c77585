"""A signed write in a real browser (headless Chromium, tests/browser.py) against the demo run by
``patgw run``: the demo engineer logs in, signs the controller's pH setpoint (``signature:
required``) in the writes form — meaning chosen, password re-entered — sees it done, signs the
feed pump's speed setpoint (made ``signature: required`` in the test's copy of the demo) and
sees the emulated pump follow, and finds both writes with their signatures' meaning on the
audit page. Screenshots of the writes form, the
outcome and the audit page are kept under the test's temporary folder and checked non-blank."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import yaml
from browser import screenshot, wait_connected, wait_text
from conftest import demo_copy
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait
from test_browser_smoke import demo_gateway, wait_listening
from test_console_browser import _login

PH = "reactor1/controller/ph_setpoint"
PUMP = "reactor1/feed_pump/speed_setpoint"
PASSWORD = "engineer-password"  # the demo's


def test_engineer_signs_the_ph_setpoint_and_finds_it_in_the_audit(
    browser: WebDriver, tmp_path: Path
) -> None:
    config, _ = demo_copy(tmp_path)
    document = yaml.safe_load(config.read_text())
    pump = next(w for w in document["writes"] if w["target"] == PUMP)
    pump["signature"] = "required"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    port = document["http"]["port"]
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "patgw.log"
    with demo_gateway(config, log) as gateway:
        wait_listening(port, gateway, log, within=60)
        _login(browser, base, "engineer")

        # The controller connected (the demo starts it): else the write would find it down.
        wait_connected(browser, base, "controller", lambda: _alive(gateway, log))

        browser.get(f"{base}/writes")
        form = browser.find_element(By.XPATH, f'//form[.//input[@name="target" and @value="{PH}"]]')
        assert "signature required" in form.text
        form.find_element(By.NAME, "value").send_keys("7.1")
        form.find_element(By.NAME, "reason").send_keys("browser test: pH 7.1 for the feed phase")
        Select(form.find_element(By.NAME, "meaning")).select_by_value("approved")
        form.find_element(By.NAME, "signature_password").send_keys(PASSWORD)
        screenshot(browser, tmp_path / "writes-signed.png")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        outcome = wait_text(browser, "audit records", within=30)
        assert f"{PH} set to 7.1" in outcome and "read back 7.1" in outcome, outcome
        assert PASSWORD not in browser.page_source and PASSWORD not in browser.current_url
        screenshot(browser, tmp_path / "write-signed-outcome.png")

        # The feed pump, signed too: the emulated pump follows (its speed, read by the gateway).
        browser.get(f"{base}/writes")
        form = browser.find_element(
            By.XPATH, f'//form[.//input[@name="target" and @value="{PUMP}"]]'
        )
        assert "signature required" in form.text
        form.find_element(By.NAME, "value").send_keys("3")
        form.find_element(By.NAME, "reason").send_keys("browser test: signed feed change")
        Select(form.find_element(By.NAME, "meaning")).select_by_value("performed")
        form.find_element(By.NAME, "signature_password").send_keys(PASSWORD)
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        outcome = wait_text(browser, "audit records", within=30)
        assert f"{PUMP} set to 3" in outcome and "read back 3" in outcome, outcome
        browser.get(f"{base}/signals?instrument=feed_pump")
        speed = '#signals tr[data-signal="reactor1/feed_pump/speed"] td.value'
        WebDriverWait(browser, 30).until(
            lambda d: d.find_element(By.CSS_SELECTOR, speed).text == "3"
        )

        browser.get(f"{base}/audit?action=write.*")
        signed = "approved by Demo Engineer (engineer)"
        text = wait_text(browser, signed, within=10)
        rows = browser.find_elements(By.CSS_SELECTOR, "table.audit tbody tr")
        requested = [r.text for r in rows if "write.requested" in r.text and signed in r.text]
        assert len(requested) == 1 and PH in requested[0], text
        performed = "performed by Demo Engineer (engineer)"
        pumped = [r.text for r in rows if "write.requested" in r.text and performed in r.text]
        assert len(pumped) == 1 and PUMP in pumped[0], text
        assert browser.find_elements(By.CSS_SELECTOR, "a.export")  # the download links
        screenshot(browser, tmp_path / "audit-signed.png")
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
    output = log.read_text()
    assert gateway.returncode == 0, output[-3000:]
    assert "write.outcome" in output and PASSWORD not in output


def _alive(gateway: subprocess.Popen[bytes], log: Path) -> None:
    assert gateway.poll() is None, log.read_text()[-3000:]
