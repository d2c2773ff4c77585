"""Device commands (and writes) against a careless driver and a hostile caller, on the write
path itself: a driver that raises what the contract does not name, one that never answers, a
command cut by the gateway's stop, a report, arguments or a reason of megabytes, nesting deeper
than repr follows. Whatever happens, each command that was requested has exactly one outcome on
record, the instrument is not left locked, and the audit trail keeps a bounded record."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from conftest import wait_for
from test_device_commands import _path, _permissions, _SlowDevice

from gateway import CommandArgument, DeviceCommand
from gateway.audit import AuditEvent
from gateway.audit.records import encode_values
from gateway.control import CommandRequest, WritePath
from gateway.control.path import WriteRequest
from gateway.security import Identity

OPERATOR = Identity("operator", "Operator", frozenset({"operator"}), _permissions("operator"))
MEGABYTES = 10 * 1024 * 1024
BOUND = 64 * 1024  # a request body the local API takes; a report is a few values


class _CarelessDevice(_SlowDevice):
    """A stand-in instrument whose commands misbehave as a vendor's driver might."""

    def __init__(self) -> None:
        super().__init__()
        self.release.set()  # its writes answer at once
        self.started = asyncio.Event()

    def commands(self) -> Sequence[DeviceCommand]:
        return [
            DeviceCommand("crash"),
            DeviceCommand("hang"),
            DeviceCommand("flood"),
            DeviceCommand("label", arguments=(CommandArgument("text", "text"),)),
        ]

    async def command(self, name: str, arguments: Mapping[str, Any]) -> Mapping[str, Any]:
        self.log.append(name)
        if name == "crash":
            raise KeyError("register 40001")  # a bug: not an InstrumentError
        if name == "hang":
            self.started.set()
            await asyncio.Event().wait()
        if name == "flood":
            return {
                "dump": "x" * MEGABYTES,
                "curve": list(range(200_000)),
                **{f"k{i}": i for i in range(10_000)},
                "y" * MEGABYTES: 1,
            }
        return {}


def _bench() -> tuple[_CarelessDevice, list[AuditEvent], WritePath]:
    """A careless device, the audit records, the write path over it."""
    device = _CarelessDevice()
    records: list[AuditEvent] = []
    return device, records, _path(device, records)


def _run(path: WritePath, name: str, **arguments: Any) -> Any:
    return path.submit_command(CommandRequest(f"a/dev/{name}", OPERATOR, "r", "test", arguments))


def _size(event: AuditEvent) -> int:
    return len(json.dumps([event.new, event.details, event.reason], default=repr))


@pytest.mark.asyncio
async def test_a_driver_raising_an_undeclared_exception_is_a_failure_on_record() -> None:
    _, records, path = _bench()
    outcome = await _run(path, "crash")
    assert (outcome.outcome, outcome.rule) == ("failed", ""), outcome
    assert "outcome unknown" in outcome.message and "register 40001" in outcome.message
    assert [(e.action, e.outcome) for e in records] == [
        ("command.requested", "accepted"),
        ("command.failed", "unknown"),
    ]


@pytest.mark.asyncio
async def test_a_driver_that_never_answers_fails_within_its_bound_and_frees_the_instrument() -> (
    None
):
    _, records, path = _bench()
    path.device_timeout_s = 0.05
    outcome = await _run(path, "hang")
    assert outcome.outcome == "failed", outcome
    assert outcome.message.endswith("its outcome unknown: no answer to the hang within 0.05 s")
    written = await path.submit(WriteRequest("a/dev/setpoint", 2.0, OPERATOR, "r", "test"))
    assert written.ok, written
    assert [(e.action, e.outcome) for e in records] == [
        ("command.requested", "accepted"),
        ("command.failed", "unknown"),
        ("write.requested", "accepted"),
        ("write.executed", "ok"),
        ("write.read_back", "ok"),
    ]


@pytest.mark.parametrize("kind", ["command", "write"])
@pytest.mark.asyncio
async def test_a_command_or_write_cut_by_the_stop_has_its_outcome_on_record(kind: str) -> None:
    device, records, path = _bench()
    if kind == "write":
        device.release.clear()  # its write waits for a release that never comes
        caller = asyncio.create_task(
            path.submit(WriteRequest("a/dev/setpoint", 2.0, OPERATOR, "r", "test"))
        )
        await wait_for(lambda: device.log == ["write started"], what="the write under way")
    else:
        caller = asyncio.create_task(_run(path, "hang"))
        await wait_for(device.started.is_set, what="the command under way")
    await path.drain(0.0)  # the stop: what is still under way is cancelled
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert [(e.action, e.outcome) for e in records] == [
        (f"{kind}.requested", "accepted"),
        (f"{kind}.failed", "unknown"),
    ]
    assert "stopped" in (records[-1].details or {})["why"]


@pytest.mark.asyncio
async def test_a_report_of_megabytes_is_kept_bounded() -> None:
    _, records, path = _bench()
    outcome = await _run(path, "flood")
    assert outcome.ok, outcome.message[:200]
    executed = records[-1]
    assert executed.action == "command.executed"
    assert _size(executed) < BOUND
    assert len(json.dumps(outcome.as_dict())) < BOUND
    assert len(outcome.message) < BOUND


@pytest.mark.asyncio
async def test_refused_arguments_of_megabytes_are_recorded_bounded() -> None:
    device, records, path = _bench()
    too_long = await _run(path, "label", text="x" * MEGABYTES)
    unknown = await _run(path, "label", **{"z" * MEGABYTES: 1})
    many = await _run(path, "label", **{f"a{i}": i for i in range(100_000)})
    nested = await _run(path, "label", text={"a": [[["deep"] * 1000] * 100]})
    for outcome in (too_long, unknown, many, nested):
        assert (outcome.outcome, outcome.rule) == ("refused", "arguments")
        assert len(json.dumps(outcome.as_dict())) < BOUND
        assert len(outcome.message) < BOUND
    assert [e.action for e in records] == ["command.refused"] * 4
    assert all(_size(e) < BOUND for e in records), [_size(e) for e in records]
    assert device.log == []


