"""Build the plugin manager and the registry, in one small function, never at import time.

Plugins are found through the ``pat_gateway`` entry-point group (loaded one by one, so a module
that fails to import is named in the error); the built-in drivers, sinks and
emulators are announced there exactly like a vendor's. ``PATGW_DISABLE_PLUGINS`` (comma
separated entry-point names) blocks plugins, e.g. to rule one out while diagnosing.

A plugin that breaks the contract is refused, by name and distribution, and the others load:
one that fails to import, declares an incompatible plugin-API version (``PAT_GATEWAY_API``),
implements an unknown ``pat_gateway_*`` hook (a misspelt one), or whose hooks raise or register
something malformed. Refusals are logged (``plugin.refused``), kept in ``Registry.refused`` and
shown by ``patgw plugins``. The hooks are called through pluggy's hook callers, one plugin at a
time, each with a registry of its own that records the plugin and its distribution.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import pluggy
import structlog

from . import hookspecs
from .errors import PluginError
from .registry import PluginRefusal, Registry, plugin_label

__all__ = ["API_ATTRIBUTE", "ENTRY_POINT_GROUP", "PLUGIN_API_VERSION", "build_registry"]

ENTRY_POINT_GROUP = hookspecs.PROJECT

#: The version of the plugin contract this gateway implements, ``MAJOR.MINOR``. A plugin
#: written for the same major and a minor up to this one loads; the major changes when a hook,
#: a protocol or a factory's call changes incompatibly, the minor when something is added.
#: 1.1 added device identity (``InstrumentIO.identify``, a sink's ``device_identified``),
#: device commands (``CommandDriver``) and a registration's ``requires``/``extra``.
PLUGIN_API_VERSION = "1.1"
#: What a plugin declares the version it was written for with: a module-level (or class, for a
#: plugin object) attribute, ``PAT_GATEWAY_API = "1.1"``.
API_ATTRIBUTE = "PAT_GATEWAY_API"

_HOOKS = (
    "pat_gateway_register_drivers",
    "pat_gateway_register_sinks",
    "pat_gateway_register_processors",
    "pat_gateway_register_emulators",
    "pat_gateway_register_commands",
    "pat_gateway_register_model_kinds",
)

_VERSION = re.compile(r"(\d+)(?:\.(\d+))?")

log = structlog.get_logger("gateway.plugins")


@dataclass(frozen=True, slots=True)
class _Candidate:
    name: str
    plugin: object
    distribution: str | None
    version: str | None
    api: str | None = None


def build_registry(plugins: Iterable[object] = (), *, entry_points: bool = True) -> Registry:
    """Load plugins and let each register its factories.

    ``plugins`` are extra plugin objects (modules or instances with hook implementations), used
    by tests and embedders; ``entry_points=False`` skips discovery so a test sees only those.
    A plugin that breaks the contract is refused (``registry.refused`` says why); the others
    are loaded.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    candidates = _discover(registry) if entry_points else []
    for plugin in plugins:
        candidates.append(_Candidate(_inline_name(plugin, candidates), plugin, None, None))
    accepted: list[_Candidate] = []
    for candidate in candidates:
        problem = _admit(manager, candidate)
        if problem is None:
            accepted.append(_with_api(candidate))
        else:
            _refuse(registry, candidate, problem)
    try:
        # Every unknown hook was refused with its plugin above: this only confirms it.
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin contract: {exc}") from exc
    for candidate in accepted:
        others = [c.plugin for c in accepted if c is not candidate]
        own = Registry((candidate.name, candidate.distribution, candidate.version), candidate.api)
        try:
            for hook_name in _HOOKS:
                # Through pluggy's hook caller (tracing and monitoring apply), limited to this
                # plugin, so that what it registers lands in its own registry.
                manager.subset_hook_caller(hook_name, others)(registry=own)
        except PluginError as exc:
            _refuse(registry, candidate, str(exc).removeprefix(_prefix(candidate)))
            continue
        except Exception as exc:  # a vendor's hook that fails: refuse it, load the rest
            _refuse(registry, candidate, f"its hook {hook_name} raised {exc!r}")
            continue
        registry.merge(own)
    # Clashes, once each (whole plugins were logged as they were refused).
    for clash in dict.fromkeys(str(r) for r in registry.refused if r.name is not None):
        log.error("plugin.refused", refusal=clash)
    return registry


