"""A device that reports an absurd identity: megabytes, control characters, NUL, markup, bytes
that were not UTF-8 (decoded with ``surrogateescape``, as a driver reading a serial line might).
The gateway keeps running, stores and audits it bounded and as valid text, and the console
shows it escaped."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for, write_config
from pydantic import BaseModel

from gateway import Channel, DeviceIdentity, InstrumentIO, PluginContext, hookimpl
from gateway.audit import read_records
from gateway.console.pages import overview_page
from gateway.metrics import health_report
from gateway.security import Identity
from gateway.store import SampleStore
from gateway.testing import GatewayRun

ABSURD = DeviceIdentity(
    manufacturer="Acme\x00<script>alert(1)</script>\x1b[31m",
    model="M" * (10 * 1024 * 1024),
    serial_number=b"SN-\xff\xfe-7".decode("utf-8", "surrogateescape"),
    firmware_revision="1.0\r\nInjected: yes",
    hardware_revision="\u202e\u0007",
)
FIELD = 256  # characters a field is kept to, at most (with a note of how long it was)


class NoOptions(BaseModel):
    pass


class Absurd:
    """A driver whose device tells an absurd identity."""

    def __init__(self, options: NoOptions, context: PluginContext) -> None:
        pass

    def channels(self) -> list[Channel]:
        return [Channel("level", "1")]

    async def run(self, io: InstrumentIO) -> None:
        io.identify(ABSURD)
        io.connected()
        io.output("level").publish(1.0)
        await asyncio.Event().wait()


class AbsurdPlugin:
    PAT_GATEWAY_API = "1.1"

    @hookimpl
    def pat_gateway_register_drivers(self, registry: Any) -> None:
        registry.add_driver("absurd", Absurd, NoOptions)


def _valid_text(value: str | None) -> bool:
    if value is None:
        return True
    value.encode("utf-8")  # no lone surrogate
    return len(value) <= FIELD + 40 and all(c.isprintable() for c in value)


@pytest.mark.asyncio
async def test_an_absurd_identity_is_kept_bounded_printable_and_escaped(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "gateway.yaml",
        {
            "site": "plant1",
            "area": "reactor1",
            "store": {"path": str(tmp_path / "store.sqlite")},
            "instruments": [{"id": "dev", "driver": "absurd"}],
        },
    )
    async with GatewayRun(config, plugins=[AbsurdPlugin()]) as run:
        runner = run.instrument("dev")
        await wait_for(lambda: runner.identity is not None, what="the identity")
        keeper = run.gateway.identities
        assert keeper is not None
        await wait_for(lambda: keeper.recorded >= 1, what="the identity stored")
        await wait_for(lambda: bool(run.samples("*/dev/level")), what="a reading")
        assert runner.identity is not None
        kept = runner.identity.fields()
        assert all(_valid_text(v) for v in kept.values()), kept
        assert kept == {
            "manufacturer": "Acme\ufffd<script>alert(1)</script>\ufffd[31m",
            "model": "M" * FIELD + "… (10485760 characters)",
            "serial_number": "SN-\ufffd\ufffd-7",
            "firmware_revision": "1.0\ufffd\ufffdInjected: yes",
            "hardware_revision": "\ufffd\ufffd",
        }
        report = health_report(run.gateway, 1.0)
        assert len(json.dumps(report)) < 64 * 1024
        page = overview_page(
            report, Identity("viewer", "Viewer", frozenset({"viewer"}), frozenset()), "csrf"
        )
        assert "<script>" not in page
        audit_path = run.plan.config.audit.resolved(
            run.plan.config.store.path, run.plan.config.data_dir
        ).path
    store = SampleStore(tmp_path / "store.sqlite", read_only=True)
    try:
        [record] = store.identities("dev")
    finally:
        store.close()
    assert record.identity == runner.identity
    [event] = [r.event for r in read_records(audit_path, action="device.*")]
    assert event.action == "device.identified" and event.new == kept
