"""The web console in a real browser (headless Chromium, tests/browser.py) against the demo run
by ``patgw run``: the operator logs in, sees every demo instrument connected, watches the
signals update live (Server-Sent Events) and opens a live chart (uPlot), sees trends of two
signals from the store and zooms into one, writes the feed pump's
setpoint through the form and sees the pump follow; a viewer is refused the writes page.
Screenshots of each page are kept under the test's temporary folder and checked non-blank."""

from __future__ import annotations

import signal
from pathlib import Path

import yaml
from browser import screenshot, wait_text
from conftest import demo_copy
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait
from test_browser_smoke import demo_gateway, wait_listening

SETPOINT = "reactor1/feed_pump/speed_setpoint"


def _login(driver: WebDriver, base: str, user: str) -> None:
    driver.get(f"{base}/login")
    driver.find_element(By.NAME, "user").send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(f"{user}-password")
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_text(driver, "Status:", within=20)


def _cell(driver: WebDriver, signal_id: str, column: str) -> str:
    row = driver.find_element(By.CSS_SELECTOR, f'#signals tr[data-signal="{signal_id}"]')
    selector = "td:nth-child(3)" if column == "unit" else f"td.{column}"  # the unit has no class
    return str(row.find_element(By.CSS_SELECTOR, selector).text)


def test_operator_sees_live_values_writes_and_a_viewer_is_refused(
    browser: WebDriver, tmp_path: Path
) -> None:
    config, _ = demo_copy(tmp_path)
    document = yaml.safe_load(config.read_text())
    port = document["http"]["port"]
    instruments = [block["id"] for block in document["instruments"]]
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "patgw.log"
    with demo_gateway(config, log) as gateway:
        wait_listening(port, gateway, log, within=60)
        _login(browser, base, "operator")

        # Overview: every instrument connected (reload until they are: the demo starts them).
        def all_connected(driver: WebDriver) -> bool:
            assert gateway.poll() is None, log.read_text()[-3000:]
            driver.get(f"{base}/")
            text = driver.find_element(By.TAG_NAME, "body").text
            lines = [line for line in text.splitlines() if line.split(" ")[0] in instruments]
            return len(lines) >= len(instruments) and all("connected" in x for x in lines)

        WebDriverWait(browser, 90, poll_frequency=0.5).until(all_connected)
        screenshot(browser, tmp_path / "overview.png")

        # Signals: the seq of a live signal moves without reloading the page (SSE).
        browser.get(f"{base}/signals")
        flow = "reactor1/feed_pump/flow"
        first = WebDriverWait(browser, 30).until(lambda d: _cell(d, flow, "seq") or False)
        WebDriverWait(browser, 30).until(lambda d: _cell(d, flow, "seq") != first)
        # The unit for humans beside its UCUM code.
        assert _cell(browser, "reactor1/feed_pump/speed", "unit") == "rpm {rev}/min"
        browser.find_element(By.CSS_SELECTOR, f'#signals tr[data-signal="{flow}"]').click()
        WebDriverWait(browser, 20).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#chart canvas")
        )
        screenshot(browser, tmp_path / "signals.png")

        # Trends: the store's points of several signals, redrawn live; a drag zooms in.
        browser.get(f"{base}/trends?signal={flow}&signal=reactor1/feed_pump/speed&window=300")

        def points(driver: WebDriver) -> list[int]:
            sections = driver.find_elements(By.CSS_SELECTOR, "section.trend")
            return [int(x.get_attribute("data-points") or 0) for x in sections]

        WebDriverWait(browser, 30).until(lambda d: len(points(d)) == 2 and min(points(d)) > 5)
        assert browser.find_elements(By.CSS_SELECTOR, "section.trend canvas")
        status = browser.find_element(By.CSS_SELECTOR, "section.trend .trend-status")
        assert "live" in status.text and "points" in status.text
        screenshot(browser, tmp_path / "trends.png")
        over = browser.find_element(By.CSS_SELECTOR, "section.trend .u-over")
        ActionChains(browser).move_to_element_with_offset(
            over, -100, 0
        ).click_and_hold().move_by_offset(150, 0).release().perform()
        WebDriverWait(browser, 20).until(lambda d: "zoomed" in status.text)
        browser.find_element(By.ID, "trend-live").click()
        WebDriverWait(browser, 20).until(lambda d: "live" in status.text)

        # A write through the form: the pump's setpoint, read back by the gateway.
        browser.get(f"{base}/writes")
        form = browser.find_element(
            By.XPATH, f'//form[.//input[@name="target" and @value="{SETPOINT}"]]'
        )
        form.find_element(By.NAME, "value").send_keys("3")
        form.find_element(By.NAME, "reason").send_keys("browser test: raise the feed")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        outcome = wait_text(browser, "audit records", within=30)
        assert "3" in outcome
        screenshot(browser, tmp_path / "write.png")
        browser.get(f"{base}/signals")
        WebDriverWait(browser, 30).until(lambda d: _cell(d, SETPOINT, "value") == "3")

        # Logout, then a viewer: no writes page.
        browser.get(f"{base}/")
        browser.delete_all_cookies()
        _login(browser, base, "viewer")
        browser.get(f"{base}/writes")
        wait_text(browser, "may not write", within=10)  # the console's 403, not a form
        assert not browser.find_elements(By.CSS_SELECTOR, "form.write")
        screenshot(browser, tmp_path / "viewer-writes.png")
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
    output = log.read_text()
    assert gateway.returncode == 0, output[-3000:]
    assert output.count("console.login") == 2  # the operator and the viewer
    assert "write.outcome" in output
