"""Registers the ``anomaly`` processor and the ``pca`` model kind through the public hooks, like
any plugin."""

from __future__ import annotations

from gateway import Registry, hookimpl

from .commands import configure_check, configure_fit, configure_show
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


@hookimpl
def pat_gateway_register_model_kinds(registry: Registry) -> None:
    registry.add_model_kind(
        "pca",
        fit=configure_fit,
        show=configure_show,
        check=configure_check,
        description="Batch-evolution PCA models of normal operation for the 'anomaly'"
        " processor: fit from exported normal runs, check on other runs, show",
    )
