"""The ``mqtt`` sink against a real Mosquitto on loopback, read back by a real MQTT client.

* Options: what a configuration may say, and the message when it may not.
* Delivery: sample and batch payloads equal the gateway's JSON form (flagged historical when
  late), on the configured topics; retained metadata and status for late subscribers.
* Failure: forward fails promptly (not at a timeout) when the broker dies mid-flight, with a
  clear error when it is down or refuses us, and the next call reconnects; the sink starts
  while the broker is down; a hung broker fails forward at publish_timeout_s and the broker
  then publishes the Last Will.
* Security: username and password from the environment; TLS with the broker's CA.
* Refusals (MQTT 5): a topic the broker's ACL denies is reported per sample with the broker's
  reason, the rest is delivered on the same session; a denied metadata topic does not stop the
  sink; a broker that accepts TCP but never sends CONNACK is named as such.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port, wait_for
from mosquitto import Mosquitto, Subscriber, make_broker_tls
from mqtt_helpers import SITE, Samples, bound_sink, scripted
from pydantic import ValidationError

from gateway import (
    PluginContext,
    PluginKind,
    Quality,
    Sample,
    SamplesRefusedError,
    Signal,
    SignalKind,
    SpectralAxis,
    build_registry,
    historical_json,
    sample_to_json_dict,
)
from gateway.config import SinkConfig
from gateway.runtime.forward import BacklogReader, Forwarder
from gateway.store import SampleStore
from plugins.mqtt.session import Session
from plugins.mqtt.sink import MqttError, MqttOptions, MqttSink

FLOW = Signal("reactor1/feed_pump/flow", "mL/min", description="Feed flow", instrument="feed_pump")
SPEED = Signal("reactor1/feed_pump/speed", "/min", instrument="feed_pump")
SPECTRUM = Signal("reactor1/raman/spectrum", "1", SignalKind.SPECTRUM, instrument="raman")
SIGNALS = (FLOW, SPEED, SPECTRUM)
AXIS = SpectralAxis(np.linspace(200.0, 1800.0, 2048), "cm-1")
T0 = 1_795_000_000_000_000_000
sample = Samples(T0, 1_000_000, AXIS)  # a millisecond apart


def spectrum_sample(seq: int) -> Sample:
    return sample.spectrum(SPECTRUM, seq)


def make_sink(
    url: str, tmp_path: Path, signals: Sequence[Signal] = SIGNALS, **options: Any
) -> MqttSink:
    return bound_sink(MqttSink, MqttOptions, url, tmp_path, signals, **options)


def open_sessions() -> list[Session]:
    """Sessions whose connection is still open (none may outlive its sink)."""
    return [
        s
        for s in gc.get_objects()
        if isinstance(s, Session) and s._transport is not None and not s._transport.is_closing()
    ]


def topic_of(of: Signal | Sample) -> str:
    return f"pat/{SITE}/{of.id if isinstance(of, Signal) else of.signal}"


STATUS = f"pat/{SITE}/gateway/patgw-{SITE}-up/status"
DATA = "pat/+/reactor1/+/+"  # samples, not metadata


# --- options ----------------------------------------------------------------------------------


def test_defaults() -> None:
    options = MqttOptions()
    assert options.url == "mqtt://127.0.0.1:1883"
    assert (options.qos, options.protocol, options.payload) == (1, "5", "batch")
    assert options.topic == "pat/{site}/{area}/{instrument}/{signal}"
    assert MqttSink.max_concurrent_forwards == 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "http://broker:1883"}, "unsupported scheme http://"),
        ({"url": "broker:1883"}, "unsupported scheme"),
        ({"url": "mqtt://gw:secret@broker"}, "must not hold credentials"),
        ({"url": "mqtt://broker/pat"}, "no path, query or fragment"),
        ({"url": "mqtt://broker?x=1"}, "no path, query or fragment"),
        ({"url": "mqtt://broker:99999"}, "not a broker URL"),
        ({"url": "mqtt://:1883"}, "names no host"),
        ({"qos": 0}, "store-and-forward needs the broker's acknowledgements"),
        ({"topic": "pat/{plant}/{signal}"}, "unknown placeholder {plant}"),
        ({"topic": "pat/{}/{signal}"}, "unknown placeholder {}"),
        ({"topic": "pat/{signal!r}"}, "takes no format"),
        ({"topic": "pat/{signal"}, "not a topic template"),
        ({"topic": "pat/+/{signal}"}, "wildcard"),
        ({"topic": "pat/{signal}/#"}, "wildcard"),
        ({"topic": "$SYS/{signal}"}, "starts with $"),
        ({"topic": ""}, "cannot be empty"),
        ({"topic": "pat/\0/{signal}"}, "NUL"),
        ({"meta_topic": "{topic}/+"}, "wildcard"),
        ({"meta_topic": "meta/{client_id}"}, "unknown placeholder {client_id}"),
        ({"status_topic": "status/{signal}"}, "unknown placeholder {signal}"),
        ({"password": "s3cret", "username": "gw"}, "secrets come from the environment"),
        ({"password": "env:MQTT_PASSWORD"}, "password needs username"),
        ({"tls": {"ca_file": "ca.pem"}}, "tls needs an mqtts:// url"),
        ({"url": "mqtts://broker", "tls": {"key_file": "k.pem"}}, "key_file needs cert_file"),
        ({"keepalive_s": 1}, "greater than or equal to 5"),
        ({"protocol": "3.1"}, "'3.1.1' or '5'"),
        ({"payload": "lines"}, "'sample' or 'batch'"),
        ({"client_id": "gw\0"}, "NUL"),
        ({"retain": True}, "Extra inputs are not permitted"),
    ],
)
def test_bad_options_are_refused_with_a_reason(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        MqttOptions.model_validate(options)
    assert message in str(excinfo.value)


def test_credentials_in_the_url_are_not_echoed() -> None:
    with pytest.raises(ValidationError) as excinfo:
        MqttOptions(url="mqtt://gw:hunter2@broker")
    messages = [error["msg"] for error in excinfo.value.errors()]  # what patgw check prints
    assert messages and not any("hunter2" in message for message in messages)


def test_good_options() -> None:
    options = MqttOptions.model_validate(
        {
            "url": "mqtts://broker.example",
            "username": "gw",
            "password": "env:MQTT_PASSWORD",
            "tls": {"ca_file": "ca.pem", "cert_file": "gw.pem", "key_file": "gw.key"},
            "protocol": "5",
            "qos": 2,
            "topic": "plants/{site}/{signal_id}",
            "meta_topic": None,
            "status_topic": "{site}/status/{client_id}",
            "client_id": "ü" * 40,  # MQTT 3.1.1 allows more than 3.1's 23 characters
        }
    )
    assert options.password is not None and options.password.env == "MQTT_PASSWORD"


def test_registered_as_a_sink_whose_factory_imports_its_libraries(tmp_path: Path) -> None:
    registration = build_registry().get(PluginKind.SINK, "mqtt")
    assert registration is not None
    assert registration.options_model is MqttOptions
    assert (registration.requires, registration.extra) == (("mqtt5", "paho.mqtt"), "mqtt")
    options = MqttOptions.model_validate({"url": "mqtt://127.0.0.1"})
    built = registration.factory(options, PluginContext("up", tmp_path, site="plant7"))
    assert isinstance(built, MqttSink)


def test_topics_follow_the_template(tmp_path: Path) -> None:
    sink = make_sink("mqtt://127.0.0.1", tmp_path, topic="{site}/{area}/{instrument}/{signal}")
    assert sink.topics.topics[FLOW.id] == "plant7/reactor1/feed_pump/flow"
    sink = make_sink("mqtt://127.0.0.1", tmp_path, topic="x/{signal_id}", meta_topic="m/{topic}")
    assert sink.topics.topics[SPECTRUM.id] == "x/reactor1/raman/spectrum"
    topic, payload = sink.topics.meta[0]
    assert topic == "m/x/reactor1/feed_pump/flow"
    assert json.loads(payload) == meta(FLOW, "x/reactor1/feed_pump/flow")
    assert sink.status_topic == STATUS


def test_signals_may_share_a_topic_but_each_needs_its_own_metadata_topic(
    tmp_path: Path,
) -> None:
    other = Signal("reactor1/other_pump/flow", "mL/min", instrument="other_pump")
    with pytest.raises(
        ValueError,
        match=r"metadata of reactor1/feed_pump/flow and the metadata of reactor1/other_pump/flow",
    ):
        make_sink("mqtt://127.0.0.1", tmp_path, [FLOW, other], topic="pat/{area}/{signal}")
    sink = make_sink(
        "mqtt://127.0.0.1",
        tmp_path,
        [FLOW, other],
        topic="pat/{area}/{signal}",
        meta_topic="meta/{instrument}/{signal}",
    )
    assert set(sink.topics.topics.values()) == {"pat/reactor1/flow"}
    with pytest.raises(ValueError, match=r"the samples and the metadata of reactor1/feed_pump"):
        make_sink("mqtt://127.0.0.1", tmp_path, [FLOW], topic="x", meta_topic="x")


@pytest.mark.asyncio
async def test_batch_mode_on_a_topic_per_instrument_sends_one_array_per_delivery(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    samples = [sample(s, seq, float(seq)) for seq in range(3) for s in (FLOW, SPEED)]
    async with (
        Subscriber(mosquitto, "pat/#") as sub,
        make_sink(
            mosquitto.url,
            tmp_path,
            topic="pat/{site}/{area}/{instrument}",
            meta_topic="pat/{site}/{area}/{instrument}/{signal}/meta",
        ) as sink,
    ):
        await sink.forward(samples, historical=False)
        await wait_for(lambda: sub.on(f"pat/{SITE}/reactor1/feed_pump"), within=5, what="a batch")
    (message,) = sub.on(f"pat/{SITE}/reactor1/feed_pump")
    assert message.json() == [sample_to_json_dict(s) for s in samples]  # commit order


def test_historical_flag_is_the_last_key() -> None:
    sample = Sample(FLOW.id, 1.5, "mL/min", 10**18, 10**18, Quality.GOOD, 3)
    assert json.loads(historical_json(sample)) == {
        **sample_to_json_dict(sample),
        "historical": True,
    }
    assert historical_json(sample).endswith(',"historical":true}')


def meta(signal: Signal, topic: str) -> dict[str, Any]:
    return {
        "signal": signal.id,
        "unit": signal.unit,
        "kind": str(signal.kind),
        "description": signal.description,
        "instrument": signal.instrument,
        "site": SITE,
        "area": "reactor1",
        "topic": topic,
    }


# --- delivery ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sample_mode_delivers_the_json_form(mosquitto: Mosquitto, tmp_path: Path) -> None:
    live = [
        sample(FLOW, 0, 48.0),
        sample(SPEED, 0, 120),
        sample(FLOW, 1, None, Quality.BAD, "unreachable: timeout"),
        spectrum_sample(0),
    ]
    late = [sample(FLOW, 2, 47.5), sample(SPEED, 1, 121)]
    async with (
        Subscriber(mosquitto, DATA) as sub,
        make_sink(mosquitto.url, tmp_path, payload="sample") as sink,
    ):
        await sink.forward(live, historical=False)
        await sink.forward(late, historical=True)
        await wait_for(lambda: len(sub.messages) >= 6, within=5, what="6 messages")
    assert [(m.topic, m.retain) for m in sub.messages] == [
        (topic_of(s), False) for s in [*live, *late]
    ]
    assert [m.json() for m in sub.messages] == [
        *(sample_to_json_dict(s) for s in live),
        *({**sample_to_json_dict(s), "historical": True} for s in late),
    ]
    assert sink.sessions == 1
    assert not open_sessions()


@pytest.mark.asyncio
async def test_batch_mode_sends_one_array_per_signal(mosquitto: Mosquitto, tmp_path: Path) -> None:
    samples = [sample(s, seq, float(seq)) for seq in range(3) for s in (FLOW, SPEED)]
    async with (
        Subscriber(mosquitto, DATA) as sub,
        make_sink(mosquitto.url, tmp_path, payload="batch") as sink,
    ):
        await sink.forward(samples, historical=False)
        await sink.forward(samples[:2], historical=True)
        await wait_for(lambda: len(sub.messages) >= 4, within=5, what="4 messages")
    assert [m.topic for m in sub.messages] == [topic_of(FLOW), topic_of(SPEED)] * 2
    flow, speed, flow_late, speed_late = (m.json() for m in sub.messages)
    assert flow == [sample_to_json_dict(sample(FLOW, seq, float(seq))) for seq in range(3)]
    assert speed == [sample_to_json_dict(sample(SPEED, seq, float(seq))) for seq in range(3)]
    assert flow_late == [{**sample_to_json_dict(samples[0]), "historical": True}]
    assert speed_late == [{**sample_to_json_dict(samples[1]), "historical": True}]


@pytest.mark.asyncio
async def test_batch_mode_splits_large_arrays_in_seq_order(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    flows = [sample(FLOW, seq, seq / 7) for seq in range(100)]
    spectra = [spectrum_sample(seq) for seq in range(3)]  # each far beyond 1 KiB
    mixed = [*flows[:50], *spectra, *flows[50:]]  # commit order: each signal's in seq order
    async with (
        Subscriber(mosquitto, DATA) as sub,
        make_sink(mosquitto.url, tmp_path, payload="batch", max_payload_bytes=1024) as sink,
    ):
        await sink.forward(mixed, historical=False)
        await wait_for(
            lambda: sum(len(m.json()) for m in sub.messages) >= 103, within=5, what="all samples"
        )
    flow_messages = sub.on(topic_of(FLOW))
    assert len(flow_messages) > 10
    assert all(len(m.payload) <= 1024 for m in flow_messages)
    assert [item for m in flow_messages for item in m.json()] == [
        sample_to_json_dict(s) for s in flows
    ]
    spectrum_messages = sub.on(topic_of(SPECTRUM))
    assert [m.json() for m in spectrum_messages] == [[sample_to_json_dict(s)] for s in spectra]


@pytest.mark.asyncio
async def test_concurrent_forwards_keep_call_order(mosquitto: Mosquitto, tmp_path: Path) -> None:
    samples = [sample(FLOW, seq, float(seq)) for seq in range(400)]
    async with (
        Subscriber(mosquitto, topic_of(FLOW)) as sub,
        make_sink(mosquitto.url, tmp_path, payload="sample") as sink,
    ):
        # The first calls find no session and wait for one; later ones arrive meanwhile.
        await asyncio.gather(
            *(sink.forward(samples[i : i + 50], historical=False) for i in range(0, 400, 50))
        )
        await wait_for(lambda: len(sub.messages) >= 400, within=5, what="400 messages")
    assert [m.json()["seq"] for m in sub.messages] == list(range(400))
    assert sink.sessions == 1


@pytest.mark.asyncio
async def test_retained_metadata_and_status_reach_a_late_subscriber(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with make_sink(mosquitto.url, tmp_path, payload="sample") as sink:
        await sink.forward([sample(FLOW, 0)], historical=False)
        async with Subscriber(mosquitto) as sub:
            await wait_for(lambda: len(sub.messages) >= 4, within=5, what="retained messages")
            assert {m.topic: (m.json(), m.retain) for m in sub.messages} == {
                **{
                    f"{topic_of(s)}/meta": (meta(s, topic_of(s)), True)
                    for s in (FLOW, SPEED, SPECTRUM)
                },
                STATUS: ({"status": "online", "client_id": f"patgw-{SITE}-up"}, True),
            }
    async with Subscriber(mosquitto, STATUS) as sub:
        await wait_for(lambda: sub.messages, within=5, what="the retained status")
        assert sub.messages[0].json()["status"] == "offline"
        assert sub.messages[0].retain


@pytest.mark.asyncio
@pytest.mark.parametrize(("protocol", "qos"), [("5", 1), ("5", 2), ("3.1.1", 2)])
async def test_mqtt_5_and_qos_2(
    mosquitto: Mosquitto, tmp_path: Path, protocol: str, qos: int
) -> None:
    # Mosquitto takes 20 unacknowledged messages at once: as MQTT 5's Receive Maximum, and at
    # QoS 2 (where it drops a client sending more); the sink keeps to that.
    samples = [sample(FLOW, seq, float(seq)) for seq in range(300)]
    async with (
        Subscriber(mosquitto, topic_of(FLOW)) as sub,
        make_sink(mosquitto.url, tmp_path, protocol=protocol, qos=qos, payload="sample") as sink,
    ):
        await sink.forward(samples, historical=False)
        await wait_for(lambda: len(sub.messages) >= 300, within=5, what="300 messages")
    assert [m.json() for m in sub.messages] == [sample_to_json_dict(s) for s in samples]
    assert sink.sessions == 1


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sink_starts_while_the_broker_is_down_and_connects_later(tmp_path: Path) -> None:
    port = free_port()
    sink = make_sink(f"mqtt://127.0.0.1:{port}", tmp_path, connect_timeout_s=5)
    async with sink:
        started = time.monotonic()
        with pytest.raises(MqttError) as excinfo:
            await sink.forward([sample(FLOW, 0)], historical=False)
        assert time.monotonic() - started < 1.0
        message = str(excinfo.value)
        assert f"mqtt://127.0.0.1:{port}" in message and "cannot connect" in message
        assert "refused" in message.lower()
        async with Mosquitto(tmp_path / "broker", port=port) as broker, Subscriber(broker) as sub:
            await sink.forward([sample(FLOW, 1)], historical=True)
            await wait_for(lambda: sub.on(topic_of(FLOW)), within=5, what="the message")
            await sink.forward([sample(FLOW, 2)], historical=False)
    assert sink.sessions == 1
    assert not open_sessions()


@pytest.mark.asyncio
async def test_broker_killed_mid_flight_fails_promptly_then_reconnects(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    samples = [sample(FLOW, seq, float(seq)) for seq in range(2000)]
    async with make_sink(mosquitto.url, tmp_path, publish_timeout_s=10, payload="sample") as sink:
        await sink.forward(samples[:1], historical=False)
        mosquitto.pause()  # the broker stops acknowledging; its connections stay open
        pending = asyncio.create_task(sink.forward(samples[1:], historical=False))
        await asyncio.sleep(0)  # let the forward hand its messages over (it then waits)
        assert not pending.done()
        killed = time.monotonic()
        await mosquitto.kill()
        with pytest.raises(MqttError, match="connection to broker lost") as excinfo:
            await pending
        assert time.monotonic() - killed < 2.0  # publish_timeout_s is 10
        assert mosquitto.url in str(excinfo.value)
        with pytest.raises(MqttError, match="cannot connect"):
            await sink.forward(samples[1:], historical=True)
        await mosquitto.start()  # the same port
        async with Subscriber(mosquitto, topic_of(FLOW)) as sub:
            await sink.forward(samples[1:], historical=True)
            await wait_for(lambda: len(sub.messages) >= 1999, within=5, what="the backlog")
        assert [m.json()["seq"] for m in sub.messages] == list(range(1, 2000))
        assert sink.sessions == 2
    assert not open_sessions()


@pytest.mark.asyncio
async def test_broker_stopped_between_forwards(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with make_sink(mosquitto.url, tmp_path, payload="sample") as sink:
        await sink.forward([sample(FLOW, 0)], historical=False)
        await mosquitto.restart()
        # The loss is noticed by this call (which fails) or before it (which reconnects).
        failures = []
        for _ in range(2):
            try:
                await sink.forward([sample(FLOW, 1)], historical=bool(failures))
                break
            except MqttError as exc:
                failures.append(str(exc))
        assert all("connection to broker lost" in failure for failure in failures), failures
        assert len(failures) <= 1
        assert sink.sessions == 2


@pytest.mark.asyncio
async def test_hung_broker_fails_forward_at_the_timeout_and_gets_the_last_will(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        Subscriber(mosquitto, STATUS) as sub,
        make_sink(mosquitto.url, tmp_path, publish_timeout_s=0.5) as sink,
    ):
        await sink.forward([sample(FLOW, 0)], historical=False)
        await wait_for(lambda: sub.messages, within=5, what="status online")
        mosquitto.pause()
        started = time.monotonic()
        with pytest.raises(MqttError, match=r"1 of 1 messages not acknowledged within 0.5 s"):
            await sink.forward([sample(FLOW, 1)], historical=False)
        assert 0.4 < time.monotonic() - started < 2.5
        mosquitto.resume()
        # The sink cut the connection without DISCONNECT: the broker publishes the Last Will.
        await wait_for(lambda: len(sub.messages) >= 2, within=5, what="the Last Will")
        assert sub.messages[-1].json() == {"status": "offline", "client_id": f"patgw-{SITE}-up"}
        await sink.forward([sample(FLOW, 1)], historical=True)
        await wait_for(lambda: len(sub.messages) >= 3, within=5, what="status online again")
        assert sub.messages[-1].json()["status"] == "online"


@pytest.mark.asyncio
async def test_exit_is_bounded_with_a_hung_broker(mosquitto: Mosquitto, tmp_path: Path) -> None:
    sink = make_sink(mosquitto.url, tmp_path, publish_timeout_s=0.5)
    async with sink:
        await sink.forward([sample(FLOW, 0)], historical=False)
        mosquitto.pause()
        started = time.monotonic()
    assert time.monotonic() - started < 3.0
    assert not open_sessions()


@pytest.mark.asyncio
async def test_exit_without_a_session_does_nothing(tmp_path: Path) -> None:
    async with make_sink(f"mqtt://127.0.0.1:{free_port()}", tmp_path) as sink:
        pass
    assert sink.sessions == 0


# --- refusals ---------------------------------------------------------------------------------

ALLOW_ALL = "topic readwrite #\n"


def deny(*topics: str) -> str:
    """A Mosquitto ACL (for anonymous clients): everything allowed but ``topics``."""
    return ALLOW_ALL + "".join(f"topic deny {topic}\n" for topic in topics)


def seqs(subscriber: Subscriber, signal: Signal) -> list[int]:
    """The seq of every sample received on ``signal``'s topic (either payload form)."""
    return [
        item["seq"]
        for message in subscriber.on(topic_of(signal))
        for item in np.atleast_1d(message.json())
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize("payload", ["batch", "sample"])
async def test_a_denied_topic_is_refused_per_sample_and_the_rest_is_delivered(
    tmp_path: Path, payload: str
) -> None:
    flow = [sample(FLOW, seq, float(seq)) for seq in range(5)]
    speed = [sample(SPEED, seq, float(seq)) for seq in range(5)]
    mixed = [x for pair in zip(flow, speed, strict=True) for x in pair]
    # The data topic and (by the '#') the metadata topic of FLOW are denied. (Not with
    # max_queued_messages 0: Mosquitto 2.0.11 then drops the connection after a refusal.)
    broker = Mosquitto(
        tmp_path / "broker", acl=deny(f"{topic_of(FLOW)}/#"), max_queued_messages=100_000
    )
    async with (
        broker,
        Subscriber(broker, DATA) as sub,
        make_sink(broker.url, tmp_path, payload=payload) as sink,
    ):
        with pytest.raises(SamplesRefusedError) as excinfo:
            await sink.forward(mixed, historical=False)
        (refusal,) = excinfo.value.refusals
        assert sorted(refusal.indices) == [i for i, s in enumerate(mixed) if s.signal == FLOW.id]
        assert refusal.target == f"topic {topic_of(FLOW)}"
        assert "Not authorized" in refusal.reason and "0x87" in refusal.reason, refusal.reason
        assert excinfo.value.failure is None
        await sink.forward(speed, historical=True)
        assert sink.sessions == 1  # the session goes on: no new connection
        # The ACL is fixed: the same topic is taken.
        await broker.set_acl(ALLOW_ALL)
        await sink.forward(flow[:1], historical=True)
        await wait_for(lambda: sub.on(topic_of(FLOW)), within=5, what="FLOW once allowed")
        expected = [0, 1, 2, 3, 4] * 2
        await wait_for(lambda: len(seqs(sub, SPEED)) >= len(expected), within=5, what="SPEED")
    assert seqs(sub, SPEED) == expected
    assert seqs(sub, FLOW) == [0]
    assert not open_sessions()


@pytest.mark.asyncio
async def test_a_broker_that_never_sends_connack_is_named(tmp_path: Path) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accepts TCP, reads the CONNECT, never answers

    async with scripted(silent) as url, make_sink(url, tmp_path, connect_timeout_s=0.5) as sink:
        with pytest.raises(MqttError) as excinfo:
            await sink.forward([sample(FLOW, 0)], historical=False)
    assert accepted, "the sink never connected"
    message = str(excinfo.value)
    assert "no CONNACK within 0.5 s" in message, message
    assert url.removeprefix("mqtt://") in message
    assert not open_sessions()


@pytest.mark.asyncio
async def test_a_forward_timing_out_in_the_runtime_says_so(tmp_path: Path) -> None:
    """The runtime's own send timeout (shorter here than the sink's connect timeout) names
    itself, not ``TimeoutError()``; with the defaults the sink's connect timeout comes first
    and names its step."""
    assert MqttOptions().connect_timeout_s < SinkConfig(id="x", type="mqtt").send_timeout_s
    store = SampleStore(tmp_path / "s.sqlite")
    stored = store.define([FLOW])
    store.commit([(stored[FLOW.id].def_id, 0, T0, T0, 0, 1.0, None)], {FLOW.id: 1})
    store.close()
    names = {stored[FLOW.id].def_id: (FLOW.id, FLOW.unit)}

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pass  # accepts TCP, reads the CONNECT, never answers

    reader = BacklogReader(tmp_path / "s.sqlite")
    config = SinkConfig(
        id="up", type="mqtt", start_from="earliest", send_timeout_s=0.3, retry={"initial_s": 5}
    )
    try:
        async with (
            scripted(silent) as url,
            make_sink(url, tmp_path, connect_timeout_s=5) as sink,
        ):
            forwarder = Forwarder("up", sink, config, names, reader)
            forwarder.start(None, 1)
            task = asyncio.create_task(forwarder.run(), name="test.forwarder")
            try:
                await wait_for(lambda: forwarder.stats.failures, within=5, what="a failure")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        await reader.aclose()
    error = forwarder.stats.last_error
    assert error == "forward not acknowledged within 0.3 s (send_timeout_s)", error


def test_mqtt_3_is_valid_but_warned_about() -> None:
    assert MqttOptions().config_warnings() == []
    (warning,) = MqttOptions(protocol="3.1.1").config_warnings()
    assert warning.startswith("protocol: ") and "silently" not in warning
    assert "drops" in warning and "protocol 5" in warning
    # At QoS 2 a refusal comes in the PUBREC, which the session reads (test_mqtt_session.py).
    assert MqttOptions(qos=2).config_warnings() == []


# --- security ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_username_and_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = {"gw": "s3cret", "reader": "r3ad"}
    async with (
        Mosquitto(tmp_path / "broker", users=users) as broker,
        Subscriber(broker, topic_of(FLOW), username="reader", password="r3ad") as sub,
    ):
        options = {"username": "gw", "password": "env:PATGW_TEST_MQTT_PASSWORD"}
        async with make_sink(broker.url, tmp_path, **options) as sink:
            with pytest.raises(MqttError, match="environment variable PATGW_TEST_MQTT_PASSWORD"):
                await sink.forward([sample(FLOW, 0)], historical=False)
            monkeypatch.setenv("PATGW_TEST_MQTT_PASSWORD", "wrong")
            with pytest.raises(MqttError) as excinfo:
                await sink.forward([sample(FLOW, 0)], historical=False)
            assert "refused the connection" in str(excinfo.value)
            assert "not authorized" in str(excinfo.value).lower()
            monkeypatch.setenv("PATGW_TEST_MQTT_PASSWORD", "s3cret")
            await sink.forward([sample(FLOW, 0)], historical=False)
            await wait_for(lambda: sub.messages, within=5, what="the message")
        async with make_sink(broker.url, tmp_path) as anonymous:
            with pytest.raises(MqttError, match=r"(?i)not authorized"):
                await anonymous.forward([sample(FLOW, 0)], historical=False)


@pytest.mark.asyncio
async def test_tls_with_the_brokers_ca(tmp_path: Path) -> None:
    tls = make_broker_tls(tmp_path / "pki")
    async with (
        Mosquitto(tmp_path / "broker", tls=tls) as broker,
        Subscriber(broker, topic_of(FLOW)) as sub,
    ):
        assert broker.url.startswith("mqtts://")
        async with make_sink(broker.url, tmp_path, tls={"ca_file": str(tls.ca)}) as sink:
            await sink.forward([sample(FLOW, 0)], historical=False)
            await wait_for(lambda: sub.messages, within=5, what="the message")
        # Without the CA, the system's CAs do not trust the broker.
        async with make_sink(broker.url, tmp_path) as untrusting:
            with pytest.raises(MqttError, match="certificate verify failed"):
                await untrusting.forward([sample(FLOW, 0)], historical=False)
        # The certificate names localhost too.
        by_name = broker.url.replace("127.0.0.1", "localhost")
        async with make_sink(by_name, tmp_path, tls={"ca_file": str(tls.ca)}) as named:
            await named.forward([sample(FLOW, 1)], historical=False)
    assert not open_sessions()


@pytest.mark.asyncio
async def test_an_unreadable_tls_file_is_named(tmp_path: Path) -> None:
    tls = make_broker_tls(tmp_path / "pki")
    missing = tmp_path / "pki" / "missing.pem"
    async with Mosquitto(tmp_path / "broker", tls=tls) as broker:
        for options in (
            {"ca_file": str(missing)},
            {"ca_file": str(tls.ca), "cert_file": str(missing)},
        ):
            async with make_sink(broker.url, tmp_path, tls=options) as sink:
                with pytest.raises(MqttError) as excinfo:
                    await sink.forward([sample(FLOW, 0)], historical=False)
            message = str(excinfo.value)
            assert str(missing) in message and "No such file" in message, message
    assert not open_sessions()


@pytest.mark.asyncio
async def test_tls_checks_the_host_name_unless_told_not_to(tmp_path: Path) -> None:
    tls = make_broker_tls(tmp_path / "pki", host="127.0.0.2")  # and localhost, not 127.0.0.1
    async with Mosquitto(tmp_path / "broker", tls=tls) as broker:
        async with make_sink(broker.url, tmp_path, tls={"ca_file": str(tls.ca)}) as sink:
            with pytest.raises(MqttError, match="IP address mismatch"):
                await sink.forward([sample(FLOW, 0)], historical=False)
        unchecked = {"ca_file": str(tls.ca), "verify_hostname": False}
        async with make_sink(broker.url, tmp_path, tls=unchecked) as sink:
            await sink.forward([sample(FLOW, 0)], historical=False)
    assert not open_sessions()
