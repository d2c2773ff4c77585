"""UTC timestamps as integer nanoseconds, their RFC 3339 text form with nine digits, and
durations given on the command line."""

from __future__ import annotations

import argparse
import functools
import math
import time
from datetime import UTC, datetime

__all__ = ["duration_argument", "format_ns", "now_ns", "parse_iso_ns"]

now_ns = time.time_ns

_NS_PER_S = 1_000_000_000


def format_ns(ns: int) -> str:
    """``1764144928123456789`` → ``"2025-11-26T08:15:28.123456789Z"`` (always UTC, 9 digits)."""
    if ns >= _NS_PER_S:
        # Every sink and export calls this twice per sample: slicing the decimal digits is
        # several times faster than divmod and a zero-padded format.
        digits = str(ns)
        return f"{_second(digits[:-9])}.{digits[-9:]}Z"
    seconds, frac = divmod(ns, _NS_PER_S)
    return f"{_second(str(seconds))}.{frac:09d}Z"


@functools.lru_cache(maxsize=4096)
def _second(seconds: str) -> str:
    # Samples come in runs within the same second: format each second once.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(seconds)))


def parse_iso_ns(text: str) -> int:
    """Parse an ISO 8601 time into UTC nanoseconds; a time without zone is taken as UTC.

    Up to nine fractional digits are kept exactly (``datetime`` alone stops at microseconds).
    """
    body = text.strip()
    frac_ns = 0
    # ISO 8601 allows a comma as the decimal sign too.
    sign = "." if "." in body else "," if "," in body else None
    if sign is not None:
        head, _, rest = body.partition(sign)
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        if not digits or len(digits) > 9:
            raise ValueError(f"invalid fractional seconds in {text!r}")
        frac_ns = int(digits.ljust(9, "0"))
        body = head + rest
    if body.endswith(("Z", "z")):
        body = body[:-1] + "+00:00"
    parsed = datetime.fromisoformat(body)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    whole = parsed.replace(microsecond=0)
    return int(whole.timestamp()) * _NS_PER_S + frac_ns


def duration_argument(text: str) -> float:
    """An ``argparse`` type for a duration in seconds (``--for 30``): a finite number above 0.

    ``float`` alone takes ``-5``, ``nan`` and ``inf``, which would stop a run at once or never;
    argparse reports this error as a usage error (exit 2) naming the option."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(
            f"a duration must be a finite number of seconds above 0, not {text!r}"
        )
    return seconds
