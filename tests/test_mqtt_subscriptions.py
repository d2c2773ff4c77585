"""The MQTT session's inbound side and its Last Will (shared interface S2/S3), against a real
Mosquitto (and a scripted broker for a refused subscription, which Mosquitto never sends).

* ``open()`` returns only once every subscription is granted (a retained message follows at
  once); a refused one (SUBACK >= 0x80) fails it with an error naming the topic filter.
* ``on_message`` gets every message of the subscribed topics, in arrival order, on the event
  loop's thread, QoS 1 messages acknowledged (else Mosquitto would stop at its in-flight
  limit); an exception it raises is logged as ``mqtt.on_message_failed`` and the session goes
  on, publishing as usual.
* ``will_retain``: the Last Will is retained only if asked (Sparkplug's NDEATH is not).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Literal

import paho.mqtt.client as mqtt
import pytest
from conftest import wait_for
from mosquitto import Mosquitto, Subscriber
from mqtt_helpers import opened, read_packet, scripted, session_settings
from paho.mqtt.enums import CallbackAPIVersion
from structlog.testing import capture_logs

from plugins.mqtt.holder import new_session
from plugins.mqtt.session import MqttError, Session


async def close(session: Session) -> None:
    await session.close(2.0)


def publish_with_paho(broker: Mosquitto, messages: list[tuple[str, bytes, int]]) -> None:
    """Publish with an independent client (paho-mqtt), blocking until each is sent."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.connect("127.0.0.1", broker.port, 30)
    client.loop_start()
    try:
        for topic, payload, qos in messages:
            client.publish(topic, payload, qos).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_subscriptions_pass_messages_in_order_on_the_loop(
    mosquitto: Mosquitto, protocol: Literal["3.1.1", "5"]
) -> None:
    received: list[tuple[str, bytes]] = []
    threads: set[int] = set()

    def on_message(topic: str, payload: bytes) -> None:
        threads.add(threading.get_ident())
        received.append((topic, payload))

    subscribed = session_settings(
        mosquitto.url,
        protocol=protocol,
        subscriptions=(("cmd/+/node", 1), ("state/host", 0)),
        on_message=on_message,
    )
    async with opened(subscribed) as session:
        # open() returned after the SUBACK: what is published now reaches the session.
        sent = [(f"cmd/{i % 3}/node", f"m{i}".encode(), 1) for i in range(50)]
        sent.append(("state/host", b"online", 0))
        sent.append(("other/topic", b"not subscribed", 1))
        await asyncio.to_thread(publish_with_paho, mosquitto, sent)
        await wait_for(lambda: len(received) >= 51, within=5, what="the messages")
        # MQTT orders messages per topic and QoS, not across them: Mosquitto may deliver the
        # QoS 0 message while QoS 1 ones wait for the in-flight window. Each stream keeps
        # its order, and nothing else arrives.
        for qos in (0, 1):
            stream = [(topic, payload) for topic, payload, q in sent[:51] if q == qos]
            assert [m for m in received if m in stream] == stream
        assert sorted(received) == sorted((t, p) for t, p, _ in sent[:51])
        assert threads == {threading.get_ident()}
        # The session acknowledged the QoS 1 messages (else Mosquitto would hold them in
        # flight and stop at its max_inflight_messages of 20): 50 went through. It still
        # publishes as usual.
        await session.publish([("data/x", b"1")]).wait()
        assert session.usable


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
@pytest.mark.parametrize(
    ("code", "protocol", "name"), [(0x80, "3.1.1", ""), (0x87, "5", "Not authorized")]
)
async def test_a_refused_subscription_fails_open_naming_the_filter(
    code: int, protocol: Literal["3.1.1", "5"], name: str
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
        session = new_session(
            session_settings(
                url, protocol=protocol, subscriptions=(("allowed/x", 1), ("secret/#", 1))
            ),
            1,
            asyncio.get_running_loop(),
        )
        with pytest.raises(MqttError, match=r"refused the subscription to 'secret/#'") as excinfo:
            await session.open()
        message = str(excinfo.value)
        assert f"0x{code:02X}" in message and url in message and name in message, message
        assert "allowed/x" not in message  # the granted one is not named
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
        assert sub.on("death")[0].payload == b"gone"
    # A subscriber arriving now gets it only if it was retained (right after its SUBACK, so
    # before its own probe comes back).
    async with Subscriber(mosquitto, "#") as late:
        late.client.publish("probe", b"x", qos=1)
        await wait_for(lambda: late.on("probe"), within=5, what="the probe")
        retained = [(m.payload, m.retain) for m in late.on("death")]
    assert retained == ([(b"gone", True)] if retain else [])
