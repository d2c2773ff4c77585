"""Registers the ``mqtt`` sink (:mod:`.sink`) through the public hook, as any vendor plugin would.

The sink's modules (and mqtt5 and paho-mqtt with them) are imported only when a configuration
builds an ``mqtt`` sink, so the plugin loads without the ``[mqtt]`` extra: ``patgw plugins``
lists it and ``patgw check`` names the extra a configuration using it needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway import PluginContext, Registry, hookimpl

from .options import MqttOptions

if TYPE_CHECKING:
    from .sink import MqttSink

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"

#: What the mqtt and sparkplug sinks import beyond the gateway's core (the ``[mqtt]`` extra).
MQTT_MODULES = ("mqtt5", "paho.mqtt")


def build_sink(options: MqttOptions, context: PluginContext) -> MqttSink:
    """The registered factory: an :class:`~.sink.MqttSink`, importing mqtt5 and paho now."""
    from .sink import MqttSink

    return MqttSink(options, context)


@hookimpl
def pat_gateway_register_sinks(registry: Registry) -> None:
    registry.add_sink(
        "mqtt",
        build_sink,
        MqttOptions,
        "Publish committed samples to an MQTT broker (QoS 1, store-and-forward)",
        requires=MQTT_MODULES,
        extra="mqtt",
    )
