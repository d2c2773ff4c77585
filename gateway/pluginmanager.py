"""Build the plugin manager and the registry, in one small function, never at import time.

Plugins are found through the ``pat_gateway`` entry-point group; the built-in drivers, sinks and
emulators are announced there exactly like a vendor's. ``PATGW_DISABLE_PLUGINS`` (comma
separated entry-point names) blocks plugins, e.g. to rule one out while diagnosing.
"""

from __future__ import annotations

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
)


def build_registry(plugins: Iterable[object] = (), *, entry_points: bool = True) -> Registry:
    """Load plugins and let each register its factories.

    ``plugins`` are extra plugin objects (modules or instances with hook implementations), used
    by tests and embedders; ``entry_points=False`` skips discovery so a test sees only those.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    for name in filter(
        None, (n.strip() for n in os.environ.get("PATGW_DISABLE_PLUGINS", "").split(","))
    ):
        manager.set_blocked(name)
    if entry_points:
        try:
            manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # an entry point whose module fails to import
            raise PluginError(f"cannot load a {ENTRY_POINT_GROUP!r} plugin: {exc!r}") from exc
    for plugin in plugins:
        manager.register(plugin)

    origins: dict[str, tuple[str | None, str | None]] = {}
    for plugin, dist in manager.list_plugin_distinfo():
        plugin_name = manager.get_name(plugin)
        if plugin_name is not None:
            origins[plugin_name] = (dist.project_name, dist.version)

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
