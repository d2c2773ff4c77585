"""Unit tests for gateway.timefmt: UTC nanoseconds and their RFC 3339 text, both ways, exactly."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import format_ns, now_ns, parse_iso_ns

NS = 1_000_000_000
# 2025-11-26T08:15:28Z as seconds since the epoch, checked against datetime (not timefmt).
T0 = 1764144928
assert datetime(2025, 11, 26, 8, 15, 28, tzinfo=UTC).timestamp() == T0


# --- format_ns -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "1970-01-01T00:00:00.000000000Z"),
        (1, "1970-01-01T00:00:00.000000001Z"),
        (999_999_999, "1970-01-01T00:00:00.999999999Z"),
        (NS, "1970-01-01T00:00:01.000000000Z"),
        (T0 * NS + 123_456_789, "2025-11-26T08:15:28.123456789Z"),
        (T0 * NS + 200_000_000, "2025-11-26T08:15:28.200000000Z"),
        (951_782_400 * NS, "2000-02-29T00:00:00.000000000Z"),  # leap day
        (-1, "1969-12-31T23:59:59.999999999Z"),
        (-1_500_000_000, "1969-12-31T23:59:58.500000000Z"),
        (253_402_300_799 * NS + 999_999_999, "9999-12-31T23:59:59.999999999Z"),
    ],
)
def test_format_ns_known_values(ns: int, text: str) -> None:
    assert format_ns(ns) == text


def test_format_ns_shape() -> None:
    text = format_ns(now_ns())
    assert len(text) == len("2025-11-26T08:15:28.123456789Z")
    assert text[10] == "T"
    assert text.endswith("Z")
    assert text[19] == "."
    assert text[20:29].isdigit()


def test_format_ns_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is POSIX only")
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert format_ns(T0 * NS) == "2025-11-26T08:15:28.000000000Z"
        assert parse_iso_ns("2025-11-26T08:15:28") == T0 * NS  # naive is UTC, not local
    finally:
        monkeypatch.undo()
        time.tzset()


def test_now_ns_is_utc_nanoseconds() -> None:
    before = time.time_ns()
    now = now_ns()
    after = time.time_ns()
    assert isinstance(now, int)
    assert before <= now <= after


# --- parse_iso_ns ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2025-11-26T08:15:28.123456789Z", T0 * NS + 123_456_789),
        ("2025-11-26T08:15:28.123456789z", T0 * NS + 123_456_789),
        ("2025-11-26T08:15:28.123456789+00:00", T0 * NS + 123_456_789),
        ("2025-11-26T08:15:28.123456789-00:00", T0 * NS + 123_456_789),
        ("2025-11-26T09:15:28.123456789+01:00", T0 * NS + 123_456_789),
        ("2025-11-26T02:45:28.123456789-05:30", T0 * NS + 123_456_789),
        ("2025-11-26T09:15:28.123456789+0100", T0 * NS + 123_456_789),
        ("2025-11-26T08:15:28Z", T0 * NS),
        ("2025-11-26T08:15:28.1Z", T0 * NS + 100_000_000),
        ("2025-11-26T08:15:28.000000001Z", T0 * NS + 1),
        ("2025-11-26T08:15:28.5", T0 * NS + 500_000_000),  # naive = UTC
        ("2025-11-26T08:15:28", T0 * NS),
        ("2025-11-26 08:15:28.25Z", T0 * NS + 250_000_000),
        ("2025-11-26T08:15Z", (T0 - 28) * NS),
        ("2025-11-26", (T0 - 8 * 3600 - 15 * 60 - 28) * NS),
        ("  2025-11-26T08:15:28Z\n", T0 * NS),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.5Z", -500_000_000),
        ("2025-11-27T00:15:28.999999999+16:00", T0 * NS + 999_999_999),
    ],
)
def test_parse_iso_ns_known_values(text: str, ns: int) -> None:
    assert parse_iso_ns(text) == ns


def test_offsets_name_the_same_instant() -> None:
    utc = parse_iso_ns("2025-11-26T08:15:28.000000007Z")
    assert parse_iso_ns("2025-11-26T10:15:28.000000007+02:00") == utc
    assert parse_iso_ns("2025-11-25T22:15:28.000000007-10:00") == utc


def test_fraction_is_kept_beyond_microseconds() -> None:
    """datetime alone would drop the last three digits."""
    a = parse_iso_ns("2025-11-26T08:15:28.123456789Z")
    b = parse_iso_ns("2025-11-26T08:15:28.123456Z")
    assert a - b == 789


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "2025-11-26T08:15:28.Z",  # a dot without digits
        "2025-11-26T08:15:28.1234567891Z",  # ten digits
        "2025-11-26T08:15:28.12a3Z",
        "2025-11-26T25:00:00Z",
        "2025-02-30T00:00:00Z",
        "2025-11-26T08:15:28+25:00",
        "26/11/2025 08:15",
    ],
)
def test_parse_iso_ns_rejects(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is datetime's own for most cases
        parse_iso_ns(text)


@pytest.mark.parametrize("text", ["2025-11-26T08:15:28.Z", "2025-11-26T08:15:28.1234567891Z"])
def test_bad_fraction_message_quotes_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="invalid fractional seconds") as excinfo:
        parse_iso_ns(text)
    assert repr(text) in str(excinfo.value)


def test_comma_decimal_sign_keeps_the_fraction_or_fails() -> None:
    """ISO 8601 allows ',' as decimal sign: the fraction must not silently vanish."""
    try:
        ns = parse_iso_ns("2025-11-26T08:15:28,5Z")
    except ValueError:
        return  # refusing the form is acceptable
    assert ns == T0 * NS + 500_000_000


# --- round trips -----------------------------------------------------------------------------

# Timestamps are stored as signed 64-bit integers: years 1677 to 2262.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The last instant with a four-digit year.
MAX_NS = 253_402_300_799 * NS + 999_999_999


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=INT64_MIN, max_value=INT64_MAX))
def test_parse_inverts_format_for_the_int64_range(ns: int) -> None:
    assert parse_iso_ns(format_ns(ns)) == ns


@settings(max_examples=200, deadline=None)
@given(
    ns=st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
    minutes=st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)
def test_any_offset_names_the_same_instant(ns: int, minutes: int) -> None:
    """Rewrite the instant in another zone (via datetime, not timefmt) and parse it back."""
    seconds, frac = divmod(ns, NS)
    local = datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None) + timedelta(minutes=minutes)
    sign = "+" if minutes >= 0 else "-"
    hh, mm = divmod(abs(minutes), 60)
    text = f"{local.isoformat(timespec='seconds')}.{frac:09d}{sign}{hh:02d}:{mm:02d}"
    assert parse_iso_ns(text) == ns


@pytest.mark.parametrize("ns", [INT64_MIN, INT64_MAX, MAX_NS])
def test_round_trip_at_the_range_ends(ns: int) -> None:
    assert parse_iso_ns(format_ns(ns)) == ns
