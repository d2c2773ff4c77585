"""Load a configuration file into a :class:`Plan`: validated, plugins resolved, units compiled.

Every problem found is collected and reported at once as a :class:`ConfigError` whose lines
name the path to the bad field, e.g. ``instruments[0].signals[2].unit: unknown UCUM unit
'ml/mn'``. A valid configuration may still carry warnings (:attr:`Plan.warnings`, printed by
``patgw check`` and logged by ``patgw run``): a plugin's options model contributes them by
defining ``config_warnings(self) -> Sequence[str]``, lines ``"field: message"`` relative to
its ``options:`` block.

Nothing here does I/O beyond reading the file and the environment: string values may hold
``${NAME}``, ``${NAME:-default}``, ``${NAME-default}`` and ``$$`` (see :func:`read_config`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .api import (
    Channel,
    Driver,
    PluginContext,
    Processor,
    SecretRef,
    TargetLimits,
    validation_context,
)
from .capabilities import capability_problems
from .config import EmulatorConfig, GatewayConfig, InstrumentConfig, ProcessorConfig, SinkConfig
from .control import Access, WriteTarget, resolve_commands, resolve_targets
from .errors import ConfigError, MissingDependencyError, UnitError
from .model import Signal, SignalKind
from .registry import PluginKind, Registration, Registry, missing_text, plugin_label
from .security import Authority, Permission, SecurityConfig
from .units import Conversion, compile_conversion
from .yamltext import load_yaml

__all__ = [
    "InstrumentPlan",
    "Plan",
    "ProcessorPlan",
    "SignalPlan",
    "format_loc",
    "load_plan",
    "read_config",
]


@dataclass(frozen=True, slots=True)
class SignalPlan:
    """A published signal: which driver channel feeds it and the compiled unit conversion."""

    signal: Signal
    channel: str
    conversion: Conversion


@dataclass(frozen=True, slots=True)
class InstrumentPlan:
    """An instrument ready to run: its config, its driver object and its signals."""

    config: InstrumentConfig
    driver: Driver
    signals: tuple[SignalPlan, ...]


@dataclass(frozen=True, slots=True)
class ProcessorPlan:
    """A processor ready to run: its config, the object its plugin built, the signals it reads
    (by the name the processor gave, bound already) and the signals it publishes."""

    config: ProcessorConfig
    processor: Processor
    inputs: dict[str, Signal]
    signals: tuple[SignalPlan, ...]
    controls: tuple[str, ...] = ()
    """Write targets it writes, claims or beats (declared, its role qualifies)."""
    age: Signal | None = None
    """The batch-age signal of its time base, if configured."""


@dataclass(frozen=True, slots=True)
class ComponentPlan:
    """An emulator or sink ready to enter: its config and the object its plugin built."""

    config: EmulatorConfig | SinkConfig
    instance: Any

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def type(self) -> str:
        return self.config.type


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the runtime needs, derived from one configuration file."""

    config: GatewayConfig
    source: Path
    instruments: tuple[InstrumentPlan, ...]
    emulators: tuple[ComponentPlan, ...]
    sinks: tuple[ComponentPlan, ...]
    processors: tuple[ProcessorPlan, ...] = ()
    warnings: tuple[str, ...] = ()
    """``"path: message"`` lines: valid, but probably not what is meant (see the module)."""
    access: Access = field(default_factory=lambda: Access(Authority(SecurityConfig()), {}))
    """The user base and the declared write targets, resolved."""

    @property
    def signals(self) -> list[Signal]:
        """Every published signal, in configuration order: instruments', then processors'."""
        sources: tuple[InstrumentPlan | ProcessorPlan, ...] = (*self.instruments, *self.processors)
        return [sp.signal for source in sources for sp in source.signals]


