"""Registers residence-time traceability through the public hooks: the ``rtd_trace``
processor, the ``rtd`` kind of ``patgw model`` and the ``patgw genealogy`` command."""

from __future__ import annotations

from gateway import Registry, hookimpl

from .commands import configure_check, configure_fit, configure_genealogy, configure_show
from .options import TraceOptions
from .processor import TraceProcessor


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
        fit=configure_fit,
        show=configure_show,
        check=configure_check,
        description="Residence-time models (tanks in series, dead volume) of a unit operation,"
        " in volume coordinates, fitted from a tracer step test",
    )


@hookimpl
def pat_gateway_register_commands(registry: Registry) -> None:
    registry.add_command(
        "genealogy",
        configure_genealogy,
        "Export the genealogy of the eluate fractions an rtd_trace processor traced (json, csv)",
    )
