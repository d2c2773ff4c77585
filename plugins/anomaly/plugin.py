"""Registers the ``anomaly`` processor through the public hooks, like any plugin."""

from __future__ import annotations

from gateway import Registry, hookimpl

from .processor import AnomalyOptions, AnomalyProcessor


@hookimpl
def pat_gateway_register_processors(registry: Registry) -> None:
    registry.add_processor(
        "anomaly",
        AnomalyProcessor,
        AnomalyOptions,
        "Anomaly detection: batch-evolution PCA (T², Q, contributions) on process signals,"
        " per-signal checks (frozen, spike, drift, level), alarms with persistence,"
        " hysteresis and acknowledgement",
    )
