"""A real browser for the tests: Debian's headless Chromium driven by Selenium, and what a test
does with it (wait for text, take a screenshot that must show something).

The browser and its driver are the Debian packages ``chromium`` and ``chromium-driver``
(``.ci/run`` installs them): Selenium is handed both paths, so Selenium Manager never looks
for, let alone downloads, a browser or a driver (and a Selenium release that called it anyway
would fail to start the browser: ``SE_MANAGER_PATH`` names ``/bin/false``). Where they are
missing a browser test is skipped with the reason, except under CI (``CI`` set), where it
fails: CI must run them.

Screenshots are decoded here (zlib and the five PNG filters, numpy for the arithmetic) to
count their colours: a blank page (one colour) fails the test that took it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "WINDOW",
    "chromium",
    "decode_png",
    "distinct_colours",
    "page_text",
    "require_chromium",
    "screenshot",
    "wait_text",
]

# Debian's files: /usr/bin/chromium is the package's wrapper script (it reads
# /etc/chromium.d/), /usr/bin/chromedriver a link into /usr/lib/chromium/.
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Every screenshot is this size, whatever the machine's screen: pages lay out alike everywhere.
WINDOW = (1280, 900)
PAGE_LOAD_TIMEOUT_S = 30

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Colour type -> channels per pixel (8-bit samples): grey, RGB, grey+alpha, RGBA.
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def in_ci() -> bool:
    """Whether this is a CI run (``CI`` set to anything but empty, 0, false or no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_chromium() -> None:
    """Skip the calling test when Chromium or its driver is missing, with the reason; fail it
    instead under CI, where a missing browser is a broken set-up, not an option."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if not missing:
        return
    reason = (
        f"{' and '.join(missing)} not found: browser tests need Debian's chromium and "
        "chromium-driver (apt-get install chromium chromium-driver; .ci/run installs them)"
    )
    if in_ci():
        pytest.fail(f"CI is set: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def chromium(folder: Path) -> Iterator[WebDriver]:
    """A headless Chromium whose pages are :data:`WINDOW` large, with a fresh profile in
    ``folder`` (its driver's log beside it); quit on exit, however the test ended, and any of
    its processes still alive then killed."""
    require_chromium()
    folder.mkdir(parents=True, exist_ok=True)
    profile = folder / "profile"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={profile}",
        # /dev/shm is 64 MB in many containers: Chromium's shared memory goes to /tmp instead.
        "--disable-dev-shm-usage",
        # Nothing but the gateway under test: no first-run pages, no calls home, no updates.
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    if os.geteuid() == 0:
        # Chromium refuses to start as root inside its sandbox (CI runs as root).
        options.add_argument("--no-sandbox")
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(folder / "driver.log"))
    try:
        with _offline_selenium_manager():
            driver = webdriver.Chrome(service=service, options=options)
        try:
            driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
            # The page gets WINDOW, not WINDOW less the room headless Chromium keeps for the
            # window's toolbars (143 px of height in Chromium 156), at one pixel per CSS pixel.
            width, height = WINDOW
            metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            yield driver
        finally:
            driver.quit()
    finally:
        _kill_leftovers(profile, service)


@contextlib.contextmanager
def _offline_selenium_manager() -> Iterator[None]:
    """Selenium Manager, were a Selenium release to call it despite the paths given, fails
    the start (``false`` in its place) instead of downloading anything."""
    guard = {"SE_MANAGER_PATH": "/bin/false", "SE_OFFLINE": "true", "SE_AVOID_STATS": "true"}
    saved = {name: os.environ.get(name) for name in guard}
    os.environ.update(guard)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _kill_leftovers(profile: Path, service: Service) -> None:
    """Kill the driver and the browser processes of ``profile`` that outlived ``quit`` (a
    driver that crashed leaves its browser behind): by pid, only processes this browser
    started (their command line names its own profile folder)."""
    process = service.process
    if process is not None and process.poll() is None:
        process.kill()
        process.wait(timeout=10)
    marker = f"--user-data-dir={profile} ".encode()  # the space: the argument's end
    for _ in range(100):
        leftovers = [pid for pid in _pids() if marker in _cmdline(pid)]
        if not leftovers:
            return
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)  # let the kernel reap them before looking again
    pytest.fail(f"Chromium processes of {profile} survived SIGKILL: {leftovers}")


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:  # gone meanwhile, or not ours to read
        return b""


def page_text(driver: WebDriver) -> str:
    """The text the page shows (its ``body``), as a user reads it."""
    return str(driver.find_element(By.TAG_NAME, "body").text)


def wait_text(driver: WebDriver, text: str, within: float = 10.0) -> str:
    """Wait until the page shows ``text``; the page's text then. Fails the test after
    ``within`` seconds, quoting what the page showed."""

    def shown(driver: WebDriver) -> str | Literal[False]:
        body = page_text(driver)
        return body if text in body else False

    waiting = WebDriverWait(
        driver,
        within,
        poll_frequency=0.05,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )
    try:
        return waiting.until(shown)
    except TimeoutException:
        try:
            seen = page_text(driver)[:2000]
        except (NoSuchElementException, StaleElementReferenceException):
            seen = "(no page body)"
        pytest.fail(
            f"timed out after {within} s waiting for {text!r} at {driver.current_url}; "
            f"the page shows: {seen!r}"
        )


def wait_connected(
    driver: WebDriver, base: str, instrument: str, alive: Callable[[], None], within: float = 90
) -> None:
    """Reload the console's overview at ``base`` until ``instrument``'s state cell says
    ``connected`` (the demo starts its emulators as it starts); ``alive()`` fails the wait
    at once when the gateway died."""

    def connected(driver: WebDriver) -> bool:
        alive()
        driver.get(f"{base}/")
        rows = driver.find_elements(By.CSS_SELECTOR, "table.instruments tr")
        cells = ([c.text for c in r.find_elements(By.TAG_NAME, "td")] for r in rows)
        # (instrument, device, state, ...): found by cell, not by the row's text.
        return any(c[:1] == [instrument] and "connected" in c for c in cells)

    WebDriverWait(driver, within, poll_frequency=0.5).until(connected)


def screenshot(driver: WebDriver, path: Path) -> Path:
    """Save what ``driver``'s window shows as a PNG at ``path`` (give one under the test's
    ``tmp_path``) and return ``path``; fails the test when the picture is blank (one colour)."""
    png = driver.get_screenshot_as_png()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    pixels = decode_png(png)
    height, width = pixels.shape[:2]
    colours = distinct_colours(pixels)
    assert colours > 1, f"blank screenshot {path}: {width}x{height} pixels of one colour"
    return path


def decode_png(png: bytes) -> npt.NDArray[np.uint8]:
    """The pixels of an 8-bit, non-interlaced PNG (grey, RGB, grey+alpha or RGBA, as browsers
    write them): an array of height x width x channels."""
    if not png.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG: wrong signature")
    header: tuple[int, ...] | None = None
    compressed = bytearray()
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[offset : offset + 8])
        body = png[offset + 8 : offset + 8 + length]
        if len(body) != length:
            raise ValueError(f"truncated PNG: {kind!r} chunk cut short")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed += body
        elif kind == b"IEND":
            break
        offset += 12 + length  # length, type, body, CRC
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, colour_type, _compression, _filter, interlace = header
    if depth != 8 or colour_type not in _CHANNELS or interlace != 0:
        raise ValueError(
            f"unsupported PNG: bit depth {depth}, colour type {colour_type}, interlace {interlace}"
        )
    channels = _CHANNELS[colour_type]
    stride = width * channels
    raw = zlib.decompress(bytes(compressed))
    if len(raw) != height * (stride + 1):
        raise ValueError(f"PNG data of {len(raw)} bytes for {width}x{height}x{channels}")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    pixels = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        pixels[y] = _unfilter(int(rows[y, 0]), rows[y, 1:], previous, channels)
        previous = pixels[y]
    return pixels.reshape(height, width, channels)


def _unfilter(
    kind: int, line: npt.NDArray[np.uint8], above: npt.NDArray[np.uint8], bpp: int
) -> npt.NDArray[np.uint8]:
    """One scanline with its PNG filter ``kind`` undone (``above``: the line above, unfiltered;
    ``bpp``: bytes per pixel). Sums wrap at 256, as the PNG specification says."""
    if kind == 0:  # None
        return line
    if kind == 1:  # Sub: each byte plus the one a pixel to its left
        summed = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8)
        return summed.reshape(-1)
    if kind == 2:  # Up: plus the byte above
        return line + above
    if kind not in (3, 4):
        raise ValueError(f"PNG scanline with unknown filter type {kind}")
    # Average and Paeth depend on the byte just decoded to the left: one byte at a time.
    out = bytearray(line.tobytes())
    up = above.tobytes()
    for i in range(len(out)):
        left = out[i - bpp] if i >= bpp else 0
        if kind == 3:  # Average of left and above
            out[i] = (out[i] + ((left + up[i]) >> 1)) & 0xFF
            continue
        corner = up[i - bpp] if i >= bpp else 0  # Paeth: the nearest of left, above, corner
        estimate = left + up[i] - corner
        to_left, to_up, to_corner = (
            abs(estimate - left),
            abs(estimate - up[i]),
            abs(estimate - corner),
        )
        if to_left <= to_up and to_left <= to_corner:
            predictor = left
        elif to_up <= to_corner:
            predictor = up[i]
        else:
            predictor = corner
        out[i] = (out[i] + predictor) & 0xFF
    return np.frombuffer(bytes(out), dtype=np.uint8)


def distinct_colours(pixels: npt.NDArray[np.uint8]) -> int:
    """How many different pixel values (all channels together) ``pixels`` holds."""
    height, width, channels = pixels.shape
    padded = np.zeros((height, width, 4), dtype=np.uint8)
    padded[:, :, :channels] = pixels
    return int(np.unique(padded.view(np.uint32)).size)
