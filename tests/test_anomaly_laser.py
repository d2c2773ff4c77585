"""A Raman laser losing power, caught in the real runtime: the emulated bioreactor (time-scaled)
and the emulated spectrometer linked to it over a pseudo-terminal, the gateway reading spectra
through the ``ocean_obp`` driver, the ``pls`` soft sensor with the shipped model publishing its
reference band's intensity, and the ``anomaly`` processor's ``relative`` check on it raising an
alarm that names the spectrometer — and none on a clean run of the same length.

The soft sensor normalises its spectra by that band, so its predictions and Q hardly move when
the laser weakens (``benchmarks/anomaly.py`` measures that too): the band itself is the witness.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, plan_for, running, stored_by_signal, wait_for
from pydantic import ValidationError

from plugins.anomaly.processor import AnomalyOptions

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "configs" / "models" / "raman-glucose-lactate.json"
#: Process seconds per wall second: half a process hour per wall second.
TIME_SCALE = 1800.0
ONSET_H = 3.0
RATE_PER_H = 0.02
#: The run's length in process hours: past the fault's expected detection (10 % of the band lost
#: at 5 h after the onset, plus the smoothing's lag) with room to spare.
RUN_H = 16.0
ALARM = "reactor1/anomaly/raman_laser"
REFERENCE = "reactor1/softsensor/reference_intensity"
#: Seconds between reads of the whole store while waiting: each read holds the event loop the
#: emulators and the gateway run on.
STORE_POLL_S = 0.5


def _config(tmp_path: Path, faults: list[dict[str, Any]]) -> dict[str, Any]:
    link = tmp_path / "raman.tty"
    return {
        "emulators": [
            {
                "id": "reactor",
                "type": "bioreactor",
                "options": {
                    "seed": 5,
                    "time_scale": TIME_SCALE,
                    "log_every_s": 0,
                    "port": free_port(),
                },
            },
            {
                "id": "spectrometer",
                "type": "raman",
                "options": {
                    "serial": True,
                    "link": str(link),
                    "process": "reactor",
                    "seed": 5,
                    "faults": faults,
                },
            },
        ],
        "instruments": [
            {
                "id": "raman",
                "driver": "ocean_obp",
                "poll_interval_s": 0.2,
                "options": {
                    "port": str(link),
                    "laser_wavelength_nm": 785,
                    "integration_time_ms": 500,
                    "dark_pixels": 16,
                    "timeout_s": 2.0,
                },
                "signals": [{"id": "spectrum"}],
            }
        ],
        "processors": [
            {
                "id": "softsensor",
                "type": "pls",
                "options": {"model": str(MODEL), "spectrum": "raman/spectrum"},
            },
            {
                "id": "anomaly",
                "type": "anomaly",
                "time_base": {"time_scale": TIME_SCALE},
                "options": {
                    "checks": [
                        {
                            "name": "raman_laser",
                            "kind": "relative",
                            "signal": "softsensor/reference_intensity",
                            "instrument": "raman",
                            "max_drop": 0.1,
                            "smoothing_h": 2.0,
                            "message": "laser power falling?",
                        }
                    ]
                },
            },
        ],
    }


def _raised(store: Path) -> list[Any]:
    return [s for s in stored_by_signal(store).get(ALARM, []) if s.value]


def _last_check_h(store: Path) -> float:
    """Process hours the check has covered: from its first sample to its last."""
    samples = stored_by_signal(store).get(ALARM, [])
    if not samples:
        return 0.0
    return (samples[-1].source_ts - samples[0].source_ts) * TIME_SCALE / 3.6e12


@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_a_decaying_laser_raises_an_alarm_naming_the_raman(tmp_path: Path) -> None:
    fault = {"fault": "laser_decay", "after_s": ONSET_H * 3600 / TIME_SCALE}
    plan = plan_for(tmp_path, **_config(tmp_path, [{**fault, "rate_per_h": RATE_PER_H}]))
    store = Path(plan.config.store.path)
    async with running(plan):
        await wait_for(
            lambda: bool(_raised(store)),
            RUN_H * 3600 / TIME_SCALE + 60,
            STORE_POLL_S,
            what="the laser alarm",
        )
    raised = _raised(store)[0]
    assert raised.reason is not None
    assert raised.reason.startswith("raman: softsensor/reference_intensity ")
    assert "below its start" in raised.reason and "laser power falling?" in raised.reason
    # Not before the band had lost what the check waits for: its reference intensity by then
    # lay more than 10 % below the first spectra's.
    reference = [s for s in stored_by_signal(store)[REFERENCE] if s.value is not None]
    start = sum(s.value for s in reference[:5]) / 5
    before = [s.value for s in reference if s.source_ts <= raised.source_ts][-5:]
    assert sum(before) / len(before) < 0.95 * start
    # The soft sensor's own outputs carry on, good, as before.
    glucose = stored_by_signal(store)["reactor1/softsensor/glucose"]
    assert glucose and glucose[-1].value is not None


@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_a_clean_run_of_the_same_length_raises_no_laser_alarm(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, **_config(tmp_path, []))
    store = Path(plan.config.store.path)
    async with running(plan):
        await wait_for(
            lambda: _last_check_h(store) >= RUN_H,
            RUN_H * 3600 / TIME_SCALE + 60,
            STORE_POLL_S,
            what=f"{RUN_H} process hours of the check",
        )
    assert _raised(store) == []
    reference = [s for s in stored_by_signal(store)[REFERENCE] if s.value is not None]
    assert len(reference) >= 10 and all(s.value > 0 for s in reference)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_drop": 1.5}, "max_drop"),
        ({"smoothing_h": 0}, "smoothing_h"),
        ({"target": 1}, "target"),
    ],
)
def test_a_bad_relative_check_is_refused_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    check = {"name": "laser", "kind": "relative", "signal": "a/b", "instrument": "raman"}
    with pytest.raises(ValidationError, match=field):
        AnomalyOptions.model_validate({"checks": [check | change]})
