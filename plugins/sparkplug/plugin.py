"""Registers the ``sparkplug`` sink (:mod:`.sink`) through the public hook, as any vendor
plugin would.

The sink's modules (and mqtt5, paho-mqtt and protobuf with them) are imported only when a
configuration builds a ``sparkplug`` sink, so the plugin loads without the ``[mqtt]`` extra."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway import PluginContext, Registry, hookimpl
from plugins.mqtt.plugin import MQTT_MODULES

from .options import SparkplugOptions

if TYPE_CHECKING:
    from .sink import SparkplugSink

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"


def build_sink(options: SparkplugOptions, context: PluginContext) -> SparkplugSink:
    """The registered factory: a :class:`~.sink.SparkplugSink`, importing its libraries now."""
    from .sink import SparkplugSink

    return SparkplugSink(options, context)


@hookimpl
def pat_gateway_register_sinks(registry: Registry) -> None:
    registry.add_sink(
        "sparkplug",
        build_sink,
        SparkplugOptions,
        "Publish committed samples as a Sparkplug B 3.0 edge node (QoS 1, store-and-forward)",
        requires=(*MQTT_MODULES, "google.protobuf"),
        extra="mqtt",
    )
