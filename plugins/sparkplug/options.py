"""The ``options:`` of the ``sparkplug`` sink.

The broker connection's options (URL, credentials, TLS, protocol, timeouts) are the ``mqtt``
sink's (:class:`~plugins.mqtt.options.BrokerOptions`); the rest names the node in the Sparkplug
namespace. QoS is 1: a sample is released only after the broker's PUBACK. Validated when the
configuration loads (``patgw check``).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from plugins.mqtt.options import BrokerOptions

from .names import check_id

__all__ = ["SparkplugOptions"]


class SparkplugOptions(BrokerOptions):
    """Which broker, as whom, and where in the Sparkplug namespace."""

    group_id: str = Field(
        default="pat",
        description="Sparkplug group id: the second element of every topic (no + # /).",
    )
    edge_node_id: str | None = Field(
        default=None,
        description=(
            "Sparkplug edge node id of the gateway (no + # /). Default: the configuration's"
            " site. Each instrument is a device, its id the instrument id (+ # / become _)."
        ),
    )
    primary_host_id: str | None = Field(
        default=None,
        description=(
            "Host id of the Primary Host Application: the sink subscribes to"
            " spBv1.0/STATE/<primary_host_id> and publishes births and data only while that"
            " host is online (samples wait in the store meanwhile, and come flagged"
            " is_historical). null: publish whenever connected."
        ),
    )

    @field_validator("group_id")
    @classmethod
    def _valid_group(cls, value: str) -> str:
        return check_id(value, "group_id")

    @field_validator("edge_node_id")
    @classmethod
    def _valid_node(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value, "edge_node_id")

    @field_validator("primary_host_id")
    @classmethod
    def _valid_host(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value, "primary_host_id")
