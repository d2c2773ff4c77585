"""Glucose control through the real gateway: open loop (a bolus feed schedule) vs closed loop
(the ``pi_control`` processor of ``configs/demo-closed-loop.yaml``), on the emulated fed-batch.

Both runs use the demo's closed-loop configuration — the emulated bioreactor (OPC UA), feed pump
(Modbus TCP) and Raman probe (a pseudo-terminal), the PLS soft sensor — on free ports, without
the northbound sinks, time-scaled (``--time-scale``, 1440 = a process day per wall minute), and
run side by side for ``--days`` process days. The closed loop is the demo's loop as shipped. The
open loop has no loop: at the start of each process day from day 1, a person's schedule
(written by this script through the gateway's write path as an operator) runs the pump for a
bolus sized to a reference run's glucose uptake over the coming day (``BOLUS_G``).

Figures, per run, from the emulator's true glucose (the controller's ``Emulation.Glucose``
node, read here for validation only; the loop never sees it), after the run's first feed:
``time_in_band_fraction`` (within ±0.5 g/L of the 4 g/L setpoint; target ≥ 0.9),
``min_glucose_g_per_l`` (target > 0.5), ``iae`` (g/L·h), ``final_titer_g_per_l``, and
``writes`` (executed writes of the pump's setpoint).

    .venv/bin/python benchmarks/closed_loop.py [--days 10] [--time-scale 1440]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway import build_registry, load_plan
from gateway.control import WriteRequest
from gateway.logs import configure_logging
from gateway.runtime import Gateway
from gateway.security import Identity, Permission
from gateway.store import SampleStore

REPO = Path(__file__).resolve().parents[1]
TARGET = "reactor1/feed_pump/speed_setpoint"
SETPOINT = 4.0
BAND = 0.5
#: Open loop: grams of glucose fed at the start of process day d (1, 2, ...): a reference run's
#: uptake over that day with glucose held near 4.5 g/L (FedBatchModel, seed 1; days 2-10).
BOLUS_G = [0.8, 1.8, 4.0, 7.8, 8.6, 8.0, 7.5, 7.0, 6.5]
#: Open loop: the pump's speed during a bolus, rpm (0.8 mL/rev of 400 g/L feed).
BOLUS_RPM = 200.0
OPERATOR = Identity(
    "schedule", "Bolus feed schedule", frozenset({"operator"}), frozenset(Permission)
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(folder: Path, time_scale: float, closed: bool) -> Path:
    """The demo's closed-loop configuration, moved to ``folder`` and free ports."""
    text = (REPO / "configs" / "demo-closed-loop.yaml").read_text()
    for old in ("15020", "14840", "port: 9180"):
        new = str(_free_port())
        text = text.replace(old, new if old.isdigit() else f"port: {new}")
    text = _rescaled(text, time_scale)
    # Control against the nominal process: no scheduled faults.
    text = re.sub(r"\n      faults: \[.*\]", "", text)
    text = re.sub(r"\nsinks:\n(?:  .*\n|\s*\n)*", "\n", text)
    if not closed:
        # Emulated processes are named per Python process: the open loop's needs its own name.
        text = text.replace("  - id: reactor\n", "  - id: reactor_open\n")
        text = re.sub(r"process: reactor\b", "process: reactor_open", text)
        text = re.sub(r"\n  # Glucose held at 4 g/L.*?(?=\n\n|\Z)", "", text, flags=re.S)
        text = text.replace("watchdog_s: 10", "watchdog_s: 0")  # nobody beats it here
        # A bolus: fast, no step limit.
        text, count = re.subn(
            r"(  - target: reactor1/feed_pump/speed_setpoint\n(?:    .*\n)*?)"
            r"    max: .*\n    max_step: .*\n    max_rate_per_s: .*\n",
            r"\1    max: 400\n",
            text,
        )
        assert count == 1, "the demo's pump target has changed: update this benchmark"
    configs = folder / "configs"
    configs.mkdir(parents=True)
    (configs / "models").symlink_to(REPO / "configs" / "models")
    path = configs / "closed-loop.yaml"
    path.write_text(text)
    return path


#: The demo's time scale, for which its rpm figures are set.
DEMO_SCALE = 3600.0


def _rescaled(text: str, time_scale: float) -> str:
    """The demo at ``time_scale``: the pump runs on wall time, so every rpm figure (the loop's
    gain, output limit and fallback, the target's limits, the watchdog's safe speed) scales by
    ``time_scale / DEMO_SCALE`` for the same feed per process hour."""
    factor = time_scale / DEMO_SCALE
    text = text.replace(f"time_scale: {DEMO_SCALE:g}", f"time_scale: {time_scale:g}")

    def scaled(match: re.Match[str]) -> str:
        return f"{match.group(1)}{float(match.group(2)) * factor:g}"

    for key in ("kp", "out_max", "safe_rpm"):
        text = re.sub(rf"(\n\s+{key}: )([0-9.]+)(?=\n)", scaled, text)
    head, sep, rest = text.partition("  - target: reactor1/feed_pump/speed_setpoint\n")
    block, end, tail = rest.partition("\n  - ")
    for key in ("max", "max_step", "max_rate_per_s"):
        block = re.sub(rf"(\n    {key}: )([0-9.]+)(?=\n)", scaled, "\n" + block)[1:]
    text = head + sep + block + end + tail
    text = re.sub(
        r"(fallback: )(\[\[.*\]\])",
        lambda m: m.group(1) + str([[h, rpm * factor] for h, rpm in json.loads(m.group(2))]),
        text,
    )
    return text


