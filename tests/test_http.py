"""The health and metrics endpoint over real sockets, against a real gateway reading the
emulated feed pump; and the strict HTTP/1.1 it speaks to clients that get it wrong."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from conftest import free_port, plan_for, pump_instrument, running, wait_for, write_config
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as PromSample
from test_forward import make_plan, upstream  # a forwarding sink that can be taken down
from test_runtime import Recorder, SinkOptions  # an at-most-once sink (send only)

from firmware_stubs.feed_pump import FeedPumpEmulator, PumpModel
from gateway import (
    GatewayError,
    Registry,
    build_registry,
    hookimpl,
    load_plan,
)
from gateway.config import BackoffConfig, HttpConfig
from gateway.http import MAX_CONNECTIONS, MAX_HEAD_BYTES, serve_http
from gateway.metrics import new_registry
from gateway.runtime import Gateway
from gateway.runtime.backoff import Backoff
from gateway.runtime.forward import ForwarderStats, Quarantined, SinkState
from gateway.store.writer import LATENCY_BUCKETS_S
from gateway.timefmt import now_ns

LOOPBACK = HttpConfig(host="127.0.0.1", port=0)


class Response:
    """A parsed HTTP response (the connection is always closed after it)."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, status, _reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        self.status = int(status)
        self.headers = {
            name.lower(): value.strip()
            for name, value in (line.split(":", 1) for line in header_lines)
        }

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)


async def exchange(port: int, raw: bytes, *, pause_s: float = 0.0) -> Response:
    """Send ``raw`` (then wait ``pause_s``) and read the response until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        if pause_s:
            await asyncio.sleep(pause_s)
        async with asyncio.timeout(10):
            return Response(await reader.read())
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def get(port: int, path: str, method: str = "GET") -> Response:
    return await exchange(port, f"{method} {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())


@contextlib.asynccontextmanager
async def serving(gateway: Gateway, **kwargs: Any) -> AsyncIterator[int]:
    """Run ``serve_http`` for ``gateway`` on a free loopback port; yield the port."""
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def listening(host: str, port: int) -> None:
        assert host == "127.0.0.1"
        bound.set_result(port)

    task = asyncio.create_task(
        serve_http(gateway, LOOPBACK, on_listening=listening, **kwargs), name="test.http"
    )
    either: set[asyncio.Future[Any]] = {task, bound}
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield bound.result()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def metrics(response: Response) -> dict[str, list[PromSample]]:
    """Samples by metric family name, parsed by prometheus_client's own parser."""
    assert response.status == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = text_string_to_metric_families(response.body.decode())
    return {family.name: family.samples for family in families}


def value(families: dict[str, list[PromSample]], name: str, **labels: str) -> float:
    found = [
        s.value for fam in families.values() for s in fam if s.name == name and s.labels == labels
    ]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def unstarted_gateway(tmp_path: Path) -> Gateway:
    return Gateway(plan_for(tmp_path, instruments=[pump_instrument("feed_pump", free_port())]))


