"""Registers the soft sensor through the public hooks, like any plugin: the ``pls`` processor
and the ``pls`` kind of ``patgw model`` (fit, check and show PLS model files)."""

from __future__ import annotations

from gateway import Registry, hookimpl

from .commands import configure_check, configure_fit, configure_show
from .processor import PlsOptions, PlsProcessor


@hookimpl
def pat_gateway_register_processors(registry: Registry) -> None:
    registry.add_processor(
        "pls",
        PlsProcessor,
        PlsOptions,
        "Chemometric soft sensor: a PLS model file applied to a spectrum signal"
        " (concentrations with Hotelling T² and Q)",
    )


@hookimpl
def pat_gateway_register_model_kinds(registry: Registry) -> None:
    registry.add_model_kind(
        "pls",
        fit=configure_fit,
        show=configure_show,
        check=configure_check,
        description="PLS model files for the 'pls' processor (soft sensor): fit from exported"
        " spectra and reference values, check on new data, show",
    )
