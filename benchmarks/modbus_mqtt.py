"""Modbus to MQTT at issue 16's load shape, from emulated instruments to a subscriber.

D Modbus TCP devices x 100 holding registers polled every 100 ms, a real ``patgw run``, a real
Mosquitto, a subscriber in its own process; one JSON line per run, then a summary:

    python benchmarks/modbus_mqtt.py                                   # sample, 10,000 values/s
    python benchmarks/modbus_mqtt.py --payload sample,batch --loads 10000,30000,60000
    python benchmarks/modbus_mqtt.py --payload sparkplug --loads 60000 --seconds 30
    python benchmarks/modbus_mqtt.py --loads 30000 --stop              # SIGTERM under load

Each run (one payload mode at one load) starts from nothing:

* **Emulators**: ``D = load / 1000`` devices (``--registers`` holding registers of type
  uint16 each, 100 by default, every one changing at every read), pymodbus servers built on
  ``firmware_stubs.modbus_device.ModbusDeviceServer``, ``--devices-per-process`` of them per
  process (separate processes: their CPU is not the gateway's).
* **Broker**: Mosquitto on a free loopback port (``_mqtt_bench.Broker``).
* **Gateway**: ``python -m gateway run <config> --no-view`` (the ``patgw`` command), a
  configuration written for the run with its own store in a temporary folder: one ``modbus``
  instrument per device, its registers listed inline (contiguous: one read request of 100
  registers per poll), ``poll_interval_s`` ``--poll-ms``, and one sink:

  - ``sample``: the ``mqtt`` sink, ``payload: sample``, QoS 1, the default topic template (one
    topic per signal): one message per value;
  - ``batch``: ``payload: batch`` and the topic ``pat/{site}/{area}/{instrument}`` (one topic,
    so one JSON array per delivery, per instrument);
  - ``sparkplug``: the ``sparkplug`` sink (options ``url``, ``group_id``, ``edge_node_id``),
    Sparkplug B payloads (protobuf) on ``spBv1.0/...``. If that sink is not installed the run
    reports the gateway's error.

* **Subscriber**: a minimal MQTT 3.1.1 client (``_mqtt_bench.RawSubscriber``) in its own
  process, QoS 1, subscribed before the gateway starts; it stamps each message with the wall
  clock when its bytes were read and decodes after the run (JSON; Sparkplug with its own small
  protobuf wire-format reader below, independent of the sink's code). Values are de-duplicated
  on (signal, seq) (QoS 1 may deliver twice).

Timeline: the gateway starts; after ``--warmup-s`` the measuring window of ``--seconds``
begins; then the gateway runs ``--settle-s`` longer (the values of the window still on their way
arrive) and gets SIGTERM. With ``--stop`` the SIGTERM comes at the end of the window instead,
under full load, and ``stop`` reports how long the exit took and whether it was clean.

Figures of a run (one JSON object per line, then a summary object):

* ``offered_values_per_s``: devices x registers / poll period; ``produced_values_per_s``: the
  values the gateway committed with a ``gateway_ts`` in the window (read from its store after
  the run), per second;
* ``delivered_values_per_s``: distinct values received during the window, per second;
  ``delivered_fraction``: of the values produced in the window, those received by the end of
  the window + ``--settle-s``; ``duplicates``: values received more than once;
* ``latency_p50_ms`` / ``latency_p99_ms`` / ``latency_max_ms``: receipt - ``gateway_ts`` of each
  value produced in the window (first receipt), wall clock of the same host; for Sparkplug the
  metric's timestamp (ms, the sample's source time) stands in for ``gateway_ts``;
* ``backlog``: produced minus received, every 0.5 s of the window; ``growth_values_per_s`` is
  its least-squares slope; ``grows`` when that exceeds 1 % of the produced rate and the fitted
  rise over the window is more than 100 ms of production (one poll's burst is noise);
* ``keeps_up``: delivered_fraction >= 99 %, p99 <= 100 ms and the backlog does not grow;
* ``cpu_pct``: CPU (user + system, all threads) over the window as % of one core: the gateway,
  the broker, the emulators, and the rest of the machine (the subscriber, and other work
  sharing the processors);
  ``gateway_cpu_pct_per_1000_values_s`` divides the gateway's by the produced rate / 1000;
  ``subscriber_cpu_s`` is the subscriber's receiving CPU over the whole run;
* ``rss_mb``: the gateway's resident memory at the end of the window, its highest sample during
  the window, and the kernel's high-water mark (VmHWM, start-up included);
* ``first_value_s``: from starting ``patgw run`` to the first value at the subscriber;
  ``values_per_request``: values committed per Modbus read request the emulators served (100:
  one request per poll);
* ``stop``: ``exit_s`` from SIGTERM to the exit (SIGKILL after ``--stop-timeout-s``:
  ``exited`` false); ``clean``: exited with code 0 and no ``gateway.stop_timeout`` or
  ``store.sample_after_final_commit`` in its log; ``within_bound``: in at most 5 s;
  ``losses_recorded``: samples in the store's loss records; ``unaccounted_seq_gaps``: seq
  numbers missing between a signal's first and last committed sample beyond its recorded
  losses (0 expected); ``log_events``: the gateway's warnings and errors, by event.

Figures taken while other work shares the machine are noisy: compare CPU per value (less
sensitive than rates), and take final figures on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import yaml
from _mqtt_bench import (  # what the MQTT benchmarks share
    Broker,
    Control,
    RawSubscriber,
    SubscriberProcess,
    is_sample_topic,
    machine,
    machine_busy_cpu_s,
    mosquitto_version,
    proc_cpu_s,
    source_version,
    timestamp_ns,
)
from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData

from firmware_stubs.modbus_device import ModbusDeviceServer

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = ("sample", "batch", "sparkplug")
KEEPS_UP = {"delivered_fraction": 0.99, "latency_p99_ms": 100.0}
STOP_BOUND_S = 5.0  # issue 16: a stop finishes within 5 s whatever the load
GROWTH_FRACTION = 0.01  # a backlog growing faster than 1 % of the produced rate "grows"...
GROWTH_MIN_S = 0.1  # ...if it also rose by more than this many seconds of production
TICK_S = 0.5  # backlog and memory samples
SPARKPLUG_GROUP = "bench"
SPARKPLUG_NODE = "patgw-bench"


def log(message: str) -> None:
    """Progress on standard error (standard output is the JSON only)."""
    print(f"modbus_mqtt: {message}", file=sys.stderr, flush=True)


# --- the emulated devices, in processes of their own ----------------------------------------


class RegisterBank(ModbusDeviceServer):
    """A device of ``registers`` uint16 holding registers at addresses 0.., each one a different
    value at every read: register ``i`` holds ``(reads * 7 + i) mod 65536``."""

    kind = "register_bank"
    function_codes = frozenset({3})

    def __init__(self, registers: int) -> None:
        super().__init__(
            "127.0.0.1",
            0,
            unit_id=1,
            tick_s=3600.0,  # nothing to model between reads
            framing="tcp",
            identity={"VendorName": "PAT Gateway", "ModelName": "Benchmark register bank"},
        )
        self.registers = registers
        self.reads = 0

    def _simdata(self) -> list[SimData]:
        return [SimData(address=0, count=self.registers, datatype=DataType.REGISTERS)]

    def _serve(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | None,
    ) -> ExcCodes | None:
        self.reads += 1
        base = self.reads * 7
        offset = -start_address
        registers[offset : offset + self.registers] = [
            (base + i) & 0xFFFF for i in range(self.registers)
        ]
        return None


def _serve_devices(conn: multiprocessing.connection.Connection, count: int, registers: int) -> None:
    """An emulator process: ``count`` devices on ephemeral loopback ports (sent back as a list),
    until anything arrives on ``conn``; then the number of read requests they served."""

    async def serve() -> None:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        devices = [RegisterBank(registers) for _ in range(count)]
        for device in devices:
            await device.start()
        conn.send([device.port for device in devices])
        await asyncio.to_thread(conn.recv)
        for device in devices:
            await device.stop()
        conn.send(sum(device.reads for device in devices))

    asyncio.run(serve())


class Emulators:
    """Processes of :class:`RegisterBank` devices."""

    def __init__(self, devices: int, per_process: int, registers: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.processes: list[tuple[Any, multiprocessing.connection.Connection]] = []
        self.ports: list[int] = []
        self.reads = 0  # read requests served, known after stop()
        for first in range(0, devices, per_process):
            conn, child = context.Pipe()
            count = min(per_process, devices - first)
            process = context.Process(
                target=_serve_devices, args=(child, count, registers), daemon=True
            )
            process.start()
            child.close()
            self.processes.append((process, conn))

    async def start(self) -> None:
        for process, conn in self.processes:
            if not await asyncio.to_thread(conn.poll, 60):
                raise RuntimeError(f"emulator process {process.pid} did not start")
            self.ports += conn.recv()

    def cpu_s(self) -> float:
        return sum(proc_cpu_s(process.pid) for process, _ in self.processes)

    async def stop(self) -> None:
        processes, self.processes = self.processes, []
        for _, conn in processes:
            with contextlib.suppress(OSError):
                conn.send("stop")
        for process, conn in processes:
            with contextlib.suppress(OSError, EOFError):
                if await asyncio.to_thread(conn.poll, 10):
                    self.reads += conn.recv()
            await asyncio.to_thread(process.join, 10)
            if process.is_alive():
                process.kill()
                process.join(5)


# --- the subscriber, in its own process -------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """The ``(field number, value)`` pairs of a protobuf message: an int for varint and fixed
    fields, bytes for length-delimited ones (nested messages, strings, packed arrays)."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"protobuf wire type {wire} not supported")
        yield number, value


