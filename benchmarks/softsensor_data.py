"""Calibration data for the Raman soft sensor: an emulated campaign, as the gateway exports it.

Plans a calibration campaign of ``--runs`` fed-batch runs (``firmware_stubs.raman.campaign``:
varied conditions, glucose and lactate uncorrelated with each other and with the batch), takes
the emulated spectrometer's raw spectra along each run, and writes what a soft-sensor fit reads:

* ``spectra.jsonl`` — one spectrum per line in the gateway's export format
  (:func:`gateway.sample_to_json`), signal ``reactor1/raman/spectrum``, unit ``{counts}``: the
  raw counts turned into the spectrum the ``ocean_obp`` driver publishes, with the driver's own
  functions (dark subtraction of the 16 masked pixels, Raman-shift axis for a 785 nm laser from
  the device's float32 wavelength calibration), so its axis key is the one the live driver
  builds from the emulated device. Source and gateway timestamp are the spectrum's process time
  after its run's start: run ``k`` (from 0) starts on 2026-01-01 plus ``30 k`` days, so runs of
  at most 14 days never overlap. ``seq`` counts the spectra from 0. A spectrum with saturated
  pixels would be ``uncertain`` with reason ``saturated: N pixels``, as the driver publishes it
  (none are at the default integration time).
* ``reference.csv`` — ``time,batch,glucose [g/L],lactate [g/L]``: for every spectrum, its time
  (ISO 8601 UTC, nanoseconds) and run name, and the process's true concentrations then — a
  laboratory that never errs.

    python benchmarks/softsensor_data.py --out DIR [--runs 8] [--seed 1] [--integration-ms 500] \\
        [--kind fed-batch|perfusion]

(``--kind perfusion``: runs of :func:`~firmware_stubs.raman.campaign.design_perfusion_runs`.)

prints one JSON object: ``spectra``, ``runs``, ``glucose_range`` and ``lactate_range`` ([min,
max], g/L), ``seconds`` (wall time of planning and writing), plus ``axis_key`` and
``saturated`` (spectra with saturated pixels). Another script can load this file by path and
call :func:`write_dataset` with runs of its own (e.g. a separate validation campaign).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from firmware_stubs.raman.campaign import (
    Acquisition,
    CampaignRun,
    acquire,
    design_perfusion_runs,
    design_runs,
)
from gateway import (
    Quality,
    Sample,
    SpectralAxis,
    Spectrum,
    format_ns,
    parse_iso_ns,
    sample_to_json,
)
from plugins.ocean_obp.spectrum import build_axis, dark_corrected, saturated_pixels

SIGNAL = "reactor1/raman/spectrum"
UNIT = "{counts}"
LASER_NM = 785.0
#: Masked pixels the driver is configured to subtract (the emulated device has 16).
DARK_PIXELS = 16
#: Start of the first run; each later run starts RUN_SPACING_NS later.
FIRST_START_NS = parse_iso_ns("2026-01-01T00:00:00Z")
RUN_SPACING_NS = 30 * 86_400 * 1_000_000_000
_NS_PER_H = 3_600 * 1_000_000_000
REFERENCE_HEADER = ("time", "batch", "glucose [g/L]", "lactate [g/L]")


def run_noise_seed(noise_seed: int, run: CampaignRun) -> int:
    """The spectral noise seed of one run: drawn from (``noise_seed``, the run's process seed),
    so runs of one dataset differ and two datasets made with other noise seeds share no noise."""
    return int(np.random.SeedSequence([noise_seed, run.seed]).generate_state(1)[0])


def driver_axis(acquisition: Acquisition, dark_pixels: int = DARK_PIXELS) -> SpectralAxis:
    """The axis the ``ocean_obp`` driver builds once per calibration from what the device
    reports, publishing all pixels after the first ``dark_pixels``."""
    return build_axis(
        acquisition.coefficients,
        acquisition.pixels,
        dark_pixels=dark_pixels,
        kind="raman_shift",
        laser_nm=acquisition.laser_nm,
    )


def write_dataset(
    out: Path, runs: Sequence[CampaignRun], *, integration_s: float, noise_seed: int
) -> dict[str, Any]:
    """Write ``out/spectra.jsonl`` and ``out/reference.csv`` for ``runs`` (creating ``out``)
    and return the summary the command line prints (see the module docstring)."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    seq = 0
    saturated = 0
    glucose: list[float] = []
    lactate: list[float] = []
    axis_key = ""
    with (
        (out / "spectra.jsonl").open("w", encoding="utf-8") as spectra,
        (out / "reference.csv").open("w", encoding="utf-8", newline="") as reference,
    ):
        table = csv.writer(reference, lineterminator="\n")
        table.writerow(REFERENCE_HEADER)
        for index, run in enumerate(runs):
            acquisition = acquire(
                run,
                integration_s=integration_s,
                laser_nm=LASER_NM,
                noise_seed=run_noise_seed(noise_seed, run),
            )
            axis = driver_axis(acquisition)
            axis_key = axis.key
            start_ns = FIRST_START_NS + index * RUN_SPACING_NS
            for hour, counts, broth in zip(
                acquisition.time_h, acquisition.counts, acquisition.composition, strict=True
            ):
                ts = start_ns + round(float(hour) * _NS_PER_H)
                full = saturated_pixels(counts)
                saturated += full > 0
                sample = Sample(
                    signal=SIGNAL,
                    value=Spectrum(dark_corrected(counts, DARK_PIXELS), axis),
                    unit=UNIT,
                    source_ts=ts,
                    gateway_ts=ts,
                    quality=Quality.UNCERTAIN if full else Quality.GOOD,
                    seq=seq,
                    reason=f"saturated: {full} pixels" if full else None,
                )
                spectra.write(sample_to_json(sample))
                spectra.write("\n")
                table.writerow((format_ns(ts), run.name, broth.glucose_g_L, broth.lactate_g_L))
                glucose.append(broth.glucose_g_L)
                lactate.append(broth.lactate_g_L)
                seq += 1
    return {
        "spectra": seq,
        "runs": len(runs),
        "glucose_range": [min(glucose), max(glucose)] if glucose else None,
        "lactate_range": [min(lactate), max(lactate)] if lactate else None,
        "seconds": round(time.perf_counter() - started, 3),
        "axis_key": axis_key,
        "saturated": saturated,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument("--runs", type=int, default=8, help="runs in the campaign (8)")
    parser.add_argument("--seed", type=int, default=1, help="campaign design seed (1)")
    parser.add_argument(
        "--integration-ms", type=float, default=500.0, help="integration time per spectrum (500)"
    )
    parser.add_argument(
        "--noise-seed", type=int, default=None, help="spectral noise seed (default: --seed)"
    )
    parser.add_argument(
        "--kind", choices=("fed-batch", "perfusion"), default="fed-batch", help="(fed-batch)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    design = design_perfusion_runs if args.kind == "perfusion" else design_runs
    runs = design(args.runs, args.seed)
    summary = write_dataset(
        args.out,
        runs,
        integration_s=args.integration_ms / 1000.0,
        noise_seed=args.seed if args.noise_seed is None else args.noise_seed,
    )
    summary["seconds"] = round(time.perf_counter() - started, 3)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
