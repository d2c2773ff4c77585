"""configs/demo-sparkplug.yaml against a real Mosquitto (the issue's done-when): an independent
decoder (compiled by the test from the .proto, see tests/test_sparkplug.py) reads every
instrument's DBIRTH and DDATA with the right names, units and values, and the node rebirths
on an NCMD with the same bdSeq."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from conftest import demo_copy, running, stored_by_signal, wait_for
from mosquitto import Mosquitto, Subscriber
from test_sparkplug import REBIRTH_TRUE, command, compile_proto, decode, named, props

from gateway import build_registry, load_plan
from gateway.unece import unece_for_ucum
from plugins.sparkplug.names import device_of


@pytest.fixture(scope="module")
def spb(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    return compile_proto(tmp_path_factory.mktemp("decoder"), "demo_spb", "demo.spb")


@pytest.mark.asyncio
async def test_the_demo_births_every_signal_and_rebirths_on_command(
    tmp_path: Path, mosquitto: Mosquitto, spb: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MQTT_URL", mosquitto.url)
    config, _ = demo_copy(tmp_path, "demo-sparkplug.yaml")
    plan = load_plan(config, build_registry())
    by_metric = {device_of(s.id): s for s in plan.signals}
    devices = {device for device, _ in by_metric}
    node = "spBv1.0/pat/{}/demo-site"
    store = tmp_path / "data" / "demo-sparkplug.sqlite"

    def births() -> dict[str, object]:
        return {
            m.topic.rsplit("/", 1)[1]: decode(spb, m.payload)
            for m in sub.messages
            if m.topic.startswith(node.format("DBIRTH"))
        }

    def data() -> dict[tuple[str, str, int], float]:
        """(device, metric, seq) → value of every scalar DDATA metric received."""
        aliases = {(device, m.alias): m.name for device, p in births().items() for m in p.metrics}
        out = {}
        for message in sub.messages:
            if message.topic.startswith(node.format("DDATA")):
                device = message.topic.rsplit("/", 1)[1]
                for m in decode(spb, message.payload).metrics:
                    if m.WhichOneof("value") == "double_value":
                        out[(device, aliases[(device, m.alias)], props(m)["seq"])] = m.double_value
        return out

    async with Subscriber(mosquitto, "spBv1.0/pat/#") as sub, running(plan):
        await wait_for(lambda: births().keys() == devices, within=60, what="a DBIRTH per device")
        await wait_for(
            lambda: {(d, n) for d, n, _ in data()} >= {k for k, s in by_metric.items()
                                                      if s.kind == "scalar"},
            within=60,
            what="DDATA of every scalar signal",
        )  # fmt: skip
        sub.client.publish(node.format("NCMD"), command(spb, REBIRTH_TRUE), qos=1)
        await wait_for(
            lambda: len([m for m in sub.messages if m.topic == node.format("NBIRTH")]) == 2,
            within=15,
            what="the rebirth",
        )
    for device, payload in births().items():
        for name, metric in named(payload).items():
            if name.endswith("/axis"):
                continue
            signal = by_metric[(device, name)]
            unit = props(metric)
            assert unit["ucum"] == signal.unit, (device, name)
            known = unece_for_ucum(signal.unit)
            assert unit["engUnit"] == (known.display_name if known else signal.unit)
            assert unit["description"] == signal.description
    assert props(named(births()["controller"])["temperature"])["engUnit"] == "°C"
    first, again = (
        named(decode(spb, m.payload)) for m in sub.messages if m.topic == node.format("NBIRTH")
    )
    assert first["bdSeq"].long_value == again["bdSeq"].long_value
    stored = {
        (*device_of(s.signal), s.seq): s.value
        for samples in stored_by_signal(store).values()
        for s in samples
        if isinstance(s.value, float)
    }
    received = data()
    checked = [key for key in received if key in stored]
    assert len(checked) > 50
    assert all(received[key] == stored[key] for key in checked)
    print(f"demo-sparkplug: {len(received)} scalar values checked against the store")