def _property_seq(properties: bytes) -> int | None:
    """The ``seq`` property of a Sparkplug PropertySet (keys = field 1, values = field 2, a
    PropertyValue's int_value = 3, long_value = 4)."""
    keys: list[bytes] = []
    values: list[bytes] = []
    for number, value in _fields(properties):
        if number == 1 and isinstance(value, bytes):
            keys.append(value)
        elif number == 2 and isinstance(value, bytes):
            values.append(value)
    for key, value in zip(keys, values, strict=False):
        if key.lower() == b"seq":
            for number, field in _fields(value):
                if number in (3, 4) and isinstance(field, int):
                    return field
    return None


def sparkplug_metrics(payload: bytes) -> Iterator[tuple[bytes | None, int | None, int, int | None]]:
    """``(name, alias, timestamp ms, seq property)`` of each metric of a Sparkplug B payload
    (Payload.metrics = field 2; Metric: name 1, alias 2, timestamp 3, properties 9)."""
    for number, metric in _fields(payload):
        if number != 2 or not isinstance(metric, bytes):
            continue
        name: bytes | None = None
        alias: int | None = None
        stamp = 0
        seq: int | None = None
        for field, value in _fields(metric):
            if field == 1 and isinstance(value, bytes):
                name = value
            elif field == 2 and isinstance(value, int):
                alias = value
            elif field == 3 and isinstance(value, int):
                stamp = value
            elif field == 9 and isinstance(value, bytes):
                seq = _property_seq(value)
        yield name, alias, stamp, seq


