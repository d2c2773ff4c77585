"""The MQTT session's inbound side (shared interface S2/S3), against a real Mosquitto.

* ``open()`` returns only once every subscription is granted; a refused one (SUBACK >= 0x80)
  fails it with an error naming the topic filter.
* ``on_message`` gets every message, in arrival order, on the event loop's thread, QoS 1
  messages acknowledged (the broker sends no duplicate); an exception it raises is logged as
  ``mqtt.on_message_failed`` and the session goes on.
* ``will_retain`` false: the Last Will is not retained (Sparkplug's NDEATH).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Literal

import pytest
from conftest import wait_for
from mosquitto import Mosquitto, Subscriber
from mqtt_helpers import read_packet, scripted, session_settings
from structlog.testing import capture_logs

from plugins.mqtt.session import MqttError, Session


async def close(session: Session) -> None:
    await session.close(2.0)


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_messages_reach_on_message_in_order_on_the_loop(
    mosquitto: Mosquitto, protocol: Literal["3.1.1", "5"]
) -> None:
    received: list[tuple[str, bytes]] = []
    threads: set[int] = set()

    def on_message(topic: str, payload: bytes) -> None:
        threads.add(threading.get_ident())
        received.append((topic, payload))

    session = Session(
        session_settings(
            mosquitto.url, protocol=protocol, subscriptions=(("cmd/#", 1),), on_message=on_message
        ),
        1,
        asyncio.get_running_loop(),
    )
    await session.open()
    try:
        async with Subscriber(mosquitto, "unused/topic") as other:
            for n in range(200):
                other.client.publish(f"cmd/{n % 3}", str(n).encode(), qos=1)
            await wait_for(lambda: len(received) >= 200, within=10, what="200 messages")
    finally:
        await close(session)
    assert received == [(f"cmd/{n % 3}", str(n).encode()) for n in range(200)]
    assert threads == {threading.get_ident()}


@pytest.mark.asyncio
async def test_open_waits_for_the_suback_and_a_retained_message_follows(
    mosquitto: Mosquitto,
) -> None:
    received: list[bytes] = []
    async with Subscriber(mosquitto, "unused/topic") as other:
        info = other.client.publish("state/host", b"retained", qos=1, retain=True)
        await asyncio.to_thread(info.wait_for_publish, 5)
    session = Session(
        session_settings(
            mosquitto.url,
            subscriptions=(("state/host", 1),),
            on_message=lambda _, payload: received.append(payload),
        ),
        1,
        asyncio.get_running_loop(),
    )
    await session.open()
    try:
        await wait_for(lambda: received, within=5, what="the retained message")
    finally:
        await close(session)
    assert received == [b"retained"]


@pytest.mark.asyncio
@pytest.mark.parametrize(("code", "protocol"), [(0x80, "3.1.1"), (0x87, "5")])
async def test_a_refused_subscription_fails_open_naming_the_filter(
    code: int, protocol: Literal["3.1.1", "5"]
) -> None:
    """A scripted broker (Mosquitto grants every subscription, an ACL only filters delivery)
    accepts the connection and refuses the second of two subscriptions."""

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)  # CONNECT
        v5 = protocol == "5"
        writer.write(b"\x20\x03\x00\x00\x00" if v5 else b"\x20\x02\x00\x00")  # CONNACK
        first, body = await read_packet(reader)
        assert first == 0x82  # SUBSCRIBE
        packet_id = body[:2]
        suback = packet_id + (b"\x00" if v5 else b"") + bytes([0x01, code])
        writer.write(bytes([0x90, len(suback)]) + suback)
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.read()

    async with scripted(broker) as url:
        session = Session(
            session_settings(
                url, protocol=protocol, subscriptions=(("allowed/x", 1), ("secret/#", 1))
            ),
            1,
            asyncio.get_running_loop(),
        )
        with pytest.raises(MqttError, match=r"refused the subscription to 'secret/#'") as excinfo:
            await session.open()
        assert f"0x{code:02X}" in str(excinfo.value) and url in str(excinfo.value)
        assert session.lost is not None
        await asyncio.to_thread(session.join)


@pytest.mark.asyncio
async def test_a_failing_handler_is_logged_and_the_session_goes_on(mosquitto: Mosquitto) -> None:
    received: list[bytes] = []

    def on_message(topic: str, payload: bytes) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        received.append(payload)

    session = Session(
        session_settings(mosquitto.url, subscriptions=(("cmd", 1),), on_message=on_message),
        1,
        asyncio.get_running_loop(),
    )
    with capture_logs() as logs:
        await session.open()
        session.ready = True
        try:
            async with Subscriber(mosquitto, "unused/topic") as other:
                for payload in (b"one", b"boom", b"two"):
                    other.client.publish("cmd", payload, qos=1)
                await wait_for(lambda: len(received) == 2, within=5, what="two messages")
            await session.publish([("out", b"still publishing")]).wait()
        finally:
            await close(session)
    assert received == [b"one", b"two"]
    failed = [e for e in logs if e["event"] == "mqtt.on_message_failed"]
    assert len(failed) == 1 and "handler bug" in failed[0]["error"] and failed[0]["topic"] == "cmd"


@pytest.mark.asyncio
@pytest.mark.parametrize("retain", [False, True])
async def test_the_last_will_is_retained_only_if_asked(mosquitto: Mosquitto, retain: bool) -> None:
    session = Session(
        session_settings(mosquitto.url, will=("death", b"gone"), will_retain=retain),
        1,
        asyncio.get_running_loop(),
    )
    async with Subscriber(mosquitto, "death") as sub:
        await session.open()
        session.abort("test: cut")  # no DISCONNECT: the broker publishes the will
        await asyncio.to_thread(session.join)
        await wait_for(lambda: sub.on("death"), within=10, what="the Last Will")
    # A subscriber arriving now gets it only if it was retained (right after its SUBACK, so
    # before its own probe comes back).
    async with Subscriber(mosquitto, "#") as late:
        late.client.publish("probe", b"x", qos=1)
        await wait_for(lambda: late.on("probe"), within=5, what="the probe")
        retained = [m.payload for m in late.on("death")]
    assert retained == ([b"gone"] if retain else [])