def format_loc(loc: Iterable[str | int]) -> str:
    """``("instruments", 0, "signals", 2, "unit")`` → ``"instruments[0].signals[2].unit"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def _problems(exc: ValidationError, prefix: Sequence[str | int] = ()) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{format_loc([*prefix, *err['loc']])}: {message}")
    return lines


# After the `$` of a reference: `{NAME}`, `{NAME:-default}` or `{NAME-default}`; the default is
# literal text up to the first `}`.
_REFERENCE = re.compile(r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")
_SYNTAX = "write ${NAME}, ${NAME:-default} or ${NAME-default}, and $$ for a literal $"


def _expand_string(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """``text`` with its environment references replaced, and the problems found.

    The substituted values are not expanded again, and are never parsed as YAML.
    """
    out: list[str] = []
    problems: list[str] = []
    start = 0  # text[start:] is not copied to `out` yet
    dollar = text.find("$")
    while dollar != -1:
        after = text[dollar + 1 : dollar + 2]
        if after == "$":
            out.append(text[start : dollar + 1])
            start = dollar + 2
        elif after == "{":
            match = _REFERENCE.match(text, dollar + 1)
            if match is None:
                end = text.find("}", dollar)
                if end == -1:
                    problems.append(f"unclosed variable reference {text[dollar:]!r}: {_SYNTAX}")
                else:
                    reference = text[dollar : end + 1]
                    problems.append(f"invalid variable reference {reference!r}: {_SYNTAX}")
                return text, problems
            name, op, default = match["name"], match["op"], match["default"]
            if default is not None and "${" in default:
                problems.append(
                    f"nested variable reference in the default of {text[dollar : match.end()]!r}"
                    " is not supported"
                )
                return text, problems
            value = environ.get(name)
            if value is None or (value == "" and op == ":-"):
                if default is None:
                    problems.append(
                        f"environment variable {name} is not set"
                        f" (write ${{{name}:-default}} to give a default)"
                    )
                    value = ""
                else:
                    value = default
            out.append(text[start:dollar])
            out.append(value)
            start = match.end()
        # any other `$` is literal text, so a `$` in an existing config keeps its meaning
        dollar = text.find("$", max(start, dollar + 1))
    out.append(text[start:])
    return "".join(out), problems


def _expand_environment(
    node: object,
    loc: tuple[str | int, ...],
    environ: Mapping[str, str],
    problems: list[str],
    copies: dict[int, object],
) -> object:
    """A copy of the parsed YAML ``node`` with environment references expanded in every string
    value (mapping keys are left alone); problems are appended with their path. ``copies`` maps
    the id of every mapping and list already copied to its copy, so YAML aliases stay shared
    (and are expanded once) and a recursive alias cannot recurse forever."""
    if isinstance(node, str):
        if "$" not in node:
            return node
        expanded, found = _expand_string(node, environ)
        problems.extend(f"{format_loc(loc)}: {problem}" for problem in found)
        return expanded
    if isinstance(node, dict):
        if id(node) in copies:
            return copies[id(node)]
        mapping: dict[object, object] = {}
        copies[id(node)] = mapping
        for key, value in node.items():
            part = key if isinstance(key, str) else str(key)
            mapping[key] = _expand_environment(value, (*loc, part), environ, problems, copies)
        return mapping
    if isinstance(node, list):
        if id(node) in copies:
            return copies[id(node)]
        items: list[object] = []
        copies[id(node)] = items
        for index, item in enumerate(node):
            items.append(_expand_environment(item, (*loc, index), environ, problems, copies))
        return items
    return node


def read_config(path: Path) -> GatewayConfig:
    """Parse and validate the file's own schema; plugin options are checked by :func:`load_plan`.

    After parsing, every string value (not a mapping key) has its environment references
    expanded: ``${NAME}`` (an error if ``NAME`` is unset), ``${NAME:-default}`` (the default if
    unset or empty), ``${NAME-default}`` (the default only if unset); ``$$`` is a literal ``$``
    and any other ``$`` stays as written. Expanding the parsed tree, not the text, means a
    value can never add YAML structure, and a value stays a string (pydantic converts it where
    a field wants a number).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start}): {exc.reason}"]) from exc
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of settings"])
    problems: list[str] = []
    expanded = _expand_environment(raw, (), os.environ, problems, {})
    if problems:
        raise ConfigError(problems)
    try:
        config = GatewayConfig.model_validate(expanded, context=validation_context(path.parent))
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from exc
    duplicates = config.duplicate_ids()
    if duplicates:
        raise ConfigError(duplicates)
    return config