def _parse_json(received: list[tuple[int, bytes, bytes]]) -> dict[str, Any]:
    names: dict[str, int] = {}
    arrival: list[int] = []
    gateway: list[int] = []
    signals: list[int] = []
    seqs: list[int] = []
    loads = json.loads
    while received:
        at, _, payload = received.pop()  # from the end, freeing memory as it goes
        items = loads(payload)
        for item in items if isinstance(items, list) else (items,):
            index = names.setdefault(item["signal"], len(names))
            arrival.append(at)
            gateway.append(timestamp_ns(item["gateway_ts"]))
            signals.append(index)
            seqs.append(item["seq"])
    return {"signals": list(names), "arrival": arrival, "gateway": gateway,
            "signal": signals, "seq": seqs}  # fmt: skip


def _parse_sparkplug(received: list[tuple[int, bytes, bytes]]) -> dict[str, Any]:
    """Births name each device's metrics and aliases; data messages may carry aliases only. A
    value's key is ``device/name``; its seq the metric's ``seq`` property (else its timestamp)."""
    names: dict[str, int] = {}
    alias_names: dict[tuple[bytes, int], bytes] = {}
    arrival: list[int] = []
    gateway: list[int] = []
    signals: list[int] = []
    seqs: list[int] = []
    births = 0
    for at, topic, payload in received:  # in arrival order: a birth before its data
        parts = topic.split(b"/")  # spBv1.0/group/TYPE/node[/device]
        if len(parts) < 4:
            continue
        kind = parts[2]
        device = b"/".join(parts[3:])
        birth = kind in (b"NBIRTH", b"DBIRTH")
        births += birth
        if not birth and kind not in (b"NDATA", b"DDATA"):
            continue
        for name, alias, stamp, seq in sparkplug_metrics(payload):
            if name is not None and alias is not None:
                alias_names[(device, alias)] = name
            if name is None and alias is not None:
                name = alias_names.get((device, alias), b"alias %d" % alias)
            if birth or name is None or name.startswith((b"Node Control/", b"bdSeq")):
                continue  # a birth's current values repeat data already sent or to come
            key = (device + b"/" + name).decode(errors="replace")
            index = names.setdefault(key, len(names))
            arrival.append(at)
            gateway.append(stamp * 1_000_000)
            signals.append(index)
            seqs.append(seq if seq is not None else stamp)
    received.clear()
    return {"signals": list(names), "arrival": arrival, "gateway": gateway,
            "signal": signals, "seq": seqs, "births": births}  # fmt: skip