async def _bolus_schedule(gateway: Gateway, time_scale: float, days: float) -> None:
    """At the start of each process day from day 1: the pump at BOLUS_RPM for the bolus."""
    await gateway.started.wait()
    start = time.monotonic()
    assert gateway.write_path is not None
    path = gateway.write_path
    wall_per_h = 3600 / time_scale
    g_per_wall_s = BOLUS_RPM * 0.8 / 60 * 0.4  # mL/s x g/mL
    for day, grams in enumerate(BOLUS_G, start=1):
        if day >= days:
            return
        await asyncio.sleep(max(0.0, start + day * 24 * wall_per_h - time.monotonic()))
        for value in (BOLUS_RPM, 0.0):
            outcome = await path.submit(
                WriteRequest(TARGET, value, OPERATOR, f"bolus day {day}", "controller")
            )
            if not outcome.ok:
                raise RuntimeError(f"bolus write not done: {outcome.message}")
            if value:
                await asyncio.sleep(grams / g_per_wall_s)


async def _run(config: Path, time_scale: float, days: float, closed: bool) -> Path:
    plan = load_plan(config, build_registry())
    gateway = Gateway(plan)
    stop = asyncio.Event()

    async def timer() -> None:
        await gateway.started.wait()
        await asyncio.sleep(days * 24 * 3600 / time_scale)
        stop.set()

    async with asyncio.TaskGroup() as group:
        group.create_task(timer(), name="bench.timer")
        if not closed:
            group.create_task(_bolus_schedule(gateway, time_scale, days), name="bench.bolus")
        await gateway.run(stop)
    return plan.config.store.path


def _figures(store_path: Path, time_scale: float) -> dict[str, Any]:
    store = SampleStore(store_path, read_only=True)
    try:
        glucose: list[tuple[int, float]] = []
        titer: list[float] = []
        setpoint: list[tuple[int, float]] = []
        for s in store.samples():
            if s.quality.name != "GOOD" or s.value is None:
                continue
            if s.signal == "reactor1/controller/glucose_true":
                glucose.append((s.source_ts, float(s.value)))
            elif s.signal == "reactor1/controller/titer_true":
                titer.append(float(s.value))
            elif s.signal == TARGET:
                setpoint.append((s.source_ts, float(s.value)))
    finally:
        store.close()
    t0 = glucose[0][0]
    first_feed = next((ts for ts, v in setpoint if v > 0), None)
    window = [(ts, g) for ts, g in glucose if first_feed is not None and ts >= first_feed]
    h_per_ns = time_scale / 3.6e12
    iae = sum(
        abs(g - SETPOINT) * (b - a) * h_per_ns for (a, g), (b, _) in itertools.pairwise(window)
    )
    inside = sum(
        (b - a) for (a, g), (b, _) in itertools.pairwise(window) if abs(g - SETPOINT) <= BAND
    )
    span = window[-1][0] - window[0][0] if len(window) > 1 else 0
    changes = sum(1 for (_, a), (_, b) in itertools.pairwise(setpoint) if a != b)
    return {
        "process_hours": round((glucose[-1][0] - t0) * h_per_ns, 1),
        "first_feed_h": None if first_feed is None else round((first_feed - t0) * h_per_ns, 1),
        "time_in_band_fraction": round(inside / span, 3) if span else None,
        "min_glucose_g_per_l": round(min(g for _, g in window), 3) if window else None,
        "iae": round(iae, 2),
        "final_titer_g_per_l": round(titer[-1], 3) if titer else None,
        "setpoint_changes": changes,
    }


async def _both(folder: Path, time_scale: float, days: float) -> dict[str, Any]:
    closed = _config(folder / "closed", time_scale, closed=True)
    open_ = _config(folder / "open", time_scale, closed=False)
    async with asyncio.TaskGroup() as group:
        c = group.create_task(_run(closed, time_scale, days, True), name="bench.closed")
        o = group.create_task(_run(open_, time_scale, days, False), name="bench.open")
    return {
        "closed_loop": _figures(c.result(), time_scale),
        "open_loop": _figures(o.result(), time_scale),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=10.0, help="process days per run")
    parser.add_argument("--time-scale", type=float, default=1440.0, help="process s per wall s")
    args = parser.parse_args()
    configure_logging("console", "warning")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="closed-loop-") as tmp:
        figures = asyncio.run(_both(Path(tmp), args.time_scale, args.days))
    result = {
        "benchmark": "closed_loop",
        "days": args.days,
        "time_scale": args.time_scale,
        "setpoint_g_per_l": SETPOINT,
        "band_g_per_l": BAND,
        **figures,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
