"""The ``csv_file`` sink in a whole gateway (``run_gateway``): what the store committed, the
file holds, in commit order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import RampPlugin, rows, wait_for_rows

from gateway import Quality


async def test_every_committed_sample_becomes_a_row(run_gateway: Any, tmp_path: Path) -> None:
    out = tmp_path / "out" / "samples.csv"
    config = {
        "instruments": [{"id": "pump", "driver": "ramp", "poll_interval_s": 0.02}],
        "sinks": [{"id": "csv", "type": "csv_file", "options": {"path": str(out)}}],
    }
    async with run_gateway(config, plugins=[RampPlugin()]) as run:
        await wait_for_rows(out, 5)
    committed = run.samples("test/pump/flow")
    written = rows(out)
    assert len(written) >= 5
    # A store-and-forward sink: rows in commit order, none that was not committed.
    assert [(r["signal"], int(r["seq"]), float(r["value"])) for r in written] == [
        (s.signal, s.seq, s.value) for s in committed[: len(written)]
    ]
    assert {(r["unit"], r["quality"], r["historical"]) for r in written} == {
        ("mL/min", "good", "0")
    }
    assert written[0]["source_ts"].endswith("Z")


async def test_a_bad_sample_is_a_row_with_its_reason(run_gateway: Any, tmp_path: Path) -> None:
    out = tmp_path / "samples.csv"
    config = {
        "instruments": [
            {"id": "pump", "driver": "ramp", "poll_interval_s": 0.02, "options": {"bad_from": 2}}
        ],
        "sinks": [{"id": "csv", "type": "csv_file", "options": {"path": str(out), "fsync": True}}],
    }
    async with run_gateway(config, plugins=[RampPlugin()]) as run:
        await wait_for_rows(out, 3)
    written = rows(out)
    assert (written[0]["value"], written[0]["quality"]) == ("1.0", "good")
    assert (written[1]["value"], written[1]["quality"], written[1]["reason"]) == (
        "",
        "bad",
        "sensor fault",
    )
    assert run.samples("test/pump/flow")[1].quality is Quality.BAD