def _relocated(path: Path, config: GatewayConfig) -> list[str]:
    """Warnings for ``store.path`` and ``data_dir`` written as relative paths that resolved
    against the working directory before they resolved against the config's folder (decision
    0012), where the old place exists and the new one does not: a gateway started from its
    old working directory would otherwise begin a new, empty store, stranding the old one's
    backlog and handing out its seq numbers again."""
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return []
    if not isinstance(raw, dict):
        return []
    expanded = _expand_environment(raw, (), os.environ, [], {})
    if not isinstance(expanded, dict):
        return []
    store = expanded.get("store")
    written = {
        "store.path": store.get("path") if isinstance(store, dict) else None,
        "data_dir": expanded.get("data_dir"),
    }
    now = {"store.path": config.store.path, "data_dir": config.data_dir}
    lines = []
    for name, value in written.items():
        if not isinstance(value, str) or value.startswith("~") or Path(value).is_absolute():
            continue
        before = Path.cwd() / value
        if before.exists() and not now[name].exists() and before.resolve() != now[name]:
            lines.append(
                f"{name}: {value!r} now resolves against the configuration's folder, to"
                f" {now[name]}, which does not exist; {before.resolve()} (against the working"
                " directory, as before) does: move it, or write the path you mean in full"
            )
    return lines


#: What the loader says about an emulator type no installed plugin registers.
_EMULATORS_HINT = (
    "emulated instruments come in distributions of their own: this repository's (bioreactor,"
    " feed_pump, raman, capacitance_probe, capture_skid) in pat-gateway-emulators"
    " (pip install pat-gateway-emulators, docs/install.md)"
)


class _NotInstalled(ValueError):
    """A factory needs a module that is not installed; the message names plugin and extra."""


def _building(registration: Registration[Any], what: str) -> Callable[[Any, PluginContext], Any]:
    """The registration's factory, its missing modules (``MissingDependencyError``, or an
    import that fails inside it) told as ``<what> needs the extra [x] (...): pip install ...``."""

    def build(options: Any, context: PluginContext) -> Any:
        try:
            return registration.factory(options, context)
        except MissingDependencyError as exc:
            extra = exc.extra if exc.extra is not None else registration.extra
            raise _NotInstalled(f"{what} {missing_text(registration, exc.modules, extra)}") from exc
        except ModuleNotFoundError as exc:
            own = str(getattr(registration.factory, "__module__", "")).partition(".")[0]
            if exc.name is None or exc.name.partition(".")[0] == own:
                raise  # a module of the plugin itself: its bug, not a missing extra
            text = missing_text(registration, (exc.name,), registration.extra)
            raise _NotInstalled(f"{what} {text}") from exc

    return build


def _plugin_problem(exc: Exception) -> str:
    """A plugin factory's error as a config problem: its own message for ValueError (and
    KeyError, e.g. a missing secret variable), the exception type too for anything else."""
    if isinstance(exc, KeyError):
        return str(exc.args[0]) if exc.args else "missing key"
    if isinstance(exc, (ValueError, UnitError)):
        return str(exc)
    return f"plugin failed to build it: {exc!r}"


def _broken_contract(registry: Registry, kind: PluginKind, name: str, built: object) -> str | None:
    """What is wrong with what a plugin's factory built (a driver without ``run``, a sink whose
    ``forward`` is not ``async def``...), naming the plugin; ``None`` if nothing is."""
    problems = capability_problems(kind, built)
    registration = registry.get(kind, name)
    if not problems or registration is None:
        return None
    label = plugin_label(registration.plugin, registration.distribution, registration.version)
    return f"{kind} {name!r} of {label} breaks the plugin contract: {'; '.join(problems)}"


