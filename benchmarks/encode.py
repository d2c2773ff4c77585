"""CPU cost of encoding samples, and of showing float32 readings as the decimal meant.

Prints JSON: nanoseconds of CPU time (``time.process_time``, robust to a shared machine) per
call, the best of ``--repeat`` rounds of ``--n`` calls, for

* ``sample_to_json_float64_ns``: :func:`gateway.sample_to_json` of a good scalar sample
  holding a plain double (the hot path every sink and export takes; it must not get slower);
* ``sample_to_json_float32_ns``: the same for the value a float32 driver now publishes (the
  decimal, e.g. ``1.6``): equal to the float64 case, since the value *is* a plain double;
* ``float32_decimal_ns``: :func:`gateway.float32_decimal`, paid once per float32 reading by
  the driver that decodes it (Modbus ``float32`` registers, OPC UA ``Float`` nodes);
* ``modbus_decode_float32_ns`` / ``_float64_ns`` / ``_uint16_ns``: one register decode;
* ``format_on_output_ns``: the alternative the decision record weighs, formatting each float32
  value on output (``str(np.float32(v))``) — paid per sink and per export of every sample —
  against ``float_repr_ns`` (``float.__repr__``, what ``sample_to_json`` pays for a double);
  ``sample_to_json_format_on_output_ns``: ``sample_to_json``'s scalar path with that
  formatting and a per-signal precision look-up, for the raw float32 value.

Run A/B against another checkout by running the same script there::

    python benchmarks/encode.py               # defaults: --n 200000 --repeat 5
    python benchmarks/encode.py --n 50000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import platform
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gateway import Sample, format_ns, sample_to_json
from gateway.model import _GOOD, _LABELS, _dumps, _head, _value_json
from plugins.modbus.registers import RegisterSpec, plan_reads

try:  # absent before the float32 change: the script still measures the rest
    from gateway import float32_decimal
except ImportError:  # pragma: no cover - only on older checkouts
    float32_decimal = None  # type: ignore[assignment]

_F32 = struct.Struct(">f")
_TS = 1_796_000_000_123_456_789


def _cpu_ns_per_call(call: Callable[[], object], n: int, repeat: int) -> float:
    best = float("inf")
    loop = range(n)
    for _ in range(repeat):
        start = time.process_time()
        for _ in loop:
            call()
        best = min(best, time.process_time() - start)
    return round(best / n * 1e9, 1)


def _format_on_output(precision: dict[str, bool]) -> Callable[[Sample], str]:
    """``sample_to_json`` as it would be with float32 values formatted on output."""
    f32 = np.float32

    def encode(sample: Sample) -> str:
        head, unit = _head(sample.signal, sample.unit)
        value = sample.value
        shown = str(f32(value)) if precision.get(sample.signal) else _value_json(value)
        text = (
            f"{head}{shown}{unit}{format_ns(sample.source_ts)}"
            f'","gateway_ts":"{format_ns(sample.gateway_ts)}"{_LABELS[sample.quality]}{sample.seq}'
        )
        if sample.quality != _GOOD:
            return f'{text},"reason":{_dumps(sample.reason or "")}}}'
        return text + "}"

    return encode


def _words(packed: bytes) -> list[int]:
    return [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]


def measure(n: int, repeat: int) -> dict[str, Any]:
    """Every figure of the module docstring."""
    as_f32: float = _F32.unpack(_F32.pack(48.123))[0]  # 48.12300109863281
    meant = float32_decimal(as_f32) if float32_decimal is not None else as_f32
    double = Sample("reactor1/feed_pump/flow", 48.12345678901, "mL/min", _TS, _TS + 9, 2, 17)
    single = double._replace(value=meant)
    raw = double._replace(value=as_f32)
    on_output = _format_on_output({double.signal: True})
    f32 = np.float32
    (block,) = plan_reads(
        [
            RegisterSpec(name="a", address=0, type="float32"),
            RegisterSpec(name="b", address=2, type="float64"),
            RegisterSpec(name="c", address=6, type="uint16"),
        ]
    )
    words = _words(_F32.pack(48.123)) + _words(struct.pack(">d", 48.12345678901)) + [4812]
    dec32, dec64, dec16 = block.decoders
    out: dict[str, Any] = {
        "benchmark": "encode",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "n": n,
        "repeat": repeat,
        "sample_to_json_float64_ns": _cpu_ns_per_call(lambda: sample_to_json(double), n, repeat),
        "sample_to_json_float32_ns": _cpu_ns_per_call(lambda: sample_to_json(single), n, repeat),
        "sample_to_json_format_on_output_ns": _cpu_ns_per_call(lambda: on_output(raw), n, repeat),
        "float_repr_ns": _cpu_ns_per_call(lambda: float.__repr__(as_f32), n, repeat),
        "format_on_output_ns": _cpu_ns_per_call(lambda: str(f32(as_f32)), n, repeat),
        "modbus_decode_float32_ns": _cpu_ns_per_call(lambda: dec32.decode(words), n, repeat),
        "modbus_decode_float64_ns": _cpu_ns_per_call(lambda: dec64.decode(words), n, repeat),
        "modbus_decode_uint16_ns": _cpu_ns_per_call(lambda: dec16.decode(words), n, repeat),
        "float32_json_value": sample_to_json(single).split('"value":')[1].split(",")[0],
    }
    if float32_decimal is not None:
        out["float32_decimal_ns"] = _cpu_ns_per_call(lambda: float32_decimal(as_f32), n, repeat)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="calls per round (200000)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best counts (5)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1:
        parser.error("--n and --repeat must be at least 1")
    json.dump(measure(args.n, args.repeat), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
