"""The ``sparkplug`` sink against a real Mosquitto, read back with an independent decoder.

The decoder is not our ``sparkplug_b_pb2``: the test compiles the ``.proto`` with grpcio-tools
into its own folder, under another package, and checks that schema's field numbers and
datatype numbers against the Sparkplug 3.0 specification's (written out here).

* Births: NBIRTH (bdSeq, Node Control/Rebirth false, seq 0), DBIRTH per instrument with every
  metric's name, alias, datatype, value and properties (engUnit, ucum, quality, seq,
  description); spectra as FloatArray with an axis metric.
* Data: DDATA per device and batch, by alias, timestamp = source_ts in ms, seq and quality as
  properties, is_historical for backlog; payload seq continues from the births and wraps at 256.
* NDEATH: the Last Will (not retained) with the connection's bdSeq; bdSeq grows per connect.
* NCMD: rebirth on Node Control/Rebirth (same bdSeq, seq 0, aliases unchanged), requests
  coalesced; unknown metric, wrong datatype, malformed protobuf: logged (rate-limited), no
  birth, the session lives on.
* STATE: held until the primary host is online; not-JSON and stale STATE ignored; a flapping
  host gives no birth storm and, through the runtime, nothing is lost.
* Failures: a DDATA topic the broker's ACL denies (MQTT 5) is refused for its samples only; a
  broker restart through the runtime loses nothing (backlog flagged is_historical).
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import free_port, plan_for, pump_instrument, running, stored_by_signal, wait_for
from mosquitto import Mosquitto, Subscriber
from mqtt_helpers import SITE, Samples, bound_sink
from structlog.testing import capture_logs

from gateway import (
    Plan,
    PluginContext,
    PluginKind,
    Quality,
    Sample,
    SamplesRefusedError,
    Signal,
    SignalKind,
    SpectralAxis,
    build_registry,
)
from plugins.mqtt.session import MqttError
from plugins.sparkplug.options import SparkplugOptions
from plugins.sparkplug.sink import REBIRTH_MIN_INTERVAL_S, SparkplugSink

REPO = Path(__file__).resolve().parents[1]
PROTO = REPO / "plugins" / "sparkplug" / "sparkplug_b.proto"
GROUP = "pat"
NODE = SITE
PH = Signal("reactor1/controller/ph", "[pH]", description="Culture pH", instrument="controller")
TEMP = Signal("reactor1/controller/temperature", "Cel", instrument="controller")
FLOW = Signal("reactor1/feed_pump/flow", "mL/min", description="Feed flow", instrument="feed_pump")
SPECTRUM = Signal("reactor1/raman/spectrum", "{counts}", SignalKind.SPECTRUM, instrument="raman")
SIGNALS = (PH, TEMP, FLOW, SPECTRUM)
AXIS = SpectralAxis(np.linspace(200.0, 1800.0, 64), "cm-1")
T0 = 1_795_000_000_123_456_789  # not a whole millisecond: Sparkplug timestamps are in ms
sample = Samples(T0, 1_000_000_000, AXIS)  # a second apart


def spectrum_sample(seq: int) -> Sample:
    return sample.spectrum(SPECTRUM, seq)


# --- the independent decoder ------------------------------------------------------------------

# From the Sparkplug 3.0 specification (section 6.4, the Sparkplug B protobuf schema): the
# field numbers a host decodes with. Our .proto must say the same.
SPEC_FIELDS = {
    "Payload": {"timestamp": 1, "metrics": 2, "seq": 3, "uuid": 4, "body": 5},
    "Metric": {
        "name": 1,
        "alias": 2,
        "timestamp": 3,
        "datatype": 4,
        "is_historical": 5,
        "is_transient": 6,
        "is_null": 7,
        "metadata": 8,
        "properties": 9,
        "int_value": 10,
        "long_value": 11,
        "float_value": 12,
        "double_value": 13,
        "boolean_value": 14,
        "string_value": 15,
        "bytes_value": 16,
        "dataset_value": 17,
        "template_value": 18,
        "extension_value": 19,
    },
    "PropertySet": {"keys": 1, "values": 2},
    "PropertyValue": {
        "type": 1,
        "is_null": 2,
        "int_value": 3,
        "long_value": 4,
        "float_value": 5,
        "double_value": 6,
        "boolean_value": 7,
        "string_value": 8,
        "propertyset_value": 9,
        "propertysets_value": 10,
        "extension_value": 11,
    },
}
SPEC_TYPES = {
    "Int32": 3,
    "Int64": 4,
    "UInt64": 8,
    "Double": 10,
    "Boolean": 11,
    "String": 12,
    "Int8Array": 22,
    "FloatArray": 30,
    "DoubleArray": 31,
    "DateTimeArray": 34,
}


def compile_proto(folder: Path, name: str, package: str) -> ModuleType:
    """``sparkplug_b.proto`` compiled by grpcio-tools into ``folder`` as ``name`` (another file
    name and package than ours, so both live in one descriptor pool) and imported."""
    folder.mkdir(parents=True, exist_ok=True)
    text = PROTO.read_text().replace("package org.eclipse.tahu.protobuf;", f"package {package};")
    (folder / f"{name}.proto").write_text(text)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={folder}",
         f"--python_out={folder}", str(folder / f"{name}.proto")],
        check=True,
    )  # fmt: skip
    spec = importlib.util.spec_from_file_location(f"{name}_pb2", folder / f"{name}_pb2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def spb(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return compile_proto(tmp_path_factory.mktemp("decoder"), "independent_spb", "independent.spb")


def decode(spb: ModuleType, payload: bytes) -> Any:
    message = spb.Payload()
    message.ParseFromString(payload)
    return message


def props(metric: Any) -> dict[str, Any]:
    out = {}
    for key, value in zip(metric.properties.keys, metric.properties.values, strict=True):
        kind = value.WhichOneof("value")
        out[key] = None if value.is_null else getattr(value, kind)
    return out


def named(payload: Any) -> dict[str, Any]:
    return {m.name: m for m in payload.metrics}


def test_the_schema_has_the_specifications_numbers(spb: ModuleType) -> None:
    messages = {
        "Payload": spb.Payload,
        "Metric": spb.Payload.Metric,
        "PropertySet": spb.Payload.PropertySet,
        "PropertyValue": spb.Payload.PropertyValue,
    }
    for name, fields in SPEC_FIELDS.items():
        descriptor = messages[name].DESCRIPTOR
        assert {f.name: f.number for f in descriptor.fields} == fields, name
    types = spb.DataType.DESCRIPTOR.values_by_name
    assert {name: types[name].number for name in SPEC_TYPES} == SPEC_TYPES
    assert len(types) == 35  # Unknown (0) to DateTimeArray (34)


def test_the_generated_module_matches_the_proto(tmp_path: Path) -> None:
    """scripts/gen_sparkplug.sh run into a scratch copy gives the checked-in files."""
    scratch = tmp_path / "repo"
    (scratch / "plugins" / "sparkplug").mkdir(parents=True)
    (scratch / "scripts").mkdir()
    shutil.copy(PROTO, scratch / "plugins" / "sparkplug")
    shutil.copy(REPO / "scripts" / "gen_sparkplug.sh", scratch / "scripts")
    subprocess.run(
        ["bash", str(scratch / "scripts" / "gen_sparkplug.sh")],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    for name in ("sparkplug_b_pb2.py", "sparkplug_b_pb2.pyi"):
        fresh = (scratch / "plugins" / "sparkplug" / name).read_text()
        assert fresh == (REPO / "plugins" / "sparkplug" / name).read_text(), (
            f"{name} is stale: run scripts/gen_sparkplug.sh"
        )


# --- options ----------------------------------------------------------------------------------


def test_registered_as_a_sink_whose_factory_imports_its_libraries(tmp_path: Path) -> None:
    registration = build_registry().get(PluginKind.SINK, "sparkplug")
    assert registration is not None
    assert registration.options_model is SparkplugOptions
    assert registration.requires == ("mqtt5", "paho.mqtt", "google.protobuf")
    assert registration.extra == "mqtt"
    context = PluginContext("up", tmp_path, site="plant7", area="reactor1")
    assert isinstance(registration.factory(SparkplugOptions(), context), SparkplugSink)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"group_id": "a/b"}, "group_id 'a/b' holds /"),
        ({"edge_node_id": "n+1"}, "edge_node_id 'n+1' holds +"),
        ({"primary_host_id": "h#"}, "primary_host_id 'h#' holds #"),
        ({"url": "http://x"}, "unsupported scheme"),
        ({"keepalive_s": 1}, "greater than or equal to 5"),
        ({"qos": 0}, "Extra inputs are not permitted"),
        ({"password": "env:X"}, "password needs username"),
    ],
)
def test_bad_options_are_refused_with_a_reason(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        SparkplugOptions.model_validate(options)


def test_the_edge_node_defaults_to_the_site_sanitized(tmp_path: Path) -> None:
    context = PluginContext("up", tmp_path, site="plant/7", area="reactor1")
    sink = SparkplugSink(SparkplugOptions(), context)
    assert sink.nbirth_topic == "spBv1.0/pat/NBIRTH/plant_7"


def test_two_signals_on_one_metric_are_refused(tmp_path: Path) -> None:
    sink = make_sink("mqtt://127.0.0.1:1", tmp_path, signals=())
    with pytest.raises(ValueError, match="both map to metric 'ph' of Sparkplug device 'a_b'"):
        sink.bind([Signal("reactor1/a+b/ph", "1"), Signal("reactor1/a#b/ph", "1")])


# --- against Mosquitto ------------------------------------------------------------------------


def make_sink(
    url: str, tmp_path: Path, signals: Sequence[Signal] = SIGNALS, **options: Any
) -> SparkplugSink:
    return bound_sink(SparkplugSink, SparkplugOptions, url, tmp_path, signals, **options)


def topic(kind: str, device: str | None = None) -> str:
    return f"spBv1.0/{GROUP}/{kind}/{NODE}" + (f"/{device}" if device else "")


def of_kind(sub: Subscriber, kind: str, device: str | None = None) -> list[bytes]:
    return [m.payload for m in sub.on(topic(kind, device))]


@pytest.mark.asyncio
async def test_births_then_data_read_by_an_independent_decoder(
    mosquitto: Mosquitto, tmp_path: Path, spb: ModuleType
) -> None:
    live = [
        sample(PH, 0, 7.01),
        sample(TEMP, 0, 36.9),
        sample(FLOW, 0, 1.6),
        sample(PH, 1, None, Quality.BAD, "timeout"),
        spectrum_sample(0),
        sample(TEMP, 1, 37.0, Quality.UNCERTAIN, "sensor drift"),
    ]
    late = [sample(FLOW, 1, 1.7)]
    async with Subscriber(mosquitto, "spBv1.0/#") as sub:
        async with make_sink(mosquitto.url, tmp_path) as sink:
            await sink.forward(live, historical=False)
            await sink.forward(late, historical=True)
            await wait_for(lambda: len(of_kind(sub, "DDATA", "feed_pump")) == 2, within=5)
        await wait_for(lambda: of_kind(sub, "NDEATH"), within=5, what="the NDEATH of the stop")

    order = [m.topic for m in sub.messages]
    assert order == [
        topic("NBIRTH"),
        topic("DBIRTH", "controller"),
        topic("DBIRTH", "feed_pump"),
        topic("DBIRTH", "raman"),
        topic("DDATA", "controller"),
        topic("DDATA", "feed_pump"),
        topic("DDATA", "raman"),
        topic("DDATA", "feed_pump"),
        topic("NDEATH"),
    ]
    assert not any(m.retain for m in sub.messages)
    payloads = [decode(spb, m.payload) for m in sub.messages]
    assert [p.seq for p in payloads[:-1]] == [0, 1, 2, 3, 4, 5, 6, 7]

    nbirth = named(payloads[0])
    assert nbirth["bdSeq"].datatype == SPEC_TYPES["Int64"] and nbirth["bdSeq"].long_value == 0
    rebirth = nbirth["Node Control/Rebirth"]
    assert rebirth.datatype == SPEC_TYPES["Boolean"] and rebirth.boolean_value is False

    controller = named(payloads[1])
    assert list(controller) == ["ph", "temperature"]
    ph = controller["ph"]
    assert (ph.alias, ph.datatype, ph.is_null) == (1, SPEC_TYPES["Double"], True)
    assert props(ph) == {"engUnit": "pH", "ucum": "[pH]", "quality": 0, "description": "Culture pH"}
    assert props(controller["temperature"])["engUnit"] == "°C"
    feed = named(payloads[2])["flow"]
    assert (feed.alias, feed.datatype) == (3, SPEC_TYPES["Double"])
    assert props(feed)["ucum"] == "mL/min"
    raman = named(payloads[3])
    assert raman["spectrum"].datatype == SPEC_TYPES["FloatArray"]
    assert raman["spectrum/axis"].datatype == SPEC_TYPES["DoubleArray"]
    assert (raman["spectrum"].alias, raman["spectrum/axis"].alias) == (4, 5)
    assert raman["spectrum"].is_null and props(raman["spectrum"])["engUnit"] == "{counts}"

    ddata = payloads[4]
    assert all(not m.HasField("name") for m in ddata.metrics)  # by alias only
    assert [m.alias for m in ddata.metrics] == [1, 2, 1, 2]
    first, second, third, fourth = ddata.metrics
    assert first.double_value == 7.01 and props(first) == {"seq": 0}
    assert first.timestamp == live[0].source_ts // 1_000_000
    assert second.double_value == 36.9
    assert third.is_null and props(third) == {"seq": 1, "quality": 0, "reason": "timeout"}
    assert props(fourth) == {"seq": 1, "quality": 64, "reason": "sensor drift"}
    assert not any(m.is_historical for m in ddata.metrics)

    spectrum, axis = payloads[6].metrics
    assert spectrum.alias == 4 and axis.alias == 5
    values = np.frombuffer(spectrum.bytes_value, dtype="<f4")
    np.testing.assert_array_equal(values, live[4].value.values)
    np.testing.assert_array_equal(np.frombuffer(axis.bytes_value, dtype="<f8"), AXIS.values)

    historical = payloads[7].metrics
    assert [(m.alias, m.double_value, m.is_historical) for m in historical] == [(3, 1.7, True)]
    death = named(payloads[8])
    assert death["bdSeq"].long_value == 0 and not payloads[8].HasField("seq")


@pytest.mark.asyncio
async def test_the_last_will_is_an_ndeath_with_the_connections_bdseq(
    mosquitto: Mosquitto, tmp_path: Path, spb: ModuleType
) -> None:
    async with (
        Subscriber(mosquitto, "spBv1.0/#") as sub,
        make_sink(mosquitto.url, tmp_path) as sink,
    ):
        await sink.forward([sample(PH, 0, 7.0)], False)
        session = sink._sessions.current
        assert session is not None
        session.abort("test: connection cut")  # no DISCONNECT: the broker sends the will
        await wait_for(lambda: of_kind(sub, "NDEATH"), within=10, what="the Last Will")
        await sink.forward([sample(PH, 1, 7.1)], False)  # reconnects: the next bdSeq
        await wait_for(lambda: len(of_kind(sub, "NBIRTH")) == 2, within=5)
    deaths = [m for m in sub.messages if m.topic == topic("NDEATH")]
    assert not deaths[0].retain
    assert named(decode(spb, deaths[0].payload))["bdSeq"].long_value == 0
    births = [named(decode(spb, p))["bdSeq"].long_value for p in of_kind(sub, "NBIRTH")]
    assert births == [0, 1]
    assert sink.sessions == 2


def command(spb: ModuleType, *metrics: dict[str, Any]) -> bytes:
    payload = spb.Payload(timestamp=int(time.time() * 1000))
    for metric in metrics:
        payload.metrics.add(**metric)
    return bytes(payload.SerializeToString())


REBIRTH_TRUE = {"name": "Node Control/Rebirth", "datatype": 11, "boolean_value": True}


@pytest.mark.asyncio
async def test_rebirth_on_command_keeps_bdseq_and_aliases(
    mosquitto: Mosquitto, tmp_path: Path, spb: ModuleType
) -> None:
    async with (
        Subscriber(mosquitto, "spBv1.0/#") as sub,
        make_sink(mosquitto.url, tmp_path) as sink,
    ):
        await sink.forward([sample(PH, 0, 7.0), sample(FLOW, 0, 1.6)], False)
        sub.client.publish(topic("NCMD"), command(spb, REBIRTH_TRUE), qos=1)
        await wait_for(lambda: len(of_kind(sub, "NBIRTH")) == 2, within=10, what="the rebirth")
        await wait_for(lambda: len(of_kind(sub, "DBIRTH", "raman")) == 2, within=5)
        await sink.forward([sample(PH, 1, 7.2)], False)
        await wait_for(lambda: len(of_kind(sub, "DDATA", "controller")) == 2, within=5)
    first, again = (decode(spb, p) for p in of_kind(sub, "NBIRTH"))
    assert again.seq == 0
    assert named(again)["bdSeq"].long_value == named(first)["bdSeq"].long_value == 0
    births = [decode(spb, p) for p in of_kind(sub, "DBIRTH", "controller")]
    assert [(m.name, m.alias) for m in births[1].metrics] == [
        (m.name, m.alias) for m in births[0].metrics
    ]
    ph = named(births[1])["ph"]  # the rebirth carries the current value
    assert ph.double_value == 7.0 and props(ph)["seq"] == 0 and props(ph)["quality"] == 192
    # The seq goes on from the rebirth: NBIRTH 0, three DBIRTHs, then this DDATA.
    assert decode(spb, of_kind(sub, "DDATA", "controller")[-1]).seq == 4


@pytest.mark.asyncio
async def test_bad_commands_are_logged_and_change_nothing(
    mosquitto: Mosquitto, tmp_path: Path, spb: ModuleType
) -> None:
    bad = [
        command(spb, {"name": "Node Control/Reboot", "datatype": 11, "boolean_value": True}),
        command(spb, {"name": "Node Control/Rebirth", "datatype": 12, "string_value": "true"}),
        b"\xff\xff\xff\xff not protobuf",
    ]
    with capture_logs() as logs:
        async with (
            Subscriber(mosquitto, "spBv1.0/#") as sub,
            make_sink(mosquitto.url, tmp_path) as sink,
        ):
            await sink.forward([sample(PH, 0, 7.0)], False)
            for payload in bad * 20:  # a storm of them
                sub.client.publish(topic("NCMD"), payload, qos=1)
            # A good one behind them is still obeyed: they were all read, none ended the session.
            sub.client.publish(topic("NCMD"), command(spb, REBIRTH_TRUE), qos=1)
            await wait_for(lambda: len(of_kind(sub, "NBIRTH")) == 2, within=10)
            await sink.forward([sample(PH, 1, 7.1)], False)
    ignored = [e for e in logs if e["event"] == "sparkplug.ncmd_ignored"]
    problems = " | ".join(e["problem"] for e in ignored)
    assert "unknown metric 'Node Control/Reboot'" in problems
    assert len(ignored) <= 3  # rate-limited: not one line per bad message
    assert sink.sessions == 1 and sink.births == 2
    assert not [e for e in logs if e["event"] == "mqtt.on_message_failed"]


def test_each_kind_of_bad_command_is_named(spb: ModuleType) -> None:
    from plugins.sparkplug.payloads import decode_command

    unknown = decode_command(command(spb, {"name": "x", "datatype": 11, "boolean_value": True}))
    wrong = decode_command(
        command(spb, {"name": "Node Control/Rebirth", "datatype": 3, "int_value": 1})
    )
    malformed = decode_command(b"\x0a\xff")
    assert (unknown.rebirth, unknown.problems) == (False, ["unknown metric 'x'"])
    assert not wrong.rebirth and "must be a Boolean, got datatype 3" in wrong.problems[0]
    assert not malformed.rebirth and malformed.problems[0].startswith("malformed payload")
    assert decode_command(command(spb, REBIRTH_TRUE)).rebirth


@pytest.mark.asyncio
async def test_rebirth_requests_coalesce(
    mosquitto: Mosquitto, tmp_path: Path, spb: ModuleType
) -> None:
    with capture_logs() as logs:
        async with (
            Subscriber(mosquitto, "spBv1.0/#") as sub,
            make_sink(mosquitto.url, tmp_path) as sink,
        ):
            await sink.forward([sample(PH, 0, 7.0)], False)
            for _ in range(30):
                sub.client.publish(topic("NCMD"), command(spb, REBIRTH_TRUE), qos=1)
            await wait_for(
                lambda: sink.rebirth_requests == 30,
                within=10,
                what="30 rebirth requests read",
            )
            # The first came within the interval after the connect's births: it waits for the
            # interval's end, and the other 29 join it.
            await wait_for(lambda: len(of_kind(sub, "NBIRTH")) == 2, within=10, what="rebirth")
            assert sink._rebirth_timer is None and not sink._births_due  # nothing more to come
    assert sink.births == 2
    # One line for the 30 requests (rate-limited; the next one would carry the count).
    assert sum(e["event"] == "sparkplug.rebirth_requested" for e in logs) == 1
    first, second = (decode(spb, p).timestamp for p in of_kind(sub, "NBIRTH"))
    assert second - first >= REBIRTH_MIN_INTERVAL_S * 1000 - 50


def test_payload_seq_wraps_after_255() -> None:
    from plugins.sparkplug.payloads import Catalog

    catalog = Catalog()
    catalog.bind([PH])
    catalog.nbirth(0, 0)
    catalog.dbirths(0)
    seqs = []
    for n in range(300):
        catalog.ddata([sample(PH, n)], False, 0, [])
        seqs.append((catalog.seq - 1) & 0xFF)
    assert seqs[:3] == [2, 3, 4] and seqs[253] == 255 and seqs[254] == 0


# --- the primary host's STATE -----------------------------------------------------------------

HOST = "scada1"
STATE = f"spBv1.0/STATE/{HOST}"


def state(online: bool, timestamp: int) -> bytes:
    return json.dumps({"online": online, "timestamp": timestamp}).encode()


@pytest.mark.asyncio
async def test_publishing_waits_for_the_primary_host(
    mosquitto: Mosquitto, tmp_path: Path, spb: ModuleType
) -> None:
    with capture_logs() as logs:
        async with (
            Subscriber(mosquitto, f"spBv1.0/{GROUP}/#") as sub,
            make_sink(mosquitto.url, tmp_path, primary_host_id=HOST) as sink,
        ):
            with pytest.raises(MqttError, match="primary host 'scada1' is offline"):
                await sink.forward([sample(PH, 0, 7.0)], False)
            assert not sub.messages  # no birth while the host is not online
            sub.client.publish(STATE, b"online!", qos=1, retain=True)  # not JSON
            sub.client.publish(STATE, state(True, 1000), qos=1, retain=True)
            await wait_for(lambda: of_kind(sub, "NBIRTH"), within=10, what="births")
            await sink.forward([sample(PH, 0, 7.0)], True)
            sub.client.publish(STATE, state(False, 999), qos=1, retain=True)  # stale: ignored
            sub.client.publish(STATE, state(False, 2000), qos=1, retain=True)
            await wait_for(lambda: not sink.host_online, within=5)
            with pytest.raises(MqttError, match="offline"):
                await sink.forward([sample(PH, 1, 7.1)], False)
            sub.client.publish(STATE, state(True, 3000), qos=1, retain=True)
            await wait_for(lambda: len(of_kind(sub, "NBIRTH")) == 2, within=10)
            await sink.forward([sample(PH, 1, 7.1)], True)
            await wait_for(lambda: len(of_kind(sub, "DDATA", "controller")) == 2, within=5)
        sub.client.publish(STATE, b"", qos=1, retain=True)  # clear the retained STATE
    data = [decode(spb, p).metrics[0] for p in of_kind(sub, "DDATA", "controller")]
    assert [(props(m)["seq"], m.is_historical) for m in data] == [(0, True), (1, True)]
    events = [e["event"] for e in logs]
    assert "sparkplug.state_invalid" in events and "sparkplug.state_stale" in events
    assert sink.sessions == 1  # the node stayed connected throughout


# --- through the runtime: a flapping primary host loses nothing --------------------------------


def received_samples(spb: ModuleType, sub: Subscriber) -> dict[tuple[str, int], bool]:
    """(metric name, seq) → historical, of every DDATA metric (aliases resolved through the
    DBIRTHs), de-duplicated."""
    names: dict[int, str] = {}
    out: dict[tuple[str, int], bool] = {}
    for message in sub.since(0):
        kind = message.topic.split("/")[2]
        payload = decode(spb, message.payload)
        if kind == "DBIRTH":
            names.update({m.alias: m.name for m in payload.metrics})
        elif kind == "DDATA":
            for metric in payload.metrics:
                key = (names[metric.alias], props(metric)["seq"])
                out[key] = out.get(key, True) and metric.is_historical
    return out


def pump_plan(tmp_path: Path, url: str, **options: Any) -> Plan:
    """A gateway (site s1) with one emulated feed pump and a ``sparkplug`` sink to ``url``
    (edge node :data:`NODE`, ``options`` added) that retries within 0.3 s."""
    port = free_port()
    sink = {
        "id": "spb",
        "type": "sparkplug",
        "retry": {"initial_s": 0.05, "max_s": 0.3},
        "options": {"url": url, "edge_node_id": NODE, **options},
    }
    return plan_for(
        tmp_path,
        site="s1",
        emulators=[{"id": "pump_emulator", "type": "feed_pump", "options": {"port": port}}],
        instruments=[pump_instrument("pump", port)],
        sinks=[sink],
    )


def stored_keys(store_path: Path) -> set[tuple[str, int]]:
    """(metric name, seq) of every sample in the store."""
    return {
        (s.signal.split("/", 2)[2], s.seq)
        for samples in stored_by_signal(store_path).values()
        for s in samples
    }


async def all_delivered(
    spb: ModuleType, sub: Subscriber, stored: set[tuple[str, int]], which: str
) -> None:
    """Wait until every sample of ``stored`` arrived in a DDATA."""
    await wait_for(
        lambda: stored <= received_samples(spb, sub).keys(),
        within=30,
        what=f"every sample {which}, delivered",
    )


@pytest.mark.asyncio
async def test_a_flapping_primary_host_gets_no_birth_storm_and_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, spb: ModuleType
) -> None:
    plan = pump_plan(tmp_path, mosquitto.url, primary_host_id=HOST)
    store_path = tmp_path / "store.sqlite"
    flips = 0
    with capture_logs() as logs:
        async with (
            Subscriber(mosquitto, f"spBv1.0/{GROUP}/#") as sub,
            Subscriber(mosquitto, "unused/topic") as host,
        ):
            host.client.publish(STATE, state(True, 1), qos=1, retain=True)
            async with running(plan):
                await wait_for(lambda: of_kind(sub, "DDATA", "pump"), within=15, what="data")
                # Offline/online every 0.2 s for 40 changes, then online for good.
                for timestamp in range(2, 42):
                    host.client.publish(STATE, state(timestamp % 2 == 1, timestamp), qos=1)
                    flips += timestamp % 2 == 1
                    await asyncio.sleep(0.2)
                host.client.publish(STATE, state(True, 100), qos=1, retain=True)
                await wait_for(lambda: stored_by_signal(store_path), within=5)
                stored = stored_keys(store_path)
                await all_delivered(spb, sub, stored, "stored by the end of the flapping")
            host.client.publish(STATE, b"", qos=1, retain=True)
    births = len(of_kind(sub, "NBIRTH"))
    delivered = received_samples(spb, sub)
    print(
        f"flapping host: {births} births for {flips} returns; {len(delivered)} samples,"
        f" {sum(delivered.values())} historical"
    )
    assert 1 < births <= 1 + flips  # one per return of the host at most, never per device
    # Coalesced: births (each NBIRTH is stamped when built) at most once per interval.
    stamps = [decode(spb, p).timestamp for p in of_kind(sub, "NBIRTH")]
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    assert min(gaps) >= REBIRTH_MIN_INTERVAL_S * 1000 - 50, gaps
    assert len(of_kind(sub, "DBIRTH", "pump")) == births
    assert any(delivered[key] for key in stored)  # held while offline: sent as backlog
    state_lines = [e for e in logs if e["event"].startswith("sparkplug.primary_host_")]
    assert 2 <= len(state_lines) <= 6, state_lines  # rate-limited: not one per change


@pytest.mark.asyncio
async def test_a_backlog_signal_no_longer_configured_is_born_before_its_data(
    mosquitto: Mosquitto, tmp_path: Path, spb: ModuleType
) -> None:
    gone = Signal("reactor1/old_probe/od", "1")
    alike = Signal("reactor1/feed+pump/flow", "mL/min")  # sanitizes to feed_pump/flow: taken
    async with (
        Subscriber(mosquitto, f"spBv1.0/{GROUP}/#") as sub,
        make_sink(mosquitto.url, tmp_path) as sink,
    ):
        await sink.forward([sample(PH, 0, 7.0)], False)
        await sink.forward([sample(gone, 5, 0.3), sample(alike, 9, 2.0)], True)
        await wait_for(lambda: len(of_kind(sub, "DDATA", "feed_pump")) == 1, within=5)
    assert len(of_kind(sub, "NBIRTH")) == 2  # the new metrics need births before their data
    old = named(decode(spb, of_kind(sub, "DBIRTH", "old_probe")[0]))["od"]
    assert old.alias == 6  # after the 5 aliases of the configured signals
    feed = named(decode(spb, of_kind(sub, "DBIRTH", "feed_pump")[-1]))
    assert list(feed) == ["flow", "reactor1/feed+pump/flow"]
    (data,) = decode(spb, of_kind(sub, "DDATA", "feed_pump")[0]).metrics
    assert (data.alias, data.double_value, data.is_historical) == (7, 2.0, True)
    assert props(data)["seq"] == 9


@pytest.mark.asyncio
async def test_a_denied_device_topic_is_refused_and_the_rest_delivered(
    tmp_path: Path, spb: ModuleType
) -> None:
    # (Not with max_queued_messages 0: Mosquitto 2.0.11 then drops the connection after a
    # refusal.)
    denied = topic("DDATA", "feed_pump")
    broker = Mosquitto(
        tmp_path / "broker",
        acl=f"topic readwrite #\ntopic deny {denied}\n",
        max_queued_messages=100_000,
    )
    batch = [sample(PH, 0, 7.0), sample(FLOW, 0, 1.6), sample(TEMP, 0, 37.0), sample(FLOW, 1)]
    async with (
        broker,
        Subscriber(broker, f"spBv1.0/{GROUP}/#") as sub,
        make_sink(broker.url, tmp_path) as sink,
    ):
        with pytest.raises(SamplesRefusedError) as excinfo:
            await sink.forward(batch, False)
        (refusal,) = excinfo.value.refusals
        assert refusal.indices == (1, 3) and refusal.target == f"topic {denied}"
        assert "0x87" in refusal.reason and excinfo.value.failure is None
        await sink.forward([sample(PH, 1, 7.1)], False)  # the session goes on
        await wait_for(lambda: len(of_kind(sub, "DDATA", "controller")) == 2, within=5)
    assert sink.sessions == 1
    values = [
        m.double_value for p in of_kind(sub, "DDATA", "controller") for m in decode(spb, p).metrics
    ]
    assert values == [7.0, 37.0, 7.1]


@pytest.mark.asyncio
async def test_a_broker_restart_loses_nothing_and_each_connect_takes_a_new_bdseq(
    tmp_path: Path, spb: ModuleType
) -> None:
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    plan = pump_plan(tmp_path, broker.url)
    store_path = tmp_path / "store.sqlite"
    await broker.start()
    try:
        # A consumer with a persistent session: the broker queues for it while it is away.
        async with (
            Subscriber(broker, f"spBv1.0/{GROUP}/#", persistent=True) as sub,
            running(plan),
        ):
            await wait_for(lambda: of_kind(sub, "DDATA", "pump"), within=15, what="data")
            await broker.stop()
            before = len(stored_by_signal(store_path)["reactor1/pump/flow"])
            await wait_for(
                lambda: len(stored_by_signal(store_path)["reactor1/pump/flow"]) > before + 5,
                within=10,
                what="samples committed while the broker is down",
            )
            await broker.start()
            await wait_for(lambda: len(of_kind(sub, "NBIRTH")) >= 2, within=20)
            stored = stored_keys(store_path)
            await all_delivered(spb, sub, stored, "stored before the restart's end")
    finally:
        await broker.kill()
    bd_seqs = [named(decode(spb, p))["bdSeq"].long_value for p in of_kind(sub, "NBIRTH")]
    # +1 per connect attempt (the refused ones while the broker was down too), never repeated.
    assert bd_seqs[0] == 0 and all(a < b for a, b in itertools.pairwise(bd_seqs)), bd_seqs
    delivered = received_samples(spb, sub)
    assert any(delivered[key] for key in stored)  # the outage's samples came as backlog