def _unset_secrets(value: object, loc: tuple[str | int, ...]) -> list[str]:
    """A problem line for every secret in validated options whose variable is unset or empty:
    caught by ``patgw check``, not when the instrument or sink first needs it."""
    if isinstance(value, SecretRef):
        problem = value.problem()
        return [] if problem is None else [f"{format_loc(loc)}: {problem}"]
    if isinstance(value, BaseModel):
        return [
            problem
            for name in type(value).model_fields
            for problem in _unset_secrets(getattr(value, name), (*loc, name))
        ]
    if isinstance(value, (list, tuple)):
        return [p for i, item in enumerate(value) for p in _unset_secrets(item, (*loc, i))]
    if isinstance(value, dict):
        return [p for k, item in value.items() for p in _unset_secrets(item, (*loc, str(k)))]
    return []


def _options(
    registry: Registry,
    kind: PluginKind,
    name: str,
    raw: dict[str, Any],
    loc: tuple[str | int, ...],
    problems: list[str],
    config_dir: Path,
    warnings: list[str],
    owner: str,
    *,
    enabled: bool = True,
) -> tuple[Any, BaseModel] | None:
    """The plugin's factory and its validated options, or ``None`` with the problems added.

    Relative paths in the options resolve against ``config_dir``; a secret whose environment
    variable is unset or empty is a problem here, not a surprise at run time — a warning for a
    component kept configured but disabled (it never reads the secret). A plugin whose
    required modules are missing is a problem naming the extra that installs them (``owner``,
    e.g. ``instrument 'reactor1'``, says what uses it), again a warning for a disabled one."""
    registration = registry.get(kind, name)
    field = "driver" if kind is PluginKind.DRIVER else "type"
    if registration is None:
        known = ", ".join(registry.names(kind)) or "none installed"
        line = f"{format_loc([*loc, field])}: unknown {kind} {name!r} (known: {known})"
        why = registry.unavailable(kind, name)
        if why is None and kind is PluginKind.EMULATOR:
            why = _EMULATORS_HINT
        problems.append(line if why is None else f"{line}; {why}")
        return None
    what = f"{kind} {name!r} of {owner}"
    missing = registration.missing()
    if missing:
        text = missing_text(registration, missing, registration.extra)
        line = f"{format_loc([*loc, field])}: {what} {text}"
        if enabled:
            problems.append(line)
        else:  # as for an unset secret: it never runs, so nothing is missing yet
            warnings.append(f"{line} (disabled: needed once enabled)")
    try:
        options = registration.options_model.model_validate(
            raw, context=validation_context(config_dir)
        )
    except ValidationError as exc:
        problems.extend(_problems(exc, (*loc, "options")))
        return None
    if missing:
        return None
    unset = _unset_secrets(options, (*loc, "options"))
    if unset and enabled:
        problems.extend(unset)
        return None
    warnings.extend(f"{line} (disabled: needed once enabled)" for line in unset)
    config_warnings = getattr(options, "config_warnings", None)
    if callable(config_warnings):
        warnings.extend(f"{format_loc([*loc, 'options'])}.{line}" for line in config_warnings())
    return _building(registration, what), options


def _units_valid(
    channels: Sequence[Channel], loc: tuple[str | int, ...], problems: list[str]
) -> bool:
    """Whether every channel's unit is UCUM; a problem for each one that is not."""
    valid = True
    for ch in channels:
        try:
            compile_conversion(ch.unit, ch.unit)
        except UnitError as exc:
            problems.append(f"{format_loc([*loc, 'options'])}: channel {ch.name!r}: {exc}")
            valid = False
    return valid