@pytest.mark.asyncio
async def test_metrics_and_health_of_a_running_gateway(tmp_path: Path) -> None:
    async with FeedPumpEmulator(model=PumpModel(setpoint_rpm=75.0, actual_rpm=75.0)) as pump:
        plan = plan_for(tmp_path, instruments=[pump_instrument("feed_pump", pump.port)])
        async with running(plan) as (gateway, _), serving(gateway) as port:
            await wait_for(lambda: gateway.stats.committed >= 20, what="20 committed samples")
            first = metrics(await get(port, "/metrics"))
            await wait_for(lambda: gateway.stats.committed >= 60, what="60 committed samples")
            second = metrics(await get(port, "/metrics"))
            health = await get(port, "/health")
            live = await get(port, "/health/live")
            ready = await get(port, "/health/ready")
            head = await get(port, "/metrics?debug=1", method="HEAD")

    assert value(first, "patgw_up") == 1
    (info,) = first["patgw_info"]
    assert info.value == 1 and info.labels["version"]
    one = {"instrument": "feed_pump"}
    for name in (
        "patgw_instrument_samples_read_total",
        "patgw_instrument_samples_committed_total",
        "patgw_store_samples_committed_total",
    ):
        labels = one if "instrument" in name else {}
        assert 0 < value(first, name, **labels) < value(second, name, **labels), name
    assert value(second, "patgw_instrument_samples_read_total", **one) >= value(
        second, "patgw_instrument_samples_committed_total", **one
    )
    assert value(second, "patgw_instrument_connected", **one) == 1
    assert value(second, "patgw_instrument_sessions_total", **one) == 1
    assert value(second, "patgw_instrument_failures_total", **one) == 0
    assert value(second, "patgw_store_samples_dropped_total") == 0
    assert value(second, "patgw_store_commits_failed_total") == 0
    assert value(second, "patgw_store_pending_samples") >= 0
    assert value(second, "patgw_store_size_bytes") > 0

    histogram = second["patgw_store_commit_latency_seconds"]
    buckets = [s for s in histogram if s.name.endswith("_bucket")]
    assert [b.labels["le"] for b in buckets] == [*map(str, LATENCY_BUCKETS_S), "+Inf"]
    counts = [b.value for b in buckets]
    assert counts == sorted(counts), "buckets are cumulative"
    count = value(second, "patgw_store_commit_latency_seconds_count")
    assert counts[-1] == count > 0
    assert value(second, "patgw_store_commit_latency_seconds_sum") > 0

    assert health.status == 200
    assert health.headers["connection"] == "close"
    assert int(health.headers["content-length"]) == len(health.body)
    report = health.json()
    assert report["status"] == "ok" and report["live"] is True and report["ready"] is True
    assert report["uptime_s"] > 0
    assert report["instruments"]["feed_pump"]["state"] == "connected"
    assert report["instruments"]["feed_pump"]["sessions"] == 1
    assert report["instruments"]["feed_pump"]["last_error"] is None
    assert report["store"]["committed"] >= 60
    assert report["store"]["last_error"] is None and report["store"]["size_bytes"] > 0
    assert report["sinks"] == {}
    assert (live.status, live.json()) == (200, {"live": True})
    assert (ready.status, ready.json()) == (200, {"ready": True})
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"]) > 0


class RecorderPlugin:
    @hookimpl
    def pat_gateway_register_sinks(self, registry: Registry) -> None:
        registry.add_sink("recorder", Recorder, SinkOptions)


@pytest.mark.asyncio
async def test_an_unreachable_instrument_degrades_and_sinks_are_reported(tmp_path: Path) -> None:
    dead = pump_instrument("dead_pump", free_port())
    async with FeedPumpEmulator() as pump:
        config = {
            "area": "reactor1",
            "store": {"path": str(tmp_path / "store.sqlite"), "commit_interval_ms": 20},
            "data_dir": str(tmp_path / "data"),
            "instruments": [pump_instrument("feed_pump", pump.port), dead],
            "sinks": [{"id": "rec", "type": "recorder"}],
        }
        registry = build_registry([RecorderPlugin()])
        plan = load_plan(write_config(tmp_path / "gateway.yaml", config), registry)
        async with running(plan) as (gateway, _), serving(gateway) as port:
            down = next(r for r in gateway.runners if r.instrument_id == "dead_pump")
            await wait_for(lambda: down.failures >= 2, what="the dead pump failing twice")
            await wait_for(lambda: gateway.feeders[0].delivered > 0, what="a delivery")
            health = await get(port, "/health")
            scraped = metrics(await get(port, "/metrics"))

    assert health.status == 200  # degraded, but ready: the store works
    report = health.json()
    assert report["status"] == "degraded" and report["ready"] is True
    dead_report = report["instruments"]["dead_pump"]
    assert dead_report["state"] in ("down", "connecting")
    assert dead_report["failures"] >= 2 and dead_report["last_error"]
    assert report["instruments"]["feed_pump"]["state"] == "connected"
    rec = report["sinks"]["rec"]
    assert rec["state"] == "live" and rec["delivered"] > 0 and rec["lost"] == 0

    assert value(scraped, "patgw_instrument_connected", instrument="dead_pump") == 0
    assert value(scraped, "patgw_instrument_failures_total", instrument="dead_pump") >= 2
    assert value(scraped, "patgw_instrument_sessions_total", instrument="dead_pump") == 0
    live = value(scraped, "patgw_sink_samples_delivered_total", sink="rec", lane="live")
    assert live > 0
    assert value(scraped, "patgw_sink_samples_delivered_total", sink="rec", lane="historical") == 0
    assert value(scraped, "patgw_sink_samples_dropped_total", sink="rec") == 0
    assert value(scraped, "patgw_sink_up", sink="rec") == 1


