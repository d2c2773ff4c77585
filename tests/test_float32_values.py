"""A float32 reading is shown as the decimal the instrument meant: a Modbus float32 register
holding 1.6 is 1.6 (not 1.600000023841858) in the store, the JSON of every sink (a JSONL file,
MQTT through a real Mosquitto), the northbound OPC UA server and the exports; the same for an
OPC UA ``Float`` node read by the ``opcua`` driver. And nothing is lost on the way: the decimal
reads back as the very same float32."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asyncua import Server, ua
from conftest import (
    free_port,
    plan_for,
    pump_instrument,
    running,
    stored_by_signal,
    trusted_client,
    wait_for,
)
from mosquitto import Mosquitto, Subscriber

from firmware_stubs.feed_pump import FeedPumpEmulator, PumpModel
from gateway import Quality, Signal, compile_conversion, float32_decimal, hash_password
from gateway.export import write_csv, write_jsonl
from gateway.runtime.outputs import SignalOutput
from gateway.store import SampleStore
from plugins.modbus.registers import RegisterSpec, plan_reads

FLOW = "reactor1/feed_pump/flow"
F32 = struct.Struct(">f")


def as_float32(value: float) -> float:
    """``value`` as a float32 register holds it, back as a Python float."""
    result: float = F32.unpack(F32.pack(value))[0]
    return result


def test_a_float32_reads_back_as_the_same_float32_and_prints_as_its_shortest_decimal() -> None:
    rng = random.Random(16)
    patterns = [rng.getrandbits(32) for _ in range(20_000)]
    patterns += [0x00000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0x80000000, 0x3FCCCCCD]
    checked = 0
    for bits in patterns:
        x: float = F32.unpack(bits.to_bytes(4, "big"))[0]
        if x != x or abs(x) == float("inf"):
            continue
        meant = float32_decimal(x)
        assert as_float32(meant) == x, (bits, x, meant)  # nothing lost
        assert meant == float(str(np.float32(x)))  # the shortest decimal of that float32
        checked += 1
    assert checked > 19_000
    assert float32_decimal(as_float32(1.6)) == 1.6
    assert repr(float32_decimal(as_float32(0.1))) == "0.1"
    assert float32_decimal(1e39) == 1e39  # beyond float32: passed on, not made inf


def test_the_register_decoder_gives_the_decimal_of_a_float32_register() -> None:
    specs = [
        RegisterSpec(name="flow", address=0, type="float32"),
        RegisterSpec(name="scaled", address=2, type="float32", scale=10.0),
        RegisterSpec(name="wide", address=4, type="float64"),
    ]
    (block,) = plan_reads(specs)
    words = []
    for packed in (F32.pack(1.6), F32.pack(1.6), struct.pack(">d", 1.600000023841858)):
        words += [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    flow, scaled, wide = (d.decode(words) for d in block.decoders)
    assert repr(flow) == "1.6"
    assert scaled == 16.0
    assert wide == 1.600000023841858  # a float64 is taken exactly as it is


def test_a_numpy_float32_published_by_any_driver_is_stored_as_its_decimal() -> None:
    rows: list[tuple[Any, ...]] = []
    signal = Signal("r/dev/level", "m")
    output = SignalOutput(signal, compile_conversion("m", "cm"), 1, 0, rows.append)
    output.publish(np.float32(1.6))
    plain = SignalOutput(signal, compile_conversion("m", "m"), 1, 0, rows.append)
    plain.publish(np.float32(0.1))
    assert [row[5] for row in rows] == [160.0, 0.1]


@pytest.mark.asyncio
async def test_a_modbus_float32_of_1_6_is_1_6_in_json_mqtt_opcua_and_exports(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # 2 rpm x 0.8 mL/rev: the emulator's flow register holds the float32 nearest 1.6.
    model = PumpModel(setpoint_rpm=2.0, actual_rpm=2.0, ml_per_rev=0.8)
    async with FeedPumpEmulator(model=model) as pump:
        signals = [{"id": "flow"}, {"id": "flow_lph", "channel": "flow", "unit": "L/h"}]
        instrument = pump_instrument("feed_pump", pump.port, signals=signals)
        sinks = [
            {"id": "file", "type": "jsonl_file", "options": {"path": str(tmp_path / "out.jsonl")}},
            {
                "id": "up",
                "type": "mqtt",
                "options": {"url": mosquitto.url, "payload": "sample"},
            },
            {"id": "ua", "type": "opcua_server", "options": {"port": free_port()}},
        ]
        users = [{"name": "viewer", "password_hash": hash_password("pw"), "roles": ["viewer"]}]
        plan = plan_for(
            tmp_path, site="s1", instruments=[instrument], sinks=sinks, security={"users": users}
        )
        topic = "pat/s1/reactor1/feed_pump/flow"
        async with running(plan) as (gateway, _), Subscriber(mosquitto, topic) as subscriber:
            await wait_for(lambda: subscriber.on(topic), 15, what="a flow message over MQTT")
            server = next(s.instance for s in plan.sinks if s.id == "ua")
            client = await trusted_client(server, tmp_path / "client", "viewer", "pw")
            async with client:
                index = await client.get_namespace_index(server.namespace_uri)
                node = client.get_node(ua.NodeId(FLOW, index))
                await wait_for(
                    lambda: gateway.stats.committed >= 10, 15, what="10 committed samples"
                )
                served = await node.read_data_value()
                async with asyncio.timeout(15):  # the latest reading may be a timed-out one
                    while not served.StatusCode.is_good():
                        await asyncio.sleep(0.1)
                        served = await node.read_data_value()
    assert as_float32(1.6) != 1.6  # what the register holds is not the double 1.6

    # A loaded machine may time a Modbus read out: that reading is bad, with no value. Every
    # good one must be the decimal.
    mqtt_payloads = [json.loads(m.payload) for m in subscriber.on(topic)]
    mqtt_payloads = [p for p in mqtt_payloads if p["quality"] == "good"]
    assert mqtt_payloads and all(p["signal"] == FLOW for p in mqtt_payloads)
    assert {p["value"] for p in mqtt_payloads} == {1.6}
    assert any(b'"value":1.6,' in m.payload for m in subscriber.on(topic))

    assert served.Value.VariantType == ua.VariantType.Double
    assert served.Value.Value == 1.6  # the nearest double of the decimal

    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    lines = [x for x in lines if x["quality"] == "good"]
    flows = [x["value"] for x in lines if x["signal"] == FLOW]
    assert flows and set(flows) == {1.6}
    # 1.6 mL/min is 0.096 L/h: the conversion starts from the decimal, not from the float32.
    lph = {x["value"] for x in lines if x["signal"] == "reactor1/feed_pump/flow_lph"}
    assert lph and all(abs(v - 0.096) <= 1e-16 for v in lph), lph

    by_signal = stored_by_signal(tmp_path / "store.sqlite")
    good = [s for s in by_signal[FLOW] if s.quality == Quality.GOOD]
    assert good and {s.value for s in good} == {1.6}
    store = SampleStore(tmp_path / "store.sqlite", read_only=True)
    try:
        jsonl, table = io.StringIO(), io.StringIO()
        write_jsonl(store.samples(FLOW), jsonl)
        write_csv(store.samples(FLOW), table)
    finally:
        store.close()
    assert jsonl.getvalue().count('"value":1.6,') == len(good)
    rows = list(csv.DictReader(io.StringIO(table.getvalue())))
    rows = [row for row in rows if row["quality"] == "good"]
    assert len(rows) == len(good) and {row["value"] for row in rows} == {"1.6"}


@pytest.mark.asyncio
async def test_an_opcua_float_node_is_read_as_its_decimal(tmp_path: Path) -> None:
    server = Server()
    await server.init()
    port = free_port()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    uri = "urn:test:float32"
    index = await server.register_namespace(uri)
    folder = await server.nodes.objects.add_folder(index, "plant")
    await folder.add_variable(
        ua.NodeId("level", index), "level", ua.Variant(1.6, ua.VariantType.Float)
    )
    instrument = {
        "id": "plc",
        "driver": "opcua",
        "options": {
            "url": f"opc.tcp://127.0.0.1:{port}/",
            "namespaces": {"p": uri},
            "sampling_interval_ms": 50,
            "publishing_interval_ms": 50,
            "nodes": [{"name": "level", "node": "p:level", "unit": "m"}],
        },
    }
    plan = plan_for(tmp_path, instruments=[instrument])
    async with server, running(plan) as (gateway, _):
        await wait_for(lambda: gateway.stats.committed >= 1, 15, what="a committed level")
    (level,) = {s.value for s in stored_by_signal(tmp_path / "store.sqlite")["reactor1/plc/level"]}
    assert repr(level) == "1.6"
