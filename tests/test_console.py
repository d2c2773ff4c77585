"""The web console over real sockets, against a running gateway reading the emulated feed pump:
logins (refused, throttled, audited), sessions (cookie flags, idle timeout), CSRF, a viewer's
write, oversized requests, static files (no traversal) and the live event stream, including a
browser that stops reading (dropped; ingestion goes on)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import socket
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import free_port, plan_for, pump_instrument, running, wait_for
from pydantic import BaseModel, ConfigDict, ValidationError
from test_controlled_writes import HASHES, PASSWORDS, TARGET, Bench, _self_signed
from test_http import Response, exchange

from gateway import (
    Channel,
    InstrumentIO,
    PluginContext,
    Registry,
    build_registry,
    hookimpl,
    load_plan,
)
from gateway.config import HttpConfig
from gateway.console.events import SignalEvents
from gateway.http import MAX_BODY_BYTES
from gateway.loader import Plan
from gateway.model import Quality, Signal
from gateway.runtime.outputs import SignalOutput
from gateway.runtime.supervisor import Gateway
from gateway.units import IDENTITY

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


def _config(http_port: int, pump_port: int, idle_timeout_s: float) -> dict[str, Any]:
    return {
        "emulators": [
            {
                "id": "pump_emulator",
                "type": "feed_pump",
                "options": {"port": pump_port, "setpoint_rpm": 2},
            }
        ],
        "instruments": [pump_instrument("pump", pump_port)],
        "http": {
            "host": "127.0.0.1",
            "port": http_port,
            "console_idle_timeout_s": idle_timeout_s,
        },
        "security": {
            "users": [
                {"name": name, "password_hash": HASHES[name], "roles": [name]} for name in PASSWORDS
            ],
            "lockout": {"max_failures": 3, "duration_s": 600},
        },
        "writes": [{"target": TARGET, "min": 0, "max": 10, "max_step": 5, "role": "operator"}],
    }


class Console(Bench):
    """A running gateway with its console (and the pump's setpoint, the audit records), and
    a browser's worth of HTTP."""

    def __init__(self, gateway: Gateway, plan: Plan, port: int) -> None:
        super().__init__(gateway, plan, port)
        self.port = port

    async def request(
        self,
        method: str,
        path: str,
        *,
        cookie: str = "",
        form: dict[str, str] | None = None,
        headers: Sequence[str] = (),
    ) -> Response:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", *headers]
        body = b""
        if cookie:
            lines.append(f"Cookie: patgw_session={cookie}")
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            lines.append("Content-Type: application/x-www-form-urlencoded")
        if method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        return await exchange(self.port, raw)

    async def login(self, user: str, password: str | None = None) -> tuple[str, str]:
        """Log ``user`` in; returns the session cookie and the session's CSRF token."""
        secret = PASSWORDS[user] if password is None else password
        answer = await self.request("POST", "/login", form={"user": user, "password": secret})
        assert answer.status == 303, answer.body
        cookie = _session_cookie(answer)
        page = await self.request("GET", "/", cookie=cookie)
        assert page.status == 200, page.body
        match = re.search(rb'name="csrf" value="([^"]+)"', page.body)
        assert match is not None
        return cookie, match.group(1).decode()


def _session_cookie(answer: Response) -> str:
    value = answer.headers["set-cookie"]
    name, _, rest = value.partition("=")
    assert name == "patgw_session"
    return rest.split(";")[0]


@pytest_asyncio.fixture
async def console(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Console]:
    idle_timeout_s = getattr(request, "param", 900.0)
    port = free_port()
    plan = plan_for(tmp_path, **_config(port, free_port(), idle_timeout_s))
    async with running(plan) as (gateway, _):
        runner = gateway.runners[0]
        await wait_for(lambda: runner.state.value == "connected", 10, what="the pump connected")
        yield Console(gateway, plan, port)


async def _audited(console: Console, action: str, count: int = 1) -> list[dict[str, Any]]:
    """The audit records of ``action`` once there are ``count`` (they are written behind)."""
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = [r for r in console.records() if r["action"] == action]
        return len(found) >= count

    for _ in range(500):
        if enough():
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} {action!r} records: {found}")


