"""Issue 14 reviewed as a hostile user, a broken device or a confused operator would use it: the
``pi_control`` loop in the real runtime (an inline device over the real write path, the local
API over HTTP) and the loader's checks of processors that act."""

from __future__ import annotations

import asyncio
import base64
import http.client
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_asyncio
from conftest import free_port, running, wait_for, write_config
from pydantic import BaseModel, ConfigDict
from test_controlled_writes import HASHES, PASSWORDS, api_call, audit_records

import plugins.feed_control.plugin as feed_control_plugin
from gateway import (
    Channel,
    ConfigError,
    InstrumentIO,
    PluginContext,
    ProcessorIO,
    Registry,
    Sample,
    Signal,
    build_registry,
    hookimpl,
    load_plan,
)
from gateway.loader import Plan
from gateway.runtime import Gateway
from plugins.feed_control.loop import Mode, State
from plugins.feed_control.processor import PiControlProcessor

TARGET = "t/plant/speed"
BEAT = "t/plant/beat"
SETPOINT_G_PER_L = 4.0
#: The speed the pump has at start; the loop takes over from it.
START_RPM = 2.0


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Plant:
    """A pump speed the gateway writes and reads back, and a glucose analyser that publishes
    exactly the samples a test queues (value, source time), nothing on its own."""

    last: ClassVar[Plant | None] = None
    start_speed: ClassVar[float] = START_RPM
    #: While set and not open, a heartbeat write waits for it (a slow device).
    beat_gate: ClassVar[asyncio.Event | None] = None

    def __init__(self, options: NoOptions, context: PluginContext) -> None:
        self.speed = Plant.start_speed
        self.writes: list[float] = []
        self.glucose: deque[tuple[float, int]] = deque()
        self.ages: deque[tuple[float, int]] = deque()
        self.beat_waiting = False
        self.published = 0
        Plant.last = self

    def channels(self) -> Sequence[Channel]:
        return [
            Channel("glucose", "g/L"),
            Channel("speed", "{rev}/min", writable=True),
            Channel("age", "h"),
            Channel("beat", "1", writable=True),
        ]

    async def run(self, io: InstrumentIO) -> None:
        io.connected()
        while True:
            io.output("speed").publish(self.speed)
            while self.glucose:
                value, ts = self.glucose.popleft()
                io.output("glucose").publish(value, ts)
                self.published += 1
            while self.ages:
                value, ts = self.ages.popleft()
                io.output("age").publish(value, ts)
            await asyncio.sleep(0.02)

    async def write(self, channel: str, value: float) -> None:
        if channel == "beat":
            gate = Plant.beat_gate
            if gate is not None:
                self.beat_waiting = True
                await gate.wait()
                self.beat_waiting = False
            return
        self.speed = value
        self.writes.append(value)

    async def read_back(self, channel: str) -> float:
        return self.speed if channel == "speed" else 0.0


class Listener:
    """A processor that only reads: no controls, no writes (like an alarm-only processor)."""

    def __init__(self, options: NoOptions, context: PluginContext) -> None:
        pass

    def inputs(self) -> Sequence[str]:
        return ["plant/glucose"]

    def channels(self) -> Sequence[Channel]:
        return [Channel("out", "1")]

    def bind(self, inputs: Mapping[str, Signal]) -> None:
        pass

    def process(self, sample: Sample, io: ProcessorIO) -> None:
        io.note("alarm.raise", why="a processor's own audit record")


class Plugin:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("plant", Plant, NoOptions)

    @hookimpl
    def pat_gateway_register_processors(self, registry: Registry) -> None:
        registry.add_processor("listener", Listener, NoOptions)


def config(tmp_path: Path, http_port: int, **options: Any) -> dict[str, Any]:
    target: dict[str, Any] = {"target": TARGET, "min": 0, "max": 10, "role": "operator"}
    target.update(options.pop("target_limits", {}))
    # One wall second is one process hour: a clock glitch of seconds is hours.
    time_base = options.pop("time_base", {"time_scale": 3600})
    loop: dict[str, Any] = {
        "measurement": "plant/glucose",
        "setpoint": SETPOINT_G_PER_L,
        "measurement_unit": "g/L",
        "target": TARGET,
        "output_unit": "{rev}/min",
        "readback": "plant/speed",
        "kp": 1.0,
        "ti_h": 1.0,
        "stale_after_s": 10.0,
        "fallback_after_s": 600.0,
        "fallback": [[0, 1.0]],
    }
    loop.update(options)
    return {
        "area": "t",
        "data_dir": str(tmp_path / "data"),
        "store": {"path": str(tmp_path / "s.sqlite"), "commit_interval_ms": 20},
        "instruments": [{"id": "plant", "driver": "plant"}],
        "processors": [
            {
                "id": "loop",
                "type": "pi_control",
                "time_base": time_base,
                "options": loop,
            }
        ],
        "http": {"host": "127.0.0.1", "port": http_port, "api": True},
        "security": {
            "users": [
                {"name": name, "password_hash": HASHES[name], "roles": [name]} for name in PASSWORDS
            ]
        },
        "writes": [
            target,
            {"target": BEAT, "min": 0, "max": 65535, "role": "operator", "heartbeat": True},
        ],
    }


