"""Ctrl-C where the event loop has no ``add_signal_handler`` (Windows' loops), forced here.

On Windows ``loop.add_signal_handler`` raises NotImplementedError; the CLI then installs plain
``signal.signal`` handlers that hand the signal to the loop. These tests make the Linux loop
refuse the same way and send real signals. Not proven here: Windows' console control events
themselves (Ctrl-C, Ctrl-Break as SIGBREAK) reaching Python, and a service wrapper's stop.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, pump_instrument, stored_by_signal, write_config

from gateway import cli

NO_SIGNAL_HANDLERS = """
import asyncio, sys

def add_signal_handler(self, sig, callback, *args):
    raise NotImplementedError  # what Windows' event loops do

asyncio.SelectorEventLoop.add_signal_handler = add_signal_handler
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


def refuse_signal_handlers(self: Any, sig: int, callback: Any, *args: Any) -> None:
    raise NotImplementedError


def test_ctrl_c_stops_cleanly_when_the_loop_has_no_signal_handlers(tmp_path: Path) -> None:
    port = free_port()
    store = tmp_path / "store.sqlite"
    config = write_config(
        tmp_path / "gateway.yaml",
        {
            "area": "reactor1",
            "store": {"path": str(store), "commit_interval_ms": 50},
            "data_dir": str(tmp_path / "data"),
            "emulators": [{"id": "pump_emulator", "type": "feed_pump", "options": {"port": port}}],
            "instruments": [pump_instrument("feed_pump", port)],
        },
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", NO_SIGNAL_HANDLERS, "--log-format", "json", "run", str(config)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60  # a loaded machine: the emulator starts first
        while not store.exists() or not stored_by_signal(store):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the gateway committed nothing in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert [e["signal"] for e in events if e["event"] == "patgw.stop_requested"] == ["SIGINT"]
    stopped = [e for e in events if e["event"] == "gateway.stopped"]
    assert len(stopped) == 1
    # The final commit happened: everything counted as committed is in the store.
    committed = sum(len(samples) for samples in stored_by_signal(store).values())
    assert committed == stopped[0]["committed"] > 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_fallback_handler_sets_the_stop_and_is_put_back(
    monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    monkeypatch.setattr(asyncio.SelectorEventLoop, "add_signal_handler", refuse_signal_handlers)

    async def main() -> tuple[object, object]:
        before = signal.getsignal(sig)
        stop = asyncio.Event()
        restore = cli._install_stop_handlers(stop)
        try:
            installed = signal.getsignal(sig)
            signal.raise_signal(sig)  # a real signal to this process
            async with asyncio.timeout(10):
                await stop.wait()
        finally:
            restore()
        assert signal.getsignal(sig) is before
        return before, installed

    before, installed = asyncio.run(main())
    assert installed is not before
