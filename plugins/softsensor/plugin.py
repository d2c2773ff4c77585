"""Registers the soft sensor through the public hooks, like any plugin: the ``pls`` processor
and the ``pls`` kind of ``patgw model`` (fit, check and show PLS model files)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from gateway import Registry, hookimpl

from .processor import PlsOptions, PlsProcessor

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
        fit=_later("configure_fit"),
        show=_later("configure_show"),
        check=_later("configure_check"),
        description="PLS model files for the 'pls' processor (soft sensor): fit from exported"
        " spectra and reference values, check on new data, show",
    )
