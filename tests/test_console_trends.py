"""The console's trends page and its data (GET /trends, /trends/data) against a running gateway
reading the emulated feed pump: points read back from the store's rollups and live tail, every
refusal with its status, and a gateway with trends turned off."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, plan_for, running, wait_for
from test_console import Console, _config, console  # noqa: F401  (the fixture)
from test_http import Response

from gateway.store import SampleStore

SPEED = "reactor1/pump/speed"


async def _data(bench: Console, cookie: str, query: str) -> Response:
    return await bench.request("GET", f"/trends/data?{query}", cookie=cookie)


@pytest.mark.asyncio
async def test_the_trends_page_and_its_points_from_the_store(console: Console) -> None:  # noqa: F811
    cookie, _ = await console.login("viewer")  # reading is enough
    page = await console.request("GET", "/trends", cookie=cookie)
    assert page.status == 200
    assert b'<a href="/trends">Trends</a>' in page.body
    assert b'src="/static/trends.js"' in page.body and b"<script>" not in page.body
    # The scalar signals are offered; the first few are charted by default, with their units.
    offered = re.findall(rb'<option value="([^"]+)"', page.body)
    assert SPEED.encode() in offered
    charted = re.findall(rb'<section class="trend" data-signal="([^"]+)"', page.body)
    assert 1 <= len(charted) <= 4 and set(charted) <= set(offered)
    chosen = await console.request(
        "GET", f"/trends?signal={SPEED}&signal=nope&window=3600", cookie=cookie
    )
    assert re.findall(rb'<section class="trend" data-signal="([^"]+)"', chosen.body) == [
        SPEED.encode()
    ]
    assert b'data-unit="rpm ({rev}/min)"' in chosen.body
    assert b'<option value="3600" selected>' in chosen.body

    answers: list[dict[str, Any]] = []

    async def enough() -> bool:
        answer = await _data(console, cookie, f"signal={SPEED}&window=60&points=600")
        if answer.status != 200:
            return False
        answers.append(json.loads(answer.body))
        return len(answers[-1]["signals"][SPEED]["t"]) >= 20

    for _ in range(300):
        if await enough():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"no points: {answers[-1:]}")
    got = answers[-1]["signals"][SPEED]
    assert (got["unit"], got["human_unit"]) == ("{rev}/min", "rpm")
    assert got["behind"] == 0
    assert got["t"] == sorted(got["t"]) and len(got["t"]) <= 600
    # Each point's mean lies within its min and max; the emulated pump runs at its setpoint.
    for lo, mean, hi in zip(got["lo"], got["mean"], got["hi"], strict=True):
        assert lo <= mean <= hi
    assert max(got["hi"]) > 0
    # A zoom by start and end (milliseconds) gives the same points within it.
    start_ms, end_ms = int(got["t"][0] * 1000), int(got["t"][-1] * 1000) + 1
    zoomed = await _data(console, cookie, f"signal={SPEED}&start={start_ms}&end={end_ms}")
    assert zoomed.status == 200
    points = json.loads(zoomed.body)["signals"][SPEED]
    assert points["t"] and start_ms / 1000 <= points["t"][0] and points["t"][-1] < end_ms / 1000

    # The store holds the samples the trend counted (the trend is read from it, not memory).
    await wait_for(lambda: console.gateway.trends.stats.rolled_id > 0, what="a roll-up")
    store = SampleStore(console.plan.config.store.path, read_only=True)
    try:
        stored = [s for s in store.samples() if s.signal == SPEED]
    finally:
        store.close()
    assert stored and max(s.value for s in stored) >= max(got["hi"])


@pytest.mark.asyncio
async def test_trend_data_refusals(console: Console) -> None:  # noqa: F811
    for path in (f"/trends/data?signal={SPEED}", "/spectra/data", "/models/data"):
        assert (await console.request("GET", path)).status == 401  # fetched: no redirect
    cookie, _ = await console.login("operator")
    many = "&".join(f"signal={SPEED}{i}" for i in range(9))
    for query, why in (
        ("", b"at least one signal"),
        ("signal=reactor1/pump/nope", b"no such scalar signal"),
        (many, b"at most 8"),
        (f"signal={SPEED}&points=5", b"points must be"),
        (f"signal={SPEED}&points=2001", b"points must be"),
        (f"signal={SPEED}&points=x", b"points must be an integer"),
        (f"signal={SPEED}&window=0", b"window must be"),
        (f"signal={SPEED}&window=700000", b"window must be"),
        (f"signal={SPEED}&start=2000&end=1000", b"end must be after start"),
        (f"signal={SPEED}&start=-5&end=1000", b"1970 .. 2200"),
        (f"signal={SPEED}&start=0&end={8 * 86_400_000}", b"at most 7 days apart"),
        ("&".join(["x=1"] * 20), b"too many query fields"),
    ):
        answer = await _data(console, cookie, query)
        assert answer.status == 400 and why in answer.body, (query, answer.body)
    # Another site's page cannot read the data or the live stream (its Origin is refused).
    for path in (f"/trends/data?signal={SPEED}", "/events", "/spectra/data", "/models/data"):
        forged = await console.request(
            "GET", path, cookie=cookie, headers=["Origin: http://evil.example"]
        )
        assert forged.status == 403 and b"another site" in forged.body, path
    too_many = "&".join(["signal=x"] * 20)
    assert (await console.request("GET", f"/trends?{too_many}", cookie=cookie)).status == 400
    # Nothing of this stopped anything: the pump is still read.
    seq = console.gateway.outputs[0].seq
    await wait_for(lambda: console.gateway.outputs[0].seq > seq, what="more samples")


@pytest.mark.asyncio
async def test_a_gateway_with_trends_off_says_so(tmp_path: Path) -> None:
    port = free_port()
    config = _config(port, free_port(), 900.0)
    config["store"] = {"path": str(tmp_path / "store.sqlite"), "trends": False}
    plan = plan_for(tmp_path, **config)
    async with running(plan) as (gateway, _):
        console = Console(gateway, plan, port)
        cookie, _ = await console.login("viewer")
        page = await console.request("GET", "/trends", cookie=cookie)
        assert page.status == 200 and b"Trends are off" in page.body
        assert b'<section class="trend"' not in page.body
        answer = await _data(console, cookie, f"signal={SPEED}")
        assert answer.status == 404 and b"store.trends: false" in answer.body
