"""Registers the soft sensor through the public hooks, like any plugin: the ``pls`` processor
and the ``patgw model`` command (fit, check and show model files)."""

from __future__ import annotations

from gateway import Registry, hookimpl

from .commands import configure
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
def pat_gateway_register_commands(registry: Registry) -> None:
    registry.add_command(
        "model",
        configure,
        "fit, check and show PLS model files for the 'pls' processor (soft sensor)",
    )
