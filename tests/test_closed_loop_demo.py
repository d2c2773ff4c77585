"""Issue 14's closed-loop demo, run for real: the glucose loop moves the feed pump only through
audited writes as its own identity; while it is in auto nobody else may write the pump; the
mode change to manual is recorded before it takes effect and gives the pump back."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from pathlib import Path

import pytest
from conftest import REPO, demo_copy, patgw, running, stored_by_signal, wait_for
from test_controlled_writes import api_call, audit_records, patgw_with_password

from gateway import build_registry, load_plan

TARGET = "reactor1/feed_pump/speed_setpoint"
LOOP = "glucose_loop"


def test_the_closed_loop_demo_is_valid() -> None:
    checked = patgw("check", str(REPO / "configs" / "demo-closed-loop.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.asyncio
async def test_the_pump_moves_only_through_the_loops_audited_writes(tmp_path: Path) -> None:
    config, _ = demo_copy(tmp_path, "demo-closed-loop.yaml")
    plan = load_plan(config, build_registry())
    assert plan.config.http is not None
    port = plan.config.http.port
    async with running(plan) as (gateway, _):
        output = next(o for o in gateway.outputs if o.signal.id == f"reactor1/{LOOP}/output")
        await wait_for(lambda: output.seq >= 2, 120, what="three writes by the loop")
        pump = plan.emulators[1].instance.emulator.model
        beat = pump.heartbeat
        await wait_for(lambda: pump.heartbeat >= beat + 3, 30, what="three heartbeats")
        assert pump.watchdog_s == 10 and not pump.watchdog_tripped
        refused = await asyncio.to_thread(
            patgw_with_password, config, "operator", "3", target=TARGET, reason="not now"
        )
        assert refused.returncode == 2 and LOOP in refused.stderr, refused.stderr
        manual = {"mode": "manual", "output": 2.5, "reason": "take a sample"}
        route = f"/api/v1/processors/{LOOP}/mode"
        status, answer = await asyncio.to_thread(
            api_call, port, "POST", route, "operator", "operator-password", manual
        )
        # The loop may have written moments before: the pump's rate limit then refuses the
        # manual output ("try again in 0.1 s") and the operator does so (recorded again).
        retried = status == 409 and "(rate)" in answer.get("error", "")
        if retried:
            await asyncio.sleep(0.3)
            status, answer = await asyncio.to_thread(
                api_call, port, "POST", route, "operator", "operator-password", manual
            )
        assert status == 200, answer
        assert (answer["mode"], answer["state"], answer["output"]) == ("manual", "manual", 2.5)
        done = await asyncio.to_thread(
            patgw_with_password, config, "operator", "3", target=TARGET, reason="my turn"
        )
        assert done.returncode == 0, done.stderr
        setpoint = next(o for o in gateway.outputs if o.signal.id == TARGET)
        await wait_for(
            lambda: setpoint.latest and setpoint.latest[5] == 3,
            10,
            what="the operator's setpoint seen",
        )

    records = audit_records(plan)
    executed = [r for r in records if r["action"] == "write.executed"]
    by_loop = [r for r in executed if r["user"] == LOOP]
    assert len(by_loop) >= 3 and all(r["details"]["interface"] == "controller" for r in by_loop)
    owner = [r for r in records if r["action"] == "write.refused" and r["user"] == "operator"]
    assert [r["details"]["rule"] for r in owner] == ["owner"]
    modes = [r for r in records if r["action"] == "control.mode"]
    assert [(r["user"], r["old"], r["new"]) for r in modes] == [
        (LOOP, "manual", "auto"),
        ("operator", "auto", "manual at 2.5"),
        *([("operator", "manual", "manual at 2.5")] if retried else []),
    ]
    manual_write = next(r for r in executed if r["new"] == 2.5)
    assert modes[1]["seq"] < manual_write["seq"]  # recorded first, then applied
    assert executed[-1]["user"] == "operator" and executed[-1]["new"] == 3
    # Heartbeats are not audited one by one, and never count as setpoint writes.
    beats = [r for r in records if r["target"] == "reactor1/feed_pump/heartbeat"]
    assert 1 <= len(beats) <= 2, beats
    assert all(r["target"] == TARGET for r in executed)

    # Every change of the pump's setpoint, as polled and stored, is an executed write's value
    # (the register is a float32), each by the loop until the operator's own.
    stored = stored_by_signal(plan.config.store.path)[TARGET]
    values = [s.value for s in stored if s.quality.name == "GOOD"]
    changes = [b for a, b in itertools.pairwise(values) if b != a]
    assert len(changes) >= 3
    written = [float(r["new"]) for r in executed]
    for value in changes:
        assert any(abs(value - w) <= 1e-5 * max(1.0, abs(w)) for w in written), (value, written)
    assert json.dumps(values[0]) == "0.0"


@pytest.mark.asyncio
async def test_a_silent_spectrometer_holds_the_pump_then_falls_back_audited(
    tmp_path: Path,
) -> None:
    """The Raman probe goes silent: no good glucose, so the loop holds, then follows the
    fallback profile (12.5 rpm before process hour 72), each step audited and published; when the
    probe answers again it controls again."""
    config, _ = demo_copy(tmp_path, "demo-closed-loop.yaml")
    text = config.read_text()
    text = text.replace(
        "options: {serial: true,",
        "options: {faults: [{fault: silence, after_s: 12, for_s: 30}], serial: true,",
    )
    text = text.replace("stale_after_s: 10", "stale_after_s: 4").replace(
        "fallback_after_s: 30", "fallback_after_s: 4"
    )
    config.write_text(text)
    plan = load_plan(config, build_registry())
    async with running(plan) as (gateway, _):
        state = next(o for o in gateway.outputs if o.signal.id == f"reactor1/{LOOP}/state")
        seen: list[float] = []

        def state_is(value: float) -> bool:
            now = state.latest[5] if state.latest else None
            if now is not None and (not seen or seen[-1] != now):
                seen.append(now)
            return now == value

        await wait_for(lambda: state_is(2.0), 90, what="the loop in fallback")
        await wait_for(lambda: state_is(0.0), 90, what="the loop controlling again")

    assert seen[-3:] == [1.0, 2.0, 0.0]  # hold, fallback, normal
    records = audit_records(plan)
    control = [r for r in records if r["action"].startswith("control.") and r["user"] == LOOP]
    actions = [r["action"] for r in control]
    assert actions[-3:] == ["control.hold.enter", "control.fallback.enter", "control.fallback.exit"]
    enter, leave = control[-2]["seq"], control[-1]["seq"]
    during = [
        r
        for r in records
        if r["action"] == "write.executed" and r["user"] == LOOP and enter < r["seq"] < leave
    ]
    assert during and during[-1]["new"] == 12.5  # the fallback profile's rate
    hold = control[-3]["seq"]
    assert not [
        r
        for r in records
        if r["action"] == "write.requested" and hold < r["seq"] < enter  # holding: no writes
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("out_max: 250", "out_max: 300"), "output limits 0..300 are wider than"),
        (
            ("target: reactor1/feed_pump/speed_setpoint", "target: reactor1/feed_pump/speed"),
            "'reactor1/feed_pump/speed' is not a writable target",
        ),
        (
            ("      kp: 62.5\n", "      kp: 62.5\n      max_rate_per_s: 50\n"),
            "max_rate_per_s 50 is",
        ),
        (("fallback: [[0, 12.5], [72, 50]]", "fallback: [[0, 5], [72, 300]]"), "fallback output"),
        (("fallback: [[0, 12.5], [72, 50]]", "fallback: [[10, 5], [2, 20]]"), "must increase"),
        (("measurement_unit: g/L", "measurement_unit: mg/L"), "is in 'g/L', not 'mg/L'"),
        (
            (
                "role: operator\n  - target: reactor1/controller",
                "role: admin\n  - target: reactor1/controller",
            ),
            "may not write",
        ),
    ],
)
def test_a_bad_loop_is_an_error_at_check(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    config, _ = demo_copy(tmp_path, "demo-closed-loop.yaml")
    text = config.read_text()
    assert change[0] in text
    config.write_text(text.replace(change[0], change[1], 1))
    checked = patgw("check", str(config))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert message in checked.stderr + checked.stdout, checked.stderr


@pytest.mark.asyncio
async def test_a_failed_write_holds_the_loop_and_says_so(tmp_path: Path) -> None:
    """The pump answers every request with a Modbus exception for a while: the loop's writes
    are refused (the write path cannot read the present value), the loop holds (state 1, the
    reason saying the write was refused), records it, and controls again once the pump
    answers."""
    config, _ = demo_copy(tmp_path, "demo-closed-loop.yaml")
    text = config.read_text()
    wear = re.compile(r"faults: \[\{fault: tubing_wear, [^\n]*\}\]")
    assert wear.search(text)
    config.write_text(
        wear.sub("faults: [{fault: exception_responses, after_s: 12, for_s: 25}]", text)
    )
    plan = load_plan(config, build_registry())
    async with running(plan) as (gateway, _):
        state = next(o for o in gateway.outputs if o.signal.id == f"reactor1/{LOOP}/state")
        reasons: list[str] = []

        def refused() -> bool:
            if state.latest and state.latest[5] == 1.0 and state.latest[6]:
                reasons.append(state.latest[6])
            return any(r["action"] == "control.write.refused" for r in audit_records(plan))

        await wait_for(refused, 90, interval=0.2, what="a write refused and recorded")
        first = next(r for r in audit_records(plan) if r["action"] == "control.write.refused")

        def controlling_again() -> bool:
            return any(
                r["action"] == "write.executed" and r["user"] == LOOP and r["seq"] > first["seq"]
                for r in audit_records(plan)
            )

        await wait_for(controlling_again, 90, interval=0.5, what="a write done after the fault")
    assert first["outcome"] == "refused" and first["user"] == LOOP
    # The write path cannot read the pump's present value: it refuses, nothing is written.
    assert "write refused: refused (instrument-down)" in first["details"]["why"], first
    assert any("write refused" in r for r in reasons), reasons


@pytest.mark.timeout(300)  # the demo runs its two minutes
def test_the_two_minute_demo_controls_estimates_and_sees_the_pump_wear(tmp_path: Path) -> None:
    """Issue 14's done-when, as a user runs it: `patgw run configs/demo-closed-loop.yaml --for
    120` exports the loop's output, the soft sensor's glucose, the twin's VCD and titer (beside
    the emulator's truth) and the alarms; the tubing wear's alarm names the pump; the pump's
    setpoint changes only through the loop's audited writes."""
    config, _ = demo_copy(tmp_path, "demo-closed-loop.yaml")
    ran = patgw("run", str(config), "--for", "120", "--no-view", timeout=200)
    assert ran.returncode == 0, ran.stderr[-2000:]
    exported = patgw("export", str(config), "--format", "jsonl")
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    by_signal: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_signal.setdefault(str(row["signal"]), []).append(row)
    for signal in (
        f"reactor1/{LOOP}/output",
        "reactor1/softsensor/glucose",
        "reactor1/twin/vcd",
        "reactor1/twin/vcd_sd",
        "reactor1/twin/titer",
        "reactor1/controller/vcd_true",
        "reactor1/controller/titer_true",
        "reactor1/anomaly/mspc_alarm",
    ):
        good = [r for r in by_signal.get(signal, []) if r["quality"] == "good"]
        assert good, f"no good {signal} exported"
    wear = [r for r in by_signal["reactor1/anomaly/feed_pump_wear"] if r["value"]]
    assert wear, "the tubing wear's alarm was not raised within the two minutes"

    records = audit_records(load_plan(config, build_registry()))
    raised = [r for r in records if r["action"] == "alarm.raised" and r["target"]]
    wear_records = [r for r in raised if "feed_pump_wear" in json.dumps(r)]
    assert wear_records and "feed_pump" in wear_records[0]["reason"], raised
    executed = [r for r in records if r["action"] == "write.executed"]
    assert executed and all(r["user"] == LOOP for r in executed)
    assert all(r["target"] == TARGET for r in executed)
    # Every change of the stored setpoint is one of those writes (a float32 register).
    values = [r["value"] for r in by_signal[TARGET] if r["quality"] == "good"]
    written = [float(r["new"]) for r in executed]
    for before, after in itertools.pairwise(values):
        if after != before:
            assert any(abs(float(after) - w) <= 1e-5 * max(1.0, w) for w in written), after
