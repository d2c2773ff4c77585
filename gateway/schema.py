"""The configuration's JSON Schema, including every installed plugin's options.

``GatewayConfig`` alone types ``options:`` as a free mapping (the core knows no plugin); here the
schema gains, per registered driver, sink, processor and emulator, an ``if driver == NAME then
options is NAME's model`` rule, so an editor completes and checks register maps and other plugin
options.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic.json_schema import models_json_schema

from .config import EmulatorConfig, GatewayConfig, InstrumentConfig, ProcessorConfig, SinkConfig
from .registry import PluginKind, Registration

__all__ = ["config_schema"]

_SECTIONS = {
    PluginKind.DRIVER: (InstrumentConfig, "driver"),
    PluginKind.SINK: (SinkConfig, "type"),
    PluginKind.EMULATOR: (EmulatorConfig, "type"),
    PluginKind.PROCESSOR: (ProcessorConfig, "type"),
}


def config_schema(registry: Iterable[Registration[Any]]) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a configuration file with these plugins installed (a
    :class:`~gateway.registry.Registry`, or some of its registrations)."""
    plugins = [r for r in registry if r.kind in _SECTIONS]
    models = [(GatewayConfig, "validation")] + [(r.options_model, "validation") for r in plugins]
    refs, schema = models_json_schema(models, ref_template="#/$defs/{model}")  # type: ignore[arg-type]
    defs: dict[str, Any] = schema["$defs"]
    root: dict[str, Any] = defs.pop(GatewayConfig.__name__)
    for registration in plugins:
        section_model, key = _SECTIONS[registration.kind]
        options_ref = refs[(registration.options_model, "validation")]["$ref"]
        section = defs[section_model.__name__]
        section.setdefault("allOf", []).append(
            {
                "if": {"properties": {key: {"const": registration.name}}, "required": [key]},
                "then": {"properties": {"options": {"$ref": options_ref}}},
            }
        )
        section["properties"][key].setdefault("examples", []).append(registration.name)
    root["$defs"] = defs
    root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return root
