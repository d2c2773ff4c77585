"""Registers the ``anomaly`` processor and the ``pca`` model kind through the public hooks, like
any plugin."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from gateway import Registry, hookimpl

from .processor import AnomalyOptions, AnomalyProcessor

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"


def _later(name: str) -> Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]:
    """``commands.<name>``, imported when ``patgw`` builds that command's parser, not when the
    plugin registers: its imports (numpy, file formats) cost every start of ``patgw run``."""

    def configure(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
        from . import commands

        handler: Callable[[argparse.Namespace], int] = getattr(commands, name)(parser)
        return handler

    return configure


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
        fit=_later("configure_fit"),
        show=_later("configure_show"),
        check=_later("configure_check"),
        description="Batch-evolution PCA models of normal operation for the 'anomaly'"
        " processor: fit from exported normal runs, check on other runs, show",
    )
