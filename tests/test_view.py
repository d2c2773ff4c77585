"""The live view of a running gateway, rendered on a recording console (no terminal needed).

A real gateway runs an inline instrument whose units and reasons look like rich markup, a
real bioreactor emulator (its process time), a sink fed live and a store-and-forward sink.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import running, wait_for, write_config
from pydantic import BaseModel, ConfigDict
from rich.cells import cell_len
from rich.console import Console
from structlog.testing import capture_logs

from gateway import (
    Channel,
    InstrumentIO,
    PluginContext,
    Quality,
    Registry,
    Sample,
    build_registry,
    hookimpl,
    load_plan,
)
from gateway.runtime import Gateway
from gateway.runtime.view import LiveTable

# (channel, unit, value, quality, reason): units that are UCUM codes with brackets and
# braces, reasons that are rich markup (a closing tag of nothing raised MarkupError), or carry
# terminal control sequences, and texts too long for 80 columns.
READINGS: list[tuple[str, str, Any, Quality, str | None]] = [
    ("ph", "[pH]", 7.01, Quality.GOOD, None),
    ("temperature", "[degF]", 98.6, Quality.GOOD, None),
    ("agitation", "{rev}/min", 120.0, Quality.GOOD, None),
    ("probe", "1", None, Quality.BAD, "[/x]"),
    ("styled", "1", 1.0, Quality.UNCERTAIN, "[bold red]not bold[/bold red]"),
    ("escape", "1", "\x1b]0;owned\x07text", Quality.UNCERTAIN, "\x1b[2Jcleared\nsecond line"),
    (
        "detector_temperature",
        "Cel",
        -60.123456789,
        Quality.UNCERTAIN,
        "calibration expired 400 days ago: recalibrate the probe before trusting this value",
    ),
]


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Labels:
    """Publishes each of READINGS once, then its first reading again now and then."""

    def __init__(self, options: NoOptions, context: PluginContext) -> None:
        pass

    def channels(self) -> Sequence[Channel]:
        return [Channel(name, unit) for name, unit, *_ in READINGS]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        for name, _unit, value, quality, reason in READINGS:
            io.output(name).publish(value, quality=quality, reason=reason)
        while True:
            await asyncio.sleep(0.05)
            io.output("ph").publish(7.01)


class LiveSink:
    """A sink without ``forward``: fed live batches (as the OPC UA server is)."""

    def __init__(self, options: NoOptions, context: PluginContext) -> None:
        self.received = 0

    async def __aenter__(self) -> LiveSink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def send(self, samples: Sequence[Sample]) -> None:
        self.received += len(samples)


class Inline:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("labels", Labels, NoOptions)

    @hookimpl
    def pat_gateway_register_sinks(self, registry: Registry) -> None:
        registry.add_sink("live_sink", LiveSink, NoOptions)


def view_plan(tmp_path: Path, **extra: Any) -> Any:
    config = {
        "area": "reactor1",
        "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 20},
        "data_dir": str(tmp_path / "data"),
        "emulators": [
            {"id": "reactor", "type": "bioreactor", "options": {"time_scale": 3600}},
        ],
        "instruments": [
            {"id": "controller", "driver": "labels"},
            # Same short names in a second group: the group headers tell them apart.
            {"id": "controller_b", "driver": "labels"},
        ],
        "sinks": [
            {"id": "opcua_like", "type": "live_sink"},
            {"id": "archive", "type": "jsonl_file", "options": {"path": str(tmp_path / "a.jsonl")}},
        ],
        **extra,
    }
    # The inline plugins, and the installed ones (the bioreactor emulator, the JSONL sink).
    registry = build_registry([Inline()])
    return load_plan(write_config(tmp_path / "g.yaml", config), registry)


def render(gateway: Gateway, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(LiveTable(gateway))
    return console.export_text()


async def all_shown(gateway: Gateway) -> None:
    await wait_for(lambda: all(o.latest is not None for o in gateway.outputs), what="readings")
    await wait_for(lambda: all(f.delivered for f in gateway.feeders), what="live sink fed")
    await wait_for(
        lambda: all(f.stats.state == "up" for f in gateway.forwarders), what="forwarder up"
    )


def rows_by_group(text: str, prefixes: list[str]) -> dict[str, list[str]]:
    """The signal lines under each group header of the rendered view."""
    groups: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        header = next((p for p in prefixes if line.startswith(p)), None)
        if header is not None:
            current = header
            groups[current] = []
        elif current is not None and line.strip():
            groups[current].append(line)
    return groups


@pytest.mark.asyncio
@pytest.mark.parametrize("width", [80, 200])
async def test_every_signal_is_one_distinguishable_line_with_its_unit_and_reason(
    tmp_path: Path, width: int
) -> None:
    plan = view_plan(tmp_path)
    async with running(plan) as (gateway, _task):
        await all_shown(gateway)
        text = render(gateway, width)

    assert all(cell_len(line) <= width for line in text.splitlines()), text
    assert "\x1b" not in text and "\x07" not in text  # no control character reaches the terminal
    prefixes = ["reactor1/controller/", "reactor1/controller_b/"]
    groups = rows_by_group(text, prefixes)
    assert sorted(groups) == prefixes, text
    for prefix in prefixes:
        rows = groups[prefix]
        # One line per signal, starting with its whole short name, in the configured order.
        assert [row.split()[0] for row in rows] == [r[0] for r in READINGS], text
        row = dict(zip((r[0] for r in READINGS), rows, strict=True))
        # Brackets and braces are shown as they are, never read as markup.
        assert "7.01" in row["ph"] and " [pH] " in row["ph"], text
        assert " [degF] " in row["temperature"], text
        assert " {rev}/min " in row["agitation"], text
        assert "bad ([/x])" in row["probe"], text
        assert "uncertain ([bold" in row["styled"], text
        # A device's control characters are replaced (a line break by a space).
        assert "\ufffd]0;owned\ufffdtext" in row["escape"], text
        assert "uncertain (\ufffd[2J" in row["escape"], text
        long = row["detector_temperature"]
        assert "-60.1235" in long and " Cel " in long and "uncertain (cal" in long, text
        if width == 80:  # the reasons are cut to what the width leaves, not the names
            assert "trusting" not in long and long.rstrip().endswith(tuple("0123456789")), text
        else:
            assert "[bold red]not bold[/bold red])" in row["styled"], text
            assert "\ufffd[2Jcleared second line)" in row["escape"], text
            assert "before trusting this value)" in long, text


@pytest.mark.asyncio
async def test_every_sink_and_the_process_time_are_listed(tmp_path: Path) -> None:
    plan = view_plan(tmp_path)
    reactor = plan.emulators[0].instance
    async with running(plan) as (gateway, _task):
        await all_shown(gateway)
        before = reactor.process_time_h()
        text = render(gateway, 80)
        after = reactor.process_time_h()
        live = gateway.feeders[0]

    # The sink fed live (as the OPC UA server is) is listed beside the forwarding one.
    assert re.search(r"^sink opcua_like: live \d+ delivered, queued \d+$", text, re.M), text
    assert re.search(r"^sink archive: up \d+ delivered \(\d+ historical\), backlog", text, re.M)
    shown = re.search(r"^process time reactor: (\d+\.\d\d) h \(day \d+\.\d\d\)$", text, re.M)
    assert shown is not None, text
    assert before - 0.005 <= float(shown[1]) <= after + 0.005
    assert live.delivered > 0


@pytest.mark.asyncio
async def test_the_summary_logs_list_every_sink_and_the_process_time(tmp_path: Path) -> None:
    plan = view_plan(tmp_path, view={"log_every_s": 0.05})
    with capture_logs() as logs:
        async with running(plan) as (gateway, _task):
            await all_shown(gateway)

            def logged(event: str, **fields: Any) -> bool:
                return any(
                    e["event"] == event and all(e.get(k) == v for k, v in fields.items())
                    for e in list(logs)
                )

            await wait_for(lambda: logged("sink", sink="opcua_like", state="live"), what="live")
            await wait_for(lambda: logged("sink", sink="archive", state="up"), what="archive")
            await wait_for(lambda: logged("process", emulator="reactor"), what="process time")
            await wait_for(lambda: logged("signal", unit="[pH]"), what="signal lines")
