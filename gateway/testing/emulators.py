"""An emulator started by type and options, as ``patgw emulate`` starts one, for a test."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from pydantic import ValidationError

from ..api import Emulator, PluginContext, validation_context
from ..errors import ConfigError
from ..loader import format_loc
from ..pluginmanager import build_registry
from ..registry import PluginKind, Registry

__all__ = ["RunningEmulator"]


class RunningEmulator:
    """``async with RunningEmulator("feed_pump", {"setpoint_rpm": 120}) as emu:`` serves the
    emulator; ``emu.endpoint`` says where to connect, ``emu.instance`` is the emulator object.

    The conventions are those of ``patgw emulate``: the options get ``host: 127.0.0.1`` when the
    options model has a ``host`` field, and ``port: 0`` (any free port, chosen by the emulator's
    own bind, so no other process can take it first) when it has a ``port`` field and the test
    gave none; after the start, :attr:`endpoint` is the emulator's ``endpoint`` attribute if it
    has one (a URL, a pseudo-terminal's path), else ``host:port`` with the emulator's ``port``
    attribute (the port actually bound). Relative paths in the options resolve against
    ``config_dir`` (default: the working directory).
    """

    def __init__(
        self,
        emulator_type: str,
        options: Mapping[str, Any] | None = None,
        *,
        registry: Registry | None = None,
        emulator_id: str | None = None,
        data_dir: Path | None = None,
        config_dir: Path | None = None,
    ) -> None:
        self.type = emulator_type
        self.id = emulator_id or emulator_type
        self._raw = dict(options or {})
        self._registry = registry
        self._data_dir = data_dir if data_dir is not None else Path("data").absolute()
        self._config_dir = config_dir if config_dir is not None else Path.cwd()
        self._instance: Emulator | None = None
        self._running = False
        self.options: Any = None
        """The validated options model."""

    @property
    def instance(self) -> Any:
        """The emulator object (once started; still there after the stop, to read what it
        recorded)."""
        if self._instance is None:
            raise RuntimeError(f"emulator {self.id!r} was not started")
        return self._instance

    @property
    def running(self) -> bool:
        return self._running

    @property
    def host(self) -> str:
        return str(self._raw.get("host", getattr(self.options, "host", "127.0.0.1")))

    @property
    def port(self) -> int | None:
        """The port the emulator listens on (its ``port`` attribute, else its options')."""
        port = getattr(self.instance, "port", None)
        if port is None:
            port = getattr(self.options, "port", None)
        return port if isinstance(port, int) else None

    @property
    def endpoint(self) -> str:
        endpoint = getattr(self.instance, "endpoint", None)
        if endpoint is not None:
            return str(endpoint)
        return f"{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        registry = self._registry if self._registry is not None else build_registry()
        registration = registry.get(PluginKind.EMULATOR, self.type)
        if registration is None:
            known = ", ".join(registry.names(PluginKind.EMULATOR)) or "none"
            raise ConfigError([f"unknown emulator {self.type!r} (known: {known})"])
        fields = registration.options_model.model_fields
        raw = dict(self._raw)
        if "host" in fields:
            raw.setdefault("host", "127.0.0.1")
        if "port" in fields:
            raw.setdefault("port", 0)
        try:
            self.options = registration.options_model.model_validate(
                raw, context=validation_context(self._config_dir)
            )
        except ValidationError as exc:
            raise ConfigError(
                [f"{format_loc(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)]
            ) from exc
        instance: Emulator = registration.factory(
            self.options, PluginContext(self.id, self._data_dir)
        )
        await instance.__aenter__()
        self._instance, self._running = instance, True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._running and self._instance is not None:
            self._running = False
            await self._instance.__aexit__(None, None, None)