def _discover(registry: Registry) -> list[_Candidate]:
    """Load every entry point of the group, except blocked ones; refuse one that fails to
    import, and a name two distributions announce (neither: which would run must not depend on
    the order of the path)."""
    disabled = {n.strip() for n in os.environ.get("PATGW_DISABLE_PLUGINS", "").split(",")}
    by_name: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in disabled:
            by_name.setdefault(ep.name, []).append(ep)
    found: list[_Candidate] = []
    for name, eps in by_name.items():
        announced = [
            _Candidate(name, None, ep.dist.name if ep.dist else None, _dist_version(ep))
            for ep in eps
        ]
        if len({c.distribution for c in announced}) > 1:
            names = " and ".join(f"{c.distribution} {c.version}" for c in announced)
            for candidate in announced:
                _refuse(
                    registry,
                    candidate,
                    f"the plugin name {name!r} is announced by {names}; neither is loaded"
                    " (uninstall one of them)",
                )
            continue
        ep, candidate = eps[0], announced[0]  # an older copy of one distribution: the first
        try:
            plugin = ep.load()
        except Exception as exc:  # a vendor module that fails to import
            _refuse(
                registry,
                candidate,
                f"cannot load {name} = {ep.value}: {exc!r} (PATGW_DISABLE_PLUGINS={name} skips it)",
            )
            continue
        found.append(_Candidate(name, plugin, candidate.distribution, candidate.version))
    return found


def _inline_name(plugin: object, taken: Iterable[_Candidate]) -> str:
    """A name for a plugin given in code that errors can show: the module's or the class's,
    numbered when several plugins share it."""
    base = getattr(plugin, "__name__", None) or type(plugin).__name__
    names = {c.name for c in taken}
    name, n = str(base), 1
    while name in names:
        n += 1
        name = f"{base}#{n}"
    return name


def _dist_version(ep: importlib.metadata.EntryPoint) -> str | None:
    return ep.dist.version if ep.dist else None


def _admit(manager: pluggy.PluginManager, candidate: _Candidate) -> str | None:
    """Register the plugin with ``manager`` if its API version and its hooks are right; why
    not otherwise (then it is not registered)."""
    problem = _api_problem(_declared_api(candidate.plugin))
    if problem is not None:
        return problem
    try:
        manager.register(candidate.plugin, name=candidate.name)
    except (pluggy.PluginValidationError, ValueError) as exc:  # a hook's arguments are wrong
        return f"its hooks do not match the contract: {exc}"
    unknown = sorted(
        caller.name
        for caller in manager.get_hookcallers(candidate.plugin) or ()
        if not caller.has_spec()
    )
    unmarked = sorted(
        name
        for name in dir(candidate.plugin)
        if name.startswith(f"{hookspecs.PROJECT}_")
        and callable(getattr(candidate.plugin, name, None))
        and manager.parse_hookimpl_opts(candidate.plugin, name) is None
    )
    if not unknown and not unmarked:
        return None
    manager.unregister(candidate.plugin)
    lines = [
        f"unknown hook {name} (misspelt? the hooks are {', '.join(_HOOKS)})" for name in unknown
    ]
    lines += [
        f"{name} is not marked @gateway.hookimpl (it would never be called)" for name in unmarked
    ]
    return "; ".join(lines)


def _declared_api(plugin: object) -> object:
    """The plugin's ``PAT_GATEWAY_API``: on the plugin (module, class or object), else on the
    module that defines a plugin object's class."""
    declared = getattr(plugin, API_ATTRIBUTE, None)
    if declared is None and not isinstance(plugin, type(sys)):
        module = sys.modules.get(type(plugin).__module__)
        declared = getattr(module, API_ATTRIBUTE, None)
    return declared


def _api_problem(declared: object) -> str | None:
    """Why a plugin declaring ``declared`` cannot load here, or ``None`` (also for none)."""
    if declared is None:
        return None
    match = _VERSION.fullmatch(declared) if isinstance(declared, str) else None
    if match is None:
        return f"{API_ATTRIBUTE} = {declared!r} is not a version such as {PLUGIN_API_VERSION!r}"
    major, minor = int(match[1]), int(match[2] or 0)
    ours = [int(part) for part in PLUGIN_API_VERSION.split(".")]
    if major != ours[0]:
        return (
            f"written for plugin API {declared}, this gateway supports {PLUGIN_API_VERSION}"
            f" (major {ours[0]}): use a version of the plugin made for it"
        )
    if minor > ours[1]:
        return (
            f"written for plugin API {declared}, newer than this gateway's {PLUGIN_API_VERSION}:"
            " upgrade pat-gateway"
        )
    return None


def _with_api(candidate: _Candidate) -> _Candidate:
    declared = _declared_api(candidate.plugin)
    if declared is None:
        log.warning(
            "plugin.api_undeclared",
            plugin=candidate.name,
            distribution=candidate.distribution,
            why=f"no {API_ATTRIBUTE}: built before the plugin API was versioned; loaded as"
            f" {PLUGIN_API_VERSION}",
        )
        return candidate
    return _Candidate(
        candidate.name, candidate.plugin, candidate.distribution, candidate.version, str(declared)
    )


def _prefix(candidate: _Candidate) -> str:
    return f"{plugin_label(candidate.name, candidate.distribution, candidate.version)}: "


def _refuse(registry: Registry, candidate: _Candidate, reason: str) -> None:
    refusal = PluginRefusal(candidate.name, candidate.distribution, candidate.version, reason)
    registry.refused.append(refusal)
    log.error("plugin.refused", refusal=str(refusal))
