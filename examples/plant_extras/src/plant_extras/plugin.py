"""The hooks: what the gateway finds through the ``pat_gateway`` entry point."""

from __future__ import annotations

from gateway import Registry, hookimpl

from .calibration import check_calibration, fit_calibration, show_calibration
from .csv_sink import CsvFileOptions, CsvFileSink
from .moving_average import MovingAverage, MovingAverageOptions
from .summary import configure_csv_summary

PAT_GATEWAY_API = "1.0"  # the plugin API this plugin was written for (gateway.PLUGIN_API_VERSION)


@hookimpl
def pat_gateway_register_sinks(registry: Registry) -> None:
    registry.add_sink("csv_file", CsvFileSink, CsvFileOptions, "Committed samples to a CSV file")


@hookimpl
def pat_gateway_register_processors(registry: Registry) -> None:
    registry.add_processor(
        "moving_average", MovingAverage, MovingAverageOptions, "Mean of a signal's last values"
    )


@hookimpl
def pat_gateway_register_commands(registry: Registry) -> None:
    registry.add_command(
        "csv-summary", configure_csv_summary, "Count and last value per signal of a CSV file"
    )


@hookimpl
def pat_gateway_register_model_kinds(registry: Registry) -> None:
    registry.add_model_kind(
        "linear",
        fit=fit_calibration,
        show=show_calibration,
        check=check_calibration,
        description="A two-point linear calibration (y = slope * x + offset)",
    )
