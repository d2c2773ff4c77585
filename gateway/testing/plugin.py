"""The ``pat_gateway`` pytest plugin (entry point ``pytest11``): the kit as fixtures.

Loaded by pytest wherever pat-gateway is installed; it imports nothing beyond pytest and the
gateway, and its fixtures are plain ones handing out async context managers, so it works with
whichever async test runner a plugin's tests use (pytest-asyncio, anyio)::

    async def test_balance(start_emulator, run_gateway, tmp_path):
        async with start_emulator("mtsics_balance", weight_g=12.5) as emulator:
            ...

Fixtures: ``patgw_registry`` (session: every installed plugin), ``recording_io``,
``start_emulator``, ``run_gateway``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..api import Driver
from ..loader import Plan
from ..pluginmanager import build_registry
from ..registry import Registry
from .emulators import RunningEmulator
from .instrument import RecordingIO
from .runner import GatewayRun

__all__ = ["patgw_registry", "recording_io", "run_gateway", "start_emulator"]


@pytest.fixture(scope="session")
def patgw_registry() -> Registry:
    """Every installed plugin (``pat_gateway`` entry points), loaded once per session."""
    return build_registry()


@pytest.fixture
def recording_io() -> Callable[..., RecordingIO]:
    """``recording_io(driver, instrument_id="instrument", signals=None)``: a
    :class:`~gateway.testing.RecordingIO` for ``driver``."""

    def make(
        driver: Driver,
        instrument_id: str = "instrument",
        *,
        signals: Sequence[Mapping[str, Any]] | None = None,
    ) -> RecordingIO:
        return RecordingIO(driver, instrument_id, signals=signals)

    return make


@pytest.fixture
def start_emulator(patgw_registry: Registry, tmp_path: Path) -> Callable[..., RunningEmulator]:
    """``start_emulator(type, **options)``: an installed emulator to start with ``async with``
    (on a free port unless ``port`` is given); ``.endpoint`` says where it serves. Its data
    folder is in the test's ``tmp_path``."""

    def make(emulator_type: str, /, **options: Any) -> RunningEmulator:
        return RunningEmulator(
            emulator_type,
            options,
            registry=patgw_registry,
            data_dir=tmp_path / "emulators",
            config_dir=tmp_path,
        )

    return make


@pytest.fixture
def run_gateway(tmp_path: Path) -> Callable[..., GatewayRun]:
    """``run_gateway(config, plugins=(), entry_points=True)``: a gateway to run with ``async
    with``. ``config`` is a configuration file, a :class:`~gateway.Plan`, or a mapping (written
    to ``tmp_path/gateway.yaml``, with ``area: test``, the store and ``data_dir`` in
    ``tmp_path`` unless it sets them)."""

    def make(
        config: Path | str | Plan | Mapping[str, Any],
        *,
        plugins: Iterable[object] = (),
        entry_points: bool = True,
    ) -> GatewayRun:
        if isinstance(config, Mapping):
            written = {
                "area": "test",
                "store": {"path": str(tmp_path / "store.sqlite"), "commit_interval_ms": 20},
                "data_dir": str(tmp_path / "data"),
                **config,
            }
            path = tmp_path / "gateway.yaml"
            path.write_text(yaml.safe_dump(written, sort_keys=False), encoding="utf-8")
            config = path
        return GatewayRun(config, plugins=plugins, entry_points=entry_points)

    return make
