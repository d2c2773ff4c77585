"""The ``laser_decay`` part of the anomaly benchmark (``benchmarks/anomaly.py``): a Raman laser
losing power, seen through the soft sensor's reference band.

Each run of :mod:`anomaly_data` (glucose, lactate and cells as the emulated process gives them)
is scanned every 0.1 process hour by the emulated spectrometer's physics
(:class:`~firmware_stubs.raman.spectrum.SpectrumSynthesizer`, 500 ms integration as in the demo,
shot and read noise); each spectrum goes through the ``pls`` processor with the shipped model
(``configs/models/raman-glucose-lactate.json``) and its ``reference_intensity`` on to the
``anomaly`` processor's ``relative`` check (:data:`CHECK`). With the fault, the Raman bands
lose ``RATE_PER_H`` of their intensity per process hour from the onset (the emulator's
``laser_decay``; background and dark unchanged).

Figures: false alarms on the clean runs (per 100 process hours), and per faulty run the
detection delay after the onset (process hours) and the band loss at detection; and, for
comparison, the largest glucose error and Q ratio the soft sensor showed before detection (why
its own outputs do not reveal the fault).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, cast

import anomaly_data as data
import numpy as np

from firmware_stubs.raman.spectrum import Composition, SpectrumSynthesizer
from gateway import PluginContext, ProcessorIO, Quality, Sample, Signal, SignalKind, Spectrum
from plugins.anomaly.processor import AnomalyOptions, AnomalyProcessor
from plugins.softsensor.processor import PlsOptions, PlsProcessor

MODEL = Path(__file__).resolve().parent.parent / "configs" / "models" / "raman-glucose-lactate.json"
RATE_PER_H = 0.005
INTEGRATION_S = 0.5
_NS_PER_H = 3_600_000_000_000
#: The check an engineer configures on the soft sensor's reference band (defaults otherwise):
#: 6 %, twice the largest fall of the smoothed band over the clean runs (2.8 %; it rises by up
#: to 5 % as the cells grow).
CHECK: dict[str, Any] = {
    "name": "raman_laser",
    "kind": "relative",
    "signal": "reactor1/softsensor/reference_intensity",
    "instrument": "raman",
    "max_drop": 0.06,
    "message": "laser power falling?",
}


def scan_run(
    played: data.Played, folder: Path, *, onset_h: float | None, seed: int
) -> dict[str, Any]:
    """Scan ``played`` (with the laser decaying from ``onset_h``, if given) through the soft
    sensor and the check: when the check's alarm was first raised, and what the soft sensor
    showed until then."""
    from anomaly import ReplayIO  # the replay's runtime side (imported here: it imports us)

    pls = PlsProcessor(
        PlsOptions.model_validate({"model": str(MODEL), "spectrum": "reactor1/raman/spectrum"}),
        PluginContext("softsensor", folder),
    )
    model = pls.model
    spectrum_signal = Signal("reactor1/raman/spectrum", model.spectrum_unit, SignalKind.SPECTRUM)
    pls.bind({spectrum_signal.id: spectrum_signal})
    anomaly = AnomalyProcessor(
        AnomalyOptions.model_validate({"checks": [CHECK]}), PluginContext("anomaly", folder)
    )
    anomaly.bind({CHECK["signal"]: Signal(CHECK["signal"], model.spectrum_unit)})
    pls_io, anomaly_io = ReplayIO(), ReplayIO()
    synth = SpectrumSynthesizer(model.axis.values, dark_pixels=0)
    axis = model.axis
    rng = np.random.default_rng(seed)
    reference = pls_io.output("reference_intensity")
    alarm = anomaly_io.output(CHECK["name"])
    raised_h: float | None = None
    loss_at = 0.0
    worst_glucose_error = 0.0
    worst_q_ratio = 0.0
    q_limit = model.targets[0].q_limit
    for step, hour in enumerate(played.hours):
        hour = float(hour)
        loss = 0.0 if onset_h is None or hour < onset_h else RATE_PER_H * (hour - onset_h)
        composition = Composition(
            glucose_g_L=max(0.0, float(played.glucose[step])),
            lactate_g_L=max(0.0, float(played.lactate[step])),
            vcd_e6_per_mL=max(0.0, float(played.vcd[step])),
        )
        counts = synth.counts(composition, INTEGRATION_S, -10.0, rng, band_scale=1.0 - loss)
        ts = data.FIRST_START_NS + round(hour * _NS_PER_H)
        spectrum = Spectrum(counts, axis)
        pls.process(
            Sample(
                "reactor1/raman/spectrum", spectrum, model.spectrum_unit, ts, ts, Quality.GOOD, step
            ),
            cast(ProcessorIO, pls_io),
        )
        value, _, quality, _ = reference.values[-1]
        anomaly.process(
            Sample(CHECK["signal"], value, model.spectrum_unit, ts, ts, quality, step),
            cast(ProcessorIO, anomaly_io),
        )
        if raised_h is None and alarm.values[-1][0]:
            raised_h, loss_at = hour, loss
            if onset_h is not None:
                break
        if onset_h is not None and hour >= onset_h:
            glucose = pls_io.outputs["glucose"].values[-1][0]
            worst_glucose_error = max(worst_glucose_error, abs(glucose - composition.glucose_g_L))
            q = pls_io.outputs["glucose_q"].values[-1][0]
            worst_q_ratio = max(worst_q_ratio, q / q_limit)
    raised = [f for action, f in anomaly_io.notes if action == "alarm.raised"]
    return {
        "raised_h": raised_h,
        "alarms": len(raised),
        "loss_at_detection": loss_at,
        "glucose_error_max_g_L": worst_glucose_error,
        "q_ratio_max": worst_q_ratio,
        "reason": str(raised[0].get("why", "")) if raised else "",
    }


def laser_decay(
    clean_runs: int, fault_runs: int, seed: int, folder: Path, *, hours: float, onset_h: float
) -> dict[str, Any]:
    """The benchmark's ``laser_decay`` figures (module docstring)."""
    every_h = 0.1
    alarms = 0
    reasons: list[str] = []
    for index, run in enumerate(data.plan_runs(clean_runs, seed)):
        result = scan_run(
            data.play_run(run, hours, every_h), folder, onset_h=None, seed=seed * 1000 + index
        )
        alarms += result["alarms"]
        reasons += [result["reason"][:160]] if result["reason"] else []
    detections: list[dict[str, Any]] = []
    for index, run in enumerate(data.plan_runs(fault_runs, seed + 1)):
        played = data.play_run(run, hours, every_h)
        result = scan_run(played, folder, onset_h=onset_h, seed=(seed + 1) * 1000 + index)
        at = result["raised_h"]
        if at is None or at < onset_h:
            detections.append({"run": run.name, "detected": False, "early_h": at})
            continue
        detections.append(
            {
                "run": run.name,
                "detected": True,
                "delay_h": round(at - onset_h, 2),
                "band_loss": round(result["loss_at_detection"], 4),
                "glucose_error_max_g_L": round(result["glucose_error_max_g_L"], 3),
                "q_ratio_max": round(result["q_ratio_max"], 3),
                "reason": result["reason"][:200],
            }
        )
    delays = [d["delay_h"] for d in detections if d["detected"]]
    losses = [d["band_loss"] for d in detections if d["detected"]]
    process_hours = clean_runs * hours
    return {
        "rate_per_h": RATE_PER_H,
        "check": {k: v for k, v in CHECK.items() if k not in ("message",)},
        "clean": {
            "runs": clean_runs,
            "process_hours": process_hours,
            "alarms": alarms,
            "false_alarms_per_100h": round(alarms / process_hours * 100, 3)
            if process_hours
            else None,
            "example_reasons": reasons[:3],
        },
        "detected": f"{len(delays)}/{fault_runs}",
        "delay_h_median": statistics.median(delays) if delays else None,
        "delay_h_max": max(delays) if delays else None,
        "band_loss_median": statistics.median(losses) if losses else None,
        "runs": detections,
    }