@pytest.mark.asyncio
async def test_login_pages_and_logout(console: Console) -> None:
    answer = await console.request(
        "POST", "/login", form={"user": "operator", "password": PASSWORDS["operator"]}
    )
    assert answer.status == 303 and answer.headers["location"] == "/"
    flags = {f.strip() for f in answer.headers["set-cookie"].split(";")[1:]}
    assert flags == {"HttpOnly", "SameSite=Strict", "Path=/"}  # no Secure without TLS
    token = _session_cookie(answer)
    assert len(token) >= 43  # 32 random bytes, URL-safe base64

    overview = await console.request("GET", "/", cookie=token)
    assert overview.status == 200
    assert overview.headers["content-type"] == "text/html; charset=utf-8"
    for name, value in SECURITY_HEADERS.items():
        assert overview.headers[name] == value
    assert "script-src 'self'" in overview.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in overview.headers["content-security-policy"]
    assert overview.headers["cache-control"] == "no-store"
    # The device column: the emulated pump's identity (Read Device Identification).
    device = b"PAT Gateway Emulated peristaltic feed pump S/N FP-EMU-0001 fw 1.4"
    assert b"<td>pump</td><td>" + device + b"</td><td>connected</td>" in overview.body
    assert b"<script>" not in overview.body  # no inline script: the CSP forbids it

    signals = await console.request("GET", "/signals?instrument=pump", cookie=token)
    assert signals.status == 200
    speed = re.search(
        rb'<tr data-signal="reactor1/pump/speed">.*?</tr>', signals.body, flags=re.DOTALL
    )
    assert speed is not None, signals.body
    assert b"rpm <code>{rev}/min</code>" in speed.group(0)  # the unit for humans, and UCUM's
    assert b"good" in speed.group(0)

    cookie, csrf = await console.login("operator")
    logout = await console.request("POST", "/logout", cookie=cookie, form={"csrf": csrf})
    assert logout.status == 303 and logout.headers["location"] == "/login"
    assert "Max-Age=0" in logout.headers["set-cookie"]
    after = await console.request("GET", "/", cookie=cookie)
    assert after.status == 303 and after.headers["location"] == "/login"
    assert (await console.request("GET", "/", cookie=token)).status == 200  # the other session

    logins = await _audited(console, "login", 2)
    assert {(r["user"], r["details"]["interface"]) for r in logins} == {("operator", "console")}
    (logout_record,) = await _audited(console, "logout")
    assert logout_record["user"] == "operator" and logout_record["target"] == "console"


@pytest.mark.asyncio
async def test_a_page_without_a_session_redirects_to_the_login(console: Console) -> None:
    for path in ("/", "/signals", "/writes"):
        answer = await console.request("GET", path)
        assert (answer.status, answer.headers["location"]) == (303, "/login")
        forged = await console.request("GET", path, cookie="not-a-session")
        assert (forged.status, forged.headers["location"]) == (303, "/login")
    assert (await console.request("GET", "/events")).status == 401
    login = await console.request("GET", "/login")
    assert login.status == 200 and b'action="/login"' in login.body


@pytest.mark.asyncio
async def test_wrong_passwords_are_refused_audited_and_throttled(console: Console) -> None:
    for _ in range(3):
        answer = await console.request(
            "POST", "/login", form={"user": "operator", "password": "guess"}
        )
        assert answer.status == 401
        assert "set-cookie" not in answer.headers
        assert b"unknown user or wrong password" in answer.body
    # Locked out: even the right password is refused now.
    answer = await console.request(
        "POST", "/login", form={"user": "operator", "password": PASSWORDS["operator"]}
    )
    assert answer.status == 429 and "set-cookie" not in answer.headers
    assert b"locked out" in answer.body
    failed = await _audited(console, "login.failed", 4)
    assert [r["details"]["why"] for r in failed] == ["wrong password"] * 3 + ["locked out"]
    assert {r["details"]["interface"] for r in failed} == {"console"}
    (locked,) = await _audited(console, "user.locked_out")
    assert locked["target"] == "operator"
    # Another user is not affected.
    await console.login("viewer")


