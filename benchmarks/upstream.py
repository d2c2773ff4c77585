"""Upstream delivery over MQTT: throughput, latency, and draining a backlog after an outage.

Runs the real runtime (supervisor, store writer, store-and-forward forwarder) with the synthetic
driver of ``benchmarks/pipeline.py`` and the ``mqtt`` sink at QoS 1 (``--payload``, default
``batch`` like the sink), against a Mosquitto broker it starts on a free loopback port (its
configuration in a temporary folder), with a subscriber to ``pat/#`` at QoS 1 in a separate
process, so that receiving does not share the gateway's interpreter. Prints one JSON object:

    python benchmarks/upstream.py                           # all phases, a 300 s outage (~7 min)
    python benchmarks/upstream.py --outage-s 30             # the quick run
    python benchmarks/upstream.py --phases throughput,latency --payload sample
    python benchmarks/upstream.py --no-outage --protocol 3.1.1   # MQTT 5 is the default
    python benchmarks/upstream.py --broker mqtt://10.0.0.5:1883 --no-outage

Each phase starts a fresh gateway, store and subscriber. The subscriber only notes when each
message arrived (wall clock, ns) and keeps its payload; it parses them after the phase. For
every sample received, *latency* = arrival at the subscriber - the sample's ``source_ts``. The
synthetic driver's ``source_ts`` is the moment it published the sample, so this is the whole
way source → store commit → sink → broker → subscriber. ``acked_*_ms`` is the same up to the
moment the gateway had the broker's PUBACKs for the whole delivery the sample was in (the
``mqtt`` sink's ``forward`` returned), without the broker → subscriber part. ``commits`` are the
store writer's batches (``p99_latency_ms``: a batch's oldest sample published → committed; a
commit slower than the interval makes the next batch bigger). ``cpu_s`` is the CPU time of the
gateway process (all its threads), the subscriber (receiving only), the broker and the rest of
the machine over the phase's wall time: it shows which of them is the limit, and whether other
work shared the processors.

``throughput``: ``--rate`` samples/s (default 100,000) over ``--signals`` signals (default 100)
for ``--seconds``; then the driver stops and the gateway runs on until the sink has delivered
every sample published (at most ``--settle-s``; ``all_delivered_before_stop`` says whether it
did). ``samples_per_s`` = samples received ÷ (last arrival - first arrival); ``delivered`` =
samples the broker acknowledged (the forwarder's count); ``committed`` = samples committed to
the store; ``missing`` = committed ``(signal, seq)`` never received; ``duplicates`` = samples
received more than once (QoS 1 allows them after a resend); ``unexpected`` = received but not
committed (must be 0); ``historical`` = samples that came through the backlog because the live
queue overflowed (``queue_max_samples``). Target: ≥ 50,000 samples/s.

``latency``: ``--latency-rate`` samples/s (default 10,000) for ``--seconds``;
``latency_p50_ms``, ``latency_p99_ms``, ``latency_max_ms`` over every sample received except
those published in the first second (warm-up: the sink connects on its first delivery).
Target: p99 ≤ 25 ms.

``outage``: ``--outage-rate`` samples/s (default 5,000) throughout; after ``--steady-s`` of
normal running the broker is stopped (SIGTERM) for ``--outage-s`` (default 300) and started
again on the same port; then the phase waits until the forwarder's backlog
(``gateway.forwarders[0].stats.backlog``) plus the samples still waiting for their commit is
down to ``drain_threshold`` (0.1 s of live data, at least 100 samples). ``backlog_samples``:
the backlog when the broker came back; ``reconnect_s``: from the restart until the sink is up
again (its ``retry`` backoff waits up to ``max_s``, 5 s by default, between attempts once the
outage is long); ``drain_s``: from the restart until drained, reconnecting included;
``drain_after_reconnect_s``: without it; ``drain_samples_per_s``: samples the sink delivered
in ``drain_s`` (backlog and live) ÷ ``drain_s``; ``drain_speedup`` = ``outage_s`` ÷ ``drain_s``
(target ≥ 10); ``live_p99_during_drain_ms``: latency of the samples published after the
restart that arrived during the drain and were sent live, not ``historical`` (target < 2 s);
``historical``: samples received flagged ``"historical": true``; ``missing`` after the drain,
as above.

The subscriber misses nothing while the broker is down: the broker runs with persistence and
the outage phase's subscriber has a persistent session (clean session off, a fixed client id),
so its subscription survives the restart and the broker queues for it (no queue limit) until
it is back, whichever of it and the gateway reconnects first. It tries every 0.1 s, so it is
normally first. The sink's ``retry`` is its default unless ``--retry-max-s`` is given.

``--subscriber raw`` (default) is a minimal MQTT 3.1.1 client on a plain socket that sends the
PUBACKs of each read in one write; ``paho`` is a paho-mqtt client, which sends one PUBACK per
system call and waits in ``select`` once per packet: on the 2-core development machine it took
4,300-6,400 messages/s, less than the gateway sends at 10,000 samples/s in batch mode, so it
measured itself. The broker allows any number of unacknowledged messages towards the
subscriber (``max_inflight_messages 0``; Mosquitto's default of 20 would measure the
subscriber's round trips) and is otherwise at Mosquitto's defaults (Nagle's algorithm on).
``--broker URL`` (``mqtt://host:port``, anonymous) uses a broker that is already running; the
outage phase needs to stop the broker, so add ``--no-outage``.

Also printed: the machine (CPUs, Python, SQLite, Mosquitto, paho-mqtt), the options (with the
commit interval: the configuration's default unless ``--commit-ms``), and which targets were
met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import pwd
import resource
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt
import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from pipeline import SyntheticDriver, SyntheticOptions  # the pipeline benchmark's driver

from gateway import InstrumentIO, Registry, build_registry, hookimpl, load_plan, parse_iso_ns
from gateway.logs import configure_logging
from gateway.runtime import Gateway
from gateway.runtime.forward import Forwarder, SinkState
from gateway.runtime.interpreter import configure_interpreter
from plugins.mqtt.options import parse_broker_url

PHASES = ("throughput", "latency", "outage")
TARGETS = {
    "throughput_samples_per_s": 50_000,
    "latency_p99_ms": 25.0,
    "drain_speedup": 10.0,
    "live_p99_during_drain_ms": 2_000.0,
}
SUBSCRIBER_ID = "patgw-bench-subscriber"
QUIET_S = 1.0  # the subscriber has received everything once nothing came for this long


def log(message: str) -> None:
    """Progress on standard error (standard output is the JSON only)."""
    print(f"upstream: {message}", file=sys.stderr, flush=True)


# --- the driver: pipeline.py's, stopped after a while ---------------------------------------


class BoundedOptions(SyntheticOptions):
    seconds: float | None = None  # stop publishing after this long (None: until stopped)


class BoundedDriver(SyntheticDriver):
    """:class:`pipeline.SyntheticDriver`, which publishes for ``seconds`` and then stays
    connected without publishing (the gateway runs on to deliver what it has)."""

    started_ns: int | None = None
    ended_ns: int | None = None

    def __init__(self, options: BoundedOptions, context: Any) -> None:
        super().__init__(options, context)
        self.seconds = options.seconds

    @classmethod
    def reset(cls) -> None:
        SyntheticDriver.published = 0  # a class attribute: it would carry over between phases
        cls.started_ns = cls.ended_ns = None

    async def run(self, io: InstrumentIO) -> None:
        BoundedDriver.started_ns = time.time_ns()
        if self.seconds is None:
            await super().run(io)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.seconds):
                await super().run(io)
        BoundedDriver.ended_ns = time.time_ns()
        await asyncio.Event().wait()  # returning would make the runner start it again


class BoundedPlugin:
    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("synthetic", BoundedDriver, BoundedOptions)


# --- the broker -------------------------------------------------------------------------------


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto")
    if found is None and os.access("/usr/sbin/mosquitto", os.X_OK):
        found = "/usr/sbin/mosquitto"
    if found is None:
        raise SystemExit("mosquitto not found: install it (apt-get install mosquitto)")
    return found


def mosquitto_version() -> str | None:
    try:
        out = subprocess.run(
            [mosquitto_binary(), "-h"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("mosquitto version ").strip() or None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine_busy_cpu_s() -> float:
    """CPU seconds all processors of the machine have been busy (from /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Broker:
    """Mosquitto on ``127.0.0.1:port`` with persistence; restarts on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None
        self.cpu_s = 0.0  # of processes that have been stopped
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        self.config.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    # The outage subscriber's session (and its queue) survives a restart.
                    "persistence true",
                    f"persistence_location {folder}/",
                    "autosave_interval 0",  # saved at shutdown only: no pauses while measuring
                    "max_queued_messages 0",  # no limit: a slow subscriber loses nothing
                    "max_inflight_messages 0",  # no limit on unacknowledged messages out
                    f"log_dest file {self.log}",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    # As root, mosquitto would switch to the "mosquitto" user, which cannot
                    # write the temporary folder: stay who we are (a no-op for other users).
                    f"user {pwd.getpwuid(os.getuid()).pw_name}",
                ]
            )
            + "\n"
        )

    def cpu_now(self) -> float:
        return self.cpu_s + (proc_cpu_s(self.process.pid) if self.process else 0.0)

    async def start(self) -> None:
        with (self.folder / "mosquitto.out").open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                mosquitto_binary(), "-c", str(self.config),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        for _ in range(200):
            if self.process.returncode is not None:
                raise RuntimeError(f"mosquitto exited: {self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                await asyncio.sleep(0.025)
        raise RuntimeError(f"mosquitto does not listen on {self.port}: {self.output()}")

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        self.cpu_s += proc_cpu_s(process.pid)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            async with asyncio.timeout(30):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    def output(self) -> str:
        texts = []
        for path in (self.folder / "mosquitto.out", self.log):
            if path.exists():
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts).strip()


# --- the subscriber, in its own process ---------------------------------------------------------


class _Control:
    """The subscriber's side of the pipe: ``ready``, then a stop request; decides when the
    subscriber has received everything (nothing arrived for ``quiet_s`` after the request)."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn
        self.stop_at: float | None = None  # when told to stop (monotonic)
        self.quiet_s = self.max_wait_s = 0.0
        self._next_look = 0.0
        self.cpu_at_ready = 0.0

    def ready(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu_at_ready = usage.ru_utime + usage.ru_stime  # imports and connecting excluded
        self.conn.send(("ready",))

    def done(self, last_arrival_ns: int) -> bool:
        """Whether to stop now (looked at every 50 ms at most)."""
        now = time.monotonic()
        if now < self._next_look:
            return False
        self._next_look = now + 0.05
        if self.stop_at is None:
            if not self.conn.poll():
                return False
            _, self.quiet_s, self.max_wait_s = self.conn.recv()
            self.stop_at = now
        idle_s = (time.time_ns() - last_arrival_ns) / 1e9
        return idle_s >= self.quiet_s or now - self.stop_at > self.max_wait_s

    def cpu_s(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime - self.cpu_at_ready


def _is_sample_topic(topic: bytes) -> bool:
    # Not the retained metadata of each signal, nor the gateway's status or audit anchor.
    return not topic.endswith((b"/meta", b"/status", b"/audit"))


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _packet(first_byte: int, body: bytes) -> bytes:
    """An MQTT packet: fixed header (with the remaining length) and ``body``."""
    length, size = bytearray(), len(body)
    while True:
        size, digit = divmod(size, 128)
        length.append(digit | (0x80 if size else 0))
        if not size:
            return bytes([first_byte]) + bytes(length) + body


class _RawSubscriber:
    """A minimal MQTT 3.1.1 subscriber on a blocking socket: CONNECT, SUBSCRIBE ``pat/#`` at
    QoS 1, then PUBLISH in and PUBACK out — every PUBACK of one read in one ``send``. Each
    message is stamped with the time its bytes were read. See ``--subscriber``."""

    def __init__(self, host: str, port: int, client_id: str, clean: bool) -> None:
        self.address = (host, port)
        self.client_id = client_id
        self.clean = clean
        self.received: list[tuple[int, bytes]] = []
        self.reconnects = 0
        self.sock: socket.socket | None = None
        self.buffer = bytearray()
        self.last_ping = 0.0
        self.subscribed = False  # the SUBACK came

    def connect(self) -> None:
        sock = socket.create_connection(self.address, timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flags = 0x02 if self.clean else 0x00
        body = _mqtt_string("MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big")
        sock.sendall(_packet(0x10, body + _mqtt_string(self.client_id)))
        connack = sock.recv(4)
        if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
            sock.close()
            raise OSError(f"connection refused by the broker: {connack!r}")
        # Subscribe again even in a resumed session: harmless, and the same in both cases.
        sock.sendall(_packet(0x82, (1).to_bytes(2, "big") + _mqtt_string("pat/#") + b"\x01"))
        sock.settimeout(None)  # blocking: waits are select()'s, and a send never times out
        self.sock = sock
        self.buffer.clear()
        self.last_ping = time.monotonic()

    def receive(self) -> None:
        """Read what is there (waiting 50 ms at most), record it, acknowledge it; raise
        ``OSError`` if the connection is gone."""
        sock = self.sock
        assert sock is not None
        readable, _, _ = select.select([sock], [], [], 0.05)
        now = time.monotonic()
        if now - self.last_ping > 30:
            sock.sendall(b"\xc0\x00")  # PINGREQ
            self.last_ping = now
        if not readable:
            return
        chunk = sock.recv(1 << 18)
        if not chunk:
            raise OSError("connection closed by the broker")
        at = time.time_ns()
        buffer = self.buffer
        buffer += chunk
        acks = []
        record = self.received.append
        pos, end = 0, len(buffer)
        while pos < end:
            first = buffer[pos]
            body, size, shift, complete = pos + 1, 0, 0, False
            while body < end:  # the remaining length: 1 to 4 bytes of 7 bits each
                digit = buffer[body]
                size |= (digit & 0x7F) << shift
                shift += 7
                body += 1
                if not digit & 0x80:
                    complete = True
                    break
            stop = body + size
            if not complete or stop > end:
                break  # the rest comes with the next read
            if first >> 4 == 3:  # PUBLISH
                topic_end = body + 2 + int.from_bytes(buffer[body : body + 2], "big")
                start = topic_end
                if (first >> 1) & 3:  # QoS 1 (as subscribed): acknowledge its packet id
                    acks.append(b"\x40\x02" + bytes(buffer[topic_end : topic_end + 2]))
                    start += 2
                if _is_sample_topic(bytes(buffer[body + 2 : topic_end])):
                    record((at, bytes(buffer[start:stop])))
            elif first >> 4 == 9:  # SUBACK
                self.subscribed = True
            pos = stop
        del buffer[:pos]
        if acks:
            sock.sendall(b"".join(acks))

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.sendall(b"\xe0\x00")  # DISCONNECT
            self.sock.close()
            self.sock = None


def _receive_raw(
    control: _Control, host: str, port: int, client_id: str, persistent: bool
) -> tuple[list[tuple[int, bytes]], int]:
    subscriber = _RawSubscriber(host, port, client_id, clean=not persistent)
    subscriber.connect()
    deadline = time.monotonic() + 10
    while not subscriber.subscribed:
        if time.monotonic() > deadline:
            raise RuntimeError("the broker did not acknowledge the subscription")
        subscriber.receive()
    control.ready()
    received = subscriber.received
    while not control.done(received[-1][0] if received else 0):
        try:
            if subscriber.sock is None:
                time.sleep(0.1)  # the broker is away: try again every 0.1 s
                subscriber.connect()
                subscriber.reconnects += 1
            subscriber.receive()
        except OSError:
            if subscriber.sock is not None:
                subscriber.sock.close()
                subscriber.sock = None
    subscriber.close()
    return received, subscriber.reconnects


def _receive_paho(
    control: _Control, host: str, port: int, client_id: str, persistent: bool
) -> tuple[list[tuple[int, bytes]], int]:
    received: list[tuple[int, bytes]] = []
    record = received.append
    clock = time.time_ns
    subscribed = False

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe("pat/#", qos=1)

    def on_subscribe(*_: Any) -> None:
        nonlocal subscribed
        subscribed = True

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if _is_sample_topic(message.topic.encode()):
            record((clock(), bytes(message.payload)))

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent
    )
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, port, keepalive=30)
    while not subscribed:
        client.loop(0.1)
    control.ready()
    reconnects = 0
    while not control.done(received[-1][0] if received else 0):
        rc = client.loop(0.05)
        if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
            time.sleep(0.1)  # the broker is away: try again every 0.1 s
            with contextlib.suppress(OSError):
                if client.reconnect() == mqtt.MQTT_ERR_SUCCESS:
                    reconnects += 1
    client.disconnect()
    client.loop(0.5)
    return received, reconnects


def _subscriber(
    conn: multiprocessing.connection.Connection,
    host: str,
    port: int,
    persistent: bool,
    kind: str,
) -> None:
    """The subscriber process: subscribe to ``pat/#`` at QoS 1 and record ``(arrival ns,
    payload)`` of every sample message until told to stop and nothing came for ``quiet_s``;
    then parse, and send back the samples as arrays. Reconnects every 0.1 s while the broker
    is away. ``persistent``: a fixed client id and clean session off, so the broker keeps the
    subscription and queues for it while it is disconnected."""
    control = _Control(conn)
    client_id = SUBSCRIBER_ID if persistent else f"{SUBSCRIBER_ID}-{os.getpid()}"
    receive = _receive_raw if kind == "raw" else _receive_paho
    received, reconnects = receive(control, host, port, client_id, persistent)
    receive_cpu_s = control.cpu_s()
    if persistent:  # end the broker's session (and its queue) for good
        with contextlib.suppress(OSError):
            cleaner = _RawSubscriber(host, port, SUBSCRIBER_ID, clean=True)
            cleaner.connect()
            cleaner.close()
    messages = len(received)
    result = _parse(received)  # empties received
    result["messages"] = messages
    result["reconnects"] = reconnects
    result["receive_cpu_s"] = round(receive_cpu_s, 2)
    conn.send(result)


@functools.lru_cache(maxsize=65536)
def _second_ns(prefix: str) -> int:
    return parse_iso_ns(prefix + "Z")


def _timestamp_ns(text: str) -> int:
    """``parse_iso_ns``, with the whole second looked up once: ``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ``
    is what the gateway writes."""
    if len(text) == 30 and text[19] == ".":
        return _second_ns(text[:19]) + int(text[20:29])
    return parse_iso_ns(text)


def _parse(received: list[tuple[int, bytes]]) -> dict[str, Any]:
    """Arrays of what arrived: per sample its arrival, source_ts, signal (index into
    ``signals``), seq and historical flag."""
    arrival: list[int] = []
    source: list[int] = []
    signal_index: list[int] = []
    seqs: list[int] = []
    historical: list[bool] = []
    names: dict[str, int] = {}
    loads = json.loads
    while received:
        at, payload = received.pop()  # from the end, freeing memory as it goes
        items = loads(payload)
        for item in items if isinstance(items, list) else (items,):
            arrival.append(at)
            source.append(_timestamp_ns(item["source_ts"]))
            name = item["signal"]
            index = names.get(name)
            if index is None:
                index = names[name] = len(names)
            signal_index.append(index)
            seqs.append(item["seq"])
            historical.append(item.get("historical", False))
    return {
        "signals": list(names),
        "arrival_ns": np.array(arrival, dtype=np.int64),
        "source_ns": np.array(source, dtype=np.int64),
        "signal": np.array(signal_index, dtype=np.int64),
        "seq": np.array(seqs, dtype=np.int64),
        "historical": np.array(historical, dtype=bool),
    }


class Subscriber:
    """The subscriber process, seen from the benchmark."""

    def __init__(self, host: str, port: int, persistent: bool, kind: str) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded event loop
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_subscriber, args=(child, host, port, persistent, kind), daemon=True
        )
        self._process.start()
        child.close()

    async def _recv(self, within: float) -> Any:
        if not await asyncio.to_thread(self._conn.poll, within):
            raise RuntimeError(f"no answer from the subscriber within {within:g} s")
        return self._conn.recv()

    async def ready(self) -> None:
        await self._recv(60)

    async def finish(self, max_wait_s: float) -> dict[str, Any]:
        """Wait until it has received everything (nothing for ``QUIET_S``); its arrays."""
        self._conn.send(("stop", QUIET_S, max_wait_s))
        result: dict[str, Any] = await self._recv(max_wait_s + 300)
        await asyncio.to_thread(self._process.join, 10)
        return result

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


# --- one phase ----------------------------------------------------------------------------------


def write_config(
    folder: Path, args: argparse.Namespace, url: str, rate: float, seconds: float | None
) -> Path:
    sink: dict[str, Any] = {
        "id": "mqtt",
        "type": "mqtt",
        "options": {"url": url, "payload": args.payload, "qos": 1, "protocol": args.protocol},
    }
    if args.topic is not None:
        sink["options"]["topic"] = args.topic
        # Each signal keeps its own retained metadata topic.
        sink["options"]["meta_topic"] = "pat/{site}/{area}/{instrument}/{signal}/meta"
    if args.batch_max_samples is not None:
        sink["batch_max_samples"] = args.batch_max_samples
    if args.retry_max_s is not None:
        sink["retry"] = {"initial_s": min(0.5, args.retry_max_s), "max_s": args.retry_max_s}
    store: dict[str, Any] = {"path": str(folder / "bench.sqlite")}
    if args.commit_ms is not None:
        store["commit_interval_ms"] = args.commit_ms
    config = {
        "area": "bench",
        "store": store,
        "data_dir": str(folder / "data"),
        "instruments": [
            {
                "id": "synth",
                "driver": "synthetic",
                "options": {"signals": args.signals, "rate": rate, "seconds": seconds},
                # Every signal converted mL/min → L/h, as in pipeline.py.
                "signals": [{"id": f"s{i}", "unit": "L/h"} for i in range(args.signals)],
            }
        ],
        "sinks": [sink],
    }
    path = folder / "bench.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Phase:
    """A fresh store, gateway and subscriber; :meth:`begin`, then :meth:`end`."""

    def __init__(
        self,
        name: str,
        folder: Path,
        args: argparse.Namespace,
        url: str,
        broker: Broker | None,
        rate: float,
        seconds: float | None,
        persistent: bool = False,
    ) -> None:
        self.name = name
        self.folder = folder / name
        self.args = args
        self.url = url
        self.broker = broker
        self.rate = rate
        self.persistent = persistent
        config = write_config(self.folder, args, url, rate, seconds)
        self.plan = load_plan(config, build_registry([BoundedPlugin()]))
        self.gateway = Gateway(self.plan)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[Any] | None = None
        self.subscriber: Subscriber | None = None
        self._cpu = (0.0, 0.0, 0.0)
        self._machine_cpu = 0.0
        self.acks: list[tuple[int, list[int]]] = []
        self._time_acks(self.plan.sinks[0].instance)

    def _time_acks(self, sink: Any) -> None:
        """Note when each forward is acknowledged, and its samples' source_ts: the latency to
        the broker's PUBACK as the gateway sees it (without the subscriber's part)."""
        forward = sink.forward
        acks = self.acks

        async def timed(samples: Any, historical: bool) -> None:
            await forward(samples, historical)
            acks.append((time.time_ns(), [s.source_ts for s in samples]))

        sink.forward = timed

    @property
    def forwarder(self) -> Forwarder:
        return self.gateway.forwarders[0]

    async def begin(self) -> None:
        address = parse_broker_url(self.url)
        self.subscriber = Subscriber(
            address.host, address.port, self.persistent, self.args.subscriber
        )
        await self.subscriber.ready()
        BoundedDriver.reset()
        self._cpu = (time.process_time(), time.perf_counter(), self._broker_cpu())
        self._machine_cpu = machine_busy_cpu_s()
        self.task = asyncio.create_task(self.gateway.run(self.stop), name=f"gateway.{self.name}")
        started = asyncio.create_task(self.gateway.started.wait())
        await asyncio.wait({self.task, started}, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            started.cancel()
            self.task.result()
            raise RuntimeError("the gateway stopped at start-up")

    def _broker_cpu(self) -> float:
        return self.broker.cpu_now() if self.broker is not None else 0.0

    def settled(self) -> bool:
        """The driver has stopped, and the sink has delivered everything it published."""
        writer = self.gateway.stats
        return (
            BoundedDriver.ended_ns is not None
            and writer.committed + writer.dropped >= SyntheticDriver.published
            and self.forwarder.stats.backlog == 0
        )

    def undelivered(self) -> int:
        """Published but not yet acknowledged by the broker: the forwarder's backlog (committed,
        not acknowledged) and what still waits for its commit."""
        assert self.gateway.writer is not None
        return self.forwarder.stats.backlog + len(self.gateway.writer.pending)

    async def until(self, condition: Callable[[], bool], within: float) -> bool:
        """Poll ``condition`` every 20 ms, at most ``within`` seconds; whether it held."""
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                return False
            if self.task is not None and self.task.done():
                self.task.result()
                raise RuntimeError("the gateway stopped")
            await asyncio.sleep(0.02)
        return True

    async def end(self) -> dict[str, Any]:
        """Stop the gateway, collect what the subscriber got; figures common to all phases."""
        assert self.task is not None and self.subscriber is not None
        self.stop.set()
        summary = await self.task
        cpu_gateway = time.process_time() - self._cpu[0]
        try:
            received = await self.subscriber.finish(self.args.settle_s)
        finally:
            self.subscriber.kill()
        wall = time.perf_counter() - self._cpu[1]
        sink = summary.sinks["mqtt"]
        result: dict[str, Any] = {
            "offered_per_s": self.rate,
            "offered": SyntheticDriver.published,
            "committed": summary.committed,
            "delivered": sink["delivered"],
            "delivered_historical": sink["historical"],
            "undelivered_at_stop": sink["backlog"],
            "sink_failures": sink["failures"],
            "sink_resent": sink["resent"],
            "received": int(received["seq"].size),
            "messages": received["messages"],
        }
        result |= self._check(received)
        writer = self.gateway.stats
        result["commits"] = {
            "batches": writer.batches,
            "mean_samples": round(writer.committed / writer.batches) if writer.batches else 0,
            "p99_latency_ms": round(writer.latency_percentile(0.99) or 0.0, 1),
            "max_latency_ms": round(max(writer.commit_latency_ms, default=0.0), 1),
        }
        broker_cpu = self._broker_cpu() - self._cpu[2]
        machine_cpu = machine_busy_cpu_s() - self._machine_cpu
        result["cpu_s"] = {
            "wall": round(wall, 1),
            "gateway": round(cpu_gateway, 1),
            "subscriber_receiving": received["receive_cpu_s"],
            "broker": round(broker_cpu, 1) if self.broker else None,
            # Everything else on the machine (the subscriber's start and parsing included):
            # other work competing for the same processors.
            "rest_of_machine": round(
                machine_cpu - cpu_gateway - received["receive_cpu_s"] - broker_cpu, 1
            ),
        }
        self.received = received
        if self.acks:
            acked = np.concatenate([np.full(len(ts), at) for at, ts in self.acks])
            source = np.concatenate([np.array(ts, dtype=np.int64) for _, ts in self.acks])
            self.acked = {"arrival_ns": acked, "source_ns": source}
        else:
            self.acked = {"arrival_ns": np.zeros(0, np.int64), "source_ns": np.zeros(0, np.int64)}
        return result

    def _check(self, received: dict[str, Any]) -> dict[str, Any]:
        """Every committed ``(signal, seq)`` against what was received."""
        index = {name: i for i, name in enumerate(received["signals"])}
        with contextlib.closing(sqlite3.connect(self.folder / "bench.sqlite")) as db:
            names = dict(db.execute("SELECT id, name FROM signal_def").fetchall())
            rows = db.execute("SELECT def_id, seq FROM sample").fetchall()
        for name in names.values():
            index.setdefault(name, len(index))
        committed = np.array([(index[names[d]] << 40) | seq for d, seq in rows], dtype=np.int64)
        keys = (received["signal"] << 40) | received["seq"]
        unique = np.unique(keys)
        return {
            "missing": int(np.setdiff1d(committed, unique, assume_unique=True).size),
            "duplicates": int(keys.size - unique.size),
            "unexpected": int(np.setdiff1d(unique, committed, assume_unique=True).size),
            "historical": int(received["historical"].sum()),
        }


def latency_ms(received: dict[str, Any], mask: Any = None) -> dict[str, Any]:
    lat = (received["arrival_ns"] - received["source_ns"]) / 1e6
    if mask is not None:
        lat = lat[mask]
    if not lat.size:
        return {"samples": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    p50, p99 = np.percentile(lat, [50, 99])
    return {
        "samples": int(lat.size),
        "p50_ms": round(float(p50), 2),
        "p99_ms": round(float(p99), 2),
        "max_ms": round(float(lat.max()), 2),
    }


def receive_rate(received: dict[str, Any]) -> tuple[float, float]:
    arrival = received["arrival_ns"]
    if arrival.size < 2:
        return 0.0, 0.0
    span = (int(arrival.max()) - int(arrival.min())) / 1e9
    return span, arrival.size / span if span > 0 else 0.0


async def throughput(phase: Phase, seconds: float) -> dict[str, Any]:
    await phase.begin()
    await phase.until(lambda: BoundedDriver.ended_ns is not None, seconds + 60)
    offered_s = ((BoundedDriver.ended_ns or 0) - (BoundedDriver.started_ns or 0)) / 1e9
    settled = await phase.until(phase.settled, phase.args.settle_s)
    result = await phase.end()
    span, rate = receive_rate(phase.received)
    lat = latency_ms(phase.received)
    acked = latency_ms(phase.acked)
    return {
        "samples_per_s": round(rate),
        "receive_span_s": round(span, 2),
        "offer_s": round(offered_s, 2),
        "all_delivered_before_stop": settled,
        **result,
        "latency_p50_ms": lat["p50_ms"],
        "latency_p99_ms": lat["p99_ms"],
        "latency_max_ms": lat["max_ms"],
        "acked_p50_ms": acked["p50_ms"],
        "acked_p99_ms": acked["p99_ms"],
    }


async def latency(phase: Phase, seconds: float) -> dict[str, Any]:
    await phase.begin()
    await phase.until(lambda: BoundedDriver.ended_ns is not None, seconds + 60)
    await phase.until(phase.settled, phase.args.settle_s)
    result = await phase.end()
    source = phase.received["source_ns"]
    warm_up_end = (BoundedDriver.started_ns or 0) + 1_000_000_000
    lat = latency_ms(phase.received, source >= warm_up_end)
    acked = latency_ms(phase.acked, phase.acked["source_ns"] >= warm_up_end)
    _, rate = receive_rate(phase.received)
    return {
        "latency_p50_ms": lat["p50_ms"],
        "latency_p99_ms": lat["p99_ms"],
        "latency_max_ms": lat["max_ms"],
        "latency_samples": lat["samples"],
        "acked_p50_ms": acked["p50_ms"],
        "acked_p99_ms": acked["p99_ms"],
        "acked_max_ms": acked["max_ms"],
        "warm_up_s": 1.0,
        "samples_per_s": round(rate),
        **result,
    }


async def outage(phase: Phase, args: argparse.Namespace, broker: Broker) -> dict[str, Any]:
    await phase.begin()
    stats = phase.forwarder.stats
    if not await phase.until(lambda: stats.state is SinkState.UP, 30):
        raise RuntimeError(f"the sink did not come up: {stats.last_error}")
    await asyncio.sleep(args.steady_s)
    log(f"outage: stopping the broker for {args.outage_s:g} s")
    down_at = time.monotonic()
    await broker.stop(signal.SIGTERM)
    stopped_s = time.monotonic() - down_at
    while (left := args.outage_s - (time.monotonic() - down_at)) > 0:
        await asyncio.sleep(min(left, 30.0))
        if left > 30:
            log(f"outage: backlog {stats.backlog}, {max(0.0, left - 30):.0f} s to go")
    await broker.start()
    restart_at = time.monotonic()
    restart_ns = time.time_ns()
    outage_s = restart_at - down_at
    backlog = stats.backlog
    delivered = stats.delivered
    log(f"outage: broker back after {outage_s:.1f} s, backlog {backlog}; draining")
    threshold = max(100, int(args.outage_rate * 0.1))
    reconnected = await phase.until(
        lambda: stats.state is SinkState.UP, max(60.0, 2 * args.outage_s)
    )
    reconnect_s = time.monotonic() - restart_at
    drained = await phase.until(
        lambda: phase.undelivered() <= threshold, max(60.0, 2 * args.outage_s)
    )
    drained_at = time.monotonic()
    drained_ns = time.time_ns()
    drain_s = drained_at - restart_at
    delivered_in_drain = stats.delivered - delivered
    log(f"outage: drained in {drain_s:.1f} s" if drained else "outage: not drained in time")
    await asyncio.sleep(2.0)  # a little steady running after the drain
    result = await phase.end()
    received = phase.received
    arrival = received["arrival_ns"]
    # Live samples published after the restart: not those the broker had queued for the
    # subscriber across the restart, nor those published before the sink was back (historical).
    during = (arrival >= restart_ns) & (arrival <= drained_ns)
    live = latency_ms(
        received, during & (received["source_ns"] >= restart_ns) & ~received["historical"]
    )
    return {
        "outage_s": round(outage_s, 1),
        "broker_stop_s": round(stopped_s, 2),
        "backlog_samples": backlog,
        "reconnect_s": round(reconnect_s, 2) if reconnected else None,
        "drained": drained,
        "drain_threshold": threshold,
        "drain_s": round(drain_s, 2),
        "drain_after_reconnect_s": round(drain_s - reconnect_s, 2) if reconnected else None,
        "drain_samples_per_s": round(delivered_in_drain / drain_s) if drain_s > 0 else None,
        "drain_speedup": round(outage_s / drain_s, 2) if drained and drain_s > 0 else None,
        "live_p50_during_drain_ms": live["p50_ms"],
        "live_p99_during_drain_ms": live["p99_ms"],
        "live_max_during_drain_ms": live["max_ms"],
        "live_samples_during_drain": live["samples"],
        "subscriber_reconnects": received["reconnects"],
        "steady_s": args.steady_s,
        **result,
    }


# --- the whole run ------------------------------------------------------------------------------


def source_version() -> str | None:
    """The repository's commit, with ``+dirty`` if gateway/ or plugins/ have changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "gateway", "plugins")
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def machine() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "paho_mqtt": paho.mqtt.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


async def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    broker = None if args.broker else Broker(folder / "broker")
    url = args.broker or (broker.url if broker else "")
    result: dict[str, Any] = {
        "benchmark": "upstream",
        "source": source_version(),
        "machine": machine() | {"mosquitto": None if args.broker else mosquitto_version()},
        "targets": TARGETS,
    }
    try:
        if broker is not None:
            await broker.start()
        runs: dict[str, Any] = {}
        first: Phase | None = None
        for name in args.phases:
            log(f"phase {name}")
            if name == "throughput":
                phase = Phase(name, folder, args, url, broker, args.rate, args.seconds)
                runs[name] = await throughput(phase, args.seconds)
            elif name == "latency":
                phase = Phase(name, folder, args, url, broker, args.latency_rate, args.seconds)
                runs[name] = await latency(phase, args.seconds)
            else:
                assert broker is not None
                phase = Phase(
                    name, folder, args, url, broker, args.outage_rate, None, persistent=True
                )
                runs[name] = await outage(phase, args, broker)
            first = first or phase
        if first is not None:
            store = first.plan.config.store
            sink = first.plan.config.sinks[0]
            result["options"] = {
                "phases": list(args.phases),
                "broker": "external" if args.broker else "mosquitto on loopback, started here",
                "payload": args.payload,
                "protocol": args.protocol,
                "topic": args.topic or "pat/{site}/{area}/{instrument}/{signal} (default)",
                "qos": 1,
                "signals": args.signals,
                "seconds": args.seconds,
                "rate": args.rate,
                "latency_rate": args.latency_rate,
                "outage_rate": args.outage_rate,
                "outage_s": args.outage_s,
                "commit_interval_ms": store.commit_interval_ms,
                "batch_max_samples": sink.batch_max_samples,
                "queue_max_samples": sink.queue_max_samples,
                "retry": sink.retry.model_dump(),
                "settle_s": args.settle_s,
            }
        result |= runs
    finally:
        if broker is not None:
            await broker.stop()
    result["met"] = met(result)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def met(result: dict[str, Any]) -> dict[str, bool | None]:
    """Each target: met (true), missed (false) or not measured (null)."""

    def check(phase: str, key: str, ok: Callable[[float], bool]) -> bool | None:
        value = result.get(phase, {}).get(key)
        return None if value is None else ok(value)

    return {
        "throughput_samples_per_s": check(
            "throughput", "samples_per_s", lambda v: v >= TARGETS["throughput_samples_per_s"]
        ),
        "latency_p99_ms": check(
            "latency", "latency_p99_ms", lambda v: v <= TARGETS["latency_p99_ms"]
        ),
        "drain_speedup": check("outage", "drain_speedup", lambda v: v >= TARGETS["drain_speedup"]),
        "live_p99_during_drain_ms": check(
            "outage",
            "live_p99_during_drain_ms",
            lambda v: v < TARGETS["live_p99_during_drain_ms"],
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated, in order")
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput and latency")
    parser.add_argument("--rate", type=float, default=100_000.0, help="throughput: samples/s")
    parser.add_argument("--latency-rate", type=float, default=10_000.0, help="samples/s")
    parser.add_argument("--outage-rate", type=float, default=5_000.0, help="samples/s")
    parser.add_argument("--outage-s", type=float, default=300.0, help="broker down this long")
    parser.add_argument("--steady-s", type=float, default=5.0, help="running before the outage")
    parser.add_argument("--signals", type=int, default=100)
    parser.add_argument("--payload", choices=("sample", "batch"), default="batch")
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version")
    parser.add_argument(
        "--topic",
        default=None,
        help="the sink's topic template, e.g. 'pat/{site}/{area}/{instrument}': one topic (and"
        " one batch per delivery) per instrument; default: the sink's, one per signal",
    )
    parser.add_argument("--commit-ms", type=int, default=None, help="default: the config's")
    parser.add_argument("--batch-max-samples", type=int, default=None)
    parser.add_argument(
        "--retry-max-s", type=float, default=None, help="the sink's retry max_s (default: 30)"
    )
    parser.add_argument(
        "--settle-s",
        type=float,
        default=120.0,
        help="longest wait for the sink to deliver what was offered",
    )
    parser.add_argument(
        "--subscriber",
        choices=("raw", "paho"),
        default="raw",
        help="raw: a minimal MQTT client (default); paho: paho-mqtt (slower)",
    )
    parser.add_argument("--broker", default=None, help="mqtt://host:port of a running broker")
    parser.add_argument("--no-outage", action="store_true", help="skip the outage phase")
    args = parser.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown or not phases:
        parser.error(f"--phases: choose from {', '.join(PHASES)} (got {args.phases!r})")
    if args.no_outage:
        phases = [p for p in phases if p != "outage"]
    if args.broker is not None:
        try:
            address = parse_broker_url(args.broker)
        except ValueError as exc:
            parser.error(f"--broker: {exc}")
        if address.tls:
            parser.error("--broker: only mqtt:// (no TLS) is supported here")
        if "outage" in phases:
            parser.error("the outage phase stops and restarts the broker: with --broker, add"
                         " --no-outage")  # fmt: skip
    args.phases = phases
    configure_logging("json", "warning")
    configure_interpreter()  # as patgw run does
    with tempfile.TemporaryDirectory(prefix="patgw-bench-") as folder:
        result = asyncio.run(measure(args, Path(folder)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
