"""The console's spectra and models pages over real sockets, against a running gateway: a
spectrometer publishing spectra on the soft-sensor model's axis, the ``pls`` soft sensor on it,
an ``anomaly`` processor with one alarm, and a processor publishing a value with its sd.

The spectra's data come from the store (the newest N, newest first, on their axis, with the
model's bands); the models page shows predictions, limits, ± sd and alarms; an alarm is
acknowledged only by a user with the command's permission, with the session's CSRF token and a
reason, through the processor's command (audited by it), exactly as the local API does."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import pytest_asyncio
from conftest import free_port, running, wait_for, write_config
from pydantic import BaseModel, ConfigDict
from test_anomaly_processor import CHECK, Dial
from test_console import Console as ConsoleClient
from test_controlled_writes import HASHES, PASSWORDS, api_call, audit_records

import plugins.anomaly.plugin as anomaly_plugin
import plugins.softsensor.plugin as softsensor_plugin
from gateway import (
    Channel,
    InstrumentIO,
    PluginContext,
    ProcessorIO,
    Quality,
    Registry,
    Sample,
    Signal,
    SignalKind,
    Spectrum,
    build_registry,
    hookimpl,
    load_plan,
)
from gateway.console.spectra import MAX_SPECTRA
from gateway.loader import Plan
from gateway.runtime import Gateway
from gateway.store.sqlite import SampleStore
from plugins.softsensor.model import load_model

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "configs" / "models" / "raman-glucose-lactate.json"
SPECTRUM = "t/spec/spectrum"
ALARM = "watch/feed_pump_wear"


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Spectrometer:
    """Publishes spectrum k (from 0) as ``k + linspace(0, 1)`` on the model's axis: the store's
    seq of a spectrum is its k, so a test knows what each stored spectrum must hold."""

    published: ClassVar[int] = 0

    def __init__(self, options: NoOptions, context: PluginContext) -> None:
        self.axis = load_model(MODEL).axis

    def channels(self) -> Sequence[Channel]:
        return [Channel("spectrum", "{counts}", SignalKind.SPECTRUM)]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        ramp = np.linspace(0.0, 1.0, len(self.axis))
        k = 0
        while True:
            io.output("spectrum").publish(Spectrum(ramp + k, self.axis))
            k += 1
            Spectrometer.published = k
            await asyncio.sleep(0.01)


class Spread:
    """A processor like the twin: ``level`` (the input) with its sd ``level_sd`` (0.05), and
    the limit of ``level`` in its status (0.95)."""

    def __init__(self, options: NoOptions, context: PluginContext) -> None:
        pass

    def inputs(self) -> Sequence[str]:
        return ["dev/efficiency"]

    def channels(self) -> Sequence[Channel]:
        return [Channel("level", "1"), Channel("level_sd", "1")]

    def bind(self, inputs: Mapping[str, Signal]) -> None:
        pass

    def process(self, sample: Sample, io: ProcessorIO) -> None:
        io.output("level").publish(sample.value, sample.source_ts)
        io.output("level_sd").publish(0.05, sample.source_ts)

    def status(self) -> Mapping[str, Any]:
        return {"limits": {"level": 0.95}}


class Broken(Spread):
    """A processor whose ``status()`` has a bug: the pages show the others, and its outputs."""

    def status(self) -> Mapping[str, Any]:
        raise RuntimeError("a bug in status()")


class Plugin:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("dial", Dial, NoOptions)
        registry.add_driver("spectrometer", Spectrometer, NoOptions)

    @hookimpl
    def pat_gateway_register_processors(self, registry: Registry) -> None:
        registry.add_processor("spread", Spread, NoOptions)
        registry.add_processor("broken", Broken, NoOptions)


def _config(tmp_path: Path, port: int) -> dict[str, Any]:
    return {
        "area": "t",
        "data_dir": str(tmp_path / "data"),
        "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 20},
        "instruments": [
            {"id": "dev", "driver": "dial"},
            {"id": "spec", "driver": "spectrometer"},
        ],
        "processors": [
            {
                "id": "soft",
                "type": "pls",
                "options": {"model": str(MODEL), "spectrum": "spec/spectrum"},
            },
            {"id": "watch", "type": "anomaly", "options": {"checks": [CHECK]}},
            {"id": "spread", "type": "spread"},
            {"id": "broken", "type": "broken"},
        ],
        "http": {"host": "127.0.0.1", "port": port, "api": True},
        "security": {
            "users": [
                {"name": name, "password_hash": HASHES[name], "roles": [name]} for name in PASSWORDS
            ]
        },
    }


class Bench(ConsoleClient):
    def __init__(self, gateway: Gateway, plan: Plan, port: int) -> None:
        super().__init__(gateway, plan, port)

    async def data(self, cookie: str, query: str) -> tuple[int, Any]:
        answer = await self.request("GET", f"/spectra/data?{query}", cookie=cookie)
        if answer.headers.get("content-type", "").startswith("application/json"):
            return answer.status, json.loads(answer.body)
        return answer.status, answer.body.decode()

    async def alarm(self, cookie: str) -> dict[str, Any]:
        answer = await self.request("GET", "/models/data", cookie=cookie)
        assert answer.status == 200, answer.body
        alarm: dict[str, Any] = json.loads(answer.body)["alarms"][ALARM]
        return alarm

    def acknowledged(self) -> list[dict[str, Any]]:
        return [r for r in audit_records(self.plan) if r["action"] == "alarm.acknowledged"]


@pytest_asyncio.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    Dial.value = 1.0
    Spectrometer.published = 0
    port = free_port()
    registry = build_registry([Plugin(), anomaly_plugin, softsensor_plugin], entry_points=False)
    plan = load_plan(write_config(tmp_path / "g.yaml", _config(tmp_path, port)), registry)
    async with running(plan) as (gateway, _):
        yield Bench(gateway, plan, port)


async def _stored_spectra(bench: Bench, cookie: str, count: int) -> dict[str, Any]:
    """/spectra/data with ``count`` spectra once the store holds that many."""
    found: dict[str, Any] = {}

    async def enough() -> bool:
        status, document = await bench.data(cookie, f"signal={SPECTRUM}&n={count}")
        assert status == 200, document
        found.update(document)
        return len(document["spectra"]) == count

    deadline = asyncio.get_running_loop().time() + 20
    while not await enough():
        assert asyncio.get_running_loop().time() < deadline, found
        await asyncio.sleep(0.05)
    return found


@pytest.mark.asyncio
async def test_spectra_data_are_the_newest_spectra_on_their_axis_with_the_models_bands(
    bench: Bench,
) -> None:
    cookie, _csrf = await bench.login("viewer")
    page = await bench.request("GET", "/spectra", cookie=cookie)
    assert page.status == 200
    assert b'data-source="/spectra/data?signal=t%2Fspec%2Fspectrum&amp;n=5"' in page.body
    assert b"/static/spectra.js" in page.body and b'href="/spectra"' in page.body
    await wait_for(lambda: Spectrometer.published > 12, 20, what="a dozen spectra")

    document = await _stored_spectra(bench, cookie, 7)
    seqs = [s["seq"] for s in document["spectra"]]
    assert seqs == list(range(seqs[0], seqs[0] - 7, -1))  # the newest, newest first
    for spectrum in document["spectra"]:
        values = spectrum["values"]
        assert values[0] == spectrum["seq"] and values[-1] == spectrum["seq"] + 1
    model = load_model(MODEL)
    axis = document["axis"]
    assert axis["unit"] == "cm-1" and axis["label"] == "Raman shift (cm⁻¹)"
    peak = np.abs(model.axis.values).max()
    assert np.allclose(axis["values"], model.axis.values, rtol=0, atol=1e-9 * peak)
    assert document["searched_all"] is True and document["skipped"] == 0

    # The bands are the model's: the points its crop keeps, its normalisation window's points.
    kept = model.axis.values[(model.axis.values >= 400) & (model.axis.values <= 1800)]
    window = model.axis.values[(model.axis.values >= 1580) & (model.axis.values <= 1700)]
    expected = [
        {"use": "prediction", "low": kept.min(), "high": kept.max()},
        {"use": "reference", "low": window.min(), "high": window.max()},
    ]
    bands = [{k: b[k] for k in ("use", "low", "high")} for b in document["bands"]]
    assert bands == expected
    assert {b["processor"] for b in document["bands"]} == {"soft"}
    assert all(b["model"] == f"{model.id} v{model.version}" for b in document["bands"])
    # ... and the same as the processor's status in the local API serves.
    code, status = await asyncio.to_thread(
        api_call, bench.port, "GET", "/api/v1/processors/soft", "viewer", PASSWORDS["viewer"]
    )
    assert code == 200 and status["status"]["input"] == SPECTRUM
    served = [{k: b[k] for k in ("use", "low", "high")} for b in status["status"]["bands"]]
    assert served == expected


@pytest.mark.asyncio
async def test_spectra_data_refuses_unknown_signals_and_counts_out_of_range(
    bench: Bench,
) -> None:
    answer = await bench.request("GET", f"/spectra/data?signal={SPECTRUM}")
    assert answer.status == 401  # no session: fetched by a script, so no redirect
    cookie, _csrf = await bench.login("viewer")
    for signal in ("t/spec/nothing", "t/dev/efficiency", ""):  # unknown; a scalar; none
        status, text = await bench.data(cookie, f"signal={signal}&n=3")
        assert status == 404 and SPECTRUM in text, text
    # n is refused outside 1..20 (not clamped): the page offers no other value.
    for n in ("0", "21", "-1", "abc", "2.5", "1" * 400):
        status, text = await bench.data(cookie, f"signal={SPECTRUM}&n={n}")
        assert status == 400 and f"1 to {MAX_SPECTRA}" in text, (n, text)
    status, document = await bench.data(cookie, f"signal={SPECTRUM}&n={MAX_SPECTRA}")
    assert status == 200 and len(document["spectra"]) <= MAX_SPECTRA
    page = await bench.request("GET", f"/spectra?signal={SPECTRUM}&n=99", cookie=cookie)
    assert page.status == 400


@pytest.mark.asyncio
async def test_models_page_shows_predictions_limits_sd_and_alarms(bench: Bench) -> None:
    cookie, _csrf = await bench.login("viewer")
    model = load_model(MODEL)
    await wait_for(lambda: Spectrometer.published > 5 and Dial.published > 5, 20)

    async def page() -> str:
        answer = await bench.request("GET", "/models", cookie=cookie)
        assert answer.status == 200
        return answer.body.decode()

    def valued(text: str, signal: str) -> bool:
        return '<td class="value">—</td>' not in _row(text, signal).replace(" over", "")

    text = ""
    for _ in range(400):
        text = await page()
        if valued(text, "t/soft/glucose") and valued(text, "t/spread/level"):
            break
        await asyncio.sleep(0.05)
    assert valued(text, "t/soft/glucose"), _row(text, "t/soft/glucose")
    glucose = _row(text, "t/soft/glucose")
    assert "<td>glucose</td>" in glucose and "g/L" in glucose
    t2 = _row(text, "t/soft/glucose_t2")
    assert f'data-limit="{model.targets[0].t2_limit!r}"' in t2
    assert f'<td class="limit">{model.targets[0].t2_limit:.6g}</td>' in t2
    # The twin-like processor: value ± sd, over its limit (1.0 > 0.95) marked.
    level = _row(text, "t/spread/level")
    assert 'data-sd-signal="t/spread/level_sd"' in level
    assert '<td class="value over">1</td><td class="sd">± 0.05</td>' in level
    assert 't/spread/level_sd"><td>' not in text  # the sd is no row of its own
    # A processor whose status() raises: shown (its outputs, no limits), the page still served.
    assert 'data-processor="broken"' in text
    # ... and the local API serves its document too, saying what failed (it answered 500).
    code, broken = await asyncio.to_thread(
        api_call, bench.port, "GET", "/api/v1/processors/broken", "viewer", PASSWORDS["viewer"]
    )
    assert code == 200 and broken["status"] == {}, broken
    assert "a bug in status()" in broken["status_error"]
    code, listed = await asyncio.to_thread(
        api_call, bench.port, "GET", "/api/v1/processors", "viewer", PASSWORDS["viewer"]
    )
    assert code == 200 and len(listed["processors"]) >= 2
    assert "data-limit" not in _row(text, "t/broken/level")
    # An alarm row, normal, and no Acknowledge form for a viewer.
    assert 'data-alarm="watch/feed_pump_wear"' in text
    assert "Acknowledge" not in text and 'action="/models/acknowledge"' not in text
    assert b"/static/models.js" in (await bench.request("GET", "/models", cookie=cookie)).body


def _row(page: str, signal: str) -> str:
    match = re.search(rf'<tr data-signal="{re.escape(signal)}"[^>]*>.*?</tr>', page)
    assert match is not None, f"no row of {signal}"
    return match.group(0)


@pytest.mark.asyncio
async def test_an_alarm_is_acknowledged_only_by_who_may_with_the_token_and_a_reason(
    bench: Bench,
) -> None:
    viewer, viewer_csrf = await bench.login("viewer")
    operator, operator_csrf = await bench.login("operator")
    await wait_for(lambda: Dial.published > 5, 10, what="the dial publishing")
    Dial.value = 0.9
    for _ in range(400):
        if (await bench.alarm(viewer))["pending"]:
            break
        await asyncio.sleep(0.05)
    alarm = await bench.alarm(viewer)
    assert alarm["pending"] and alarm["state"] == "active, unacknowledged", alarm
    assert "tubing wear" in alarm["reason"]
    operator_page = (await bench.request("GET", "/models", cookie=operator)).body.decode()
    assert 'action="/models/acknowledge" class="ack">' in operator_page  # shown, not hidden

    form = {"processor": "watch", "alarm": "feed_pump_wear", "reason": "seen it"}

    async def post(cookie: str, **fields: str) -> tuple[int, bytes]:
        answer = await bench.request(
            "POST", "/models/acknowledge", cookie=cookie, form={**form, **fields}
        )
        return answer.status, answer.body

    # A viewer, with its own valid token: 403 (the command needs "write"), nothing changed.
    status, body = await post(viewer, csrf=viewer_csrf)
    assert status == 403 and b"may not" in body
    # An operator without the token, or with the viewer's: 403, nothing changed.
    status, body = await post(operator)
    assert status == 403 and b"CSRF" in body
    assert (await post(operator, csrf=viewer_csrf))[0] == 403
    # Without a reason: 400; an unknown alarm: 400; an unknown processor: 404.
    status, body = await post(operator, reason="  ", csrf=operator_csrf)
    assert status == 400 and b"reason" in body
    status, body = await post(operator, alarm="nothing_such", csrf=operator_csrf)
    assert status == 400 and b"feed_pump_wear" in body
    assert (await post(operator, processor="nothing", csrf=operator_csrf))[0] == 404
    assert (await bench.alarm(viewer))["pending"] is True
    assert bench.acknowledged() == []

    # The operator, with the token and a reason: acknowledged, on record as the operator's.
    status, body = await post(operator, csrf=operator_csrf)
    assert status == 200 and b"active, acknowledged" in body, body
    alarm = await bench.alarm(viewer)
    assert alarm["pending"] is False and alarm["acknowledged"] is True
    (record,) = await wait_for(bench.acknowledged, 10, what="the acknowledgement on record")
    assert record["user"] == "operator" and record["reason"] == "seen it"
    assert record["target"] == ALARM
    # Twice: nothing left to acknowledge (409).
    assert (await post(operator, csrf=operator_csrf))[0] == 409


# --- The store's walk back by id --------------------------------------------------------------


def _filled_store(path: Path) -> SampleStore:
    """A store of 100 samples: ``a`` at every tenth id (seq 0..9), ``b`` elsewhere."""
    store = SampleStore(path)
    defs = store.define([Signal("a", "1"), Signal("b", "1")])
    rows = []
    seqs = {"a": 0, "b": 0}
    for i in range(100):
        name = "a" if i % 10 == 9 else "b"
        rows.append((defs[name].def_id, seqs[name], i, i, int(Quality.GOOD), float(i), None))
        seqs[name] += 1
    store.commit(rows, dict(seqs))
    return store


def test_newest_walks_back_by_id_and_stops_at_its_bound(tmp_path: Path) -> None:
    store = _filled_store(tmp_path / "s.sqlite")
    try:
        samples, cut_short = store.newest("a", 3, scan_rows=1000)
        assert [s.seq for s in samples] == [9, 8, 7] and not cut_short
        samples, cut_short = store.newest("a", 30, scan_rows=1000)
        assert [s.seq for s in samples] == list(range(9, -1, -1)) and not cut_short
        # Only the last 25 rows searched (ids 76..100): the three of "a" in them, and the
        # answer says that it was cut short.
        samples, cut_short = store.newest("a", 5, scan_rows=25)
        assert [s.value for s in samples] == [99.0, 89.0, 79.0] and cut_short
        assert store.newest("nothing", 5, scan_rows=1000) == ([], False)
    finally:
        store.close()
    # The walk uses the primary key backwards: no sort of the window, no scan of the table.
    db = sqlite3.connect(tmp_path / "s.sqlite")
    plan = " ".join(
        str(row[-1])
        for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM sample WHERE id > ? AND def_id IN (?)"
            " ORDER BY id DESC LIMIT ?",
            (0, 1, 5),
        )
    )
    db.close()
    assert "INTEGER PRIMARY KEY" in plan and "TEMP B-TREE" not in plan, plan
