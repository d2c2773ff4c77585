"""Registers residence-time traceability through the public hooks: the ``rtd_trace``
processor, the ``rtd`` kind of ``patgw model`` and the ``patgw genealogy`` command."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from gateway import Registry, hookimpl

from .options import TraceOptions
from .processor import TraceProcessor

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
        "rtd_trace",
        TraceProcessor,
        TraceOptions,
        "Residence-time traceability: follows material from the media inlet through the"
        " bioreactor, the line's units (RTD models) and the capture columns to each eluate"
        " fraction; lot and deviation shares, divert recommendations, genealogy",
    )


@hookimpl
def pat_gateway_register_model_kinds(registry: Registry) -> None:
    registry.add_model_kind(
        "rtd",
        fit=_later("configure_fit"),
        show=_later("configure_show"),
        check=_later("configure_check"),
        description="Residence-time models (tanks in series, dead volume) of a unit operation,"
        " in volume coordinates, fitted from a tracer step test",
    )


@hookimpl
def pat_gateway_register_commands(registry: Registry) -> None:
    registry.add_command(
        "genealogy",
        _later("configure_genealogy"),
        "Export the genealogy of the eluate fractions an rtd_trace processor traced (json, csv)",
    )