def plan(tmp_path: Path, document: Mapping[str, Any]) -> Plan:
    registry = build_registry([Plugin(), feed_control_plugin], entry_points=False)
    return load_plan(write_config(tmp_path / "g.yaml", dict(document)), registry)


class Bench:
    def __init__(self, gateway: Gateway, plan: Plan, port: int) -> None:
        self.gateway, self.plan, self.port = gateway, plan, port
        runner = gateway.processors[0]
        assert isinstance(runner.plan.processor, PiControlProcessor)
        self.runner = runner
        self.processor: PiControlProcessor = runner.plan.processor

    @property
    def plant(self) -> Plant:
        assert Plant.last is not None
        return Plant.last

    async def command(self, user: str = "operator", **body: Any) -> tuple[int, dict[str, Any]]:
        body.setdefault("reason", "test")
        return await asyncio.to_thread(
            api_call, self.port, "POST", "/api/v1/processors/loop/mode", user, PASSWORDS[user], body
        )

    def idle(self) -> bool:
        """Nothing queued for the loop, no move pending, no write or command under way."""
        p = self.processor
        assert p.loop is not None
        return not p._moves and p.loop._pending is None and not p._lock.locked()

    async def measure(self, value: float, offset_s: float = 0.0) -> None:
        """One glucose sample stamped ``offset_s`` from now; wait until the loop acted on it."""
        published = self.plant.published
        self.plant.glucose.append((value, time.time_ns() + int(offset_s * 1e9)))

        def processed() -> bool:
            inbox = self.runner._inbox
            return self.plant.published > published and not any(
                s.signal == "t/plant/glucose" for s in inbox
            )

        await wait_for(processed, 10, what="the sample processed")
        await wait_for(self.idle, 10, what="the loop idle")


@pytest_asyncio.fixture
async def bench(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Bench]:
    async with started(tmp_path, **getattr(request, "param", {})) as b:
        loop = b.processor.loop
        assert loop is not None
        await wait_for(lambda: loop.mode is Mode.AUTO, 10, what="the loop in auto")
        yield b


@asynccontextmanager
async def started(tmp_path: Path, **options: Any) -> AsyncIterator[Bench]:
    port = free_port()
    the_plan = plan(tmp_path, config(tmp_path, port, **options))
    async with running(the_plan) as (gateway, _):
        yield Bench(gateway, the_plan, port)


# -- the measurement's source time -------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_measurement_stamped_in_the_future_does_not_wind_the_integral_up(
    bench: Bench,
) -> None:
    """An analyser whose clock jumps ahead (a bad NTP step, a time zone set wrong) stamps a
    sample an hour ahead: at 3600x that is 3600 process hours of integration at once, and the
    loop drove the pump to its maximum on a glucose only 0.5 g/L below the setpoint."""
    await bench.measure(SETPOINT_G_PER_L - 0.5)
    await bench.measure(SETPOINT_G_PER_L - 0.5, offset_s=3600.0)
    await bench.measure(SETPOINT_G_PER_L - 0.5, offset_s=3600.5)
    loop = bench.processor.loop
    assert loop is not None
    # Proportional action alone is kp * 0.5 = 0.5 rpm; a few seconds of integral add little.
    assert max(bench.plant.writes, default=START_RPM) < START_RPM + 2.0, bench.plant.writes
    assert "future" in loop.reason, loop.reason


@pytest.mark.asyncio
async def test_a_measurement_older_than_the_staleness_limit_is_not_fresh(bench: Bench) -> None:
    """A glucose from minutes ago (an analyser's backlog delivered late) must not count as a
    fresh measurement: the loop must not act on it, nor leave hold because of it."""
    loop = bench.processor.loop
    assert loop is not None
    assert loop.state is State.HOLD  # no measurement yet
    await bench.measure(SETPOINT_G_PER_L - 3.0, offset_s=-300.0)
    await bench.measure(SETPOINT_G_PER_L - 3.0, offset_s=-299.0)
    assert bench.plant.writes == [], "the loop wrote from a five-minute-old measurement"
    assert loop.state is State.HOLD, loop.reason
    assert "old" in loop.reason, loop.reason


