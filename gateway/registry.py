"""The registry that plugin hooks fill: named factories of drivers, sinks, processors, emulators,
``patgw`` sub-commands and the model kinds of ``patgw model``.

Each plugin's hooks fill a registry of their own, bound to the plugin (which records who made
each registration); the plugin manager merges it into the gateway's only when all of that
plugin's hooks succeeded. A contract error (a malformed capability, a broken options model, a
bad name) raises :class:`~gateway.errors.PluginError` and refuses the whole plugin; a name two
plugins both register is refused for both (:meth:`Registry.unavailable` says why).

A registration may name the modules its factory needs beyond the gateway's core
(``requires=("asyncua",)``) and the extra of its distribution that installs them
(``extra="opcua"``): the plugin is listed and its options model used (``patgw plugins``,
``patgw schema``) even where they are missing, and a configuration that uses it fails
``patgw check`` naming the plugin, the modules and the extra (:func:`missing_text`).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from pydantic import BaseModel, ConfigDict

from .capabilities import capability_problems
from .errors import PluginError

if TYPE_CHECKING:
    from .api import DriverFactory, EmulatorFactory, ProcessorFactory, SinkFactory

__all__ = [
    "BUILT_IN_COMMANDS",
    "CommandConfigure",
    "ModelConfigure",
    "ModelHandler",
    "ModelKind",
    "PluginKind",
    "PluginRefusal",
    "Registration",
    "Registry",
    "missing_text",
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


#: What ``patgw NAME`` (a plugin's command) is registered with: the same form as a model kind's.
CommandConfigure = ModelConfigure

FactoryT = TypeVar("FactoryT")


def plugin_label(plugin: str, distribution: str | None, version: str | None) -> str:
    """How errors name a plugin: its name and the distribution that installed it."""
    if distribution is None:
        return f"plugin {plugin!r} (not from an installed distribution)"
    return f"plugin {plugin!r} ({distribution} {version})"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except Exception:
        # A parent package missing, or one that raises at import (finding ``a.b`` imports
        # ``a``): either way the plugin cannot run here, and listing the others must go on.
        return False


def missing_text(registration: Registration[Any], modules: Sequence[str], extra: str | None) -> str:
    """What a registration needs that is not installed, and how to install it: ``needs the
    extra [opcua] (asyncua is not installed): pip install 'pat-gateway[opcua]'``."""
    verb = "is" if len(modules) == 1 else "are"
    names = ", ".join(modules)
    if extra is None:
        label = plugin_label(registration.plugin, registration.distribution, registration.version)
        return f"needs {names}, which {verb} not installed ({label} names no extra for it)"
    text = f"needs the extra [{extra}] ({names} {verb} not installed)"
    if registration.distribution is None:
        return text
    return f"{text}: pip install '{registration.distribution}[{extra}]'"


def _requirements(
    label: str, kind: PluginKind, name: str, requires: Sequence[str], extra: str | None
) -> tuple[str, ...]:
    """``requires`` as a tuple of module names, checked."""
    if isinstance(requires, str) or not all(
        isinstance(m, str) and m and all(part.isidentifier() for part in m.split("."))
        for m in requires
    ):
        raise PluginError(
            f"{label}: {kind} {name!r}: requires must be a sequence of module names,"
            f" not {requires!r}"
        )
    if extra is not None and (
        not isinstance(extra, str) or not extra.replace("-", "").replace("_", "").isalnum()
    ):
        raise PluginError(f"{label}: {kind} {name!r}: extra must be an extra's name, not {extra!r}")
    return tuple(requires)


@dataclass(frozen=True, slots=True)
class PluginRefusal:
    """A plugin (or one name it registered) that the gateway does not use, and why."""

    plugin: str
    distribution: str | None
    version: str | None
    reason: str
    kind: PluginKind | None = None
    """With ``name``: only this registration is refused (a name two plugins both register)."""
    name: str | None = None

    def __str__(self) -> str:
        if self.name is not None:  # a clash: the reason names every plugin involved
            return self.reason
        return f"{plugin_label(self.plugin, self.distribution, self.version)}: {self.reason}"


class _NoOptions(BaseModel):
    """A command takes command-line arguments, not configuration options."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class Registration(Generic[FactoryT]):
    """One registered factory and where it came from."""

    kind: PluginKind
    name: str
    factory: FactoryT
    options_model: type[BaseModel]
    description: str
    plugin: str
    distribution: str | None
    version: str | None
    api: str | None = None
    """The plugin-API version the plugin declares (``PAT_GATEWAY_API``), ``None`` if none."""
    requires: tuple[str, ...] = ()
    """Modules the factory needs beyond the gateway's core (``("asyncua",)``)."""
    extra: str | None = None
    """The extra of the plugin's distribution that installs ``requires`` (``"opcua"``)."""

    def missing(self) -> tuple[str, ...]:
        """The modules of ``requires`` that cannot be imported here."""
        return tuple(m for m in self.requires if not _importable(m))