def _is_sparkplug_data(topic: bytes) -> bool:
    """Births and data of the edge node and its devices (not a host application's STATE)."""
    return topic.startswith(b"spBv1.0/") and not topic.startswith(b"spBv1.0/STATE/")


def _subscriber(
    conn: multiprocessing.connection.Connection, host: str, port: int, payload: str
) -> None:
    """The subscriber process: send ``("first", arrival ns)`` at the first value, receive until
    told to stop and nothing more came; send back what arrived, as arrays."""
    control = Control(conn)
    sparkplug = payload == "sparkplug"
    subscriber = RawSubscriber(
        host,
        port,
        f"patgw-bench-modbus-{os.getpid()}",
        clean=True,
        topic_filter="spBv1.0/#" if sparkplug else "pat/#",
        keep=_is_sparkplug_data if sparkplug else is_sample_topic,
    )
    subscriber.subscribe()
    control.ready()
    received = subscriber.received
    while not received:  # the first value: the gateway is up (the benchmark's warm-up starts)
        subscriber.receive()
    conn.send(("first", received[0][0]))
    while not control.done(received[-1][0]):
        subscriber.receive()
    subscriber.close()
    cpu_s = control.cpu_s()
    messages = len(received)
    result = _parse_sparkplug(received) if sparkplug else _parse_json(received)
    arrays = {
        "signals": result.pop("signals"),
        "arrival_ns": np.array(result.pop("arrival"), dtype=np.int64),
        "gateway_ns": np.array(result.pop("gateway"), dtype=np.int64),
        "signal": np.array(result.pop("signal"), dtype=np.int64),
        "seq": np.array(result.pop("seq"), dtype=np.int64),
    }
    conn.send(arrays | result | {"messages": messages, "cpu_s": round(cpu_s, 2)})


# --- the gateway ------------------------------------------------------------------------------


