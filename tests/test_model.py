"""Unit tests for gateway.model: qualities, signals, samples and their JSON form."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import Quality, Sample, Signal, SignalKind, sample_to_json, sample_to_json_dict

# 2025-11-26T08:15:28.123456789Z and 2025-11-26T08:15:28.2Z in UTC nanoseconds.
SOURCE_TS = 1_764_144_928_123_456_789
GATEWAY_TS = 1_764_144_928_200_000_000

EXAMPLE = Sample(
    signal="reactor1/feed_pump/flow",
    value=12.5,
    unit="mL/min",
    source_ts=SOURCE_TS,
    gateway_ts=GATEWAY_TS,
    quality=Quality.GOOD,
    seq=42,
)
EXAMPLE_JSON = (
    '{"signal":"reactor1/feed_pump/flow","value":12.5,"unit":"mL/min",'
    '"source_ts":"2025-11-26T08:15:28.123456789Z","gateway_ts":"2025-11-26T08:15:28.200000000Z",'
    '"quality":"good","seq":42}'
)
KEYS = ["signal", "value", "unit", "source_ts", "gateway_ts", "quality", "seq"]


def dumps(obj: object) -> str:
    """The encoding the sinks and export use: compact, and NaN is an error."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


# --- Quality ---------------------------------------------------------------------------------


def test_quality_order_and_values() -> None:
    assert [int(q) for q in (Quality.BAD, Quality.UNCERTAIN, Quality.GOOD)] == [0, 1, 2]
    assert Quality.BAD < Quality.UNCERTAIN < Quality.GOOD


@pytest.mark.parametrize(
    ("quality", "label"),
    [(Quality.GOOD, "good"), (Quality.UNCERTAIN, "uncertain"), (Quality.BAD, "bad")],
)
def test_quality_labels_round_trip(quality: Quality, label: str) -> None:
    assert quality.label == label
    assert Quality.from_label(label) is quality
    assert Quality.from_label(label.upper()) is quality


def test_every_quality_has_a_label() -> None:
    assert {q.label for q in Quality} == {"good", "uncertain", "bad"}


@pytest.mark.parametrize("label", ["", "ok", "Good ", "2", "GOOD!", "label"])
def test_unknown_quality_label_raises_value_error(label: str) -> None:
    with pytest.raises(ValueError, match="unknown quality") as excinfo:
        Quality.from_label(label)
    assert repr(label) in str(excinfo.value)


# --- Signal and Sample -----------------------------------------------------------------------


def test_signal_defaults_and_immutability() -> None:
    signal = Signal("reactor1/feed_pump/flow", "mL/min")
    assert signal.kind is SignalKind.SCALAR
    assert (signal.description, signal.instrument) == ("", "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        signal.unit = "L/h"  # type: ignore[misc]


def test_signal_kind_values() -> None:
    assert SignalKind("scalar") is SignalKind.SCALAR
    assert SignalKind("spectrum") is SignalKind.SPECTRUM
    assert str(SignalKind.SPECTRUM) == "spectrum"


def test_sample_fields_and_default_reason() -> None:
    assert Sample._fields == (
        "signal",
        "value",
        "unit",
        "source_ts",
        "gateway_ts",
        "quality",
        "seq",
        "reason",
    )
    assert EXAMPLE.reason is None


# --- sample_to_json_dict ---------------------------------------------------------------------


def test_example_json_exactly() -> None:
    out = sample_to_json_dict(EXAMPLE)
    assert list(out) == KEYS
    assert dumps(out) == EXAMPLE_JSON


def test_example_dict_values() -> None:
    assert sample_to_json_dict(EXAMPLE) == {
        "signal": "reactor1/feed_pump/flow",
        "value": 12.5,
        "unit": "mL/min",
        "source_ts": "2025-11-26T08:15:28.123456789Z",
        "gateway_ts": "2025-11-26T08:15:28.200000000Z",
        "quality": "good",
        "seq": 42,
    }


def test_good_sample_has_no_reason_even_if_one_was_given() -> None:
    out = sample_to_json_dict(EXAMPLE._replace(reason="ignored"))
    assert "reason" not in out
    assert list(out) == KEYS


def test_bad_sample_carries_its_reason_last() -> None:
    bad = EXAMPLE._replace(
        value=None, quality=Quality.BAD, reason="exception 2 (illegal data address)"
    )
    out = sample_to_json_dict(bad)
    assert list(out) == [*KEYS, "reason"]
    assert dumps(out) == (
        '{"signal":"reactor1/feed_pump/flow","value":null,"unit":"mL/min",'
        '"source_ts":"2025-11-26T08:15:28.123456789Z",'
        '"gateway_ts":"2025-11-26T08:15:28.200000000Z",'
        '"quality":"bad","seq":42,"reason":"exception 2 (illegal data address)"}'
    )


def test_uncertain_sample_without_reason_gets_an_empty_one() -> None:
    out = sample_to_json_dict(EXAMPLE._replace(quality=Quality.UNCERTAIN))
    assert out["quality"] == "uncertain"
    assert out["reason"] == ""
    assert list(out)[-1] == "reason"


def test_plain_int_quality_is_accepted() -> None:
    assert sample_to_json_dict(EXAMPLE._replace(quality=0))["quality"] == "bad"
    assert "reason" not in sample_to_json_dict(EXAMPLE._replace(quality=2))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_become_null(value: float) -> None:
    out = sample_to_json_dict(EXAMPLE._replace(value=value, quality=Quality.UNCERTAIN))
    assert out["value"] is None
    assert '"value":null' in dumps(out)  # and the result is valid JSON


@pytest.mark.parametrize("value", [0, -3, 2**40, 0.0, -1.5e-300, True, "text"])
def test_other_values_pass_through_unchanged(value: object) -> None:
    out = sample_to_json_dict(EXAMPLE._replace(value=value))
    assert out["value"] == value
    assert type(out["value"]) is type(value)


def test_timestamps_keep_nanoseconds() -> None:
    out = sample_to_json_dict(EXAMPLE._replace(source_ts=1, gateway_ts=-1))
    assert out["source_ts"] == "1970-01-01T00:00:00.000000001Z"
    assert out["gateway_ts"] == "1969-12-31T23:59:59.999999999Z"


def test_json_form_is_a_fresh_dict() -> None:
    first = sample_to_json_dict(EXAMPLE)
    first["value"] = 0
    assert sample_to_json_dict(EXAMPLE)["value"] == 12.5


_json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and infinities included: both encoders must give null
    st.text(),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=5),
)


@given(
    signal=st.text(min_size=1),
    value=_json_values,
    unit=st.text(),
    source_ts=st.integers(min_value=0, max_value=2**63 - 1),
    gateway_ts=st.integers(min_value=0, max_value=2**63 - 1),
    quality=st.sampled_from(list(Quality)),
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    reason=st.one_of(st.none(), st.text()),
)
def test_fast_encoder_equals_json_dumps_of_the_dict(
    signal: str,
    value: object,
    unit: str,
    source_ts: int,
    gateway_ts: int,
    quality: Quality,
    seq: int,
    reason: str | None,
) -> None:
    sample = Sample(signal, value, unit, source_ts, gateway_ts, quality, seq, reason)
    expected = json.dumps(sample_to_json_dict(sample), separators=(",", ":"), ensure_ascii=False)
    assert sample_to_json(sample) == expected
    assert json.loads(sample_to_json(sample)) == json.loads(expected)