@pytest.mark.asyncio
async def test_a_forwarding_sink_in_metrics_and_health(tmp_path: Path) -> None:
    async with FeedPumpEmulator() as pump:
        plan = plan_for(
            tmp_path,
            instruments=[pump_instrument("feed_pump", pump.port)],
            sinks=[{"id": "file", "type": "jsonl_file", "options": {"path": "out.jsonl"}}],
        )
        async with running(plan) as (gateway, _), serving(gateway) as port:
            (forwarder,) = gateway.forwarders
            await wait_for(lambda: forwarder.stats.delivered >= 20, what="20 forwarded samples")
            health = await get(port, "/health")
            scraped = metrics(await get(port, "/metrics"))

    assert health.status == 200
    report = health.json()
    assert report["status"] == "ok"
    file = report["sinks"]["file"]
    assert file["state"] == "up" and file["delivered"] >= 20 and file["failures"] == 0
    assert file["dropped"] == 0 and file["last_error"] is None
    sink = {"sink": "file"}
    assert value(scraped, "patgw_sink_up", **sink) == 1
    assert value(scraped, "patgw_sink_samples_delivered_total", **sink, lane="live") >= 20
    assert value(scraped, "patgw_sink_samples_delivered_total", **sink, lane="historical") == 0
    assert value(scraped, "patgw_sink_backlog_samples", **sink) >= 0
    assert value(scraped, "patgw_sink_oldest_undelivered_age_seconds", **sink) >= 0
    for name in ("dropped", "resent"):
        assert value(scraped, f"patgw_sink_samples_{name}_total", **sink) == 0
    assert value(scraped, "patgw_sink_failures_total", **sink) == 0
    assert value(scraped, "patgw_sink_reconnects_total", **sink) == 0


@pytest.mark.asyncio
async def test_forwarder_counters_in_metrics_and_health(tmp_path: Path) -> None:
    # Counters a healthy run never shows (down, resent, dropped): a stand-in forwarder on a real
    # (unstarted) gateway; only its sink_id and stats are read.
    gateway = unstarted_gateway(tmp_path)
    stats = ForwarderStats(
        state=SinkState.DOWN,
        delivered=100,
        delivered_historical=30,
        resent=4,
        dropped=2,
        failures=3,
        sessions=2,
        backlog=17,
        oldest_undelivered_ns=now_ns() - 5_000_000_000,
        last_error="connection refused",
        refused=6,
    )
    topic = "topic pat/s/reactor1/pump/flow"
    reason = f"refused by sink 'mqtt' ({topic}): Not authorized"
    stats.quarantined["reactor1/pump/flow"] = Quarantined(
        topic, reason, Backoff(BackoffConfig()), 0.0, refused=6
    )
    gateway.forwarders.append(cast(Any, SimpleNamespace(sink_id="mqtt", stats=stats)))
    text = generate_latest(new_registry(gateway)).decode()
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    sink = {"sink": "mqtt"}
    delivered = "patgw_sink_samples_delivered_total"
    assert value(families, delivered, sink="mqtt", lane="live") == 70
    assert value(families, delivered, sink="mqtt", lane="historical") == 30
    assert value(families, "patgw_sink_backlog_samples", **sink) == 17
    assert 5 <= value(families, "patgw_sink_oldest_undelivered_age_seconds", **sink) < 60
    assert value(families, "patgw_sink_samples_dropped_total", **sink) == 2
    assert value(families, "patgw_sink_samples_refused_total", **sink) == 6
    assert value(families, "patgw_sink_quarantined_signals", **sink) == 1
    assert value(families, "patgw_sink_samples_resent_total", **sink) == 4
    assert value(families, "patgw_sink_failures_total", **sink) == 3
    assert value(families, "patgw_sink_reconnects_total", **sink) == 1
    assert value(families, "patgw_sink_up", **sink) == 0
    stats.state, stats.sessions = SinkState.UP, 0
    stats.backlog, stats.oldest_undelivered_ns = 0, None  # caught up: no age either
    text = generate_latest(new_registry(gateway)).decode()
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    assert value(families, "patgw_sink_up", **sink) == 1
    assert value(families, "patgw_sink_oldest_undelivered_age_seconds", **sink) == 0
    assert value(families, "patgw_sink_reconnects_total", **sink) == 0

    async with serving(gateway) as port:
        health = await get(port, "/health")
    report = health.json()
    assert report["sinks"]["mqtt"] == {
        "state": "up",
        "delivered": 100,
        "backlog": 0,
        "oldest_undelivered_age_s": None,
        "dropped": 2,
        "refused": 6,
        "quarantined": {"reactor1/pump/flow": {"target": topic, "reason": reason, "refused": 6}},
        "failures": 3,
        "last_error": "connection refused",
    }


