"""Electronic signatures on the console's writes, the audit page's download and its cached
verification, over real sockets against a running gateway whose bioreactor controller is the
emulator (OPC UA on loopback), with the demo's users and its pH setpoint target
(``signature: required``, role engineer) — plus, in this copy, a witnessed temperature
setpoint and a second engineer to witness.

Each refusal is checked to write nothing and to leave its audit records; no password may
appear in a page or an audit record."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from conftest import REPO, free_port, plan_for, running, tamper_audit, wait_for
from structlog.testing import capture_logs
from test_audit_trail import filled, write_event
from test_console import Console, _audited
from test_controlled_writes import audit_path

from gateway import hash_password
from gateway.audit import EXPORT_COLUMNS, AuditPaths, read_records
from gateway.console.auditview import VerifyCache
from gateway.loader import Plan
from gateway.runtime.supervisor import Gateway

PH = "reactor1/controller/ph_setpoint"
TEMPERATURE = "reactor1/controller/temperature_setpoint"
SECOND = "engineer2"  # a second engineer, this copy's witness
DEMO = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())


def _password(user: str) -> str:
    return f"{user}-password"  # the demo's rule


def _config(http_port: int, controller_port: int) -> dict[str, Any]:
    controller = next(i for i in DEMO["instruments"] if i["id"] == "controller")
    options = dict(controller["options"])
    options["url"] = f"opc.tcp://127.0.0.1:{controller_port}"
    options["sampling_interval_ms"] = options["publishing_interval_ms"] = 100
    options["nodes"] = [
        *options["nodes"],
        {
            "name": "temperature_setpoint",
            "node": "ctl:BioreactorController.Temperature.SP",
            "unit": "Cel",
            "writable": True,
        },
    ]
    security = dict(DEMO["security"])
    second = {"name": SECOND, "full_name": "Second Engineer", "roles": ["engineer"]}
    second["password_hash"] = hash_password(_password(SECOND))
    security["users"] = [*security["users"], second]
    ph_target = next(w for w in DEMO["writes"] if w["target"] == PH)
    assert ph_target["signature"] == "required" and ph_target["role"] == "engineer"
    witnessed = {
        "target": TEMPERATURE,
        "min": 30,
        "max": 40,
        "max_step": 1,
        "role": "engineer",
        "signature": "witnessed",
    }
    return {
        "emulators": [
            {
                "id": "reactor",
                "type": "bioreactor",
                "options": {"seed": 1, "port": controller_port, "log_every_s": 0},
            }
        ],
        "instruments": [{**controller, "options": options, "backoff": {"initial_s": 0.1}}],
        "http": {"host": "127.0.0.1", "port": http_port},
        "security": security,
        "writes": [ph_target, witnessed],
    }


class Skid(Console):
    """The running gateway with its console, and the emulated controller's setpoints."""

    def __init__(self, gateway: Gateway, plan: Plan, port: int) -> None:
        super().__init__(gateway, plan, port)

    def setpoints(self) -> tuple[float, float]:
        """(pH, temperature) setpoints the emulated controller holds now."""
        state = self.plan.emulators[0].instance.controller.clock.snapshot()
        return float(state.ph_sp), float(state.temperature_sp_C)

    async def log_in(self, user: str) -> tuple[str, str]:
        return await self.login(user, _password(user))

    async def post_write(self, cookie: str, csrf: str, **form: str) -> tuple[int, str]:
        answer = await self.request("POST", "/write", cookie=cookie, form={"csrf": csrf, **form})
        return answer.status, html.unescape(answer.body.decode())


@pytest_asyncio.fixture
async def skid(tmp_path: Path) -> AsyncIterator[Skid]:
    port = free_port()
    plan = plan_for(tmp_path, **_config(port, free_port()))
    async with running(plan) as (gateway, _):
        runner = gateway.runners[0]
        await wait_for(lambda: runner.state.value == "connected", 30, what="the controller")
        yield Skid(gateway, plan, port)


def _write_records(skid: Skid, target: str) -> list[dict[str, Any]]:
    return [r for r in skid.records() if r["action"].startswith("write.") and r["target"] == target]


