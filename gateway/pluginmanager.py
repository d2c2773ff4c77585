"""Build the plugin manager and the registry, in one small function, never at import time.

Plugins are found through the ``pat_gateway`` entry-point group (loaded one by one, so a module
that fails to import is named in the error); the built-in drivers, sinks and
emulators are announced there exactly like a vendor's. ``PATGW_DISABLE_PLUGINS`` (comma
separated entry-point names) blocks plugins, e.g. to rule one out while diagnosing.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterable

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import Registry

__all__ = ["ENTRY_POINT_GROUP", "build_registry"]

ENTRY_POINT_GROUP = hookspecs.PROJECT

_HOOKS = (
    "pat_gateway_register_drivers",
    "pat_gateway_register_sinks",
    "pat_gateway_register_processors",
    "pat_gateway_register_emulators",
    "pat_gateway_register_commands",
    "pat_gateway_register_model_kinds",
)


def build_registry(plugins: Iterable[object] = (), *, entry_points: bool = True) -> Registry:
    """Load plugins and let each register its factories.

    ``plugins`` are extra plugin objects (modules or instances with hook implementations), used
    by tests and embedders; ``entry_points=False`` skips discovery so a test sees only those.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    disabled = {n.strip() for n in os.environ.get("PATGW_DISABLE_PLUGINS", "").split(",")}
    origins: dict[str, tuple[str | None, str | None]] = {}
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in disabled or manager.get_plugin(ep.name) is not None:
                continue  # blocked, or an older copy of the same distribution on the path
            dist = ep.dist
            where = f"{ep.name} = {ep.value}" + (f" ({dist.name} {dist.version})" if dist else "")
            try:
                plugin = ep.load()
            except Exception as exc:  # a vendor module that fails to import
                raise PluginError(
                    f"cannot load a {ENTRY_POINT_GROUP!r} plugin: {where}: {exc!r}"
                    " (PATGW_DISABLE_PLUGINS=name skips it)"
                ) from exc
            manager.register(plugin, name=ep.name)
            origins[ep.name] = (dist.name, dist.version) if dist else (None, None)
    for plugin in plugins:
        manager.register(plugin)

    registry = Registry()
    for hook_name in _HOOKS:
        # Call implementations one by one (not through the hook caller) so every registration
        # records the plugin and distribution that made it.
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            dist_name, version = origins.get(impl.plugin_name, (None, None))
            registry._origin = (impl.plugin_name, dist_name, version)
            kwargs = {"registry": registry}
            impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
    registry._origin = ("<unknown>", None, None)
    return registry