@pytest.mark.parametrize("console", [0.5], indirect=True)
@pytest.mark.asyncio
async def test_an_idle_session_expires_and_redirects_to_the_login(console: Console) -> None:
    cookie, _csrf = await console.login("viewer")
    async with asyncio.timeout(10):
        while True:  # each refused look does not count as use: it expires on its own
            answer = await console.request("GET", "/signals", cookie=cookie)
            if answer.status != 200:
                break
            await asyncio.sleep(0.6)  # longer than the idle timeout: the next look is late
    assert (answer.status, answer.headers["location"]) == (303, "/login")
    (expired,) = await _audited(console, "logout")
    assert (expired["user"], expired["reason"]) == ("viewer", "idle timeout")
    assert (await console.request("GET", "/", cookie=cookie)).status == 303


@pytest.mark.asyncio
async def test_a_post_without_the_csrf_token_changes_nothing(console: Console) -> None:
    cookie, csrf = await console.login("operator")
    write = {"target": TARGET, "value": "4", "reason": "raise the feed"}
    refusals = [
        await console.request("POST", "/write", cookie=cookie, form=write),
        await console.request("POST", "/write", cookie=cookie, form={**write, "csrf": "x" + csrf}),
        await console.request(
            "POST", "/write", cookie=cookie, form=write, headers=["X-CSRF-Token: nope"]
        ),
        await console.request(
            "POST",
            "/write",
            cookie=cookie,
            form={**write, "csrf": csrf},
            headers=["Origin: http://evil.example"],
        ),
        await console.request("POST", "/logout", cookie=cookie, form={}),
    ]
    assert [r.status for r in refusals] == [403] * 5
    assert console.pump_setpoint != 4
    assert not [r for r in console.records() if r["action"].startswith("write.")]
    assert (await console.request("GET", "/", cookie=cookie)).status == 200  # not logged out

    # The same write with the token (as a form field, then as a header) goes through.
    done = await console.request("POST", "/write", cookie=cookie, form={**write, "csrf": csrf})
    assert done.status == 200, done.body
    await wait_for(lambda: console.pump_setpoint == 4, 5, what="the pump at 4 rpm")
    done = await console.request(
        "POST",
        "/write",
        cookie=cookie,
        form={**write, "value": "5"},
        headers=[f"X-CSRF-Token: {csrf}", f"Origin: http://127.0.0.1:{console.port}"],
    )
    assert done.status == 200, done.body
    executed = await _audited(console, "write.executed", 2)
    assert {(r["user"], r["details"]["interface"]) for r in executed} == {("operator", "console")}


@pytest.mark.asyncio
async def test_a_viewer_may_not_write(console: Console) -> None:
    cookie, csrf = await console.login("viewer")
    assert (await console.request("GET", "/writes", cookie=cookie)).status == 403
    before = console.pump_setpoint
    answer = await console.request(
        "POST",
        "/write",
        cookie=cookie,
        form={"target": TARGET, "value": "4", "reason": "r", "csrf": csrf},
    )
    assert answer.status == 403
    assert b"needs the role" in answer.body
    assert console.pump_setpoint == before
    (refused,) = await _audited(console, "write.refused")
    assert (refused["user"], refused["details"]["rule"]) == ("viewer", "role")


@pytest.mark.asyncio
async def test_only_who_configures_sees_the_configuration(console: Console) -> None:
    engineer, _ = await console.login("engineer")
    page = await console.request("GET", "/configuration", cookie=engineer)
    assert page.status == 200
    assert b"<td>pump</td><td>modbus</td>" in page.body
    assert f"<td>{TARGET}</td><td>0.0</td><td>10.0</td>".encode() in page.body
    assert b"scrypt" not in page.body and b'href="/configuration"' in page.body
    for user in ("operator", "viewer"):
        cookie, _ = await console.login(user)
        assert (await console.request("GET", "/configuration", cookie=cookie)).status == 403
        overview = await console.request("GET", "/", cookie=cookie)
        assert b'href="/configuration"' not in overview.body