def _no_password_kept(skid: Skid, *passwords: str) -> None:
    """No audit record holds any of ``passwords`` (not in a reason, a why, a detail)."""
    text = json.dumps(skid.records())
    for password in passwords:
        assert password not in text


@pytest.mark.asyncio
async def test_a_signed_write_by_the_engineer_moves_the_ph_setpoint(skid: Skid) -> None:
    ph_before, _ = skid.setpoints()
    cookie, csrf = await skid.log_in("engineer")
    writes = await skid.request("GET", "/writes", cookie=cookie)
    form = re.search(rb'<form method="post" action="/write".*?</form>', writes.body, re.DOTALL)
    assert form is not None and PH.encode() in form.group(0)
    assert b'<select name="meaning" required>' in form.group(0)
    assert b'name="signature_password" type="password"' in form.group(0)
    assert b'name="witness"' not in form.group(0)  # required, not witnessed

    value = round(ph_before + 0.1, 2)
    with capture_logs() as logs:
        status, page = await skid.post_write(
            cookie,
            csrf,
            target=PH,
            value=str(value),
            reason="raise the pH setpoint",
            meaning="approved",
            signature_password=_password("engineer"),
        )
    assert status == 200, page
    assert any(entry["event"] == "write.outcome" for entry in logs)
    assert _password("engineer") not in repr(logs)
    assert skid.setpoints()[0] == pytest.approx(value)  # the emulated controller holds it
    assert _password("engineer") not in page
    records = _write_records(skid, PH)
    assert [(r["action"], r["outcome"]) for r in records] == [
        ("write.requested", "accepted"),
        ("write.executed", "ok"),
        ("write.read_back", "ok"),
    ]
    signature = records[0]["details"]["signature"]
    assert signature["meaning"] == "approved"
    assert (signature["user"], signature["name"]) == ("engineer", "Demo Engineer")
    assert records[0]["details"]["interface"] == "console"
    (check,) = await _audited(skid, "signature")  # the re-entered password, audited as such
    assert check["user"] == "engineer" and check["details"]["interface"] == "console"
    _no_password_kept(skid, _password("engineer"))


@pytest.mark.asyncio
async def test_a_wrong_signature_password_writes_nothing_and_counts_toward_the_lock_out(
    skid: Skid,
) -> None:
    before = skid.setpoints()
    cookie, csrf = await skid.log_in("engineer")
    attempt = {"target": PH, "value": str(round(before[0] + 0.1, 2)), "reason": "try"}
    with capture_logs() as logs:
        status, page = await skid.post_write(
            cookie, csrf, **attempt, meaning="approved", signature_password="not-the-password"
        )
    assert status == 401, page
    assert any(entry["event"] == "security.signature_refused" for entry in logs)
    assert "not-the-password" not in repr(logs)
    assert "nothing was written" in page and "not-the-password" not in page
    assert skid.setpoints() == before
    (refused,) = await _audited(skid, "write.refused")
    assert refused["user"] == "engineer" and refused["target"] == PH
    assert refused["details"]["rule"] == "signature"
    assert refused["details"]["interface"] == "console"
    (failed,) = await _audited(skid, "signature.failed")
    assert failed["user"] == "engineer" and failed["details"]["why"] == "wrong password"
    assert not [r for r in _write_records(skid, PH) if r["action"] == "write.requested"]

    # The demo locks a user out after 5 failures: 4 more, then even the right password waits.
    for _ in range(4):
        status, _page = await skid.post_write(
            cookie, csrf, **attempt, meaning="approved", signature_password="still-wrong"
        )
        assert status == 401
    status, page = await skid.post_write(
        cookie, csrf, **attempt, meaning="approved", signature_password=_password("engineer")
    )
    assert status == 429 and "locked out" in page, page
    assert skid.setpoints() == before
    locked = await skid.request(
        "POST", "/login", form={"user": "engineer", "password": _password("engineer")}
    )
    assert locked.status == 429
    _no_password_kept(skid, "not-the-password", "still-wrong", _password("engineer"))


