"""A sink that is down retries as soon as its destination is back (the ``reachable`` check),
not at the end of its backoff — and never more often than the backoff when the destination
answers but refuses. Real Mosquitto, the emulated feed pump over Modbus TCP, the whole runtime.

The retry backoff here is a fixed 60 s: without the check, the sink would come back a minute
after the broker, far beyond every wait below.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, pump_instrument, running, wait_for, write_config
from mosquitto import Mosquitto

from gateway import Plan, build_registry, load_plan
from gateway.runtime import Gateway
from gateway.runtime.forward import Forwarder, SinkState

SLOW_RETRY = {"initial_s": 60.0, "max_s": 60.0, "jitter": 0.0}


def plan_for(folder: Path, broker_url: str, sink_type: str = "mqtt", **options: Any) -> Plan:
    """The feed pump read every 20 ms, committed every 10 ms, and the MQTT (or Sparkplug B)
    sink with the slow backoff."""
    if sink_type == "sparkplug":
        options = {"group_id": "plant", **options}
    pump_port = free_port()
    config = {
        "site": "reach",
        "area": "reactor1",
        "data_dir": str(folder / "data"),
        "store": {"path": str(folder / "store.sqlite"), "commit_interval_ms": 10},
        "emulators": [{"id": "pump_emulator", "type": "feed_pump", "options": {"port": pump_port}}],
        "instruments": [pump_instrument("feed_pump", pump_port, poll_interval_s=0.02)],
        "sinks": [
            {
                "id": "upstream",
                "type": sink_type,
                "retry": SLOW_RETRY,
                "options": {"url": broker_url, "connect_timeout_s": 2, **options},
            }
        ],
    }
    return load_plan(write_config(folder / "gateway.yaml", config), build_registry())


def counted_checks(plan: Plan) -> list[bool]:
    """Record every answer of the sink's ``reachable`` check (wrapped before the run)."""
    sink = plan.sinks[0].instance
    check: Callable[[], Awaitable[bool]] = sink.reachable
    answers: list[bool] = []

    async def counting() -> bool:
        answer = await check()
        answers.append(answer)
        return answer

    sink.reachable = counting
    return answers


def forwarder(gateway: Gateway) -> Forwarder:
    (only,) = gateway.forwarders
    return only


@pytest.mark.parametrize("sink_type", ["mqtt", "sparkplug"])
@pytest.mark.asyncio
async def test_a_backlog_drains_as_soon_as_the_broker_is_back(
    tmp_path: Path, sink_type: str
) -> None:
    broker = Mosquitto(tmp_path / "broker")
    await broker.start()
    try:
        plan = plan_for(tmp_path, broker.url, sink_type)
        answers = counted_checks(plan)
        async with running(plan) as (gateway, _):
            sink = forwarder(gateway)
            await wait_for(
                lambda: sink.stats.state is SinkState.UP and sink.stats.delivered >= 50,
                what="live delivery",
            )
            await broker.stop()
            await wait_for(lambda: sink.stats.state is SinkState.DOWN, what="the sink is down")
            failures = sink.stats.failures
            # The check has seen the broker away (its answers so far are all "no").
            await wait_for(lambda: answers.count(False) >= 2, what="the broker seen away")
            await wait_for(lambda: sink.stats.backlog >= 100, what="a backlog")
            await broker.start()
            # Up again and the backlog delivered long before the 60 s backoff would allow.
            await wait_for(
                lambda: sink.stats.state is SinkState.UP, within=20, what="the sink back up"
            )
            up_to = gateway.stats.committed
            await wait_for(lambda: sink.cursor >= up_to, within=20, what="the backlog delivered")
            assert sink.stats.failures == failures, "retried before the broker was back"
            assert sink.stats.delivered_historical >= 100
            assert answers[-1] is True
    finally:
        await broker.kill()


@pytest.mark.asyncio
async def test_a_broker_that_refuses_the_connection_is_retried_on_the_backoff(
    tmp_path: Path,
) -> None:
    # Reachable (its port accepts TCP) but refusing the anonymous CONNECT: the check must not
    # turn the 60 s backoff into a retry every check.
    async with Mosquitto(tmp_path / "broker", users={"ops": "secret"}) as broker:
        plan = plan_for(tmp_path, broker.url)
        answers = counted_checks(plan)
        async with running(plan) as (gateway, _):
            sink = forwarder(gateway)
            await wait_for(lambda: sink.stats.state is SinkState.DOWN, what="the refused connect")
            assert sink.stats.failures == 1
            await wait_for(lambda: len(answers) >= 8, what="checks while down")
            assert all(answers), answers
            assert sink.stats.failures == 1, "retried on the check, not on the backoff"
            assert sink.stats.state is SinkState.DOWN


@pytest.mark.asyncio
async def test_a_broker_away_then_refusing_is_retried_once_then_on_the_backoff(
    tmp_path: Path,
) -> None:
    # The broker comes back but refuses the gateway (its password file changed while it was
    # down): one early retry when it answers again, then the backoff.
    port = free_port()
    plan = plan_for(tmp_path, f"mqtt://127.0.0.1:{port}")
    answers = counted_checks(plan)
    async with running(plan) as (gateway, _):
        sink = forwarder(gateway)
        await wait_for(lambda: sink.stats.state is SinkState.DOWN, what="no broker")
        await wait_for(lambda: answers.count(False) >= 2, what="the broker seen away")
        assert sink.stats.failures == 1
        async with Mosquitto(tmp_path / "broker", port=port, users={"ops": "secret"}):
            await wait_for(lambda: sink.stats.failures == 2, what="the early retry")
            seen = len(answers)
            await wait_for(lambda: len(answers) >= seen + 8, what="checks after it")
            assert sink.stats.failures == 2, "retried again before the backoff"
            assert sink.stats.state is SinkState.DOWN