@pytest.mark.asyncio
async def test_the_audit_page_shows_the_trail_verified_to_auditors_only(console: Console) -> None:
    """Engineers and admins (the ``audit`` permission) see the newest records first, filtered
    by user and action, with the chain's verification; operators and viewers get 403."""
    await console.login("operator")
    await _audited(console, "login", 1)
    engineer, _ = await console.login("engineer")
    page = await console.request("GET", "/audit", cookie=engineer)
    assert page.status == 200, page.body
    assert b'id="verify">Verified: ' in page.body and b'href="/audit"' in page.body
    rows = re.findall(
        rb"<tr><td>(\d+)</td><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td>", page.body
    )
    seqs = [int(seq) for seq, _, _ in rows]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) >= 2, rows
    assert (b"operator", b"login") in {(user, action) for _, user, action in rows}
    only = await console.request("GET", "/audit?user=operator&action=login*", cookie=engineer)
    found = re.findall(
        rb"<tr><td>\d+</td><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td>", only.body
    )
    assert found and all(
        user == b"operator" and action.startswith(b"login") for user, action in found
    )
    # A forged query with more fields than the form: refused, not an internal error.
    forged = "&".join(f"f{i}=x" for i in range(20))
    assert (await console.request("GET", f"/audit?{forged}", cookie=engineer)).status == 400
    for user in ("operator", "viewer"):
        cookie, _ = await console.login(user)
        assert (await console.request("GET", "/audit", cookie=cookie)).status == 403
        overview = await console.request("GET", "/", cookie=cookie)
        assert b'href="/audit"' not in overview.body