@pytest.mark.asyncio
async def test_an_operator_or_a_viewer_cannot_write_the_engineer_target(skid: Skid) -> None:
    before = skid.setpoints()
    value = str(round(before[0] + 0.1, 2))
    pages = {}
    for user in ("operator", "viewer"):
        cookie, csrf = await skid.log_in(user)
        pages[user] = await skid.post_write(
            cookie,
            csrf,
            target=PH,
            value=value,
            reason="not mine to change",
            meaning="approved",
            signature_password=_password(user),
        )
        if user == "viewer":
            assert (await skid.request("GET", "/writes", cookie=cookie)).status == 403
    status, page = pages["operator"]
    assert status == 403 and "needs the role 'engineer'" in page, page
    status, page = pages["viewer"]
    assert status == 403, page
    assert skid.setpoints() == before
    refused = await _audited(skid, "write.refused", 2)
    assert {(r["user"], r["details"]["rule"]) for r in refused} == {
        ("operator", "role"),
        ("viewer", "role"),
    }


@pytest.mark.asyncio
async def test_a_signed_write_without_its_meaning_or_password_is_refused(skid: Skid) -> None:
    before = skid.setpoints()
    cookie, csrf = await skid.log_in("engineer")
    attempt = {"target": PH, "value": str(round(before[0] + 0.1, 2)), "reason": "no meaning"}
    status, page = await skid.post_write(
        cookie, csrf, **attempt, signature_password=_password("engineer")
    )
    assert status == 422 and "electronic signature" in page, page
    status, page = await skid.post_write(cookie, csrf, **attempt, meaning="approved")
    assert status == 422 and "re-enter your password" in page, page
    assert skid.setpoints() == before
    refused = await _audited(skid, "write.refused", 2)
    assert [r["details"]["rule"] for r in refused] == ["signature", "signature"]
    # Neither got as far as a password check (nothing to count toward a lock-out).
    assert not [r for r in skid.records() if r["action"].startswith("signature")]


@pytest.mark.asyncio
async def test_a_witnessed_target_needs_another_qualified_person(skid: Skid) -> None:
    _, temperature = skid.setpoints()
    cookie, csrf = await skid.log_in("engineer")
    writes = await skid.request("GET", "/writes", cookie=cookie)
    assert b'name="witness" autocomplete="off" required' in writes.body
    assert b'name="witness_password" type="password"' in writes.body
    value = str(round(temperature + 0.5, 2))
    signed = {
        "target": TEMPERATURE,
        "value": value,
        "reason": "warmer",
        "meaning": "performed",
        "signature_password": _password("engineer"),
    }

    def witness(user: str, password: str | None = None) -> dict[str, str]:
        secret = _password(user) if password is None else password
        return {"witness": user, "witness_password": secret, "witness_meaning": "reviewed"}

    status, page = await skid.post_write(cookie, csrf, **signed)
    assert status == 422 and "second person" in page, page
    status, page = await skid.post_write(cookie, csrf, **signed, **witness("engineer"))
    assert status == 422 and "another person" in page, page
    status, page = await skid.post_write(cookie, csrf, **signed, **witness("operator"))
    assert status == 422 and "witness 'operator' may not sign" in page, page
    status, page = await skid.post_write(cookie, csrf, **signed, **witness(SECOND, "Wi7ness-guess"))
    assert status == 401 and "witness" in page, page
    assert skid.setpoints()[1] == temperature
    rules = [r["details"]["rule"] for r in await _audited(skid, "write.refused", 4)]
    assert rules == ["signature"] * 4

    status, page = await skid.post_write(cookie, csrf, **signed, **witness(SECOND))
    assert status == 200, page
    assert skid.setpoints()[1] == pytest.approx(float(value))
    requested = [r for r in _write_records(skid, TEMPERATURE) if r["action"] == "write.requested"]
    (record,) = requested
    assert record["details"]["signature"]["meaning"] == "performed"
    assert record["details"]["witness"] == {
        **record["details"]["witness"],
        "user": SECOND,
        "name": "Second Engineer",
        "meaning": "reviewed",
    }
    _no_password_kept(skid, _password("engineer"), _password(SECOND), "Wi7ness-guess")


