"""The registry that plugin hooks fill: named factories of drivers, sinks, processors, emulators,
``patgw`` sub-commands and the model kinds of ``patgw model``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from .errors import PluginError

__all__ = [
    "BUILT_IN_COMMANDS",
    "ModelConfigure",
    "ModelHandler",
    "ModelKind",
    "PluginKind",
    "Registration",
    "Registry",
]

#: ``patgw`` commands of the core, which no plugin may register.
BUILT_IN_COMMANDS = frozenset(
    {
        "run",
        "check",
        "schema",
        "plugins",
        "export",
        "backup",
        "emulate",
        "hash-password",
        "audit",
        "write",
        "command",
        "model",
        "service",
    }
)


class PluginKind(StrEnum):
    """What a registered factory builds."""

    DRIVER = "driver"
    SINK = "sink"
    PROCESSOR = "processor"
    EMULATOR = "emulator"
    COMMAND = "command"
    MODEL = "model"


#: What a model kind's ``fit``, ``show`` or ``check`` hands back: runs the parsed arguments,
#: returns the exit code (0 success, 2 a usage or input error, one line on standard error).
ModelHandler = Callable[[argparse.Namespace], int]
#: Adds a model kind's arguments to the parser ``patgw model`` gives it; returns the handler.
ModelConfigure = Callable[[argparse.ArgumentParser], ModelHandler]


@dataclass(frozen=True, slots=True)
class ModelKind:
    """A kind of model file that ``patgw model`` fits, shows and checks (``pls``, ``twin``...).

    Each member configures the parser of one action and returns its handler. ``patgw model``
    adds the ``FILE`` argument (``args.model``, a :class:`~pathlib.Path`) to the parsers of
    ``show`` and ``check`` and ``--config``/``--user``/``--reason`` to that of ``fit``, whose
    parser must have ``--output`` (the file it writes: recorded in the audit trail).
    """

    name: str
    fit: ModelConfigure
    show: ModelConfigure
    check: ModelConfigure
    description: str


class _NoOptions(BaseModel):
    """A command takes command-line arguments, not configuration options."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class Registration:
    """One registered factory and where it came from."""

    kind: PluginKind
    name: str
    factory: Callable[..., Any]
    options_model: type[BaseModel]
    description: str
    plugin: str
    distribution: str | None
    version: str | None


class Registry:
    """Named factories, one namespace per kind. Filled by the hooks of :mod:`gateway.hookspecs`."""

    def __init__(self) -> None:
        self._entries: dict[tuple[PluginKind, str], Registration] = {}
        self._model_kinds: dict[str, ModelKind] = {}
        # Set by the plugin manager while it calls one plugin's hooks, so that every entry
        # records which plugin and distribution provided it.
        self._origin: tuple[str, str | None, str | None] = ("<unknown>", None, None)

    def add_driver(
        self,
        name: str,
        factory: Callable[..., Any],
        options_model: type[BaseModel],
        description: str = "",
    ) -> None:
        """Register an instrument driver under ``name`` (the ``driver:`` value in a config)."""
        self._add(PluginKind.DRIVER, name, factory, options_model, description)

    def add_sink(
        self,
        name: str,
        factory: Callable[..., Any],
        options_model: type[BaseModel],
        description: str = "",
    ) -> None:
        """Register an upstream sink under ``name`` (the ``type:`` value of a sink)."""
        self._add(PluginKind.SINK, name, factory, options_model, description)

    def add_processor(
        self,
        name: str,
        factory: Callable[..., Any],
        options_model: type[BaseModel],
        description: str = "",
    ) -> None:
        """Register a processor under ``name``."""
        self._add(PluginKind.PROCESSOR, name, factory, options_model, description)

    def add_emulator(
        self,
        name: str,
        factory: Callable[..., Any],
        options_model: type[BaseModel],
        description: str = "",
    ) -> None:
        """Register an emulated instrument under ``name`` (the ``type:`` value of an emulator)."""
        self._add(PluginKind.EMULATOR, name, factory, options_model, description)

    def add_command(
        self,
        name: str,
        configure: Callable[..., Any],
        description: str = "",
    ) -> None:
        """Register the ``patgw NAME`` sub-command: ``configure(parser)`` adds its arguments to
        an :class:`argparse.ArgumentParser` and returns its handler, ``handler(args) -> int``."""
        if name in BUILT_IN_COMMANDS:
            raise PluginError(f"{self._origin[0]}: command {name!r} is built into patgw")
        self._add(PluginKind.COMMAND, name, configure, _NoOptions, description)

    def add_model_kind(
        self,
        name: str,
        *,
        fit: ModelConfigure,
        show: ModelConfigure,
        check: ModelConfigure,
        description: str = "",
    ) -> None:
        """Register a kind of model file for ``patgw model``: ``patgw model fit NAME ...`` runs
        ``fit``; ``show`` and ``check`` run for a file whose ``"kind"`` member is ``name``
        (``pls`` for a file without one). See :class:`ModelKind`."""
        self._add(PluginKind.MODEL, name, fit, _NoOptions, description)
        self._model_kinds[name] = ModelKind(name, fit, show, check, description)

    def model_kind(self, name: str) -> ModelKind | None:
        """The model kind registered as ``name``, or ``None``."""
        return self._model_kinds.get(name)

    def get(self, kind: PluginKind, name: str) -> Registration | None:
        """The registration of ``name`` for ``kind``, or ``None``."""
        return self._entries.get((kind, name))

    def names(self, kind: PluginKind) -> list[str]:
        """Sorted names registered for ``kind``."""
        return sorted(name for k, name in self._entries if k is kind)

    def __iter__(self) -> Iterator[Registration]:
        return iter(sorted(self._entries.values(), key=lambda r: (r.kind.value, r.name)))

    def _add(
        self,
        kind: PluginKind,
        name: str,
        factory: Callable[..., Any],
        options_model: type[BaseModel],
        description: str,
    ) -> None:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(f"{self._origin[0]}: invalid {kind} name {name!r}")
        if not (isinstance(options_model, type) and issubclass(options_model, BaseModel)):
            raise PluginError(f"{self._origin[0]}: {kind} {name!r} needs a pydantic options model")
        existing = self._entries.get((kind, name))
        if existing is not None:
            raise PluginError(
                f"{kind} {name!r} registered twice: by {existing.plugin} and by {self._origin[0]}"
            )
        plugin, dist, version = self._origin
        self._entries[(kind, name)] = Registration(
            kind, name, factory, options_model, description, plugin, dist, version
        )
