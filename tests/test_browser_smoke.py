"""The browser harness (tests/browser.py) on its own and on the real thing: headless Chromium
reading ``/health`` of ``patgw run`` on the demo until its instruments show connected."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import browser as browser_harness
import numpy as np
import numpy.typing as npt
import pytest
import yaml
from browser import WINDOW, decode_png, distinct_colours, screenshot, wait_text
from conftest import demo_copy
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

# --- The PNG decoder, against PNGs written here with each of the five filters ----------------


def _paeth(left: int, up: int, corner: int) -> int:
    guess = left + up - corner
    distances = [abs(guess - left), abs(guess - up), abs(guess - corner)]
    return (left, up, corner)[distances.index(min(distances))]


def _png(pixels: npt.NDArray[np.uint8], filters: list[int]) -> bytes:
    """``pixels`` (height x width x channels) as a PNG whose row y uses filter
    ``filters[y % len(filters)]``."""
    height, width, channels = pixels.shape
    raw = bytearray()
    above = [0] * (width * channels)
    for y, row in enumerate(pixels.reshape(height, -1).tolist()):
        kind = filters[y % len(filters)]
        raw.append(kind)
        for i, value in enumerate(row):
            left = row[i - channels] if i >= channels else 0
            corner = above[i - channels] if i >= channels else 0
            predictor = (0, left, above[i], (left + above[i]) // 2, _paeth(left, above[i], corner))
            raw.append((value - predictor[kind]) % 256)
        above = row
    return _container(width, height, channels, bytes(raw))


def _container(width: int, height: int, channels: int, raw: bytes, interlace: int = 0) -> bytes:
    """A PNG file around filtered scanlines ``raw``, its data split over several IDAT chunks."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    size = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    header = size + bytes([8, colour_type, 0, 0, interlace])
    data = zlib.compress(raw)
    idats = [chunk(b"IDAT", data[i : i + 50]) for i in range(0, len(data), 50)]
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + b"".join(idats) + chunk(b"IEND", b"")


@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=["grey", "grey-alpha", "rgb", "rgba"])
def test_png_decoder_undoes_every_filter(channels: int) -> None:
    rng = np.random.default_rng(channels)
    # Noise on a gradient: every filter's predictor gets large and wrapping differences.
    gradient = np.arange(23 * 17 * channels).reshape(23, 17, channels) % 256
    pixels = ((gradient + rng.integers(0, 40, size=gradient.shape)) % 256).astype(np.uint8)
    png = _png(pixels, filters=[0, 1, 2, 3, 4, 4, 3, 2, 1])
    assert np.array_equal(decode_png(png), pixels)
    assert distinct_colours(pixels) > 1
    blank = np.full((9, 11, channels), 200, dtype=np.uint8)
    decoded_blank = decode_png(_png(blank, filters=[1, 2, 3, 4]))
    assert np.array_equal(decoded_blank, blank)
    assert distinct_colours(decoded_blank) == 1


def test_png_decoder_refuses_what_it_cannot_read() -> None:
    row = bytes(1 + 2 * 3)  # filter type 0, two black RGB pixels
    assert decode_png(_container(2, 2, 3, row * 2)).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="not a PNG"):
        decode_png(b"GIF89a" + bytes(20))
    with pytest.raises(ValueError, match="unknown filter type 5"):
        decode_png(_container(2, 2, 3, row + b"\x05" + row[1:]))
    with pytest.raises(ValueError, match="interlace 1"):
        decode_png(_container(2, 2, 3, row * 2, interlace=1))
    with pytest.raises(ValueError, match="PNG data of 7 bytes for 2x2x3"):
        decode_png(_container(2, 2, 3, row))


def test_a_missing_browser_skips_outside_ci_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(browser_harness, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-chromium not found"):
        browser_harness.require_chromium()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        browser_harness.require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI is set: .*no-chromium not found"):
        browser_harness.require_chromium()


# --- The harness in a real browser ------------------------------------------------------------


def test_screenshot_and_wait_text_fail_on_a_page_that_shows_nothing(
    browser: WebDriver, tmp_path: Path
) -> None:
    browser.get("data:text/html,<body style='margin:0;background:white'></body>")
    with pytest.raises(AssertionError, match="blank screenshot"):
        screenshot(browser, tmp_path / "blank.png")
    # The window has the harness's fixed size, whatever the machine.
    height, width, _ = decode_png((tmp_path / "blank.png").read_bytes()).shape
    assert (width, height) == WINDOW
    with pytest.raises(pytest.fail.Exception, match="waiting for 'PAT Gateway'"):
        wait_text(browser, "PAT Gateway", within=0.5)

    browser.get("data:text/html,<h1>PAT Gateway</h1>")
    assert "PAT Gateway" in wait_text(browser, "PAT Gateway")
    assert screenshot(browser, tmp_path / "heading.png").is_file()


# --- /health of the demo ----------------------------------------------------------------------


@contextlib.contextmanager
def demo_gateway(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``patgw run`` on ``config`` (its output in ``log``); killed on exit if still running."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", str(config), "--no-view"],
            cwd=config.parent,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def wait_listening(port: int, gateway: subprocess.Popen[bytes], log: Path, within: float) -> None:
    """Wait until something accepts connections on loopback ``port``; fail if the gateway
    exits first or after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        assert gateway.poll() is None, f"patgw run exited early:\n{log.read_text()[-3000:]}"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"nothing listens on 127.0.0.1:{port} after {within} s")
        time.sleep(0.05)


def health_when_connected(
    driver: WebDriver,
    url: str,
    instruments: list[str],
    gateway: subprocess.Popen[bytes],
    log: Path,
    within: float,
) -> dict[str, Any]:
    """Reload ``url`` until its JSON shows every one of ``instruments`` connected; that JSON.
    Fails after ``within`` seconds with the last states seen."""
    states: dict[str, str | None] = {}

    def connected(driver: WebDriver) -> dict[str, Any] | Literal[False]:
        assert gateway.poll() is None, f"patgw run exited:\n{log.read_text()[-3000:]}"
        driver.get(url)
        # Chromium shows a JSON response as the text of a <pre>.
        report: dict[str, Any] = json.loads(driver.find_element(By.TAG_NAME, "pre").text)
        seen = report.get("instruments", {})
        states.update({i: seen.get(i, {}).get("state") for i in instruments})
        return report if all(state == "connected" for state in states.values()) else False

    waiting = WebDriverWait(driver, within, poll_frequency=0.2)
    try:
        return waiting.until(connected)
    except TimeoutException:
        pytest.fail(f"instruments not all connected after {within} s: {states}")


def test_health_page_shows_the_demo_instruments_connected(
    browser: WebDriver, tmp_path: Path
) -> None:
    config, _ = demo_copy(tmp_path)
    document = yaml.safe_load(config.read_text())
    port = document["http"]["port"]
    instruments = [block["id"] for block in document["instruments"]]
    assert instruments, "the demo configures no instrument"
    log = tmp_path / "patgw.log"
    with demo_gateway(config, log) as gateway:
        wait_listening(port, gateway, log, within=60)
        url = f"http://127.0.0.1:{port}/health"
        report = health_when_connected(browser, url, instruments, gateway, log, within=60)
        assert set(report["instruments"]) == set(instruments)
        for instrument in instruments:  # as the page shows them to a reader
            wait_text(browser, f'"{instrument}"', within=1)
        screenshot(browser, tmp_path / "health.png")
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
    output = log.read_text()
    assert gateway.returncode == 0, output[-3000:]
    assert "gateway.stopped" in output