@pytest.mark.asyncio
async def test_the_audit_page_downloads_what_it_shows_for_those_who_may_read_it(
    skid: Skid,
) -> None:
    for _ in range(2):
        await skid.log_in("engineer")
    cookie, _ = await skid.log_in("engineer")
    operator, _ = await skid.log_in("operator")
    await _audited(skid, "login", 4)
    query = "user=engineer&action=log*&limit=2"
    page = await skid.request("GET", f"/audit?{query}", cookie=cookie)
    assert page.status == 200
    links = re.findall(rb'href="(/audit/export\?[^"]+)"', page.body)
    assert len(links) == 2, page.body
    link = links[0].decode().replace("&amp;", "&")
    assert "user=engineer" in link and "action=log%2A" in link and "format=jsonl" in link

    found = read_records(audit_path(skid.plan), user="engineer", action="log*")
    shown = [r.seq for r in found][-2:]  # the newest two the page shows, oldest first
    for seq in shown:
        assert f"<td>{seq}</td>".encode() in page.body
    download = await skid.request("GET", link, cookie=cookie)
    assert download.status == 200
    assert download.headers["content-disposition"].startswith('attachment; filename="audit-')
    assert download.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in download.body.decode().splitlines()]
    assert [line["seq"] for line in lines] == shown
    assert all(list(line) == list(EXPORT_COLUMNS) for line in lines)

    as_csv = await skid.request("GET", link.replace("format=jsonl", "format=csv"), cookie=cookie)
    assert as_csv.status == 200 and as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(as_csv.body.decode())))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    assert [int(row[0]) for row in rows[1:]] == shown

    refused = await skid.request("GET", link, cookie=operator)  # operators lack `audit`
    assert refused.status == 403
    assert (await skid.request("GET", link)).status == 303  # no session: the login
    bad = await skid.request("GET", "/audit/export?format=xml", cookie=cookie)
    assert bad.status == 400

    exports = await _audited(skid, "audit.exported", 2)
    assert {r["user"] for r in exports} == {"engineer"}
    assert [r["details"]["format"] for r in exports] == ["jsonl", "csv"]
    assert exports[0]["details"]["records"] == len(shown)
    assert exports[0]["details"]["action"] == "log*"


@pytest.mark.asyncio
async def test_the_audit_page_notices_a_record_appended_after_it_was_verified(
    skid: Skid,
) -> None:
    cookie, _ = await skid.log_in("engineer")

    async def verified() -> str:
        page = await skid.request("GET", "/audit", cookie=cookie)
        found = re.search(rb'id="verify">([^<]*)<', page.body)
        assert page.status == 200 and found is not None, page.body
        return found.group(1).decode()

    def head(report: str) -> int:
        found = re.search(r"verified \d+ records \(head (\d+)\)", report)
        assert found is not None, report
        return int(found.group(1))

    await _audited(skid, "login")
    first = head(await verified())
    await skid.log_in("viewer")  # appends a login record, after the report was taken
    viewer = next(r for r in await _audited(skid, "login", 2) if r["user"] == "viewer")
    assert viewer["seq"] > first
    assert head(await verified()) >= viewer["seq"]


def test_the_verification_is_kept_until_the_trail_changes(tmp_path: Path) -> None:
    files = filled(tmp_path, 21)
    cache = VerifyCache(AuditPaths(files.path, files.key, files.anchors))
    first = cache.report()
    assert first.ok and first.head_seq == 21 and cache.runs == 1
    assert cache.report() is first and cache.runs == 1  # unchanged: not verified again
    with files.trail() as trail:
        trail.append(write_event(21))
        second = cache.report()
        assert cache.runs == 2 and second.ok and second.head_seq == 22
        trail.sign_head()  # an anchor, in the file's table and the anchor file
        third = cache.report()
        assert cache.runs == 3 and third.anchors > second.anchors
        assert cache.report() is third
    tamper_audit(files.path, "UPDATE audit_records SET reason = 'edited' WHERE seq = 5")
    tampered = cache.report()
    assert cache.runs == 4 and not tampered.ok and tampered.first_bad_seq == 5