def write_config(
    folder: Path, payload: str, url: str, ports: list[int], registers: int, poll_s: float
) -> Path:
    sink: dict[str, Any]
    if payload == "sparkplug":
        sink = {
            "id": "spb",
            "type": "sparkplug",
            "options": {"url": url, "group_id": SPARKPLUG_GROUP, "edge_node_id": SPARKPLUG_NODE},
        }
    else:
        options: dict[str, Any] = {"url": url, "payload": payload, "qos": 1}
        if payload == "batch":
            options["topic"] = "pat/{site}/{area}/{instrument}"
            options["meta_topic"] = "pat/{site}/{area}/{instrument}/{signal}/meta"
        sink = {"id": "mqtt", "type": "mqtt", "options": options}
    register_map = [{"name": f"r{i:03d}", "address": i, "type": "uint16"} for i in range(registers)]
    config = {
        "site": "bench",
        "area": "modbus",
        "data_dir": str(folder / "data"),
        "store": {"path": str(folder / "bench.sqlite")},
        "instruments": [
            {
                "id": f"dev{n:03d}",
                "driver": "modbus",
                "poll_interval_s": poll_s,
                "options": {"host": "127.0.0.1", "port": port, "registers": register_map},
            }
            for n, port in enumerate(ports)
        ],
        "sinks": [sink],
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def proc_memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a running process, in MB (empty if it is gone)."""
    memory: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                memory[key] = round(int(value.split()[0]) / 1024, 1)
    return memory


def store_figures(
    path: Path, window: tuple[int, int], ticks: np.ndarray, sparkplug: bool
) -> dict[str, Any]:
    """From the gateway's store after the run: values produced (committed) in the window, the
    cumulative count produced by each tick, losses recorded (samples), and seq numbers missing
    between a signal's first and last committed sample that no loss record accounts for.
    Values are placed in time as the subscriber places them: by ``gateway_ts``, or for
    Sparkplug by the metric's timestamp (``source_ts`` in whole ms)."""
    stamp = "source_ts / 1000000 * 1000000" if sparkplug else "gateway_ts"
    with contextlib.closing(sqlite3.connect(path)) as db:
        stamps = np.array(
            [row[0] for row in db.execute(f"SELECT {stamp} FROM sample")], dtype=np.int64
        )
        lost = dict(db.execute("SELECT signal, sum(count) FROM loss GROUP BY signal").fetchall())
        spans = db.execute(
            "SELECT d.name, max(s.seq) - min(s.seq) + 1 - count(*) FROM sample s"
            " JOIN signal_def d ON d.id = s.def_id GROUP BY d.name"
        ).fetchall()
    stamps.sort()
    return {
        "in_window": int(((stamps >= window[0]) & (stamps < window[1])).sum()),
        "by_tick": np.searchsorted(stamps, ticks, side="right"),
        "total": int(stamps.size),
        "losses": int(sum(lost.values())),
        "unaccounted_gaps": sum(max(0, gap - lost.get(name, 0)) for name, gap in spans),
    }


def gateway_log_events(path: Path) -> dict[str, int]:
    """How many warnings and errors the gateway logged, by event name."""
    events: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "event" in record:
                events[record["event"]] = events.get(record["event"], 0) + 1
    return events


async def wait_exit(process: asyncio.subprocess.Process, within: float) -> bool:
    try:
        async with asyncio.timeout(within):
            await process.wait()
    except TimeoutError:
        return False
    return True


# --- one run ----------------------------------------------------------------------------------


def figures(
    received: dict[str, Any],
    produced: dict[str, Any],
    window: tuple[int, int],
    ticks: np.ndarray,
    settle_ns: int,
) -> dict[str, Any]:
    """Delivery, latency and backlog from what arrived and what the store holds."""
    seconds = (window[1] - window[0]) / 1e9
    arrival = received["arrival_ns"]
    keys = (received["signal"] << 40) | (received["seq"] & ((1 << 40) - 1))
    order = np.argsort(arrival, kind="stable")
    _, first = np.unique(keys[order], return_index=True)
    first = order[first]  # each value's first receipt
    arrival_u = arrival[first]
    gateway_u = received["gateway_ns"][first]
    in_window = (gateway_u >= window[0]) & (gateway_u < window[1])
    delivered = int((in_window & (arrival_u <= window[1] + settle_ns)).sum())
    latency = (arrival_u[in_window] - gateway_u[in_window]) / 1e6
    arrived_by_tick = np.searchsorted(np.sort(arrival_u), ticks, side="right")
    backlog = produced["by_tick"] - arrived_by_tick
    growth = float(np.polyfit((ticks - ticks[0]) / 1e9, backlog, 1)[0]) if ticks.size > 2 else 0.0
    produced_rate = produced["in_window"] / seconds
    result: dict[str, Any] = {
        "produced_values_per_s": round(produced_rate),
        "delivered_values_per_s": round(
            int(((arrival_u >= window[0]) & (arrival_u < window[1])).sum()) / seconds
        ),
        "produced_in_window": produced["in_window"],
        "delivered_in_window": delivered,
        "delivered_fraction": round(delivered / produced["in_window"], 4)
        if produced["in_window"]
        else None,
        "received_values": int(keys.size),
        "duplicates": int(keys.size - first.size),
        "messages": received["messages"],
    }
    if latency.size:
        p50, p99 = np.percentile(latency, [50, 99])
        result |= {
            "latency_p50_ms": round(float(p50), 1),
            "latency_p99_ms": round(float(p99), 1),
            "latency_max_ms": round(float(latency.max()), 1),
        }
    else:
        result |= {"latency_p50_ms": None, "latency_p99_ms": None, "latency_max_ms": None}
    result["backlog"] = {
        "at_start": int(backlog[0]),
        "at_end": int(backlog[-1]),
        "max": int(backlog.max()),
        "growth_values_per_s": round(growth, 1),
        "grows": bool(
            growth > max(GROWTH_FRACTION, GROWTH_MIN_S / seconds) * max(produced_rate, 1.0)
        ),
    }
    p99 = result["latency_p99_ms"]
    result["keeps_up"] = bool(
        result["delivered_fraction"] is not None
        and result["delivered_fraction"] >= KEEPS_UP["delivered_fraction"]
        and p99 is not None
        and p99 <= KEEPS_UP["latency_p99_ms"]
        and not result["backlog"]["grows"]
    )
    return result


async def one_run(
    args: argparse.Namespace, folder: Path, payload: str, load: int
) -> dict[str, Any]:
    poll_s = args.poll_ms / 1000
    per_device = args.registers / poll_s
    devices = max(1, round(load / per_device))
    result: dict[str, Any] = {
        "benchmark": "modbus_mqtt",
        "payload": payload,
        "load": load,
        "devices": devices,
        "registers_per_device": args.registers,
        "register_type": "uint16",
        "poll_ms": args.poll_ms,
        "offered_values_per_s": round(devices * per_device),
        "seconds": args.seconds,
        "stop_under_load": args.stop,
    }
    folder.mkdir(parents=True)  # noqa: ASYNC240 (before anything runs)
    broker = Broker(folder / "broker")
    emulators = Emulators(devices, args.devices_per_process, args.registers)
    subscriber: SubscriberProcess | None = None
    gateway: asyncio.subprocess.Process | None = None
    gateway_log = folder / "gateway.log"
    try:
        await broker.start()
        # The emulators' and the subscriber's processes start side by side.
        subscriber = SubscriberProcess(_subscriber, "127.0.0.1", broker.port, payload)
        await emulators.start()
        config = write_config(folder, payload, broker.url, emulators.ports, args.registers, poll_s)
        await subscriber.ready()
        spawned_ns = time.time_ns()
        with gateway_log.open("wb") as out:
            gateway = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "run", str(config), "--no-view",
                "--log-format", "json", "--log-level", "warning",
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=folder,
            )  # fmt: skip
        log(f"{payload} at {load}/s: {devices} devices, gateway pid {gateway.pid}")
        first = asyncio.create_task(
            subscriber.message(args.start_timeout_s), name="bench.first_value"
        )
        gone = asyncio.create_task(gateway.wait(), name="bench.gateway_exit")
        await asyncio.wait({first, gone}, return_when=asyncio.FIRST_COMPLETED)
        if gone.done():
            first.cancel()
            raise RuntimeError(
                f"the gateway exited (code {gateway.returncode}) at start-up:"
                f" {gateway_log.read_text(errors='replace')[-2000:]}"
            )
        gone.cancel()
        result["first_value_s"] = round((first.result()[1] - spawned_ns) / 1e9, 2)
        if await wait_exit(gateway, args.warmup_s):
            raise RuntimeError(f"the gateway exited (code {gateway.returncode})")
        pid = gateway.pid
        start = (
            time.time_ns(), time.monotonic(), proc_cpu_s(pid), broker.cpu_now(),
            emulators.cpu_s(), machine_busy_cpu_s(),
        )  # fmt: skip
        ticks = [start[0]]
        rss: list[float] = []
        while (left := args.seconds - (time.monotonic() - start[1])) > 0:
            await asyncio.sleep(min(TICK_S, left))
            ticks.append(time.time_ns())
            rss.append(proc_memory_mb(pid).get("VmRSS", 0.0))
            if gateway.returncode is not None:
                raise RuntimeError(f"the gateway exited (code {gateway.returncode})")
        end = (
            time.time_ns(), time.monotonic(), proc_cpu_s(pid), broker.cpu_now(),
            emulators.cpu_s(), machine_busy_cpu_s(),
        )  # fmt: skip
        memory = proc_memory_mb(pid)
        wall = end[1] - start[1]
        if not args.stop:
            await asyncio.sleep(args.settle_s)
        stop_at = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        exited = await wait_exit(gateway, args.stop_timeout_s)
        exit_s = time.monotonic() - stop_at
        if not exited:
            gateway.kill()
            await gateway.wait()
        if args.stop:
            await asyncio.sleep(args.settle_s)  # what the gateway sent before it stopped
        await emulators.stop()
        received = await subscriber.finish(60)
        window = (start[0], end[0])
        tick_array = np.array(ticks, dtype=np.int64)
        produced = store_figures(
            folder / "bench.sqlite", window, tick_array, payload == "sparkplug"
        )
        result |= figures(received, produced, window, tick_array, int(args.settle_s * 1e9))
        # One read request per poll of a device: 100 contiguous registers in one request.
        result["modbus_requests"] = emulators.reads
        result["values_per_request"] = (
            round(produced["total"] / emulators.reads, 1) if emulators.reads else None
        )
        gateway_cpu = end[2] - start[2]
        broker_cpu = end[3] - start[3]
        emulator_cpu = end[4] - start[4]
        rate = result["produced_values_per_s"]
        result["cpu_pct"] = {
            "gateway": round(100 * gateway_cpu / wall, 1),
            "broker": round(100 * broker_cpu / wall, 1),
            "emulators": round(100 * emulator_cpu / wall, 1),
            "rest_of_machine": round(
                100 * (end[5] - start[5] - gateway_cpu - broker_cpu - emulator_cpu) / wall, 1
            ),
        }
        result["gateway_cpu_pct_per_1000_values_s"] = (
            round(100 * gateway_cpu / wall / (rate / 1000), 2) if rate else None
        )
        result["subscriber_cpu_s"] = received["cpu_s"]
        result["rss_mb"] = {
            "end": memory.get("VmRSS"),
            "window_max": max(rss, default=None),
            "high_water": memory.get("VmHWM"),
        }
        if payload == "sparkplug":
            result["births"] = received.get("births", 0)
        events = gateway_log_events(gateway_log)
        result["stop"] = {
            "signal_at": "end of window (under load)" if args.stop else "after settle",
            "exit_s": round(exit_s, 2),
            "exited": exited,
            "returncode": gateway.returncode,
            "clean": exited
            and gateway.returncode == 0
            and not events.get("gateway.stop_timeout")
            and not events.get("store.sample_after_final_commit"),
            "within_bound": exited and exit_s <= STOP_BOUND_S,
            "losses_recorded": produced["losses"],
            "unaccounted_seq_gaps": produced["unaccounted_gaps"],
            "log_events": events,
        }
    finally:
        if gateway is not None and gateway.returncode is None:
            gateway.kill()
            await gateway.wait()
        if subscriber is not None:
            subscriber.kill()
        await emulators.stop()
        await broker.stop()
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per payload mode: the highest load that kept up, and each run in one line."""
    modes: dict[str, Any] = {}
    for run in runs:
        mode = modes.setdefault(run["payload"], {"max_load_kept_up": None, "runs": []})
        if run.get("keeps_up") and (mode["max_load_kept_up"] or 0) < run["load"]:
            mode["max_load_kept_up"] = run["load"]
        mode["runs"].append(
            {
                key: run.get(key)
                for key in (
                    "load",
                    "delivered_values_per_s",
                    "delivered_fraction",
                    "latency_p50_ms",
                    "latency_p99_ms",
                    "keeps_up",
                    "gateway_cpu_pct_per_1000_values_s",
                    "error",
                )
            }
            | {"gateway_cpu_pct": run.get("cpu_pct", {}).get("gateway")}
            | {"rss_mb": run.get("rss_mb", {}).get("end")}
        )
    return {
        "summary": modes,
        "keeps_up_means": "delivered_fraction >= 0.99, latency_p99_ms <= 100, backlog not growing",
        "machine": machine() | {"mosquitto": mosquitto_version()},
        "source": source_version(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\nEach run")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--payload",
        action="append",
        help="sample, batch or sparkplug; repeatable or comma-separated (default: sample)",
    )
    parser.add_argument(
        "--loads",
        default="10000",
        help="values/s, comma-separated; devices = load / (registers x 1000 / poll-ms)",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window")
    parser.add_argument(
        "--warmup-s", type=float, default=5.0, help="from the first value to the window"
    )
    parser.add_argument(
        "--start-timeout-s", type=float, default=120.0, help="most wait for the first value"
    )
    parser.add_argument(
        "--settle-s", type=float, default=2.0, help="after the window, for values on their way"
    )
    parser.add_argument(
        "--devices-per-process", type=int, default=25, help="devices per emulator process"
    )
    parser.add_argument("--registers", type=int, default=100, help="per device (1..125)")
    parser.add_argument("--poll-ms", type=int, default=100, help="poll period of each device")
    parser.add_argument(
        "--stop",
        action="store_true",
        help="SIGTERM the gateway at the end of the window, under load; report the exit",
    )
    parser.add_argument(
        "--stop-timeout-s", type=float, default=30.0, help="SIGKILL if not exited by then"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the runs' files (configs, stores, logs)"
    )
    args = parser.parse_args(argv)
    payloads = [p for text in args.payload or ["sample"] for p in _list(text)]
    unknown = sorted(set(payloads) - set(PAYLOADS))
    if unknown or not payloads:
        parser.error(f"--payload: choose from {', '.join(PAYLOADS)} (got {unknown})")
    try:
        loads = [int(float(x)) for x in _list(args.loads)]
    except ValueError:
        parser.error(f"--loads: comma-separated numbers (got {args.loads!r})")
    if not loads or min(loads) <= 0:
        parser.error("--loads: positive values/s")
    if not 1 <= args.registers <= 125:
        parser.error("--registers: 1..125 (one read request)")
    if args.seconds < 2 or args.warmup_s < 0 or args.settle_s < 0 or args.poll_ms <= 0:
        parser.error("--seconds at least 2; --warmup-s, --settle-s, --poll-ms not negative")
    if args.devices_per_process < 1:
        parser.error("--devices-per-process: at least 1")
    runs = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp = tempfile.mkdtemp(prefix="patgw-bench-modbus-")
            log(f"files kept in {tmp}")
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="patgw-bench-modbus-"))
        for payload in payloads:
            for load in loads:
                folder = Path(tmp) / f"{payload}-{load}"
                try:
                    run = asyncio.run(one_run(args, folder, payload, load))
                except (RuntimeError, OSError) as exc:
                    run = {"benchmark": "modbus_mqtt", "payload": payload, "load": load,
                           "error": str(exc)}  # fmt: skip
                    log(f"{payload} at {load}/s failed: {exc}")
                print(json.dumps(run), flush=True)
                runs.append(run)
    print(json.dumps(summary(runs)), flush=True)
    return 0 if all("error" not in run for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
