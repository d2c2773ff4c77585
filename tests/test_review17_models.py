"""Review of issue 17 (hostile reviewer): a processor plugin whose ``status()`` returns values
JSON cannot carry (a datetime, NaN) takes down /models/data and /spectra/data for every
processor, where a ``status()`` that raises is contained (shown without it, logged once).

These tests fail on the code as merged."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import free_port, running, wait_for, write_config
from test_console_models import SPECTRUM, Bench, NoOptions, Spread
from test_console_models import Plugin as ModelsPlugin
from test_console_models import _config as models_config

import plugins.softsensor.plugin as softsensor_plugin
from gateway import Registry, build_registry, hookimpl, load_plan


class Careless(Spread):
    """A plugin's processor whose status carries a datetime and a NaN (a careless plugin: the
    local API's document is its dict as it is)."""

    def status(self) -> Mapping[str, Any]:
        since = datetime(2026, 12, 7, tzinfo=UTC)
        return {
            "limits": {"level": 0.95},
            "input": SPECTRUM,
            "bands": [
                {"use": "glucose", "low": 1100.0, "high": math.nan, "unit": "cm-1", "at": since}
            ],
            "alarms": {"drift": {"state": "active", "since": since, "score": math.nan}},
        }


class Plugin:
    @hookimpl
    def pat_gateway_register_processors(self, registry: Registry) -> None:
        registry.add_processor("careless", Careless, NoOptions)


@pytest_asyncio.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    port = free_port()
    config = models_config(tmp_path, port)
    config["processors"] = [
        {"id": "spread", "type": "spread"},
        {"id": "careless", "type": "careless"},
    ]
    registry = build_registry([ModelsPlugin(), Plugin(), softsensor_plugin], entry_points=False)
    plan = load_plan(write_config(tmp_path / "g.yaml", config), registry)
    async with running(plan) as (gateway, _):
        await wait_for(lambda: len(gateway.processors) == 2, what="the processors running")
        yield Bench(gateway, plan, port)


@pytest.mark.asyncio
async def test_models_data_survives_a_status_json_cannot_carry(bench: Bench) -> None:
    cookie, _ = await bench.login("viewer")
    answer = await bench.request("GET", "/models/data", cookie=cookie)
    assert answer.status == 200, answer.body  # 500 "internal error": TypeError in json.dumps
    # What the browser's response.json() accepts: strict JSON (no NaN).
    json.loads(answer.body, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))


@pytest.mark.asyncio
async def test_spectra_data_survives_bands_json_cannot_carry(bench: Bench) -> None:
    cookie, _ = await bench.login("viewer")

    deadline = asyncio.get_running_loop().time() + 20
    while True:  # until a spectrum is stored (its axis' unit selects the bands), or an error
        answer = await bench.request("GET", f"/spectra/data?signal={SPECTRUM}&n=1", cookie=cookie)
        if answer.status != 200 or json.loads(answer.body)["spectra"]:
            break
        assert asyncio.get_running_loop().time() < deadline, "no spectrum stored"
        await asyncio.sleep(0.1)
    assert answer.status == 200, answer.body  # 500: TypeError in the worker's json.dumps
    json.loads(answer.body, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))