def _signal_plans(
    area: str,
    inst: InstrumentConfig | ProcessorConfig,
    channels: Sequence[Channel],
    loc: tuple[str | int, ...],
    problems: list[str],
) -> tuple[SignalPlan, ...]:
    by_name = {c.name: c for c in channels}
    plans = []
    plugin = (
        f"driver {inst.driver!r}"
        if isinstance(inst, InstrumentConfig)
        else f"processor type {inst.type!r}"
    )
    if inst.signals is None:
        for channel in channels:
            signal = Signal(
                f"{area}/{inst.id}/{channel.name}",
                channel.unit,
                channel.kind,
                channel.description,
                inst.id,
            )
            plans.append(SignalPlan(signal, channel.name, Conversion()))
        return tuple(plans)
    for j, sc in enumerate(inst.signals):
        sloc = (*loc, "signals", j)
        channel_name = sc.channel or sc.id
        ch = by_name.get(channel_name)
        if ch is None:
            known = ", ".join(by_name) or "none"
            field = "channel" if sc.channel else "id"
            problems.append(
                f"{format_loc([*sloc, field])}: {plugin} has no channel"
                f" {channel_name!r} (channels: {known})"
            )
            continue
        signal_id = f"{area}/{inst.id}/{sc.id}"
        source_unit = sc.source_unit or ch.unit
        unit = sc.unit or source_unit
        try:
            conversion = compile_conversion(source_unit, unit)
        except UnitError as exc:
            problems.append(f"{format_loc([*sloc, 'unit'])}: signal {signal_id}: {exc}")
            continue
        description = sc.description if sc.description is not None else ch.description
        if isinstance(inst, ProcessorConfig) and sc.description and ch.description:
            # A processor's channel description is provenance (e.g. which model made the
            # value): a configured description comes first, it is not replaced.
            description = f"{sc.description} ({ch.description})"
        signal = Signal(signal_id, unit, ch.kind, description, inst.id)
        plans.append(SignalPlan(signal, channel_name, conversion))
    return tuple(plans)


def load_plan(path: Path, registry: Registry) -> Plan:
    """Read ``path`` and resolve it against the plugins in ``registry``."""
    config = read_config(path)
    config_dir = path.parent
    problems: list[str] = []
    warnings: list[str] = []
    instruments = []
    configured: dict[str, Signal] = {}  # every instrument's signals, disabled ones included
    for i, inst in enumerate(config.instruments):
        loc: tuple[str | int, ...] = ("instruments", i)
        resolved = _options(
            registry,
            PluginKind.DRIVER,
            inst.driver,
            inst.options,
            loc,
            problems,
            config_dir,
            warnings,
            f"instrument {inst.id!r}",
            enabled=inst.enabled,
        )
        if resolved is None:
            continue
        factory, options = resolved
        context = PluginContext(
            inst.id, config.data_dir, inst.poll_interval_s, config.site, config.area
        )
        try:
            driver = factory(options, context)
            broken = _broken_contract(registry, PluginKind.DRIVER, inst.driver, driver)
            if broken is not None:
                problems.append(f"{format_loc([*loc, 'driver'])}: {broken}")
                continue
            channels = list(driver.channels())
        except Exception as exc:  # a plugin's own check, or its bug: both stop this config
            problems.append(f"{format_loc([*loc, 'options'])}: {_plugin_problem(exc)}")
            continue
        if not _units_valid(channels, loc, problems):
            continue
        signals = _signal_plans(config.area, inst, channels, loc, problems)
        configured.update((sp.signal.id, sp.signal) for sp in signals)
        if inst.enabled:
            instruments.append(InstrumentPlan(inst, driver, signals))
    loaded = {i.config.id for i in instruments}
    unloaded = {i.id for i in config.instruments if i.enabled and i.id not in loaded}
    targets = resolve_targets(
        config.writes, instruments, list(config.security.role_permissions()), problems, unloaded
    )
    processors = _processor_plans(
        config, registry, instruments, configured, problems, config_dir, warnings, targets
    )
    commands = resolve_commands(
        config.commands,
        config.area,
        instruments,
        list(config.security.role_permissions()),
        problems,
        unloaded,
        targets,
    )
    access = Access(Authority(config.security), targets, commands)

    components: dict[PluginKind, list[ComponentPlan]] = {
        PluginKind.EMULATOR: [],
        PluginKind.SINK: [],
    }
    sections: tuple[tuple[PluginKind, str, Sequence[EmulatorConfig | SinkConfig]], ...] = (
        (PluginKind.EMULATOR, "emulators", config.emulators),
        (PluginKind.SINK, "sinks", config.sinks),
    )
    for kind, section, items in sections:
        for k, item in enumerate(items):
            loc = (section, k)
            resolved = _options(
                registry,
                kind,
                item.type,
                item.options,
                loc,
                problems,
                config_dir,
                warnings,
                f"{section.removesuffix('s')} {item.id!r}",
            )
            if resolved is None:
                continue
            factory, options = resolved
            try:
                instance = factory(
                    options,
                    PluginContext(
                        item.id, config.data_dir, site=config.site, area=config.area, access=access
                    ),
                )
            except Exception as exc:
                problems.append(f"{format_loc([*loc, 'options'])}: {_plugin_problem(exc)}")
                continue
            broken = _broken_contract(registry, kind, item.type, instance)
            if broken is not None:
                problems.append(f"{format_loc([*loc, 'type'])}: {broken}")
                continue
            components[kind].append(ComponentPlan(item, instance))
    if problems:
        raise ConfigError(problems)
    warnings.extend(_relocated(path, config))
    return Plan(
        config,
        path,
        tuple(instruments),
        tuple(components[PluginKind.EMULATOR]),
        tuple(components[PluginKind.SINK]),
        tuple(processors),
        tuple(warnings),
        access,
    )


