"""The MQTT session (``plugins/mqtt/session.py``) on its own, and its packet codec.

(Subscriptions, ``on_message`` and the Last Will, shared interface S2/S3:
test_mqtt_subscriptions.py.)

* Against a real Mosquitto: QoS 2.
* Against a scripted broker on loopback (to do what Mosquitto never does): packets split
  across reads byte by byte, a PUBACK for an id not in flight, a broker that closes in the
  middle of a packet, message ids never reused while in flight, a broker that stops
  answering PINGREQ.
* The framing (packets.py) and the MQTT 5 codec (mqtt5): partial reads and bad lengths;
  garbage raises only ProtocolError, fed to the codecs or to the session.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from conftest import wait_for
from hypothesis import given
from hypothesis import settings as settings_hypothesis
from hypothesis import strategies as st
from mosquitto import Mosquitto, Subscriber
from mqtt_helpers import fixed_header, opened, scripted
from mqtt_helpers import session_settings as settings

from plugins.mqtt import packets
from plugins.mqtt.holder import new_session
from plugins.mqtt.session import MqttError, Session, _read5

# --- QoS 2 ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_qos_2_is_complete_after_pubcomp(mosquitto: Mosquitto) -> None:
    async with Subscriber(mosquitto, "q2/#") as sub, opened(settings(mosquitto.url, qos=2)) as s:
        delivery = s.publish([(f"q2/{i}", f"v{i}") for i in range(200)])
        await delivery.wait()
        assert delivery.remaining == 0 and not delivery.refused
        await wait_for(lambda: len(sub.since(0)) >= 200, within=5, what="the messages")
        assert [m.payload for m in sub.since(0)] == [f"v{i}".encode() for i in range(200)]


# --- a scripted broker --------------------------------------------------------------------------


def read_packets(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Complete packets at the start of ``buffer`` (removed from it): (first byte, body).
    The test's own framing, independent of the session's codec."""
    found = []
    while len(buffer) >= 2:
        length, multiplier, at = 0, 1, 1
        while True:
            if at >= len(buffer):
                return found
            byte = buffer[at]
            at += 1
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            if byte < 128:
                break
        if len(buffer) < at + length:
            return found
        found.append((buffer[0], bytes(buffer[at : at + length])))
        del buffer[: at + length]
    return found


def publish_mid(body: bytes) -> int:
    """The message id of a QoS 1 PUBLISH from its body (before any MQTT 5 properties)."""
    (size,) = struct.unpack_from("!H", body)
    return int(struct.unpack_from("!H", body, 2 + size)[0])


async def read_until(
    reader: asyncio.StreamReader, buffer: bytearray, count: int
) -> list[tuple[int, bytes]]:
    """Read until ``count`` more packets arrived."""
    found: list[tuple[int, bytes]] = []
    while len(found) < count:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("the session closed the connection")
        buffer += data
        found += read_packets(buffer)
    return found


CONNACK = b"\x20\x02\x00\x00"


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytearray:
    """Read the CONNECT, answer an MQTT 3.1.1 CONNACK; the buffer for what follows."""
    buffer = bytearray()
    await read_until(reader, buffer, 1)
    writer.write(CONNACK)
    return buffer


@pytest.mark.asyncio
async def test_packets_split_byte_by_byte_and_an_unknown_puback() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        await read_until(reader, buffer, 1)  # CONNECT
        for byte in CONNACK:
            writer.write(bytes((byte,)))
            await writer.drain()
            await asyncio.sleep(0.01)
        packets_in = await read_until(reader, buffer, 3)
        mids = [publish_mid(body) for _, body in packets_in]
        answer = b"\x40\x02\x99\x99"  # a PUBACK for an id that is not in flight
        answer += b"".join(b"\x40\x02" + struct.pack("!H", mid) for mid in mids)
        for byte in answer:
            writer.write(bytes((byte,)))
            await writer.drain()
            await asyncio.sleep(0.005)
        await reader.read()  # until the session closes

    async with scripted(script) as url, opened(settings(url, protocol="3.1.1")) as session:
        delivery = session.publish([("a", b"1"), ("b", b"2"), ("c", b"3")])
        async with asyncio.timeout(10):
            await delivery.wait()
        assert delivery.remaining == 0 and session.usable