@pytest.mark.asyncio
async def test_health_before_start_and_after_stop(tmp_path: Path) -> None:
    gateway = unstarted_gateway(tmp_path)
    async with serving(gateway) as port:
        health = await get(port, "/health")
        ready = await get(port, "/health/ready")
        live = await get(port, "/health/live")
        scraped = metrics(await get(port, "/metrics"))
    assert health.status == 503
    report = health.json()
    assert (report["status"], report["ready"], report["live"]) == ("starting", False, True)
    assert report["instruments"] == {} and report["store"]["committed"] == 0
    assert (ready.status, ready.json()) == (503, {"ready": False})
    assert (live.status, live.json()) == (200, {"live": True})
    assert value(scraped, "patgw_up") == 1
    assert value(scraped, "patgw_store_samples_committed_total") == 0
    assert value(scraped, "patgw_store_commit_latency_seconds_count") == 0

    async with FeedPumpEmulator() as pump:
        (tmp_path / "run").mkdir()
        plan = plan_for(tmp_path / "run", instruments=[pump_instrument("feed_pump", pump.port)])
        async with running(plan) as (gateway, _):
            await wait_for(lambda: gateway.stats.committed > 0, what="a commit")
    async with serving(gateway) as port:
        health = await get(port, "/health")
    assert health.status == 503
    assert health.json()["status"] == "stopping"


def request(head: str) -> bytes:
    return head.replace("\n", "\r\n").encode()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (request("POST /metrics HTTP/1.1\nHost: gw\nContent-Length: 0\n\n"), 405),
        (request("DELETE /nowhere HTTP/1.1\nHost: gw\n\n"), 405),
        (request("GET /nowhere HTTP/1.1\nHost: gw\n\n"), 404),
        (request("GET /metrics/ HTTP/1.1\nHost: gw\n\n"), 404),
        (request("GET /metrics HTTP/1.1\n\n"), 400),  # HTTP/1.1 without Host
        (request("GET /metrics HTTP/1.1\nHost: a\nHost: b\n\n"), 400),
        (request("GET /metrics HTTP/1.0\n\n"), 200),
        (request("GET  /metrics HTTP/1.1\nHost: gw\n\n"), 400),
        (request("GET /metrics\nHost: gw\n\n"), 400),
        (request("GET /metrics HTTP/2.0\nHost: gw\n\n"), 505),
        (request("GET http://gw/metrics HTTP/1.1\nHost: gw\n\n"), 400),
        (request("GET /metrics HTTP/1.1\nHost: gw\nBad Header: x\n\n"), 400),
        (request("GET /metrics HTTP/1.1\nHost: gw\nX-A: 1\n folded\n\n"), 400),
        (b"GET /metrics HTTP/1.1\nHost: gw\n\n", 400),  # bare LF
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS to plain HTTP
        (request("GET /health/live HTTP/1.1\nHost: gw\n\n"), 200),
        (request("\nGET /health/live HTTP/1.1\nHost: gw\n\n"), 200),  # a leading empty line
        (request(f"GET /metrics HTTP/1.1\nHost: gw\nX-Big: {'x' * MAX_HEAD_BYTES}\n\n"), 431),
        (request("GET /metrics HTTP/1.1\nHost: gw\n" + "X-Many: yes\n" * 800 + "\n"), 431),
        (request(f"GET /{'x' * MAX_HEAD_BYTES} HTTP/1.1\nHost: gw\n\n"), 414),
    ],
)
async def test_strict_http(tmp_path: Path, raw: bytes, status: int) -> None:
    async with serving(unstarted_gateway(tmp_path)) as port:
        response = await exchange(port, raw)
    assert response.status == status, response.body
    assert response.headers["connection"] == "close"
    assert int(response.headers["content-length"]) == len(response.body)
    if status == 405:
        assert response.headers["allow"] == "GET, HEAD"