def _processor_plans(
    config: GatewayConfig,
    registry: Registry,
    instruments: Sequence[InstrumentPlan],
    configured: Mapping[str, Signal],
    problems: list[str],
    config_dir: Path,
    warnings: list[str],
    targets: Mapping[str, WriteTarget],
) -> list[ProcessorPlan]:
    """Build the processors (all are checked; the enabled ones are returned), resolve what each
    reads (the signals of instruments and of processors before it) and bind those to it. An
    enabled processor must read enabled sources; a disabled one may read disabled ones."""
    running: dict[str, Signal] = {
        sp.signal.id: sp.signal for ip in instruments for sp in ip.signals
    }
    known: dict[str, Signal] = dict(configured)
    plans: list[ProcessorPlan] = []
    for i, pc in enumerate(config.processors):
        loc: tuple[str | int, ...] = ("processors", i)
        if any(user.name == pc.id for user in config.security.users):
            # Any processor may record to the audit trail as itself (alarms), not only one
            # that writes.
            problems.append(
                f"{format_loc([*loc, 'id'])}: {pc.id!r} is also a user's name; a processor"
                " records (and writes) as itself, so the audit trail could not tell them apart"
            )
        resolved = _options(
            registry,
            PluginKind.PROCESSOR,
            pc.type,
            pc.options,
            loc,
            problems,
            config_dir,
            warnings,
            f"processor {pc.id!r}",
            enabled=pc.enabled,
        )
        if resolved is None:
            continue
        factory, options = resolved
        context = PluginContext(pc.id, config.data_dir, site=config.site, area=config.area)
        try:
            processor = factory(options, context)
            broken = _broken_contract(registry, PluginKind.PROCESSOR, pc.type, processor)
            if broken is not None:
                problems.append(f"{format_loc([*loc, 'type'])}: {broken}")
                continue
            names = list(processor.inputs())
            channels = list(processor.channels())
        except Exception as exc:
            problems.append(f"{format_loc([*loc, 'options'])}: {_plugin_problem(exc)}")
            continue
        inputs: dict[str, Signal] = {}
        for name in names:
            signal = known.get(name) or known.get(f"{config.area}/{name}")
            if signal is None:
                problems.append(
                    f"{format_loc([*loc, 'options'])}: input {name!r} is no signal of an"
                    " instrument or an earlier processor"
                    f" (signals: {', '.join(sorted(known)) or 'none'})"
                )
            elif pc.enabled and signal.id not in running:
                problems.append(
                    f"{format_loc([*loc, 'options'])}: input {name!r} ({signal.id}) comes from"
                    f" {signal.instrument!r}, which is disabled (disable this processor too)"
                )
            else:
                inputs[name] = signal
        if len(inputs) < len(names):
            continue
        age: Signal | None = None
        if pc.time_base.age is not None:
            name = pc.time_base.age
            age = known.get(name) or known.get(f"{config.area}/{name}")
            where = format_loc([*loc, "time_base", "age"])
            if age is None or age.kind is not SignalKind.SCALAR:
                problems.append(
                    f"{where}: {name!r} is no scalar signal of an instrument or an earlier"
                    " processor"
                )
                continue
            try:
                compile_conversion(age.unit, "h")
            except UnitError:
                problems.append(f"{where}: {age.id} is in {age.unit!r}, not a time (h, min, s)")
                continue
            if pc.enabled and age.id not in running:
                # It would never come: process time would count from the gateway's start.
                problems.append(
                    f"{where}: {age.id} comes from {age.instrument!r}, which is disabled"
                    " (process time would silently count from the gateway's start)"
                )
                continue
        try:
            processor.bind(inputs)
        except Exception as exc:
            problems.append(f"{format_loc([*loc, 'options'])}: {_plugin_problem(exc)}")
            continue
        controls = _controls(config, pc, processor, targets, loc, problems)
        if controls is None:
            continue
        if not _units_valid(channels, loc, problems):
            continue
        signals = _signal_plans(config.area, pc, channels, loc, problems)
        known.update((sp.signal.id, sp.signal) for sp in signals)
        if pc.enabled:
            plans.append(ProcessorPlan(pc, processor, inputs, signals, controls, age))
            running.update((sp.signal.id, sp.signal) for sp in signals)
    return plans