def _nested(depth: int) -> list[Any]:
    """A list inside a list ... ``depth`` deep (deeper than repr and json can follow)."""
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.asyncio
async def test_arguments_nested_deeper_than_repr_can_follow_are_refused_on_record() -> None:
    # The local API's JSON parser takes some 950 levels in a body of 2 KB; repr (and json)
    # give up a little deeper, depending on the stack below them: 20 000 is past both.
    device, records, path = _bench()
    outcome = await _run(path, "label", text=_nested(20_000))
    assert (outcome.outcome, outcome.rule) == ("refused", "arguments"), outcome.message
    [record] = records
    assert record.action == "command.refused" and _size(record) < BOUND
    assert device.log == []


class _NestingDevice(_CarelessDevice):
    async def command(self, name: str, arguments: Mapping[str, Any]) -> Mapping[str, Any]:
        self.log.append(name)
        return {"tree": _nested(20_000)}


@pytest.mark.asyncio
async def test_a_report_nested_deeper_than_repr_can_follow_is_done_and_on_record() -> None:
    device = _NestingDevice()
    records: list[AuditEvent] = []
    path = _path(device, records)
    outcome = await _run(path, "flood")
    assert outcome.ok, outcome.message
    assert [e.action for e in records] == ["command.requested", "command.executed"]
    assert _size(records[-1]) < BOUND and device.log == ["flood"]


@pytest.mark.asyncio
async def test_a_reason_of_megabytes_is_refused_and_recorded_bounded() -> None:
    # An OPC UA Call may carry 4 MB (the server's largest message), all of it as the Reason.
    device, records, path = _bench()
    huge = "why " * (1024 * 1024)
    command = await path.submit_command(
        CommandRequest("a/dev/label", OPERATOR, huge, "opcua", {"text": "x"})
    )
    write = await path.submit(WriteRequest("a/dev/setpoint", 2.0, OPERATOR, huge, "opcua"))
    for outcome in (command, write):
        assert (outcome.outcome, outcome.rule) == ("refused", "reason"), outcome.message[:200]
        assert len(outcome.message) < BOUND
    assert [e.action for e in records] == ["command.refused", "write.refused"]
    assert all(_size(e) < BOUND for e in records), [_size(e) for e in records]
    assert all(e.reason.startswith("why why") for e in records)
    assert device.log == [] and device.value == 0.0


class _StuckReader(_CarelessDevice):
    """A device whose value cannot be read: the driver's read never returns."""

    async def read_back(self, channel: str) -> float:
        await asyncio.Event().wait()
        return self.value


@pytest.mark.asyncio
async def test_a_write_that_never_answers_fails_within_the_bound_and_frees_the_instrument() -> None:
    device = _SlowDevice()  # its write waits for a release that never comes
    records: list[AuditEvent] = []
    path = _path(device, records)
    path.device_timeout_s = 0.05
    written = await path.submit(WriteRequest("a/dev/setpoint", 2.0, OPERATOR, "r", "test"))
    assert written.outcome == "failed" and "no answer" in written.message, written.message
    tared = await _run(path, "tare")
    assert tared.ok, tared.message
    assert [(e.action, e.outcome) for e in records] == [
        ("write.requested", "accepted"),
        ("write.failed", "unknown"),
        ("command.requested", "accepted"),
        ("command.executed", "ok"),
    ]


@pytest.mark.asyncio
async def test_a_read_that_never_answers_refuses_the_write_within_the_bound() -> None:
    device = _StuckReader()
    records: list[AuditEvent] = []
    path = _path(device, records)
    path.device_timeout_s = 0.05
    written = await path.submit(WriteRequest("a/dev/setpoint", 2.0, OPERATOR, "r", "test"))
    assert (written.outcome, written.rule) == ("refused", "instrument-down"), written.message
    assert [(e.action, e.outcome) for e in records] == [("write.refused", "refused")]
    assert device.log == []


class _Dosing(_CarelessDevice):
    def commands(self) -> Sequence[DeviceCommand]:
        speed = CommandArgument("speed", "integer", min=0, max=100)
        return [*super().commands(), DeviceCommand("dose", arguments=(speed,))]


@pytest.mark.asyncio
async def test_a_number_too_large_for_a_float_is_refused_on_record() -> None:
    # JSON takes an integer of 4300 digits; the local API hands it on as a Python int.
    device = _Dosing()
    records: list[AuditEvent] = []
    path = _path(device, records)
    outcome = await _run(path, "dose", speed=10**400)
    assert (outcome.outcome, outcome.rule) == ("refused", "arguments"), outcome.message
    assert "speed" in outcome.message
    assert [e.action for e in records] == ["command.refused"] and device.log == []


@pytest.mark.asyncio
async def test_text_that_is_not_unicode_is_refused_and_the_refusal_can_be_stored() -> None:
    # JSON's "\ud800" is a lone surrogate: valid JSON, no UTF-8 for SQLite.
    device, records, path = _bench()
    outcome = await _run(path, "label", text="tare \ud800")
    unknown = await _run(path, "label", **{"\udcff": 1})
    for refused in (outcome, unknown):
        assert (refused.outcome, refused.rule) == ("refused", "arguments"), refused.message
    assert [e.action for e in records] == ["command.refused"] * 2
    for event in records:
        encode_values(event)  # raises AuditError if the audit trail cannot store it
        json.dumps(event.new).encode("utf-8")
    assert device.log == []