@pytest.mark.asyncio
async def test_pubacks_with_reason_codes_in_one_read() -> None:
    """MQTT 5 PUBACKs of every form in one read: no reason code, a success code (0x10 No
    matching subscribers), a refusal (0x87) and one with properties (a reason string)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        await read_until(reader, buffer, 1)
        writer.write(b"\x20\x03\x00\x00\x00")  # MQTT 5 CONNACK, no properties
        packets_in = await read_until(reader, buffer, 4)
        mids = [struct.pack("!H", publish_mid(body)) for _, body in packets_in]
        writer.write(
            b"\x40\x03" + mids[0] + b"\x10"
            + b"\x40\x03" + mids[1] + b"\x87"
            + b"\x40\x02" + mids[2]
            + b"\x40\x09" + mids[3] + b"\x10\x05\x1f\x00\x02ok"
        )  # fmt: skip
        await reader.read()

    async with scripted(script) as url, opened(settings(url)) as session:
        delivery = session.publish([("a", b"1"), ("b", b"2"), ("c", b"3"), ("d", b"4")])
        async with asyncio.timeout(10):
            await delivery.wait()
        assert delivery.remaining == 0 and list(delivery.refused) == [1]
        assert delivery.refused[1].value == 0x87 and session.usable


@pytest.mark.asyncio
async def test_a_disconnect_refusal_at_qos_2_skips_what_the_broker_pubreced() -> None:
    """A broker that refuses a publish with DISCONNECT "Not authorized" at QoS 2: the refused
    message is the oldest one it has not PUBRECed (a PUBRECed one is the broker's already)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        await read_until(reader, buffer, 1)
        writer.write(b"\x20\x03\x00\x00\x00")  # MQTT 5 CONNACK, no properties
        first, _second = await read_until(reader, buffer, 2)
        writer.write(b"\x50\x02" + struct.pack("!H", publish_mid(first[1])))  # PUBREC
        ((kind, _),) = await read_until(reader, buffer, 1)
        assert kind == 0x62, kind  # our PUBREL
        writer.write(b"\xe0\x01\x87")  # DISCONNECT Not authorized
        await writer.drain()
        writer.close()

    async with scripted(script) as url, opened(settings(url, qos=2)) as session:
        delivery = session.publish([("ok", b"1"), ("denied", b"2")])
        with pytest.raises(MqttError, match="Not authorized"):
            async with asyncio.timeout(10):
                await delivery.wait()
        assert list(delivery.refused) == [1], delivery.refused


@pytest.mark.asyncio
async def test_a_broker_that_closes_mid_packet_fails_every_pending_delivery() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = await accept(reader, writer)
        packets_in = await read_until(reader, buffer, 4)
        first = publish_mid(packets_in[0][1])
        # The first message acknowledged, then half a PUBACK, then the connection closes.
        writer.write(b"\x40\x02" + struct.pack("!H", first) + b"\x40\x02\x00")
        await writer.drain()
        writer.close()

    async with scripted(script) as url, opened(settings(url, protocol="3.1.1")) as session:
        one = session.publish([("a", b"1")])
        rest = session.publish([("b", b"2"), ("c", b"3"), ("d", b"4")])
        await one.wait()
        with pytest.raises(MqttError, match="connection to broker lost"):
            async with asyncio.timeout(10):
                await rest.wait()
        assert rest.remaining == 3
        assert session.lost is not None and not session.usable
        with pytest.raises(MqttError):
            session.publish([("e", b"5")])


@pytest.mark.asyncio
async def test_a_message_id_is_never_reused_while_in_flight() -> None:
    """Two forwards of 40,000 messages, more than the 65,535 ids hold with the first still in
    flight: no id of a message in flight may be given to another (a PUBACK would be credited
    to the wrong one), and a PUBACK is credited to its own message only."""
    received: list[int] = []
    ack_first = asyncio.Event()
    ack_rest = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = await accept(reader, writer)
        while True:
            data = await reader.read(1 << 20)
            if not data:
                return
            buffer += data
            for first, body in read_packets(buffer):
                if first >> 4 == 3:
                    received.append(publish_mid(body))
            if len(received) >= 40_000 and not ack_first.is_set():
                writer.write(b"\x40\x02" + struct.pack("!H", received[0]))
                ack_first.set()
            if len(received) >= 60_001 and not ack_rest.is_set():
                # The rest of A (B's first 20,001 fill the window of 60,000 meanwhile).
                writer.write(
                    b"".join(b"\x40\x02" + struct.pack("!H", m) for m in received[1:40_000])
                )
                ack_rest.set()

    async with scripted(script) as url, opened(settings(url, protocol="3.1.1")) as session:
        a = session.publish([("t", b"a")] * 40_000)
        await wait_for(lambda: a.remaining == 39_999, within=10, what="the first PUBACK")
        b = session.publish([("t", b"b")] * 40_000)
        await wait_for(lambda: a.remaining == 0, within=20, what="A's PUBACKs")
        await wait_for(lambda: len(received) == 80_000, within=20, what="B's messages")
        assert b.remaining == 40_000, "a PUBACK for A was credited to B"
        assert len(set(received[1:60_001])) == 60_000, "an id in flight was given twice"
        assert len(set(received[40_000:])) == 40_000, "an id of B in flight was given twice"


@pytest.mark.asyncio
async def test_a_broker_that_stops_answering_pings_ends_the_session() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept(reader, writer)
        await reader.read()  # reads PINGREQs, never answers

    async with scripted(script) as url:
        session = new_session(
            settings(url, protocol="3.1.1", keepalive_s=1), 1, asyncio.get_running_loop()
        )
        await session.open()
        session.ready = True
        delivery = session.publish([("a", b"1")])
        with pytest.raises(MqttError, match="no answer to PINGREQ"):
            async with asyncio.timeout(10):
                await delivery.wait()
        await session.close(1.0)


@pytest.mark.asyncio
async def test_an_mqtt5_brokers_maximum_qos_and_keepalive_are_obeyed() -> None:
    pings: list[int] = []

    def connack(properties: bytes) -> bytes:
        return bytes((0x20, 3 + len(properties), 0, 0, len(properties))) + properties

    async def qos_1_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_until(reader, bytearray(), 1)
        writer.write(connack(b"\x24\x01"))  # Maximum QoS 1
        await reader.read()

    async with scripted(qos_1_only) as url:
        session = Session(settings(url, qos=2), 1, asyncio.get_running_loop())
        with pytest.raises(MqttError, match="takes QoS 1 at most"):
            await session.open()

    async def keepalive_1_s(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        await read_until(reader, buffer, 1)
        writer.write(connack(b"\x13\x00\x01"))  # Server Keep Alive: 1 s
        while data := await reader.read(1024):  # PINGREQs counted, never answered
            buffer += data
            pings.extend(first for first, _ in read_packets(buffer) if first == 0xC0)

    async with scripted(keepalive_1_s) as url:
        session = Session(settings(url, keepalive_s=60), 1, asyncio.get_running_loop())
        await session.open()
        session.ready = True
        delivery = session.publish([("a", b"1")])
        with pytest.raises(MqttError, match=r"no answer to PINGREQ within 1 s"):
            async with asyncio.timeout(10):
                await delivery.wait()
        await session.close(1.0)
    assert pings == [0xC0]


# --- the codec ----------------------------------------------------------------------------------


def test_the_decoder_takes_packets_across_any_cut() -> None:
    stream = (
        CONNACK
        + b"\x40\x02\x00\x07"
        + fixed_header(0x32, 2 + 1 + 2 + 1 + 300)
        + b"\x00\x01t\x00\x09\x00"
        + b"x" * 300
    )
    for cut in range(1, len(stream)):
        decoder = packets.Decoder()
        found = [bytes(b) for b in decoder.feed(stream[:cut])]
        found += [bytes(b) for b in decoder.feed(stream[cut:])]
        assert [b[0] >> 4 for b in found] == [2, 4, 3], cut
        assert b"".join(found) == stream, cut


def test_the_decoder_refuses_bad_lengths() -> None:
    with pytest.raises(packets.ProtocolError, match="longer than 4 bytes"):
        list(packets.Decoder().feed(b"\x30\xff\xff\xff\xff\x01"))
    with pytest.raises(packets.ProtocolError, match="beyond the Maximum Packet Size"):
        list(packets.Decoder().feed(b"\x40\xff\xff\xff\x7f"))
    with pytest.raises(packets.ProtocolError, match="beyond the Maximum Packet Size"):
        list(packets.Decoder().feed(b"\x32\xff\xff\xff\x7f"))  # a PUBLISH too: announced


def test_reason_codes_read_like_the_standard() -> None:
    assert str(packets.ReasonCode(0x87)) == "Not authorized"
    assert packets.ReasonCode(0x87).is_failure and not packets.ReasonCode(0x10).is_failure


@pytest.mark.asyncio
async def test_a_refusal_is_seen_at_qos_2(tmp_path: Path) -> None:
    """An ACL's "Not authorized" comes in the PUBREC at QoS 2: the message is refused, the
    others are delivered on the same session (paho-mqtt ignored that reason code)."""
    acl = "topic readwrite #\ntopic deny q2/denied\n"
    async with (
        Mosquitto(tmp_path / "broker", acl=acl, max_queued_messages=1000) as broker,
        opened(settings(broker.url, qos=2)) as session,
    ):
        delivery = session.publish([("q2/ok", b"1"), ("q2/denied", b"2"), ("q2/ok", b"3")])
        async with asyncio.timeout(10):
            await delivery.wait()
        assert list(delivery.refused) == [1]
        assert str(delivery.refused[1]) == "Not authorized"
        assert session.usable


@settings_hypothesis(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300), cut=st.integers(min_value=0, max_value=300))
def test_the_codec_raises_only_protocol_errors_on_garbage(data: bytes, cut: int) -> None:
    """The framing (packets.Decoder) and the MQTT 5 codec (mqtt5, through the session's _read5).
    (MQTT 3.1.1 is decoded by paho-mqtt, its own tests' business.)"""
    whole = packets.Decoder()
    try:
        for chunk in (data[:cut], data[cut:]):
            for packet in whole.feed(chunk):
                _read5(packet)
    except packets.ProtocolError:
        pass


class _Wire(asyncio.Transport):
    """A transport that keeps what the session writes (for the session fed by hand)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True


@settings_hypothesis(max_examples=400, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        # Plausible packets: a known first byte and a short length, then garbage.
        st.tuples(
            st.sampled_from([0x20, 0x32, 0x40, 0x50, 0x62, 0x70, 0x90, 0xD0, 0xE0]),
            st.integers(min_value=0, max_value=40),
            st.binary(max_size=60),
        ).map(lambda t: bytes((t[0], t[1])) + t[2]),
    ),
    cut=st.integers(min_value=0, max_value=300),
)
def test_a_session_fed_garbage_ends_only_with_a_protocol_error(data: bytes, cut: int) -> None:
    """Whatever a broker sends, cut anywhere between reads, the MQTT 5 session's decoding
    (mqtt5) raises nothing out of data_received: the session goes on, or ends as "protocol
    error: ..." or by the broker's DISCONNECT. (MQTT 3.1.1: paho-mqtt reads on its own thread;
    a packet it cannot read ends its connection, i.e. the session, as a lost connection.)"""
    loop = asyncio.new_event_loop()
    try:
        session = Session(settings("mqtt://127.0.0.1:1"), 1, loop)
        wire = _Wire()
        session.connection_made(wire)
        for chunk in (data[:cut], data[cut:]):
            session.data_received(chunk)
        ended = ("protocol error: ", "the broker closed the connection")
        assert session.lost is None or session.lost.startswith(ended), session.lost
        assert wire.aborted == (session.lost is not None)
        loop.run_until_complete(asyncio.sleep(0))  # the futures' done callbacks
    finally:
        loop.close()


def test_mqtt_311_is_paho_mqtt_and_the_own_session_speaks_only_mqtt5() -> None:
    """Decision 0028 (paho16): no MQTT packet of our own. 3.1.1 sessions are paho-mqtt's,
    chosen in one place (holder.new_session); the asyncio Session refuses to speak 3.1.1, and
    packets.py has no encoder left."""
    from plugins.mqtt.paho_session import PahoSession

    loop = asyncio.new_event_loop()
    try:
        url = "mqtt://127.0.0.1:1"
        assert isinstance(new_session(settings(url, protocol="3.1.1"), 1, loop), PahoSession)
        assert type(new_session(settings(url), 1, loop)) is Session
        with pytest.raises(ValueError, match=r"MQTT 5, not 3\.1\.1"):
            Session(settings(url, protocol="3.1.1"), 1, loop)
    finally:
        loop.close()
    assert not [name for name in vars(packets) if name.endswith("_packet") or "publish" in name]