@pytest.mark.asyncio
async def test_an_oversized_request_is_refused(console: Console) -> None:
    cookie, csrf = await console.login("operator")
    head = (
        f"POST /write HTTP/1.1\r\nHost: gw\r\nCookie: patgw_session={cookie}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    )
    answer = await exchange(console.port, head.encode() + b"csrf=" + csrf.encode() + b"&x=")
    assert answer.status == 413
    assert not [r for r in console.records() if r["action"].startswith("write.")]


@pytest.mark.parametrize(
    "path",
    [
        "/static/nothing.js",
        "/static/../gateway/config.py",
        "/static/../../pyproject.toml",
        "/static/%2e%2e/handler.py",
        "/static//etc/passwd",
        "/static/",
        "/static/uplot",
    ],
)
@pytest.mark.asyncio
async def test_no_static_path_reaches_beyond_the_manifest(console: Console, path: str) -> None:
    answer = await console.request("GET", path)
    assert (answer.status, answer.body) == (404, b"404 Not Found: no such file\n")


@pytest.mark.asyncio
async def test_static_files_are_served_with_their_types(console: Console) -> None:
    script = await console.request("GET", "/static/console.js")
    assert script.status == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert b"EventSource" in script.body
    uplot = await console.request("GET", "/static/uplot/uPlot.iife.min.js")
    assert uplot.status == 200 and b"uPlot" in uplot.body
    licence = await console.request("GET", "/static/uplot/LICENSE")
    assert licence.status == 200 and b"MIT" in licence.body
    head = await console.request("HEAD", "/static/console.css")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"]) > 0


async def _open_events(
    port: int, cookie: str, *, receive_buffer: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        f"GET /events HTTP/1.1\r\nHost: gw\r\nCookie: patgw_session={cookie}\r\n\r\n".encode()
    )
    await writer.drain()
    return reader, writer


async def _next_event(reader: asyncio.StreamReader) -> dict[str, Any]:
    while True:
        block = (await reader.readuntil(b"\n\n")).decode()
        if block.startswith("event: signal\n"):
            data: dict[str, Any] = json.loads(block.split("data: ", 1)[1])
            return data


@pytest.mark.asyncio
async def test_events_carry_the_signals_values(console: Console) -> None:
    cookie, _csrf = await console.login("viewer")
    reader, writer = await _open_events(console.port, cookie)
    try:
        async with asyncio.timeout(10):
            head = Response(await reader.readuntil(b"\r\n\r\n"))
            assert head.status == 200
            assert head.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert head.headers["x-frame-options"] == "DENY"
            seen: dict[str, dict[str, Any]] = {}
            while "reactor1/pump/speed" not in seen or len(seen) < 2:
                event = await _next_event(reader)
                seen.setdefault(event["id"], event)
        speed = seen["reactor1/pump/speed"]
        assert isinstance(speed["value"], float) and speed["quality"] == "good"
        assert isinstance(speed["seq"], int) and speed["age_s"] >= 0
    finally:
        writer.close()


class _ManyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    signals: int = 200


class _Many:
    """Every signal changes every 20 ms: each flush of an event stream has all of them."""

    def __init__(self, options: _ManyOptions, context: PluginContext) -> None:
        self.count = options.signals

    def channels(self) -> Sequence[Channel]:
        return [Channel(f"s{i}", "mL/min") for i in range(self.count)]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        outputs = [io.output(f"s{i}") for i in range(self.count)]
        value = 0.0
        while True:
            for output in outputs:
                output.publish(value)
            value += 1.0
            await asyncio.sleep(0.02)


class _ManyPlugin:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("many", _Many, _ManyOptions)


async def _open_connections(port: int) -> float:
    metrics = await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n")
    line = next(
        raw for raw in metrics.body.decode().splitlines() if raw.startswith("patgw_http_conn")
    )
    assert line.startswith("patgw_http_connections_open ")
    return float(line.split()[1])


async def _until_closed(reader: asyncio.StreamReader) -> str:
    """Read what is left until the server's end of the connection is gone."""
    try:
        async with asyncio.timeout(10):
            while await reader.read(65536):
                pass
    except ConnectionError:
        return "reset"
    return "closed"


@pytest.mark.asyncio
async def test_a_browser_that_stops_reading_is_dropped_and_ingestion_goes_on(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = {
        "area": "reactor1",
        "store": {"path": str(tmp_path / "store.sqlite"), "commit_interval_ms": 50},
        "data_dir": str(tmp_path / "data"),
        "instruments": [{"id": "many", "driver": "many"}],
        "http": {"host": "127.0.0.1", "port": port},
        "security": {
            "users": [{"name": "viewer", "password_hash": HASHES["viewer"], "roles": ["viewer"]}]
        },
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    plan = load_plan(path, build_registry([_ManyPlugin()]))
    async with running(plan) as (gateway, _):
        bench = Console(gateway, plan, port)
        cookie, _csrf = await bench.login("viewer")
        reader, reading = await _open_events(port, cookie)
        stalled_reader, stalled = await _open_events(port, cookie, receive_buffer=4096)
        try:
            async with asyncio.timeout(10):
                await _next_event(reader)
            async with asyncio.timeout(5):  # the login's connections closed
                while await _open_connections(port) != 3:  # two streams and this scrape
                    await _next_event(reader)
            # The stalled client never reads: its stream is cut off within the request
            # timeout of the buffers filling up, while the reading one goes on.
            async with asyncio.timeout(30):
                while await _open_connections(port) != 2:
                    await _next_event(reader)
            store = gateway.writer
            assert store is not None
            committed = store.stats.committed
            async with asyncio.timeout(10):
                for _ in range(50):
                    await _next_event(reader)
            await wait_for(lambda: store.stats.committed > committed + 4000, 10)
            assert store.stats.dropped == 0
            assert await _until_closed(stalled_reader) in ("reset", "closed")
        finally:
            for writer in (reading, stalled):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


def test_the_console_beyond_loopback_needs_tls_or_stays_off() -> None:
    assert HttpConfig(host="127.0.0.1").serves_console
    assert not HttpConfig(host="127.0.0.1", console=False).serves_console
    # Beyond loopback without TLS a password would cross the network in clear: off by default,
    # and asking for it is an error naming why.
    assert not HttpConfig(host="0.0.0.0").serves_console
    with pytest.raises(
        ValidationError, match=re.escape("the web console takes passwords: on '0.0.0.0'")
    ):
        HttpConfig(host="0.0.0.0", console=True)
    with pytest.raises(ValidationError, match="console_idle_timeout_s"):
        HttpConfig(console_idle_timeout_s=0)


@pytest.mark.asyncio
async def test_without_the_console_its_pages_are_not_served(tmp_path: Path) -> None:
    port = free_port()
    config = _config(port, free_port(), 900.0)
    config["http"]["console"] = False
    plan = plan_for(tmp_path, **config)
    async with running(plan) as (gateway, _):
        bench = Console(gateway, plan, port)
        for path in ("/", "/login", "/static/console.js"):
            assert (await bench.request("GET", path)).status == 404
        login = await bench.request("POST", "/login", form={"user": "viewer", "password": "x"})
        assert login.status == 405
        assert (await bench.request("GET", "/health/live")).status == 200


@pytest.mark.asyncio
async def test_events_are_coalesced_per_signal_latest_wins() -> None:
    rows: list[Any] = []
    fast = SignalOutput(Signal("r/i/fast", "Cel"), IDENTITY, 1, 0, rows.append)
    quiet = SignalOutput(Signal("r/i/quiet", "1"), IDENTITY, 2, 0, rows.append)
    for value in range(5):
        fast.publish(float(value))
    quiet.publish(7.0, quality=Quality.UNCERTAIN, reason="drift")
    flushes = iter([True, True, False])

    def alive() -> bool:
        more = next(flushes)
        if more:  # between two flushes: three more samples of one signal, none of the other
            for value in (10.0, 11.0, 12.0):
                fast.publish(value)
        return more

    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    shared: dict[str, tuple[int, bytes]] = {}
    await SignalEvents(lambda: [fast, quiet], alive, encoded=shared, flush_s=0).run(send)
    events = [
        json.loads(block.split("data: ", 1)[1])
        for chunk in sent
        for block in chunk.decode().split("\n\n")
        if block.startswith("event: signal")
    ]
    assert [(e["id"], e["value"], e["seq"]) for e in events] == [
        ("r/i/fast", 12.0, 7),  # 8 samples before the first flush: only the last is sent
        ("r/i/quiet", 7.0, 0),
        ("r/i/fast", 12.0, 10),  # 3 more before the second; quiet has nothing new
    ]
    assert (events[1]["quality"], events[1]["reason"]) == ("uncertain", "drift")
    assert len(rows) == 12  # every sample still went to the store
    assert shared["r/i/fast"][0] == 10  # encoded once, for every stream of the console


def _https(
    port: int, cafile: Path, method: str, path: str, body: str = "", headers: Any = None
) -> tuple[int, dict[str, str], bytes]:
    context = ssl.create_default_context(cafile=str(cafile))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        connection.request(method, path, body.encode() or None, headers or {})
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


@pytest.mark.asyncio
async def test_under_tls_the_cookie_is_secure_and_the_origin_is_https(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    config = _config(port, free_port(), 900.0)
    config["http"]["tls"] = {"certificate": str(cert), "private_key": str(key)}
    async with running(plan_for(tmp_path, **config)):
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        login = urllib.parse.urlencode({"user": "viewer", "password": PASSWORDS["viewer"]})
        status, headers, _ = await asyncio.to_thread(
            _https, port, cert, "POST", "/login", login, form
        )
        assert status == 303
        cookie = headers["set-cookie"].split(";")[0]
        flags = {f.strip() for f in headers["set-cookie"].split(";")[1:]}
        assert flags == {"HttpOnly", "SameSite=Strict", "Path=/", "Secure"}
        status, _, page = await asyncio.to_thread(
            _https, port, cert, "GET", "/", "", {"Cookie": cookie}
        )
        assert status == 200
        match = re.search(rb'name="csrf" value="([^"]+)"', page)
        assert match is not None
        logout = f"csrf={match.group(1).decode()}"
        for origin, expected in (
            (f"http://127.0.0.1:{port}", 403),
            (f"https://127.0.0.1:{port}", 303),
        ):
            status, _, _ = await asyncio.to_thread(
                _https,
                port,
                cert,
                "POST",
                "/logout",
                logout,
                {**form, "Cookie": cookie, "Origin": origin},
            )
            assert status == expected, origin
