"""Bounded logs: a peer that keeps doing the same wrong thing is logged once per window, with a
count of what was left out, and a peer's fault is not logged as the gateway's error.

The rogue Modbus device's log volume is tested in test_modbus_rogue.py; here the northbound OPC
UA server is probed, over loopback, by a client that never authenticates.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import pytest
import structlog
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaStatusCodeError
from conftest import access_for, free_port, wait_for

from gateway import PluginContext, Signal
from gateway.logs import RepeatLimiter, configure_logging, truncate
from plugins.opcua_server.options import OpcUaServerOptions
from plugins.opcua_server.sink import OpcUaServerSink


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def let_through(limiter: RepeatLimiter, **event: Any) -> dict[str, Any] | None:
    try:
        return dict(limiter(None, event.get("level", "info"), dict(event)))
    except structlog.DropEvent:
        return None


def test_repeats_are_counted_once_per_window_and_writes_never() -> None:
    clock = Clock()
    limiter = RepeatLimiter(10.0, clock)
    written = []
    for i in range(25):
        clock.now += 1.0
        event = let_through(
            limiter, event="instrument.down", instrument="a", reason=f"transaction {i} lost"
        )
        if event is not None:
            written.append(event)
    # First at t=101, then one per 10 s window, each with the count it stood for.
    assert [e.get("suppressed", 0) for e in written] == [0, 9, 9]
    assert [e["suppressed_over_s"] for e in written[1:]] == [10.0, 10.0]
    # Another source, or another kind of line, is not a repeat.
    assert let_through(limiter, event="instrument.down", instrument="b", reason="x") is not None
    assert let_through(limiter, event="instrument.retry", instrument="a") is not None
    # Audit lines (writes to instruments) are all written.
    for _ in range(3):
        assert let_through(limiter, event="modbus.write", instrument="a", audit=True) is not None


def test_memory_is_bounded_by_forgetting_the_oldest_kinds() -> None:
    limiter = RepeatLimiter(10.0, Clock())
    assert let_through(limiter, event="first", instrument="a") is not None
    assert let_through(limiter, event="first", instrument="a") is None  # a repeat
    for i in range(5000):  # sources made of letters: numbers would not make new kinds
        let_through(limiter, event="other", instrument=format(i, "b").replace("1", "x"))
    # Still within the window, but forgotten among thousands of newer kinds: written again.
    assert let_through(limiter, event="first", instrument="a") is not None


def test_long_strings_are_cut_saying_how_much() -> None:
    event = truncate(100)(None, "error", {"event": "x" * 1000, "short": "y"})
    assert event == {"event": "x" * 100 + "... [900 more characters cut]", "short": "y"}


@pytest.mark.asyncio
async def test_refused_requests_of_an_unauthenticated_peer_are_one_warning(
    tmp_path: Path,
) -> None:
    window_s = 1.0
    probes = 20
    options = OpcUaServerOptions(port=free_port())
    access = access_for({"reader": ("pw", ["viewer"])})
    sink = OpcUaServerSink(options, PluginContext("northbound", tmp_path, access=access))
    sink.bind([Signal("reactor1/pump/flow", "mL/min", instrument="pump")])
    log = io.StringIO()
    async with sink:
        with redirect_stderr(log):
            configure_logging("json", "info", repeat_window_s=window_s)

            async def probe(requests: int) -> None:
                """A peer that opens a channel and asks for things without a session."""
                client = Client(sink.endpoint_url, timeout=5)
                await client.connect_socket()
                try:
                    await client.send_hello()
                    await client.open_secure_channel()
                    for _ in range(requests):
                        with pytest.raises(UaStatusCodeError):
                            await client.uaclient.register_server(
                                ua.RegisteredServer(ServerUri="urn:probe", IsOnline=True)
                            )
                finally:
                    client.disconnect_socket()

            await probe(probes)
            # Once the window is over, one more refusal is written with the count of the rest.
            over = time.monotonic() + window_s
            await wait_for(lambda: time.monotonic() > over, what="the window to pass")
            await probe(1)
            await asyncio.sleep(0)
    events = [json.loads(line) for line in log.getvalue().splitlines()]
    server = [e for e in events if str(e.get("logger", "")).startswith("asyncua.server")]
    faults = [e for e in server if e["event"].startswith("sending service fault response")]
    # Repeats whose window ended before the next refusal are reported by a summary line.
    summaries = [
        e
        for e in server
        if e["event"] == "log.repeats_suppressed"
        and e["repeated"].startswith("sending service fault response")
    ]
    # A peer's refused request is not the gateway's error...
    assert faults and all(e["level"] == "warning" for e in faults)
    assert not [e for e in server if e["level"] == "error"]
    # ...and is written once per window, the later line counting those left out: nothing is
    # lost from the count, however the requests fell into windows.
    assert len(faults) < probes
    suppressed = sum(e.get("suppressed", 0) for e in faults + summaries)
    assert len(faults) + suppressed == probes + 1


def test_repeats_of_a_forgotten_kind_are_summarised_before_it_goes() -> None:
    clock = Clock()
    summaries: list[dict[str, Any]] = []
    limiter = RepeatLimiter(10.0, clock, report=summaries.append)
    assert let_through(limiter, event="store.commit_failed", error="disk full") is not None
    assert let_through(limiter, event="store.commit_failed", error="disk full") is None
    for i in range(5000):  # within the window: thousands of newer kinds push it out
        let_through(limiter, event="other", instrument=format(i, "b").replace("1", "x"))
    counted = [s for s in summaries if s.get("repeated") == "store.commit_failed"]
    assert counted == [
        {
            "repeated": "store.commit_failed",
            "error": "disk full",
            "event": "log.repeats_suppressed",
            "level": "info",
            "suppressed": 1,
            "suppressed_over_s": 0.0,
        }
    ]


def test_an_instrument_flapping_as_fast_as_it_can_is_still_bounded() -> None:
    from gateway.logs import STATE_CHANGES_PER_WINDOW

    clock = Clock()
    limiter = RepeatLimiter(10.0, clock)
    kinds = ("instrument.down", "instrument.retry", "instrument.connected")
    written = 0
    for i in range(3000):  # 10 windows of 300 lines each
        clock.now += 10.0 / 300
        written += let_through(limiter, event=kinds[i % 3], instrument="a") is not None
    # Each window: the first line of each kind plus at most the budget of state changes.
    assert 0 < written <= 11 * (len(kinds) + STATE_CHANGES_PER_WINDOW), written
    # Below the budget every change is written (down, retry, connected, down...).
    assert written > 10 * STATE_CHANGES_PER_WINDOW, written