def _controls(
    config: GatewayConfig,
    pc: ProcessorConfig,
    processor: Processor,
    targets: Mapping[str, WriteTarget],
    loc: tuple[str | int, ...],
    problems: list[str],
) -> tuple[str, ...] | None:
    """The targets a processor controls, checked: declared, its role qualifies, and accepted
    by the processor's ``bind_controls``; ``None`` (with problems) if one is not."""
    declared = getattr(processor, "controls", None)
    if not callable(declared):
        return ()
    where = format_loc([*loc, "options"])
    try:
        names = tuple(declared())
    except Exception as exc:
        problems.append(f"{where}: {_plugin_problem(exc)}")
        return None
    if not names:
        return ()
    roles = config.security.role_permissions()
    permissions = roles.get(pc.role)
    count = len(problems)
    if permissions is None:
        problems.append(
            f"{format_loc([*loc, 'role'])}: unknown role {pc.role!r} (roles: {', '.join(roles)})"
        )
        return None
    limits: dict[str, TargetLimits] = {}
    for name in names:
        target = targets.get(name)
        if target is None:
            known = ", ".join(sorted(targets)) or "none"
            problems.append(
                f"{where}: {name!r} is not a writable target: declare it under writes:"
                f" (declared: {known})"
            )
            continue
        tc = target.config
        needed = roles.get(tc.role, frozenset())
        if Permission.WRITE not in permissions or not (
            pc.role == tc.role or (needed and needed <= permissions)
        ):
            problems.append(
                f"{format_loc([*loc, 'role'])}: role {pc.role!r} may not write {name}: it needs"
                f" the role {tc.role!r}"
            )
            continue
        limits[name] = TargetLimits(
            name, target.unit, tc.min, tc.max, tc.max_step, tc.max_rate_per_s, tc.heartbeat
        )
    if len(problems) > count:
        return None
    bind = getattr(processor, "bind_controls", None)
    if callable(bind):
        try:
            bind(limits)
        except Exception as exc:
            problems.append(f"{where}: {_plugin_problem(exc)}")
            return None
    return names
