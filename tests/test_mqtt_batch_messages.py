"""batch_messages, pure: arrays per topic in the order given, split at max_payload_bytes
counted in UTF-8 bytes, and which samples each message holds."""

from __future__ import annotations

import json

import pytest

from gateway import Quality, Sample, Signal, historical_json, sample_to_json
from plugins.mqtt.messages import TopicMap, batch_messages

PER_SIGNAL = "pat/{site}/{area}/{instrument}/{signal}"
PER_INSTRUMENT = "pat/{site}/{area}/{instrument}"


def signals() -> list[Signal]:
    # A non-ASCII unit and name: their length in characters is not their length in bytes.
    return [
        Signal("reactor1/probe/temperature", "°C"),
        Signal("reactor1/probe/leitfähigkeit", "µS/cm"),
        Signal("reactor1/pump/flow", "L/h"),
    ]


def interleaved(count: int) -> list[Sample]:
    """Round-robin over the signals, as a polled instrument commits them."""
    chosen = signals()
    return [
        Sample(
            chosen[k % 3].id,
            k * 0.5,
            chosen[k % 3].unit,
            1_764_144_928_000_000_000 + k,
            1_764_144_928_000_100_000 + k,
            Quality.GOOD if k % 7 else Quality.BAD,
            k // 3,
            None if k % 7 else "timeout",
        )
        for k in range(count)
    ]


def topic_map(template: str) -> TopicMap:
    topics = TopicMap(template, None, "site", "area")
    topics.bind(signals())
    return topics


@pytest.mark.parametrize("template", [PER_SIGNAL, PER_INSTRUMENT])
@pytest.mark.parametrize("historical", [False, True])
@pytest.mark.parametrize("max_bytes", [1024, 4096, 1 << 20])
def test_arrays_hold_every_sample_once_in_order_within_the_byte_limit(
    template: str, historical: bool, max_bytes: int
) -> None:
    samples = interleaved(300)
    topics = topic_map(template)
    owners: list[list[int]] = []
    messages = batch_messages(samples, historical, topics, max_bytes, owners)
    encode = historical_json if historical else sample_to_json
    assert len(owners) == len(messages)
    seen: list[int] = []
    for (topic, payload), held in zip(messages, owners, strict=True):
        assert isinstance(payload, bytes)
        assert len(payload) <= max_bytes  # in bytes, not characters
        items = json.loads(payload)
        # Exactly the samples it says it holds, in the order given, all of this topic.
        assert items == [json.loads(encode(samples[p])) for p in held]
        assert held == sorted(held)
        assert all(topics.topic(samples[p].signal) == topic for p in held)
        seen += held
    assert sorted(seen) == list(range(len(samples)))
    if max_bytes == 1 << 20:  # no split: one array per topic, in order of first appearance
        expected = list(dict.fromkeys(topics.topic(s.signal) for s in samples))
        assert [topic for topic, _ in messages] == expected


def test_a_sample_longer_than_the_limit_goes_alone() -> None:
    samples = interleaved(6)
    long = samples[2]._replace(reason="ü" * 2000, quality=Quality.BAD)
    samples[2] = long
    owners: list[list[int]] = []
    messages = batch_messages(samples, False, topic_map(PER_INSTRUMENT), 1024, owners)
    alone = [m for m, held in zip(messages, owners, strict=True) if held == [2]]
    assert len(alone) == 1
    assert json.loads(alone[0][1]) == [json.loads(sample_to_json(long))]
