"""Issue 16's hostile review: the own MQTT session and codec, and the Sparkplug sink's payloads,
against brokers and peers that misbehave (scripted brokers on loopback, a real Mosquitto).

* The codec: a large packet in many small reads, an inbound PUBLISH with a topic alias the
  gateway never allowed or without a topic name, an acknowledgement whose property block is
  cut short, a property given twice, a CONNACK sent twice.
* The session: a slow link whose PINGREQ waits behind the data while PUBACKs keep coming (not
  cut), a broker that trickles one packet byte by byte (cut), an MQTT 5 broker's Maximum Packet
  Size (a larger message refused without being sent), Receive Maximum 1, no CONNACK.
* Sparkplug: a metric named like a spectrum's axis metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from pathlib import Path

import mqtt5
import paho.mqtt.client as mqtt
import pytest
from conftest import wait_for
from mosquitto import Mosquitto, Subscriber
from paho.mqtt.enums import CallbackAPIVersion
from structlog.testing import capture_logs
from test_mqtt_session import (
    accept,
    fixed_header,
    opened,
    publish_mid,
    read_packets,
    read_until,
    scripted,
    settings,
)
from test_sparkplug import REBIRTH_TRUE, command, make_sink, topic
from test_sparkplug import spb as spb  # the fixture: the test's own protobuf decoder

from gateway import Quality, Sample, Signal, SignalKind
from plugins.mqtt import packets
from plugins.mqtt.holder import AnySession, new_session
from plugins.mqtt.session import MqttError, Session, SessionSettings, _read5
from plugins.sparkplug.payloads import Catalog

# --- the codec ----------------------------------------------------------------------------------


def publish_packet(topic: bytes, payload: bytes, properties: bytes = b"\x00") -> bytes:
    """An MQTT 5 QoS 1 PUBLISH (message id 1) as a broker sends it, built here."""
    body = struct.pack("!H", len(topic)) + topic + b"\x00\x01" + properties + payload
    return fixed_header(0x32, len(body)) + body


def test_a_large_packet_in_many_small_reads_is_decoded_whole() -> None:
    """(The decoder used to copy the whole partial packet at every read: a 16 MiB NCMD arriving
    in 1,460-byte reads cost 5.5 s of CPU; ``benchmarks/mqtt_decode.py`` measures it.)"""
    payload = bytes(range(256)) * 8192  # 2 MiB
    stream = publish_packet(b"spBv1.0/pat/NCMD/n", payload) + b"\x40\x02\x00\x07"
    decoder = packets.Decoder()  # as the MQTT 5 session uses it, for mqtt5
    found = []
    for at in range(0, len(stream), 1460):
        found += [bytes(b) for b in decoder.feed(stream[at : at + 1460])]
        assert decoder.partial == (at + 1460 < len(stream))
    assert [b[0] >> 4 for b in found] == [3, 4]  # PUBLISH, PUBACK
    publish = _read5(memoryview(found[0]))
    assert isinstance(publish, mqtt5.PublishPacket)
    assert (publish.topic, publish.qos.value, publish.packet_id) == ("spBv1.0/pat/NCMD/n", 1, 1)
    assert publish.payload == payload


@pytest.mark.asyncio
async def test_mqtt5_connect_allows_no_alias_and_repeated_user_properties_are_read() -> None:
    """The CONNECT (encoded by mqtt5) announces no Topic Alias Maximum (0: an inbound alias is a
    protocol error, below) and the 16 MiB Maximum Packet Size. User Properties may repeat (MQTT
    5, 3.1.2.11.8): a CONNACK and a PUBLISH with two are read, the message passed on."""
    connects: list[bytes] = []
    received: list[tuple[str, bytes]] = []
    users = b"\x26\x00\x01a\x00\x01b\x26\x00\x01a\x00\x01c"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        ((first, body),) = await read_until(reader, buffer, 1)
        connects.append(bytes((first, len(body))) + body)  # (a CONNECT under 128 bytes)
        writer.write(b"\x20\x11\x00\x00\x0e" + users)
        writer.write(publish_packet(b"cmd", b"go", bytes((len(users),)) + users))
        await reader.read()

    async with scripted(script) as url:
        session = await started(
            settings(url, protocol="5", on_message=lambda t, p: received.append((t, p)))
        )
        await wait_for(lambda: received, within=10, what="the message")
        assert received == [("cmd", b"go")] and session.usable
        await session.close(1.0)
    connect = _read5(memoryview(connects[0]))
    assert isinstance(connect, mqtt5.ConnectPacket)
    assert connect.topic_alias_max == 0 and connect.clean_start
    assert connect.max_packet_size == packets.MAX_PACKET


# --- the session against scripted brokers -------------------------------------------------------

CONNACK5 = b"\x20\x03\x00\x00\x00"  # MQTT 5 CONNACK, Success, no properties (length 0)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("sent", "message"),
    [
        # A topic alias the CONNECT never allowed (no Topic Alias Maximum: 0).
        (publish_packet(b"cmd", b"x", b"\x03\x23\x00\x01"), "topic alias"),
        # No topic name (and no alias), a wildcard, a NUL, bytes that are not UTF-8.
        (publish_packet(b"", b"x"), "malformed packet"),
        (publish_packet(b"cmd/+", b"x"), "not a topic name"),
        (publish_packet(b"cmd\x00x", b"x"), "not a topic name"),
        (publish_packet(b"cmd\xff", b"x"), "malformed packet"),
        # A PUBACK whose property block runs past the packet; bytes after its properties.
        (b"\x40\x04\x00\x01\x10\x05", "malformed packet"),
        (b"\x40\x08\x00\x01\x10\x04\x1f\x00\x09ab", "malformed packet"),
        (b"\x40\x08\x00\x01\x10\x00junk", "malformed packet"),
        # A property given twice (Payload Format Indicator; a CONNACK's Receive Maximum).
        (publish_packet(b"cmd", b"x", b"\x04\x01\x00\x01\x01"), "malformed packet"),
        (b"\x20\x09\x00\x00\x06\x21\x00\x01\x21\xff\xff", "malformed packet"),
        # A reason code a PUBACK may not carry; a packet type a broker never sends.
        (b"\x40\x03\x00\x01\x42", "malformed packet"),
        (b"\xc0\x00", "unexpected packet"),
        # A reason string that is not UTF-8 (mqtt5 0.8.0 panics on it: caught, named).
        (b"\x40\x08\x00\x01\x10\x04\x1f\x00\x01\xff", "malformed packet"),
    ],
)
async def test_an_mqtt5_broker_sending_a_malformed_packet_ends_the_session_named(
    sent: bytes, message: str
) -> None:
    """Every packet from an MQTT 5 broker goes through the codec (mqtt5) and the session's own
    checks: what is not valid ends the session as a protocol error, never a traceback in the
    event loop, never a message passed on under a wrong topic."""
    received: list[tuple[str, bytes]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until(reader, bytearray(), 1)  # the CONNECT
        writer.write(CONNACK5 + sent)
        await reader.read()  # until the session closes

    async with scripted(script) as url:
        session = await started(
            settings(url, protocol="5", on_message=lambda t, p: received.append((t, p)))
        )
        await wait_for(lambda: session.lost is not None, within=10, what="the session's end")
        assert session.lost is not None and session.lost.startswith("protocol error: ")
        assert message in session.lost
        assert received == []
        await session.close(1.0)


async def started(chosen: SessionSettings) -> AnySession:
    """A session opened and ready (closed by the test)."""
    session = new_session(chosen, 1, asyncio.get_running_loop())
    await session.open()
    session.ready = True
    return session


@pytest.mark.asyncio
async def test_a_slow_link_that_keeps_acknowledging_is_not_cut() -> None:
    """A broker behind a slow link (~50 kB/s here) reads 200 kB of messages in seconds and
    acknowledges them as it goes; the session's PINGREQ waits in the socket behind them, so its
    PINGRESP comes late. The session used to end at the second keepalive ("no answer to
    PINGREQ") although PUBACKs kept arriving, failing every delivery: on a slow link, a
    reconnect loop that never delivers a window."""
    acknowledged = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal acknowledged
        buffer = await accept(reader, writer)
        while data := await reader.read(1024):
            buffer += data
            for first, body in read_packets(buffer):
                if first >> 4 == 3:
                    writer.write(b"\x40\x02" + struct.pack("!H", publish_mid(body)))
                    acknowledged += 1
                elif first == 0xC0:
                    writer.write(b"\xd0\x00")  # PINGRESP, in order
            await asyncio.sleep(0.02)

    async with scripted(slow) as url:
        session = await started(settings(url, protocol="3.1.1", keepalive_s=1))
        delivery = session.publish([(f"t/{i}", b"v" * 1000) for i in range(200)])
        async with asyncio.timeout(60):
            await delivery.wait()
        assert delivery.remaining == 0 and session.usable, session.lost
        assert acknowledged == 200
        await session.close(1.0)


@pytest.mark.asyncio
async def test_a_broker_that_trickles_a_packet_is_cut_at_the_keepalive() -> None:
    """A slow-loris broker: one byte of a PUBLISH every 0.1 s, never a whole packet. The session
    ends at the keepalive (no complete packet since the last PINGREQ), its buffer one packet."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until(reader, bytearray(), 1)  # the CONNECT
        writer.write(CONNACK5)
        for byte in publish_packet(b"cmd", b"x" * 100_000)[:-1]:
            writer.write(bytes((byte,)))
            await writer.drain()
            await asyncio.sleep(0.1)

    async with scripted(trickle) as url:
        session = await started(settings(url, protocol="5", keepalive_s=1))
        delivery = session.publish([("a", b"1")])
        with pytest.raises(MqttError, match="no answer to PINGREQ within 1 s"):
            async with asyncio.timeout(20):
                await delivery.wait()
        await session.close(1.0)


@pytest.mark.asyncio
async def test_receive_maximum_1_holds_one_message_in_flight() -> None:
    """An MQTT 5 broker that takes one unacknowledged message at a time: the session sends the
    next only after the PUBACK of the last (the broker waits a little before each PUBACK, for
    anything more to arrive)."""
    most = 0

    async def one_at_a_time(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal most
        buffer = bytearray()
        await read_until(reader, buffer, 1)
        writer.write(b"\x20\x06\x00\x00\x03\x21\x00\x01")  # Receive Maximum 1
        unacknowledged: list[int] = []
        acknowledged = 0
        while acknowledged < 20:
            try:
                data = await asyncio.wait_for(reader.read(65536), 0.05 if unacknowledged else 10)
            except TimeoutError:
                data = None
            if data == b"":
                return
            if data:
                buffer += data
                unacknowledged += [publish_mid(b) for f, b in read_packets(buffer) if f >> 4 == 3]
                most = max(most, len(unacknowledged))
                continue
            writer.write(b"\x40\x02" + struct.pack("!H", unacknowledged.pop(0)))
            acknowledged += 1
        await reader.read()

    async with scripted(one_at_a_time) as url, opened(settings(url)) as session:
        delivery = session.publish([(f"t/{i}", b"v") for i in range(20)])
        async with asyncio.timeout(30):
            await delivery.wait()
    assert most == 1


@pytest.mark.asyncio
async def test_a_second_connack_and_a_missing_one_end_the_session_named() -> None:
    """MQTT 5 only: through paho-mqtt (MQTT 3.1.1) a second CONNACK is passed to on_connect
    again, which the session ignores (the first one settled the connect): the session goes
    on, not a protocol error."""

    async def twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until(reader, bytearray(), 1)  # the CONNECT
        writer.write(CONNACK5 + CONNACK5)
        await reader.read()

    async with scripted(twice) as url:
        session = Session(settings(url), 1, asyncio.get_running_loop())
        await session.open()
        await wait_for(lambda: session.lost is not None, within=10, what="the session's end")
        assert session.lost == "protocol error: a second CONNACK"

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the CONNECT, never answers

    async with scripted(silent) as url:
        session = Session(settings(url, connect_timeout_s=0.5), 1, asyncio.get_running_loop())
        with pytest.raises(MqttError, match=r"no CONNACK within 0\.5 s"):
            await session.open()
        assert session.lost is not None


# --- the session against Mosquitto --------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_message_beyond_the_brokers_maximum_packet_size_is_refused_unsent(
    tmp_path: Path,
) -> None:
    """Mosquitto with ``max_packet_size 2000`` announces it in its CONNACK (MQTT 5). A client
    must not send a larger packet (MQTT-3.1.2-24): the session used to send it, the broker then
    dropped the connection (0x95), and every message behind it in flight failed and was sent
    again on a new connection (one reconnect per large message). Now the large one is refused
    with 0x95 Packet too large, unsent, and the rest is delivered on the same connection."""
    broker = Mosquitto(tmp_path / "broker")
    broker._write_config()
    with broker.config.open("a") as config:
        config.write("max_packet_size 2000\n")
    async with broker, Subscriber(broker, "t/#") as sub, opened(settings(broker.url)) as session:
        messages = [(f"t/{i}", b"x" * 100) for i in range(300)]
        messages[150] = ("t/big", b"y" * 5000)
        delivery = session.publish(messages)
        async with asyncio.timeout(10):
            await delivery.wait()
        assert {p: str(c) for p, c in delivery.refused.items()} == {150: "Packet too large"}
        assert session.usable, session.lost
        await wait_for(lambda: len(sub.since(0)) >= 299, within=10, what="the 299 messages")
        assert "t/big" not in {m.topic for m in sub.since(0)}
    assert "oversize" not in broker.output()


# --- Sparkplug payloads -------------------------------------------------------------------------


@pytest.mark.parametrize("spectrum_first", [True, False])
def test_a_metric_named_like_a_spectrums_axis_is_refused(spectrum_first: bool) -> None:
    """A spectrum ``s`` brings the metric ``s/axis``; a scalar signal ``.../s/axis`` of the same
    device would be a second metric of that name in the DBIRTH (a host would merge the two).
    Only the order scalar-then-spectrum was refused."""
    spectrum = Signal("reactor1/raman/s", "{counts}", SignalKind.SPECTRUM, instrument="raman")
    scalar = Signal("reactor1/raman/s/axis", "1", instrument="raman")
    catalog = Catalog()
    with pytest.raises(ValueError, match="both map to metric"):
        catalog.bind([spectrum, scalar] if spectrum_first else [scalar, spectrum])


# --- the Sparkplug sink (plugins/sparkplug/sink.py: fold16 restructures it; not fixed here) ---

PH = Signal("reactor1/controller/ph", "[pH]", instrument="controller")


@pytest.mark.asyncio
async def test_a_rebirth_command_flood_is_not_a_log_flood(
    mosquitto: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    encoder = request.getfixturevalue("spb")  # the .proto compiled by the test, not our module
    with capture_logs() as logs:
        async with (
            Subscriber(mosquitto, "spBv1.0/#") as sub,
            make_sink(mosquitto.url, tmp_path, signals=(PH,)) as sink,
        ):
            await sink.forward([sample_of(PH, 0)], False)
            for _ in range(300):
                sub.client.publish(topic("NCMD"), command(encoder, REBIRTH_TRUE), qos=1)
            # A marker behind them, logged at once (the first of its kind): all were read.
            marker = {"name": "marker", "datatype": 11, "boolean_value": True}
            sub.client.publish(topic("NCMD"), command(encoder, marker), qos=1)
            await wait_for(
                lambda: any(e.get("problem") == "unknown metric 'marker'" for e in logs),
                within=20,
                what="the marker command",
            )
            assert sink.births <= 2  # the births coalesce (this holds)
    requested = [e for e in logs if e["event"] == "sparkplug.rebirth_requested"]
    assert len(requested) <= 3, f"{len(requested)} lines for 300 requests"


@pytest.mark.asyncio
async def test_a_deeply_nested_state_is_an_invalid_state(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    state_topic = "spBv1.0/STATE/scada1"
    with capture_logs() as logs:
        async with (
            Subscriber(mosquitto, "spBv1.0/#") as sub,
            make_sink(mosquitto.url, tmp_path, signals=(PH,), primary_host_id="scada1") as sink,
        ):
            with pytest.raises(MqttError, match="offline"):
                await sink.forward([sample_of(PH, 0)], False)  # connects; the host is offline
            for _ in range(5):
                sub.client.publish(state_topic, b"[" * 100_000, qos=1)
            online = json.dumps({"online": True, "timestamp": int(time.time() * 1000)})
            sub.client.publish(state_topic, online.encode(), qos=1)
            await wait_for(lambda: sink.host_online, within=10, what="the host online")
    failed = [e for e in logs if e["event"] == "mqtt.on_message_failed"]
    invalid = [e for e in logs if e["event"] == "sparkplug.state_invalid"]
    assert not failed and len(invalid) == 1, (len(failed), len(invalid))


def sample_of(signal: Signal, seq: int) -> Sample:
    ts = time.time_ns()
    return Sample(signal.id, 7.0, signal.unit, ts, ts, Quality.GOOD, seq, None)


def test_a_huge_ncmd_is_not_decoded_and_problems_are_bounded() -> None:
    """A 15 MB NCMD of 1.7 million metrics (each an unknown one) took 0.9 s of the event loop
    and 320 MB to decode, and listed 1.7 million problems for the sink to log. It is refused
    unparsed; a command under the limit lists at most MAX_PROBLEMS problems and a count."""
    from plugins.sparkplug import sparkplug_b_pb2 as pb
    from plugins.sparkplug.payloads import MAX_COMMAND, MAX_PROBLEMS, decode_command

    metric = pb.Payload.Metric(name="x", datatype=11, boolean_value=True).SerializeToString()
    field = b"\x12" + bytes((len(metric),)) + metric  # Payload.metrics (2), length-delimited
    huge = decode_command(field * (15_000_000 // len(field)))
    assert not huge.rebirth and len(huge.problems) == 1, huge.problems[:3]
    assert f"more than {MAX_COMMAND}" in huge.problems[0]
    many = field * (MAX_COMMAND // len(field))
    command = decode_command(many)
    assert len(command.problems) == MAX_PROBLEMS + 1, len(command.problems)
    assert command.problems[-1] == f"and {len(many) // len(field) - MAX_PROBLEMS} more"


@pytest.mark.asyncio
async def test_open_cancelled_at_any_point_leaves_nothing_behind() -> None:
    """``open()`` cancelled before the TCP connection, while waiting for the CONNACK, for the
    SUBACK, and right after: every session ends (lost), its connection closed by the broker's
    side seeing EOF, no task left over."""
    accepted = closed = 0

    async def slow_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted, closed
        accepted += 1
        buffer = bytearray()
        try:
            await read_until(reader, buffer, 1)
            await asyncio.sleep(0.01)
            writer.write(b"\x20\x03\x00\x00\x00")
            ((_, body),) = await read_until(reader, buffer, 1)
            await asyncio.sleep(0.01)
            writer.write(b"\x90\x04" + body[:2] + b"\x00\x01")
            await reader.read()
        except ConnectionError:
            pass
        closed += 1

    sessions = []
    async with scripted(slow_broker) as url:
        loop = asyncio.get_running_loop()
        for step in range(40):
            session = Session(settings(url, subscriptions=(("cmd", 1),)), step, loop)
            sessions.append(session)
            task = asyncio.create_task(session.open(), name=f"open-{step}")
            await asyncio.sleep(step * 0.001)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if task.cancelled():
                assert session.lost is not None, step
            else:
                session.abort("test: done")
        await wait_for(lambda: closed == accepted, within=20, what="every connection closed")
    assert all(s.lost is not None for s in sessions)


@pytest.mark.asyncio
async def test_a_suback_before_the_subscribe_does_not_end_open() -> None:
    """A broker that sends a SUBACK (id 0) right after its CONNACK, before the session
    subscribed, and never answers the real SUBSCRIBE: ``open()`` took that SUBACK for the
    answer and returned with nothing subscribed (a Sparkplug node deaf to NCMD and STATE)."""

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until(reader, bytearray(), 1)
        writer.write(b"\x20\x03\x00\x00\x00" + b"\x90\x04\x00\x00\x00\x01")
        await reader.read()

    async with scripted(early) as url:
        session = Session(
            settings(url, subscriptions=(("cmd", 1),), connect_timeout_s=1.0),
            1,
            asyncio.get_running_loop(),
        )
        with pytest.raises(MqttError, match="no SUBACK within 1 s"):
            await session.open()


def test_an_oversized_packet_is_refused_before_it_is_buffered() -> None:
    """A packet beyond MAX_PACKET (the Maximum Packet Size the MQTT 5 CONNECT announces), a
    PUBLISH or any other: a protocol error as soon as its length is read, nothing of it kept.
    (MQTT 3.1.1, which cannot announce a limit: paho-mqtt, see the next test.)"""
    size = packets.MAX_PACKET + 1000
    body = b"\x00\x03cmd\x00\x2a\x00" + b"z" * (size - 8)
    stream = fixed_header(0x32, len(body)) + body[: 1 << 20]
    decoder = packets.Decoder()
    with pytest.raises(packets.ProtocolError, match="beyond the Maximum Packet Size"):
        list(decoder.feed(stream))
    with pytest.raises(packets.ProtocolError, match="beyond the Maximum Packet Size"):
        list(packets.Decoder().feed(b"\x40\xff\xff\xff\x7f"))


@pytest.mark.asyncio
async def test_a_retained_message_beyond_the_limit_does_not_end_every_mqtt311_session(
    tmp_path: Path,
) -> None:
    """MQTT 3.1.1 cannot tell the broker the client's packet limit: a retained 17 MiB message
    on a subscribed topic (a STATE topic, say) came right after the SUBACK and ended the
    session ("protocol error"), at every connect: an outage until someone clears it. Through
    paho-mqtt (3.1.1 since paho16) the session goes on; paho has no packet limit, so the large
    message is read whole and passed to ``on_message`` (the hand-written session acknowledged,
    dropped and logged it, ``mqtt.message_too_large``; the sinks' handlers bound what they
    decode themselves, e.g. a huge NCMD)."""
    received: list[bytes] = []
    async with Mosquitto(tmp_path / "broker") as broker:
        await asyncio.to_thread(
            publish_with_paho, broker, [("state/h", b"x" * (17 * 1024 * 1024), 1, True)]
        )
        subscribed = settings(
            broker.url,
            protocol="3.1.1",
            subscriptions=(("state/h", 1),),
            on_message=lambda topic, payload: received.append(payload),
        )
        async with opened(subscribed) as session:
            await asyncio.to_thread(publish_with_paho, broker, [("state/h", b"ok", 1, False)])
            await wait_for(lambda: len(received) == 2, within=20, what="the message after it")
            assert received == [b"x" * (17 * 1024 * 1024), b"ok"] and session.usable, session.lost


def publish_with_paho(broker: Mosquitto, messages: list[tuple[str, bytes, int, bool]]) -> None:
    """Publish with an independent client (paho-mqtt), retained or not."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.connect("127.0.0.1", broker.port, 30)
    client.loop_start()
    try:
        for topic_name, payload, qos, retain in messages:
            client.publish(topic_name, payload, qos, retain).wait_for_publish(20)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.asyncio
async def test_pubacks_out_of_order_release_only_what_they_acknowledge() -> None:
    """QoS 1 exactness against a broker that acknowledges in reverse order, one id twice and
    an id never sent: the delivery counts each message once and is done only with the last
    PUBACK; a PUBACK after the session's abort changes nothing."""
    sent: list[int] = []
    release = asyncio.Event()

    async def reverse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = await accept(reader, writer)
        sent.extend(publish_mid(body) for _, body in await read_until(reader, buffer, 10))
        acks = [b"\x40\x02" + struct.pack("!H", mid) for mid in reversed(sent)]
        writer.write(b"".join(acks[:9]) + acks[0] + b"\x40\x02\xbe\xef")  # 9, a repeat, a stray
        ((_, marker),) = await read_until(reader, buffer, 1)
        writer.write(b"\x40\x02" + struct.pack("!H", publish_mid(marker)))  # behind them
        await release.wait()
        writer.write(acks[9])  # the last one, after the abort
        await reader.read()

    async with scripted(reverse) as url, opened(settings(url, protocol="3.1.1")) as session:
        delivery = session.publish([(f"t/{i}", b"v") for i in range(10)])
        await wait_for(lambda: len(sent) == 10, within=10, what="the ten messages")
        marker = session.publish([("marker", b"m")])
        async with asyncio.timeout(10):
            await marker.wait()  # every PUBACK before the marker's was read
        assert delivery.remaining == 1
        session.abort("test: cut")
        release.set()
        with pytest.raises(MqttError, match="test: cut"):
            await delivery.wait()
        assert delivery.remaining == 1


@pytest.mark.asyncio
async def test_a_broker_that_sends_but_no_longer_reads_is_cut_at_the_keepalive() -> None:
    """A broker whose reading side hangs while it still forwards messages to us: its PUBLISHes
    must not count as answers to PINGREQ (what we write, PUBACKs included, would pile up).

    MQTT 5 only: through paho-mqtt (MQTT 3.1.1) the session was not cut within 20 s (tried:
    paho's keepalive does not end it); there the sink's publish_timeout_s ends a session whose
    deliveries are not acknowledged."""

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until(reader, bytearray(), 1)  # the CONNECT
        writer.write(CONNACK5)
        while not writer.is_closing():
            writer.write(b"\x30\x0f\x00\x07state/h\x00here!")  # QoS 0, no properties
            await asyncio.sleep(0.1)

    async with scripted(deaf) as url:
        session = await started(settings(url, keepalive_s=1))
        await wait_for(lambda: session.lost is not None, within=20, what="the session's end")
        assert session.lost == "no answer to PINGREQ within 1 s (keepalive_s)"