# -- the pump's own value ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_pump_beyond_the_target_s_limits_keeps_the_loop_out_of_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pump runs at 50 rpm (set on its panel, or its power-up default) while its target
    allows 0..10 in steps of 2: no write can bring it back (each is out of the limits or too
    large a step), so a loop in auto piled refused writes up in the trail while owning the
    pump. It must stay in manual and say why (auto is refused, 409) until the pump is back
    within the limits, then start in auto as configured."""
    monkeypatch.setattr(Plant, "start_speed", 50.0)
    async with started(tmp_path, target_limits={"max_step": 2.0}) as b:
        loop = b.processor.loop
        assert loop is not None
        await wait_for(lambda: loop.output == 50.0, 10, what="the pump's speed read back")
        await b.measure(SETPOINT_G_PER_L - 1.0)
        await b.measure(SETPOINT_G_PER_L - 1.0)
        await b.measure(SETPOINT_G_PER_L - 1.0)
        refused = [r for r in audit_records(b.plan) if r["outcome"] == "refused"]
        assert refused == [], refused
        assert loop.mode is Mode.MANUAL and "outside" in loop.reason, loop.reason
        status, answer = await b.command(mode="auto")
        assert status == 409 and "outside" in answer["error"], answer
        # A person brings the pump back within the limits: auto works.
        b.plant.speed = 8.0
        await wait_for(lambda: loop.output == 8.0, 10, what="the new speed read back")
        status, answer = await b.command(mode="auto")
        assert status == 200, answer
        assert loop.mode is Mode.AUTO


# -- the time base ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_batch_age_stamped_by_a_skewed_clock_does_not_shift_process_time(
    tmp_path: Path,
) -> None:
    """The DCU stamps its culture time with its own clock, an hour ahead of the gateway's: the
    age (100 h) anchored at that source time made process time now 100 - 3600 h at 3600x, a
    negative batch age (the twin, the forecasts and the fallback profile follow it)."""
    async with started(tmp_path, time_base={"time_scale": 3600, "age": "plant/age"}) as b:
        runner = b.runner
        b.plant.ages.append((100.0, time.time_ns() + 3_600_000_000_000))
        await wait_for(lambda: runner._origin_h == 100.0, 10, what="the age taken")
        # A few seconds of scheduling at most: a few process hours, not thousands.
        assert 100.0 <= runner.process_time_h(time.time_ns()) < 130.0


# -- the mode command ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_manual_output_too_large_for_a_float_is_a_clear_400(bench: Bench) -> None:
    """A confused operator types 1 followed by 400 zeros: JSON allows it, float() overflows."""
    status, answer = await bench.command(mode="manual", output=10**400)
    assert status == 400, answer
    assert "output" in answer["error"]
    loop = bench.processor.loop
    assert loop is not None and loop.mode is Mode.AUTO  # nothing happened
    assert bench.plant.writes == []


@pytest.mark.asyncio
@pytest.mark.parametrize("bench", [{"target_limits": {"max_rate_per_s": 1.0}}], indirect=True)
async def test_back_to_auto_after_a_person_s_write_respects_the_target_s_rate(
    bench: Bench,
) -> None:
    """In manual, a person writes the pump through the API; right after, auto again: the loop
    must count its rate limit from that write (the write path does), not from its own last."""
    status, _ = await bench.command(mode="manual")
    assert status == 200
    loop = bench.processor.loop
    assert loop is not None
    # The loop's own last write (its start) seconds old: its own count allows a large step.
    await wait_for(lambda: time.monotonic() - loop._last_write_wall > 3.0, 10)
    status, answer = await asyncio.to_thread(
        api_call,
        bench.port,
        "POST",
        "/api/v1/writes",
        "operator",
        PASSWORDS["operator"],
        {"target": TARGET, "value": 3.0, "reason": "by hand"},
    )
    assert status == 200, answer
    await wait_for(lambda: loop.output == 3.0, 10, what="the person's write read back")
    status, _ = await bench.command(mode="auto")
    assert status == 200
    await bench.measure(SETPOINT_G_PER_L)  # leaves hold, bumplessly
    await bench.measure(SETPOINT_G_PER_L - 3.0)  # kp * 3 = 3 rpm up, rate-limited
    refused = [r for r in audit_records(bench.plan) if r["outcome"] == "refused"]
    assert refused == [], refused
    assert loop.state is State.NORMAL, loop.reason


# -- the loader ---------------------------------------------------------------------------------


def test_a_time_base_age_from_a_disabled_instrument_is_refused(tmp_path: Path) -> None:
    """The batch age from a disabled instrument never comes: process time would silently count
    from the gateway's start (hour 0 in the middle of a batch), so a fallback profile fed the
    hour-0 rate. An input from a disabled instrument is refused; the age must be too."""
    document = config(tmp_path, free_port())
    document["instruments"].append({"id": "dcu", "driver": "plant", "enabled": False})
    document["processors"][0]["time_base"] = {"time_scale": 3600, "age": "dcu/age"}
    with pytest.raises(ConfigError, match=r"processors\[0\]\.time_base\.age: .*disabled"):
        plan(tmp_path, document)


def test_a_processor_that_only_audits_may_not_share_a_user_s_name(tmp_path: Path) -> None:
    """Every processor may record to the audit trail as itself (alarms through io.note): one
    named like a person makes the trail unable to tell them apart, writes or not."""
    document = config(tmp_path, free_port())
    document["processors"].append({"id": "operator", "type": "listener"})
    with pytest.raises(ConfigError, match=r"processors\[1\]\.id: 'operator' is also a user"):
        plan(tmp_path, document)


@pytest.mark.asyncio
async def test_a_second_loop_on_an_owned_target_stays_in_manual_without_a_record_storm(
    tmp_path: Path,
) -> None:
    """Two loops on one pump (a copied loop, a backup law), both configured to start in auto:
    the second's claim failed after its mode change was recorded, so its ``run`` raised and was
    restarted, recording "auto" again at every restart, while it was never in auto. It must
    stay in manual, say who owns the target, and record nothing it did not do."""
    document = config(tmp_path, free_port())
    second = dict(document["processors"][0], id="loop2")
    document["processors"].append(second)
    the_plan = plan(tmp_path, document)
    async with running(the_plan) as (gateway, _):
        first, other = (r.plan.processor for r in gateway.processors)
        assert isinstance(first, PiControlProcessor) and isinstance(other, PiControlProcessor)
        assert first.loop is not None and other.loop is not None
        await wait_for(lambda: first.loop.mode is Mode.AUTO, 10, what="the first loop in auto")
        await wait_for(lambda: "owned by" in other.loop.reason, 10, what="the second says why")
        runner = gateway.processors[1]
        assert runner.restarts == 0, runner.last_error
        assert other.loop.mode is Mode.MANUAL
        modes = [r for r in audit_records(the_plan) if r["action"] == "control.mode"]
        assert [r["user"] for r in modes] == ["loop"], modes


@pytest.mark.asyncio
@pytest.mark.parametrize("bench", [{"heartbeat": BEAT, "heartbeat_s": 0.2}], indirect=True)
async def test_a_switch_to_manual_does_not_lose_the_loop_s_queued_events(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's task is busy beating a slow pump when a good measurement ends its hold (the
    ``control.hold.exit`` event queued) and an operator switches it to manual: the switch threw
    the queued event away, so the trail showed the loop holding for ever."""
    loop = bench.processor.loop
    assert loop is not None
    await wait_for(lambda: loop.state is State.HOLD, 10, what="the loop holding")
    gate = asyncio.Event()
    monkeypatch.setattr(Plant, "beat_gate", gate)
    try:
        await wait_for(lambda: bench.plant.beat_waiting, 10, what="a beat under way")
        published = bench.plant.published
        bench.plant.glucose.append((SETPOINT_G_PER_L, time.time_ns()))
        await wait_for(lambda: bench.processor._moves, 10, what="the hold's exit queued")
        assert bench.plant.published > published
        status, answer = await bench.command(mode="manual")
        assert status == 200, answer
    finally:
        gate.set()
    await wait_for(bench.idle, 10, what="the loop idle")
    actions = [r["action"] for r in audit_records(bench.plan) if r["action"].startswith("control")]
    # In the order they happened: the hold ended, then the operator took over.
    assert actions[-2:] == ["control.hold.exit", "control.mode"], actions


@pytest.mark.asyncio
@pytest.mark.parametrize("route", ["/api/v1/processors/loop/mode", "/api/v1/writes"])
async def test_a_deeply_nested_body_is_a_clear_400(bench: Bench, route: str) -> None:
    """60 kB of brackets (under the body limit) overflow the JSON decoder's recursion: a
    hostile client got a 500 and a logged stack trace instead of a plain refusal."""
    body = b"[" * 30_000 + b"]" * 30_000

    def post() -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", bench.port, timeout=30)
        try:
            token = base64.b64encode(f"operator:{PASSWORDS['operator']}".encode()).decode()
            connection.request("POST", route, body, {"Authorization": f"Basic {token}"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    status, answer = await asyncio.to_thread(post)
    assert status == 400, answer
    assert b"JSON" in answer
