"""Emulated fed-batch runs written as ``patgw export`` writes them, with the emulator's true
values as a reference CSV: the training and validation data of the demo's twin model.

Each run is the process model of ``firmware_stubs`` fed at a constant rate from ``start_h``
(mL per process hour of 400 g/L glucose feed), sampled every ``every_h`` process hours as the
gateway would publish: the pump's ``total_volume`` and the controller's ``base_total``
(``reactor1/feed_pump/total_volume``, ``reactor1/controller/base_total``, mL). Timestamps are
process time (time scale 1). The CSV holds ``vcd``, ``glucose``, ``lactate`` and ``titer``
every ``reference_every_h`` hours: the offline truth a fit may use, as laboratory values.
"""

from __future__ import annotations

from pathlib import Path

from firmware_stubs.bioreactor.model import FedBatchModel
from gateway import Quality, Sample, format_ns, parse_iso_ns, sample_to_json

__all__ = ["T0", "write_run"]

T0 = parse_iso_ns("2026-11-01T00:00:00Z")
HOUR_NS = 3_600_000_000_000


def write_run(
    folder: Path,
    name: str,
    *,
    seed: int,
    feed_mL_per_h: float,
    start_h: float = 48.0,
    hours: float = 240.0,
    every_h: float = 0.25,
    reference_every_h: float = 4.0,
) -> tuple[Path, Path]:
    """Write ``<name>.jsonl`` and ``<name>.csv`` into ``folder``; return their paths."""
    model = FedBatchModel(seed=seed)
    lines: list[str] = []
    rows = ["time,vcd [10*6/mL],glucose [g/L],lactate [g/L],titer [g/L]"]
    steps = round(hours / every_h)
    ref_every = round(reference_every_h / every_h)
    seq = 0
    for k in range(steps + 1):
        t = k * every_h
        if k:
            if t > start_h:
                model.add_feed(feed_mL_per_h * every_h / 1000.0)
            model.advance(every_h)
        state = model.state
        ts = T0 + round(t * HOUR_NS)
        for signal, value in (
            ("reactor1/feed_pump/total_volume", state.fed_volume_L * 1000.0),
            ("reactor1/controller/base_total", state.base_added_mL),
        ):
            seq += 1
            sample = Sample(signal, value, "mL", ts, ts, Quality.GOOD, seq)
            lines.append(sample_to_json(sample))
        if k % ref_every == 0:
            rows.append(
                f"{format_ns(ts)},{state.vcd_e6_per_mL:.6g},{state.glucose_g_L:.6g},"
                f"{state.lactate_g_L:.6g},{state.titer_g_L:.6g}"
            )
    data = folder / f"{name}.jsonl"
    reference = folder / f"{name}.csv"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    reference.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return data, reference
