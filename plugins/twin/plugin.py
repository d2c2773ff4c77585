"""Registers the digital twin through the public hooks: the ``twin`` processor and the
``twin`` kind of ``patgw model`` (fit, check and show twin model files)."""

from __future__ import annotations

from gateway import Registry, hookimpl

from .commands import configure_check, configure_fit, configure_show
from .processor import TwinOptions, TwinProcessor


@hookimpl
def pat_gateway_register_processors(registry: Registry) -> None:
    registry.add_processor(
        "twin",
        TwinProcessor,
        TwinOptions,
        "Digital twin: a fed-batch CHO model corrected by measured glucose and lactate (EKF);"
        " estimates VCD and titer, residuals, a glucose forecast and the feed's efficiency",
    )


@hookimpl
def pat_gateway_register_model_kinds(registry: Registry) -> None:
    registry.add_model_kind(
        "twin",
        fit=configure_fit,
        show=configure_show,
        check=configure_check,
        description="twin model files for the 'twin' processor: kinetics fitted to exported"
        " runs and reference values (VCD, glucose, lactate, titer)",
    )
