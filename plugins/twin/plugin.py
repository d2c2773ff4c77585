"""Registers the digital twin through the public hooks: the ``twin`` processor and the
``twin`` kind of ``patgw model`` (fit, check and show twin model files)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from gateway import Registry, hookimpl

from .processor import TwinOptions, TwinProcessor

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
        fit=_later("configure_fit"),
        show=_later("configure_show"),
        check=_later("configure_check"),
        description="twin model files for the 'twin' processor: kinetics fitted to exported"
        " runs and reference values (VCD, glucose, lactate, titer)",
    )