@pytest.mark.asyncio
async def test_a_slow_client_gets_408_and_others_are_served_meanwhile(tmp_path: Path) -> None:
    async with serving(unstarted_gateway(tmp_path), request_timeout_s=0.3) as port:
        slow = asyncio.create_task(
            exchange(port, b"GET /metrics HTTP/1.1\r\nHost: g", pause_s=0.5), name="test.slow"
        )
        served = await get(port, "/health/live")
        slow_response = await slow
    assert served.status == 200
    assert slow_response.status == 408
    assert slow_response.headers["connection"] == "close"


@pytest.mark.asyncio
async def test_cancelling_closes_open_connections(tmp_path: Path) -> None:
    async with serving(unstarted_gateway(tmp_path), request_timeout_s=30) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()


@pytest.mark.asyncio
async def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    gateway = unstarted_gateway(tmp_path)
    async with serving(gateway) as port:
        with pytest.raises(
            GatewayError, match=rf"127\.0\.0\.1:{port}: .*[Aa]ddress already in use"
        ):
            await serve_http(gateway, HttpConfig(host="127.0.0.1", port=port))


class Slowloris:
    """``count`` half-open connections from ``source``: each sends a request line and, now and
    then, one more header line, never the end of the head; one the server closes is opened
    again after ``reopen_s`` (as the slowloris tool re-creates the sockets it lost)."""

    def __init__(self, port: int, source: str, count: int, reopen_s: float = 0.05) -> None:
        self._port, self._source, self._count, self._reopen_s = port, source, count, reopen_s
        self.opened = 0  # connections the server's kernel accepted
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Slowloris:
        self._tasks = [
            asyncio.create_task(self._hold(), name=f"test.slowloris{i}") for i in range(self._count)
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _hold(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self._port, local_addr=(self._source, 0)
                )
            except OSError:
                await asyncio.sleep(self._reopen_s)
                continue
            self.opened += 1
            try:
                writer.write(b"GET /health/live HTTP/1.1\r\nHost: gw\r\n")
                while True:
                    try:
                        async with asyncio.timeout(0.5):
                            if not await reader.read(4096):
                                break  # closed by the server
                    except TimeoutError:
                        writer.write(b"X-Trickle: 1\r\n")
            except OSError:
                pass  # reset by the server
            finally:
                writer.transport.abort()
            await asyncio.sleep(self._reopen_s)


def probe(port: int) -> int | str:
    """One probe of /health/live: its status, or its error (reset, closed unanswered...)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: gw\r\n\r\n")
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        response = Response(raw)
    except Exception as exc:
        return repr(exc)
    return response.status if response.json() == {"live": True} else "body"


async def probes(port: int, count: int, every_s: float = 0.02) -> list[int | str]:
    """``count`` probes of /health/live, one every ``every_s``, each from a thread (like a
    supervisor's, from another process, the request follows the connection at once)."""
    outcomes: list[int | str] = []
    for _ in range(count):
        await asyncio.sleep(every_s)
        outcomes.append(await asyncio.to_thread(probe, port))
    return outcomes


@pytest.mark.asyncio
@pytest.mark.parametrize("source", ["127.0.0.2", "127.0.0.1"])
async def test_probes_are_answered_during_a_slowloris_flood(tmp_path: Path, source: str) -> None:
    # 127.0.0.2: the attacker on another address than the probe; 127.0.0.1: on the same one,
    # as an attacker on the gateway's machine, or behind the same NAT, would be.
    gateway = unstarted_gateway(tmp_path)
    async with serving(gateway, request_timeout_s=30) as port:
        async with Slowloris(port, source, count=45) as attack:
            await wait_for(lambda: attack.opened >= 45, what="45 attacking connections")
            opened = attack.opened
            outcomes = await probes(port, 30)
            # More connections than slots: each new one closes another, re-opened in turn.
            assert attack.opened - opened >= 45 - MAX_CONNECTIONS, "the flood went on"
        scraped = metrics(await get(port, "/metrics"))
    assert outcomes == [200] * 30
    assert value(scraped, "patgw_http_connections_evicted_total", phase="head") >= 45 - 32
    assert value(scraped, "patgw_http_connections_evicted_total", phase="answer") == 0


@pytest.mark.asyncio
async def test_probes_are_answered_while_their_own_address_churns_connections(
    tmp_path: Path,
) -> None:
    # Three times as many half-open connections as slots, each re-opened the moment it is
    # closed: hundreds of new connections a second from the probes' own address, as many
    # evictions — a probe must not be evicted in the moment before its request is read.
    gateway = unstarted_gateway(tmp_path)
    async with (
        serving(gateway, request_timeout_s=30) as port,
        Slowloris(port, "127.0.0.1", count=100, reopen_s=0) as attack,
    ):
        await wait_for(lambda: attack.opened >= 300, what="300 attacking connections")
        opened = attack.opened
        outcomes = await probes(port, 30)
        assert attack.opened - opened >= 100 - MAX_CONNECTIONS, "the flood went on"
    assert outcomes == [200] * 30


class HealthPoller:
    """Asks /health for one sink's backlog and oldest undelivered age, again and again."""

    def __init__(self, port: int, sink: str) -> None:
        self._port, self._sink = port, sink
        self.seen: list[tuple[int, float | None]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> HealthPoller:
        self._task = asyncio.create_task(self._poll(), name="test.poller")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _poll(self) -> None:
        while True:
            report = (await get(self._port, "/health")).json()["sinks"][self._sink]
            self.seen.append((report["backlog"], report["oldest_undelivered_age_s"]))
            await asyncio.sleep(0.005)

    def polls_after(self, count: int) -> Callable[[], bool]:
        start = len(self.seen)
        return lambda: len(self.seen) >= start + count


@pytest.mark.asyncio
async def test_backlog_and_oldest_age_agree_while_a_sink_is_down_and_catching_up(
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    plan = make_plan(tmp_path, batch_max_samples=10)
    sink = upstream(plan)
    async with running(plan) as (gateway, _), serving(gateway) as port:
        forwarder = gateway.forwarders[0]
        async with HealthPoller(port, "up") as poller:
            await wait_for(lambda: forwarder.stats.delivered >= 50, what="live delivery")
            await wait_for(poller.polls_after(20), what="polls while up")
            sink.up = False
            await wait_for(lambda: forwarder.stats.backlog >= 300, what="a backlog")
            outage = len(poller.seen)
            sink.up = True
            up_to = gateway.stats.committed
            await wait_for(lambda: forwarder.cursor >= up_to, what="the backlog drains")
            await wait_for(poller.polls_after(20), what="polls after catching up")
    seen = poller.seen
    contradictions = [(b, age) for b, age in seen if (b == 0) != (age is None)]
    assert not contradictions, f"{len(contradictions)} of {len(seen)} polls: {contradictions[:5]}"
    assert max(b for b, _ in seen[:outage]) >= 1, "polls during the outage saw its backlog"
    # No sample is older than this test.
    elapsed_s = time.monotonic() - began
    assert all(0 <= age <= elapsed_s for _, age in seen if age is not None)
