"""Sparkplug B 3.0 topics and payloads for the gateway's signals. Pure, tested without a broker.

The gateway is one Sparkplug *edge node*; each instrument (or processor) is a *device*, and each
of its signals a *metric* named by the signal's id within the device (``ph`` for
``reactor1/controller/ph``). :class:`Catalog` holds what the births declare — every metric's
name, alias, datatype and properties — and the last value of each, and encodes the messages:

- NBIRTH: ``bdSeq`` (Int64) and ``Node Control/Rebirth`` (Boolean, false), seq 0;
- DBIRTH per device: every metric with name, alias, datatype, current value (or ``is_null``)
  and properties ``engUnit`` (the unit's symbol, ``°C``), ``ucum`` (the UCUM code, ``Cel``),
  ``quality`` (Int32: 192 good, 64 uncertain, 0 bad, as OPC UA's and Sparkplug hosts' quality
  codes), ``seq`` (UInt64, the sample's per-signal seq) and ``description``;
- DDATA per device and batch: metrics by alias only, timestamp = the sample's ``source_ts`` in
  ms, ``is_historical`` for backlog samples, properties ``seq`` always and ``quality`` (with
  ``reason``) only when the sample is not good: a metric without ``quality`` is good (192);
- NDEATH (the Last Will): ``bdSeq`` only.

Datatypes: scalar signals are Double (10); spectra are FloatArray (30, float32 little-endian in
``bytes_value``), with a companion metric ``<name>/axis`` (DoubleArray, 31, in the axis's unit)
sent in the DBIRTH and in a DDATA whenever a spectrum's axis differs from the last one sent.

Aliases are given in bind order (1, 2, ...), per node, and never change while the gateway runs:
a rebirth repeats them; a signal first seen in the backlog (no longer configured) gets the next
free alias and causes a rebirth. Node metrics (``bdSeq``, ``Node Control/Rebirth``) have no
alias.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from gateway import Quality, Sample, Signal, SignalKind, Spectrum
from gateway.unece import unece_for_ucum

from . import sparkplug_b_pb2 as pb
from .names import device_of

__all__ = [
    "QUALITY_CODES",
    "REBIRTH",
    "Catalog",
    "Command",
    "DataType",
    "decode_command",
]

REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"
MAX_COMMAND = 64 * 1024
"""The largest NCMD payload decoded (a rebirth command is ~40 bytes): a larger one is ignored
unparsed (a 15 MB one of 1.7 million metrics took 0.9 s of the event loop and 320 MB)."""
MAX_PROBLEMS = 10  # problems listed per command; the rest are counted


class DataType:
    """Sparkplug B datatype numbers (``sparkplug_b.proto``'s ``DataType``) used here."""

    INT32 = 3
    INT64 = 4
    UINT64 = 8
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    FLOAT_ARRAY = 30
    DOUBLE_ARRAY = 31


QUALITY_CODES = {Quality.GOOD: 192, Quality.UNCERTAIN: 64, Quality.BAD: 0}
"""The ``quality`` property: OPC UA / OPC DA quality codes as Sparkplug hosts read them."""
_QUALITY = [QUALITY_CODES[Quality(q)] for q in range(len(Quality))]  # by int(quality)
_GOOD = int(Quality.GOOD)
_LITTLE = sys.byteorder == "little"


@dataclass(slots=True)
class _Metric:
    """One signal as a metric of its device."""

    signal: str
    device_id: str
    name: str
    alias: int
    unit: str
    spectrum: bool
    description: str = ""
    last: Sample | None = None  # the latest sample sent (or to send) for the birth's value
    axis_key: str | None = None  # the axis last sent in this session (spectra)
    axis_alias: int = 0


@dataclass(slots=True)
class _Device:
    device_id: str
    metrics: list[_Metric] = field(default_factory=list)


class Command:
    """What an NCMD asks, once decoded: ``rebirth`` and the problems found (to log)."""

    __slots__ = ("problems", "rebirth")

    def __init__(self) -> None:
        self.rebirth = False
        self.problems: list[str] = []


def decode_command(payload: bytes) -> Command:
    """Decode an NCMD payload. Only ``Node Control/Rebirth`` (Boolean true) is understood; an
    unknown metric, a wrong datatype or a malformed payload is listed in ``problems``."""
    command = Command()
    if len(payload) > MAX_COMMAND:
        command.problems.append(
            f"a payload of {len(payload)} bytes (more than {MAX_COMMAND}): not decoded"
        )
        return command
    message = pb.Payload()
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        command.problems.append(f"malformed payload ({len(payload)} bytes): {exc}")
        return command
    if not message.metrics:
        command.problems.append("no metrics")
    for metric in message.metrics:
        name = metric.name if metric.HasField("name") else f"alias {metric.alias}"
        if name != REBIRTH:
            command.problems.append(f"unknown metric {name[:100]!r}")
            continue
        kind = metric.WhichOneof("value")
        if (metric.HasField("datatype") and metric.datatype != DataType.BOOLEAN) or (
            kind != "boolean_value"
        ):
            command.problems.append(
                f"{REBIRTH} must be a Boolean, got datatype {metric.datatype} with"
                f" {kind or 'no value'}"
            )
            continue
        if metric.boolean_value:
            command.rebirth = True
    if len(command.problems) > MAX_PROBLEMS:
        more = len(command.problems) - MAX_PROBLEMS
        del command.problems[MAX_PROBLEMS:]
        command.problems.append(f"and {more} more")
    return command


def _property_set(
    properties: pb.Payload.PropertySet, items: Iterable[tuple[str, int, Any]]
) -> None:
    for key, datatype, value in items:
        properties.keys.append(key)
        prop = properties.values.add()
        prop.type = datatype
        if value is None:
            prop.is_null = True
        elif datatype in (DataType.INT32, DataType.BOOLEAN):
            if datatype == DataType.BOOLEAN:
                prop.boolean_value = bool(value)
            else:
                prop.int_value = value & 0xFFFFFFFF  # Int32 travels in uint32, two's complement
        elif datatype == DataType.UINT64:
            prop.long_value = value
        else:
            prop.string_value = value


def _eng_unit(ucum: str) -> str:
    unit = unece_for_ucum(ucum)
    return unit.display_name if unit is not None else ucum


def _f32_bytes(spectrum: Spectrum) -> bytes:
    values = spectrum.values
    return values.tobytes() if _LITTLE else values.astype("<f4").tobytes()


def _f64_bytes(values: np.ndarray[Any, Any]) -> bytes:
    return np.asarray(values, dtype="<f8").tobytes()


class Catalog:
    """The node's metrics and sequence numbers; encodes births, data and death payloads.

    ``seq`` is the payload sequence number: 0 in each NBIRTH, then +1 (mod 256) for every
    DBIRTH, DDATA and NDATA published after it, in publication order.
    """

    def __init__(self) -> None:
        self.devices: dict[str, _Device] = {}
        self.metrics: dict[str, _Metric] = {}  # by signal id
        self._aliases = 0
        self.seq = 0
        self.changed = False  # a metric was added since the last births: a rebirth is due

    def bind(self, signals: Sequence[Signal]) -> None:
        """Declare every configured signal, in order (their aliases are 1, 2, ...).
        ``ValueError`` if two signals give the same device and metric name."""
        for signal in signals:
            self._add(
                signal.id, signal.unit, signal.kind is SignalKind.SPECTRUM, signal.description
            )
        self.changed = False

    def _add(
        self, signal_id: str, unit: str, spectrum: bool, description: str, name: str = ""
    ) -> _Metric:
        device_id, default = device_of(signal_id)
        name = name or default
        device = self.devices.get(device_id)
        if device is None:
            device = self.devices[device_id] = _Device(device_id)
        for other in device.metrics:
            # A spectrum brings a second metric, "<name>/axis": no name may meet another's.
            if (
                other.name == name
                or (spectrum and other.name == f"{name}/axis")
                or (other.spectrum and name == f"{other.name}/axis")
            ):
                raise ValueError(
                    f"signals {other.signal} and {signal_id} both map to metric {name!r} of"
                    f" Sparkplug device {device_id!r}"
                )
        self._aliases += 1
        metric = _Metric(signal_id, device_id, name, self._aliases, unit, spectrum, description)
        if spectrum:
            self._aliases += 1
            metric.axis_alias = self._aliases
        device.metrics.append(metric)
        self.metrics[signal_id] = metric
        self.changed = True
        return metric

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq = (seq + 1) & 0xFF
        return seq

    # --- births and death ------------------------------------------------------------------

    def nbirth(self, bd_seq: int, now_ms: int) -> bytes:
        """The NBIRTH payload (seq 0, and the next payload gets 1)."""
        payload = pb.Payload(timestamp=now_ms, seq=0)
        self.seq = 1
        bd = payload.metrics.add(name=BDSEQ, timestamp=now_ms, datatype=DataType.INT64)
        bd.long_value = bd_seq
        payload.metrics.add(
            name=REBIRTH, timestamp=now_ms, datatype=DataType.BOOLEAN, boolean_value=False
        )
        for metric in self.metrics.values():
            metric.axis_key = None  # the births declare each axis anew
        self.changed = False
        return payload.SerializeToString()

    @staticmethod
    def ndeath(bd_seq: int, now_ms: int) -> bytes:
        """The NDEATH payload: the Last Will of the connection with ``bd_seq``."""
        payload = pb.Payload(timestamp=now_ms)
        bd = payload.metrics.add(name=BDSEQ, timestamp=now_ms, datatype=DataType.INT64)
        bd.long_value = bd_seq
        return payload.SerializeToString()

    def dbirths(self, now_ms: int) -> list[tuple[str, bytes]]:
        """(device id, DBIRTH payload) of every device, in bind order."""
        out = []
        for device in self.devices.values():
            payload = pb.Payload(timestamp=now_ms, seq=self._next_seq())
            for metric in device.metrics:
                self._birth_metric(payload, metric, now_ms)
            out.append((device.device_id, payload.SerializeToString()))
        return out

    def _birth_metric(self, payload: pb.Payload, metric: _Metric, now_ms: int) -> None:
        last = metric.last
        out = payload.metrics.add(
            name=metric.name,
            alias=metric.alias,
            datatype=DataType.FLOAT_ARRAY if metric.spectrum else DataType.DOUBLE,
        )
        props: list[tuple[str, int, Any]] = [
            ("engUnit", DataType.STRING, _eng_unit(metric.unit)),
            ("ucum", DataType.STRING, metric.unit),
        ]
        if last is None:
            out.timestamp = now_ms
            out.is_null = True
            props.append(("quality", DataType.INT32, QUALITY_CODES[Quality.BAD]))
        else:
            out.timestamp = last.source_ts // 1_000_000
            self._value(out, metric, last.value)
            props.append(("quality", DataType.INT32, _QUALITY[last.quality]))
            props.append(("seq", DataType.UINT64, last.seq))
            if last.quality != _GOOD:
                props.append(("reason", DataType.STRING, last.reason or ""))
        props.append(("description", DataType.STRING, metric.description))
        _property_set(out.properties, props)
        if metric.spectrum:
            axis = last.value.axis if last is not None and type(last.value) is Spectrum else None
            extra = payload.metrics.add(
                name=f"{metric.name}/axis", alias=metric.axis_alias, datatype=DataType.DOUBLE_ARRAY
            )
            extra.timestamp = out.timestamp
            if axis is None:
                extra.is_null = True
                _property_set(extra.properties, [])
            else:
                extra.bytes_value = _f64_bytes(axis.values)
                metric.axis_key = axis.key
                _property_set(
                    extra.properties,
                    [
                        ("engUnit", DataType.STRING, _eng_unit(axis.unit)),
                        ("ucum", DataType.STRING, axis.unit),
                    ],
                )

    @staticmethod
    def _value(out: pb.Payload.Metric, metric: _Metric, value: Any) -> None:
        if metric.spectrum:
            if type(value) is Spectrum:
                out.bytes_value = _f32_bytes(value)
            else:
                out.is_null = True
        elif value is None:
            out.is_null = True
        else:
            _set_double(out, value)

    # --- data --------------------------------------------------------------------------------

    def declare(self, samples: Sequence[Sample]) -> bool:
        """Declare the signals of ``samples`` that are not (backlog samples of a signal no longer
        configured); true if the births must be published again before their data."""
        known = self.metrics
        for sample in samples:
            if sample.signal not in known:
                spectrum = type(sample.value) is Spectrum
                try:
                    self._add(sample.signal, sample.unit, spectrum, "")
                except ValueError:  # its name is taken (ids that sanitize alike): the full id
                    self._add(sample.signal, sample.unit, spectrum, "", name=sample.signal)
        return self.changed

    def ddata(
        self, samples: Sequence[Sample], historical: bool, now_ms: int, owners: list[list[int]]
    ) -> list[tuple[str, bytes]]:
        """(device id, DDATA payload): one per device, in order of first appearance, holding
        its samples in the order given, by alias. ``owners`` receives each message's sample
        positions. Every signal must be declared (:meth:`declare`)."""
        known = self.metrics
        groups: dict[str, list[int]] = {}
        for position, sample in enumerate(samples):
            device_id = known[sample.signal].device_id
            group = groups.get(device_id)
            if group is None:
                groups[device_id] = [position]
            else:
                group.append(position)
        out: list[tuple[str, bytes]] = []
        quality = _QUALITY
        for device_id, positions in groups.items():
            payload = pb.Payload(timestamp=now_ms, seq=self._next_seq())
            add = payload.metrics.add
            for position in positions:
                sample = samples[position]
                metric = known[sample.signal]
                metric.last = sample
                out_metric = add(alias=metric.alias, timestamp=sample.source_ts // 1_000_000)
                if historical:
                    out_metric.is_historical = True
                value = sample.value
                if metric.spectrum:
                    if type(value) is Spectrum:
                        out_metric.bytes_value = _f32_bytes(value)
                        if value.axis.key != metric.axis_key:
                            self._axis(add, metric, value, out_metric.timestamp, historical)
                    else:
                        out_metric.is_null = True
                elif type(value) is float:
                    out_metric.double_value = value
                elif value is None:
                    out_metric.is_null = True
                else:
                    _set_double(out_metric, value)
                props = out_metric.properties
                props.keys.append("seq")
                props.values.add(type=DataType.UINT64, long_value=sample.seq)
                if sample.quality != _GOOD:
                    props.keys.append("quality")
                    props.values.add(type=DataType.INT32, int_value=quality[sample.quality])
                    props.keys.append("reason")
                    props.values.add(type=DataType.STRING, string_value=sample.reason or "")
            owners.append(positions)
            out.append((device_id, payload.SerializeToString()))
        return out

    @staticmethod
    def _axis(add: Any, metric: _Metric, value: Spectrum, ts_ms: int, historical: bool) -> None:
        axis = add(
            alias=metric.axis_alias, timestamp=ts_ms, bytes_value=_f64_bytes(value.axis.values)
        )
        if historical:
            axis.is_historical = True
        else:  # a live consumer now holds this axis; a late one does not update it
            metric.axis_key = value.axis.key


def _set_double(out: pb.Payload.Metric, value: Any) -> None:
    try:
        out.double_value = float(value)
    except (TypeError, ValueError):
        out.is_null = True
