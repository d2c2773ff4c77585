"""The controlled write path end to end: the local API (and `patgw write`) against a running
gateway whose Modbus feed pump is the emulator, over loopback TCP. Each rule that refuses a
write is checked to change nothing on the device and to leave its audit record."""

from __future__ import annotations

import asyncio
import base64
import http.client
import ipaddress
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import (
    certificate_builder,
    free_port,
    patgw,
    plan_for,
    pump_instrument,
    running,
    wait_for,
    write_config,
    write_pem_key,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway import hash_password
from gateway.audit import read_records
from gateway.loader import Plan
from gateway.runtime.supervisor import Gateway

PASSWORDS = {name: f"{name}-password" for name in ("viewer", "operator", "engineer", "admin")}
HASHES = {name: hash_password(pw) for name, pw in PASSWORDS.items()}
TARGET = "reactor1/pump/speed_setpoint"


def _users() -> list[dict[str, Any]]:
    return [{"name": name, "password_hash": HASHES[name], "roles": [name]} for name in PASSWORDS]


def _config(tmp_path: Path, pump_port: int, http_port: int, **target: Any) -> dict[str, Any]:
    pump = {"port": pump_port, "setpoint_rpm": 2, **target.pop("pump", {})}
    write = {"target": TARGET, "min": 0, "max": 10, "max_step": 5, "role": "operator"}
    write.update(target)
    return {
        "emulators": [{"id": "pump_emulator", "type": "feed_pump", "options": pump}],
        "instruments": [pump_instrument("pump", pump_port)],
        "http": {"host": "127.0.0.1", "port": http_port, "api": True},
        "security": {"users": _users(), "lockout": {"max_failures": 3, "duration_s": 600}},
        "writes": [write],
    }


class Bench:
    def __init__(self, gateway: Gateway, plan: Plan, http_port: int) -> None:
        self.gateway = gateway
        self.plan = plan
        self.http_port = http_port

    @property
    def pump_setpoint(self) -> float:
        return float(self.plan.emulators[0].instance.emulator.model.setpoint_rpm)

    async def write(
        self, user: str, body: dict[str, Any], password: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        secret = PASSWORDS.get(user, "x") if password is None else password
        return await asyncio.to_thread(
            api_call, self.http_port, "POST", "/api/v1/writes", user, secret, body
        )

    def records(self) -> list[dict[str, Any]]:
        return audit_records(self.plan)

    def last_write_record(self) -> dict[str, Any]:
        # Logins are queued and committed beside the write's own records: not necessarily
        # before them.
        return [r for r in self.records() if r["action"].startswith("write.")][-1]


def api_call(
    port: int, method: str, route: str, user: str, password: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, route, data, {"Authorization": f"Basic {token}"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def audit_path(plan: Plan) -> Path:
    config = plan.config
    return config.audit.resolved(config.store.path, config.data_dir).path


def audit_records(plan: Plan) -> list[dict[str, Any]]:
    return [record.fields() for record in read_records(audit_path(plan))]


@pytest_asyncio.fixture
async def bench(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Bench]:
    overrides = getattr(request, "param", {})
    http_port = free_port()
    plan = plan_for(tmp_path, **_config(tmp_path, free_port(), http_port, **overrides))
    async with running(plan) as (gateway, _):
        runner = gateway.runners[0]
        await wait_for(lambda: runner.state.value == "connected", 10, what="the pump connected")
        yield Bench(gateway, plan, http_port)


@pytest.mark.asyncio
async def test_an_operator_write_moves_the_pump_reads_back_and_is_audited(bench: Bench) -> None:
    status, outcome = await bench.write(
        "operator", {"target": TARGET, "value": 5, "reason": "raise the feed"}
    )
    assert status == 200, outcome
    assert outcome["outcome"] == "done" and outcome["old"] == 2 and outcome["read_back"] == 5
    assert bench.pump_setpoint == 5
    records = [r for r in bench.records() if r["action"].startswith("write.")]
    assert [(r["action"], r["outcome"]) for r in records] == [
        ("write.requested", "accepted"),
        ("write.executed", "ok"),
        ("write.read_back", "ok"),
    ]
    for record in records:
        assert record["user"] == "operator" and record["reason"] == "raise the feed"
        assert record["target"] == TARGET and record["old"] == 2 and record["new"] == 5
    assert [r["seq"] for r in records] == outcome["audit_records"]


@pytest.mark.parametrize(
    ("user", "status"),
    [("viewer", 403), ("admin", 403), ("operator", 200), ("engineer", 200)],
)
@pytest.mark.asyncio
async def test_only_roles_that_qualify_may_write(bench: Bench, user: str, status: int) -> None:
    got, outcome = await bench.write(user, {"target": TARGET, "value": 3, "reason": "r"})
    assert got == status, outcome
    if status == 403:
        assert outcome["rule"] == "role" and "needs the role 'operator'" in outcome["message"]
        assert bench.pump_setpoint == 2
        refused = bench.last_write_record()
        assert (refused["action"], refused["user"], refused["details"]["rule"]) == (
            "write.refused",
            user,
            "role",
        )
    else:
        assert bench.pump_setpoint == 3


@pytest.mark.parametrize(
    ("body", "rule", "message"),
    [
        ({"value": 10.5, "reason": "r"}, "limit", "outside the limits 0..10"),
        ({"value": -1, "reason": "r"}, "limit", "outside the limits"),
        ({"value": 8, "reason": "r"}, "step", "more than the largest step, 5"),
        ({"value": 3, "reason": "  "}, "reason", "a write needs a reason"),
        ({"value": 3}, "reason", "a write needs a reason"),
    ],
)
@pytest.mark.asyncio
async def test_each_rule_refuses_changes_nothing_and_is_audited(
    bench: Bench, body: dict[str, Any], rule: str, message: str
) -> None:
    status, outcome = await bench.write("operator", {"target": TARGET, **body})
    assert status == 422, outcome
    assert outcome["rule"] == rule and message in outcome["message"]
    assert bench.pump_setpoint == 2
    last = bench.last_write_record()
    assert (last["action"], last["outcome"], last["details"]["rule"]) == (
        "write.refused",
        "refused",
        rule,
    )


@pytest.mark.parametrize("bench", [{"max_rate_per_s": 1.0}], indirect=True)
@pytest.mark.asyncio
async def test_the_rate_of_change_is_limited_between_writes(bench: Bench) -> None:
    status, _ = await bench.write("operator", {"target": TARGET, "value": 5, "reason": "r"})
    assert status == 200
    status, outcome = await bench.write("operator", {"target": TARGET, "value": 1, "reason": "r"})
    assert status == 422 and outcome["rule"] == "rate", outcome
    assert "needs 4.0 s after the last write" in outcome["message"]
    assert bench.pump_setpoint == 5


@pytest.mark.asyncio
async def test_a_target_not_declared_is_refused(bench: Bench) -> None:
    status, outcome = await bench.write(
        "operator", {"target": "reactor1/pump/running", "value": 0, "reason": "r"}
    )
    assert status == 404 and outcome["rule"] == "not-declared"
    assert f"declared: {TARGET}" in outcome["message"]


@pytest.mark.asyncio
async def test_bad_credentials_are_refused_and_repeated_failures_lock_out(bench: Bench) -> None:
    status, answer = await bench.write("nobody", {"target": TARGET, "value": 3, "reason": "r"})
    assert status == 401 and "unknown user or wrong password" in answer["error"]
    for _ in range(3):
        status, _ = await bench.write(
            "operator", {"target": TARGET, "value": 3, "reason": "r"}, password="guess"
        )
        assert status == 401
    status, answer = await bench.write("operator", {"target": TARGET, "value": 3, "reason": "r"})
    assert status == 401 and "locked out" in answer["error"]
    assert bench.pump_setpoint == 2

    def recorded() -> set[tuple[str, str]]:
        return {(r["action"], r["user"]) for r in bench.records()}

    # Logins are recorded by the recorder task, a moment after they are answered.
    await wait_for(
        lambda: {("login.failed", "nobody"), ("user.locked_out", "system")} <= recorded(),
        10,
        what="the failed logins and the lock-out in the audit trail",
    )
    # Only a user manager lifts it.
    route = "/api/v1/users/operator/unlock"
    status, answer = await asyncio.to_thread(
        api_call, bench.http_port, "POST", route, "engineer", PASSWORDS["engineer"], {}
    )
    assert status == 403 and "needs manage_users" in answer["error"]
    status, answer = await asyncio.to_thread(
        api_call, bench.http_port, "POST", route, "admin", PASSWORDS["admin"], {}
    )
    assert status == 200 and answer == {"user": "operator", "was_locked_out": True}
    status, _ = await bench.write("operator", {"target": TARGET, "value": 3, "reason": "r"})
    assert status == 200
    await wait_for(lambda: ("user.unlocked", "admin") in recorded(), 10, what="the unlock")


@pytest.mark.asyncio
async def test_whoami_and_targets(bench: Bench) -> None:
    status, me = await asyncio.to_thread(
        api_call, bench.http_port, "GET", "/api/v1/whoami", "engineer", PASSWORDS["engineer"]
    )
    assert status == 200 and me["roles"] == ["engineer"] and "configure" in me["permissions"]
    status, listed = await asyncio.to_thread(
        api_call, bench.http_port, "GET", "/api/v1/targets", "viewer", PASSWORDS["viewer"]
    )
    assert status == 200
    assert [(t["target"], t["unit"], t["max"]) for t in listed["targets"]] == [
        (TARGET, "{rev}/min", 10)
    ]


@pytest.mark.asyncio
async def test_a_write_while_the_instrument_is_down_is_refused(tmp_path: Path) -> None:
    http_port = free_port()
    config = _config(tmp_path, free_port(), http_port)
    config["emulators"] = []  # nothing listens on the pump's port
    plan = plan_for(tmp_path, **config)
    async with running(plan):
        status, outcome = await asyncio.to_thread(
            api_call,
            http_port,
            "POST",
            "/api/v1/writes",
            "operator",
            PASSWORDS["operator"],
            {"target": TARGET, "value": 3, "reason": "r"},
        )
    assert status == 503 and outcome["rule"] == "instrument-down", outcome
    assert "not connected: nothing was written" in outcome["message"]


@pytest.mark.asyncio
async def test_a_write_the_audit_trail_cannot_record_is_not_executed(bench: Bench) -> None:
    assert bench.gateway.audit is not None
    bench.gateway.audit.trail.close()  # as if its file had gone: every append fails
    status, outcome = await bench.write("operator", {"target": TARGET, "value": 4, "reason": "r"})
    assert status == 503 and outcome["rule"] == "audit-unavailable", outcome
    assert bench.pump_setpoint == 2


def test_patgw_write_refuses_with_exit_2_when_no_gateway_runs(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "g.yaml", {"area": "reactor1", **_config(tmp_path, free_port(), free_port())}
    )
    result = patgw_with_password(config, "operator", "5")
    assert result.returncode == 2
    assert "cannot reach the gateway's API" in result.stderr


def patgw_with_password(
    config: Path,
    user: str,
    value: str,
    *extra: str,
    password: str | None = None,
    target: str = TARGET,
    reason: str = "test",
) -> subprocess.CompletedProcess[str]:
    """``patgw write`` as a user runs it, the password on stdin (by default ``<user>-password``,
    as in PASSWORDS and the demo)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "write",
            str(config),
            target,
            value,
            "--user",
            user,
            "--reason",
            reason,
            *extra,
        ],
        input=(f"{user}-password" if password is None else password) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.asyncio
async def test_patgw_write_as_each_role(tmp_path: Path) -> None:
    http_port = free_port()
    config = _config(tmp_path, free_port(), http_port)
    plan = plan_for(tmp_path, **config)
    async with running(plan) as (gateway, _):
        runner = gateway.runners[0]
        await wait_for(lambda: runner.state.value == "connected", 10, what="the pump connected")
        source = plan.source
        done = await asyncio.to_thread(patgw_with_password, source, "operator", "5")
        assert done.returncode == 0, done.stderr
        assert "set to 5" in done.stdout
        viewer = await asyncio.to_thread(patgw_with_password, source, "viewer", "4")
        assert viewer.returncode == 2 and "needs the role 'operator'" in viewer.stderr
        above = await asyncio.to_thread(patgw_with_password, source, "operator", "11")
        assert above.returncode == 2 and "outside the limits" in above.stderr
        admin = await asyncio.to_thread(patgw_with_password, source, "admin", "4")
        assert admin.returncode == 2 and "needs the role 'operator'" in admin.stderr
        engineer = await asyncio.to_thread(patgw_with_password, source, "engineer", "6")
        assert engineer.returncode == 0, engineer.stderr
        assert plan.emulators[0].instance.emulator.model.setpoint_rpm == 6
        wrong = await asyncio.to_thread(
            patgw_with_password, source, "operator", "5", password="guess"
        )
        assert wrong.returncode == 2 and "unknown user or wrong password" in wrong.stderr


@pytest.mark.parametrize("bench", [{"signature": "required"}], indirect=True)
@pytest.mark.asyncio
async def test_a_target_needing_a_signature_takes_its_meaning_and_records_the_signer(
    bench: Bench,
) -> None:
    body = {"target": TARGET, "value": 4, "reason": "batch record step 12"}
    status, outcome = await bench.write("operator", body)
    assert status == 422 and outcome["rule"] == "signature", outcome
    assert bench.pump_setpoint == 2
    status, outcome = await bench.write("operator", {**body, "meaning": "performed"})
    assert status == 200, outcome
    requested = next(r for r in bench.records() if r["action"] == "write.requested")
    signature = requested["details"]["signature"]
    assert (signature["user"], signature["name"], signature["meaning"]) == (
        "operator",
        "operator",
        "performed",
    )
    assert isinstance(signature["ts"], int)


@pytest.mark.parametrize("bench", [{"signature": "witnessed"}], indirect=True)
@pytest.mark.asyncio
async def test_a_witnessed_target_needs_a_second_qualified_person(bench: Bench) -> None:
    body = {"target": TARGET, "value": 4, "reason": "r", "meaning": "performed"}

    def witness(user: str, password: str | None = None) -> dict[str, Any]:
        secret = PASSWORDS.get(user, "x") if password is None else password
        return {**body, "witness": {"user": user, "password": secret, "meaning": "verified"}}

    status, outcome = await bench.write("operator", body)
    assert status == 422 and "second person" in outcome["message"]
    status, outcome = await bench.write("operator", witness("operator"))
    assert status == 422 and "another person" in outcome["message"]
    status, outcome = await bench.write("operator", witness("viewer"))
    assert status == 422 and "may not sign" in outcome["message"]
    status, answer = await bench.write("operator", witness("engineer", "wrong"))
    assert status == 401 and answer["error"].startswith("witness: ")
    assert bench.pump_setpoint == 2
    status, outcome = await bench.write("operator", witness("engineer"))
    assert status == 200, outcome
    requested = next(r for r in bench.records() if r["action"] == "write.requested")
    assert requested["details"]["witness"]["user"] == "engineer"
    assert requested["details"]["witness"]["meaning"] == "verified"


@pytest.mark.parametrize("bench", [{"pump": {"max_setpoint_rpm": 4}}], indirect=True)
@pytest.mark.asyncio
async def test_a_device_that_reads_back_another_value_is_a_mismatch_on_record(
    bench: Bench,
) -> None:
    """The pump takes 6 rpm but clamps it to its drive limit, 4: written, not as asked."""
    status, outcome = await bench.write("operator", {"target": TARGET, "value": 6, "reason": "r"})
    assert status == 409, outcome
    assert (outcome["outcome"], outcome["read_back"]) == ("mismatch", 4)
    assert "wrote 6 {rev}/min but the device reads back 4 {rev}/min" in outcome["message"]
    last = bench.last_write_record()
    assert (last["action"], last["outcome"], last["details"]["read_back"]) == (
        "write.read_back",
        "mismatch",
        4,
    )


def test_the_api_beyond_loopback_needs_tls(tmp_path: Path) -> None:
    config = _config(tmp_path, free_port(), free_port())
    config["http"]["host"] = "0.0.0.0"
    path = write_config(tmp_path / "g.yaml", {"area": "reactor1", **config})
    result = patgw("check", str(path))
    assert result.returncode == 2
    assert result.stderr == (
        "http: the local API takes passwords: on '0.0.0.0', beyond loopback, it needs http.tls"
        " (a certificate and key); or listen on 127.0.0.1\n"
    )


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "patgw-test")])
    certificate = (
        certificate_builder(name, name, key)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "api.pem", folder / "api.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    write_pem_key(key_path, key)
    return cert_path, key_path


@pytest.mark.asyncio
async def test_patgw_write_over_https(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    http_port = free_port()
    config = _config(tmp_path, free_port(), http_port)
    config["http"]["tls"] = {"certificate": str(cert), "private_key": str(key)}
    plan = plan_for(tmp_path, **config)
    async with running(plan) as (gateway, _):
        runner = gateway.runners[0]
        await wait_for(lambda: runner.state.value == "connected", 10, what="the pump connected")
        done = await asyncio.to_thread(patgw_with_password, plan.source, "operator", "5")
        assert done.returncode == 0, done.stderr
        with pytest.raises((http.client.HTTPException, OSError)):  # plain HTTP: no answer
            await asyncio.to_thread(
                api_call, http_port, "GET", "/api/v1/whoami", "viewer", PASSWORDS["viewer"]
            )
        assert plan.emulators[0].instance.emulator.model.setpoint_rpm == 5