class Registry:
    """Named factories, one namespace per kind. Filled by the hooks of :mod:`gateway.hookspecs`."""

    def __init__(
        self,
        origin: tuple[str, str | None, str | None] = ("<unknown>", None, None),
        api: str | None = None,
    ) -> None:
        self._entries: dict[tuple[PluginKind, str], Registration[Any]] = {}
        self._model_kinds: dict[str, ModelKind] = {}
        # The plugin (name, distribution, version) whose hooks fill this registry, and the API
        # version it declares: the plugin manager gives each plugin a registry of its own, so
        # every entry records which plugin and distribution provided it.
        self._origin = origin
        self._api = api
        #: Plugins and names the plugin manager refused, with why (``patgw plugins``).
        self.refused: list[PluginRefusal] = []
        self._clashes: dict[tuple[PluginKind, str], str] = {}

    def add_driver(
        self,
        name: str,
        factory: DriverFactory,
        options_model: type[BaseModel],
        description: str = "",
        *,
        requires: Sequence[str] = (),
        extra: str | None = None,
    ) -> None:
        """Register an instrument driver under ``name`` (the ``driver:`` value in a config).

        ``requires``: modules the factory imports beyond the gateway's core (import them inside
        the factory, not at the plugin module's top, so the plugin loads without them);
        ``extra``: the extra of your distribution that installs them. The same for every
        ``add_*`` method."""
        self._add(PluginKind.DRIVER, name, factory, options_model, description, requires, extra)

    def add_sink(
        self,
        name: str,
        factory: SinkFactory,
        options_model: type[BaseModel],
        description: str = "",
        *,
        requires: Sequence[str] = (),
        extra: str | None = None,
    ) -> None:
        """Register an upstream sink under ``name`` (the ``type:`` value of a sink)."""
        self._add(PluginKind.SINK, name, factory, options_model, description, requires, extra)

    def add_processor(
        self,
        name: str,
        factory: ProcessorFactory,
        options_model: type[BaseModel],
        description: str = "",
        *,
        requires: Sequence[str] = (),
        extra: str | None = None,
    ) -> None:
        """Register a processor under ``name``."""
        self._add(PluginKind.PROCESSOR, name, factory, options_model, description, requires, extra)

    def add_emulator(
        self,
        name: str,
        factory: EmulatorFactory,
        options_model: type[BaseModel],
        description: str = "",
        *,
        requires: Sequence[str] = (),
        extra: str | None = None,
    ) -> None:
        """Register an emulated instrument under ``name`` (the ``type:`` value of an emulator)."""
        self._add(PluginKind.EMULATOR, name, factory, options_model, description, requires, extra)

    def add_command(
        self,
        name: str,
        configure: CommandConfigure,
        description: str = "",
        *,
        requires: Sequence[str] = (),
        extra: str | None = None,
    ) -> None:
        """Register the ``patgw NAME`` sub-command: ``configure(parser)`` adds its arguments to
        an :class:`argparse.ArgumentParser` and returns its handler, ``handler(args) -> int``."""
        if name in BUILT_IN_COMMANDS:
            raise PluginError(f"{self._label()}: command {name!r} is built into patgw")
        self._add(PluginKind.COMMAND, name, configure, _NoOptions, description, requires, extra)

    def add_model_kind(
        self,
        name: str,
        *,
        fit: ModelConfigure,
        show: ModelConfigure,
        check: ModelConfigure,
        description: str = "",
        requires: Sequence[str] = (),
        extra: str | None = None,
    ) -> None:
        """Register a kind of model file for ``patgw model``: ``patgw model fit NAME ...`` runs
        ``fit``; ``show`` and ``check`` run for a file whose ``"kind"`` member is ``name``
        (``pls`` for a file without one). See :class:`ModelKind`. ``requires``/``extra``: what
        its actions need beyond the core (``patgw model`` says what to install when missing)."""
        self._add(PluginKind.MODEL, name, fit, _NoOptions, description, requires, extra)
        self._model_kinds[name] = ModelKind(name, fit, show, check, description)

    def model_kind(self, name: str) -> ModelKind | None:
        """The model kind registered as ``name``, or ``None``."""
        return self._model_kinds.get(name)

    @overload
    def get(
        self, kind: Literal[PluginKind.DRIVER], name: str
    ) -> Registration[DriverFactory] | None: ...
    @overload
    def get(
        self, kind: Literal[PluginKind.SINK], name: str
    ) -> Registration[SinkFactory] | None: ...
    @overload
    def get(
        self, kind: Literal[PluginKind.PROCESSOR], name: str
    ) -> Registration[ProcessorFactory] | None: ...
    @overload
    def get(
        self, kind: Literal[PluginKind.EMULATOR], name: str
    ) -> Registration[EmulatorFactory] | None: ...
    @overload
    def get(
        self, kind: Literal[PluginKind.COMMAND, PluginKind.MODEL], name: str
    ) -> Registration[CommandConfigure] | None: ...
    @overload
    def get(self, kind: PluginKind, name: str) -> Registration[Any] | None: ...
    def get(self, kind: PluginKind, name: str) -> Registration[Any] | None:
        """The registration of ``name`` for ``kind``, or ``None``."""
        return self._entries.get((kind, name))

    def unavailable(self, kind: PluginKind, name: str) -> str | None:
        """Why ``name`` is not registered for ``kind`` though a plugin may have meant it: two
        plugins registered it, or plugins were refused (their names are then unknown); ``None``
        when no plugin was refused."""
        clash = self._clashes.get((kind, name))
        if clash is not None:
            return clash
        plugins = [r for r in self.refused if r.name is None]
        if not plugins:
            return None
        return "refused plugins (see 'patgw plugins'): " + "; ".join(map(str, plugins))

    def merge(self, plugin: Registry) -> None:
        """Add what ``plugin`` (a plugin's own registry, its hooks all run) registered. A name
        another plugin registered too is refused for both: which one a configuration would get
        must not depend on the order distributions are found in."""
        for key, entry in plugin._entries.items():
            clash = self._clashes.get(key)
            if clash is not None:  # a third plugin with the name
                label = plugin_label(entry.plugin, entry.distribution, entry.version)
                self.refused.append(self._clash_refusal(entry, f"{clash}; also by {label}"))
                continue
            taken = self._entries.pop(key, None)
            if taken is None:
                self._entries[key] = entry
                if entry.kind is PluginKind.MODEL:
                    self._model_kinds[entry.name] = plugin._model_kinds[entry.name]
                continue
            if entry.kind is PluginKind.MODEL:
                del self._model_kinds[entry.name]
            self._refuse_clash(taken, entry)

    def _refuse_clash(self, first: Registration[Any], second: Registration[Any]) -> None:
        # Sorted: the message must not depend on the order distributions are found in either.
        names = " and ".join(
            sorted(plugin_label(r.plugin, r.distribution, r.version) for r in (first, second))
        )
        why = (
            f"{first.kind} {first.name!r} is registered by {names}; neither is used"
            " (uninstall one, or block one with PATGW_DISABLE_PLUGINS)"
        )
        self._clashes[(first.kind, first.name)] = why
        self.refused.extend(self._clash_refusal(r, why) for r in (first, second))

    @staticmethod
    def _clash_refusal(entry: Registration[Any], why: str) -> PluginRefusal:
        return PluginRefusal(
            entry.plugin, entry.distribution, entry.version, why, entry.kind, entry.name
        )

    def _label(self) -> str:
        return plugin_label(*self._origin)

    def names(self, kind: PluginKind) -> list[str]:
        """Sorted names registered for ``kind``."""
        return sorted(name for k, name in self._entries if k is kind)

    def __iter__(self) -> Iterator[Registration[Any]]:
        return iter(sorted(self._entries.values(), key=lambda r: (r.kind.value, r.name)))

    def _add(
        self,
        kind: PluginKind,
        name: str,
        factory: object,
        options_model: type[BaseModel],
        description: str,
        requires: Sequence[str] = (),
        extra: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(f"{self._label()}: invalid {kind} name {name!r}")
        if not (isinstance(options_model, type) and issubclass(options_model, BaseModel)):
            raise PluginError(
                f"{self._label()}: {kind} {name!r}: the options model must be a pydantic model"
                f" class, not {options_model!r}"
            )
        if options_model is not _NoOptions:
            try:
                # What `patgw schema` and the configuration reference need: a model with an
                # unresolved forward reference, or a field pydantic cannot describe, fails here.
                options_model.model_json_schema()
            except Exception as exc:
                raise PluginError(
                    f"{self._label()}: {kind} {name!r}: the options model"
                    f" {options_model.__qualname__} is broken: {exc}"
                ) from exc
        if not callable(factory):
            raise PluginError(f"{self._label()}: {kind} {name!r}: the factory is not callable")
        if inspect.isclass(factory):
            # A factory that is a function is checked on what it builds, by the loader.
            problems = capability_problems(kind, factory)
            if problems:
                raise PluginError(
                    f"{self._label()}: {kind} {name!r} ({factory.__qualname__}) "
                    + "; ".join(problems)
                )
        needed = _requirements(self._label(), kind, name, requires, extra)
        existing = self._entries.get((kind, name))
        if existing is not None:
            raise PluginError(f"{self._label()}: {kind} {name!r} registered twice")
        plugin, dist, version = self._origin
        self._entries[(kind, name)] = Registration(
            kind,
            name,
            factory,
            options_model,
            description,
            plugin,
            dist,
            version,
            self._api,
            needed,
            extra,
        )
