"""CPU cost of one QoS 1 MQTT message, per layer of the ``mqtt`` sink and per client library.

For whoever chooses or tunes the MQTT path (decision 0028). Starts its own Mosquitto on a free
loopback port, then, for each mode, publishes ``--messages`` messages at QoS 1 in groups of
``--group`` (the way the runtime's forwarder hands the sink a batch of samples) and waits for
every PUBACK. It measures the CPU time (user + system, all threads) of this process only: the
broker runs in its own process. Prints one JSON object with CPU microseconds per message per
mode, the best of ``--rounds`` rounds (CPU time, not wall time: the figure holds on a shared
machine; run it on a quiet one for the record).

Modes:

* ``paho``: paho-mqtt alone, its network thread (``loop_start``), ``publish`` per message and
  a count of ``on_publish`` callbacks: the library's own floor as the gateway used it.
* ``session``: the gateway's session as :func:`plugins.mqtt.holder.new_session` picks it
  (``--protocol 5``: :class:`plugins.mqtt.session.Session`; ``3.1.1``: paho-mqtt through
  :class:`plugins.mqtt.paho_session.PahoSession`), ``publish`` per group, ``Delivery.wait``.
* ``sink``: :class:`plugins.mqtt.sink.MqttSink` ``forward`` of samples (``payload: sample``,
  one topic per signal): topics, JSON encoding with two timestamps, the session.
* ``gmqtt``, ``zmqtt``: the asyncio clients on PyPI, when installed (``pip install gmqtt
  zmqtt``): gmqtt ``publish`` per message, acknowledgements counted in its PUBACK handler;
  zmqtt ``publish`` awaited per message, a group gathered at once.
* ``floor``: a bare asyncio Protocol that writes hand-encoded PUBLISH packets (one
  ``transport.write`` per group) and counts PUBACKs: what any Python client must at least cost.
* ``mqtt5``: the same, with the packets encoded by the Rust ``mqtt5`` codec, when installed.

Usage: ``python benchmarks/mqtt_publish.py [--messages 100000] [--group 500]
[--modes paho,session,sink,...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import pwd
import resource
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ALL_MODES = ("paho", "session", "sink", "gmqtt", "zmqtt", "floor", "mqtt5")
SIGNALS = 1000  # distinct topics, one per signal, as in the load shape
PAYLOAD = (
    b'{"signal":"area/dev000/r000","value":1234.5,"unit":"1","source_ts":1795000000000000000,'
    b'"gateway_ts":1795000000000001000,"quality":"good","seq":123456}'
)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mosquitto() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
    )
    if found is None:
        raise SystemExit("mosquitto not found: install it (apt-get install mosquitto)")
    return found


def _topic(i: int) -> str:
    return f"bench/area/dev{i // 100:03d}/r{i % 100:03d}"


def _finish(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class _Counter:
    """Acknowledgements counted from any thread; ``wait`` returns once ``target`` arrived."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.count = 0
        self.target = 0
        self.done: asyncio.Future[None] | None = None
        self.lock = threading.Lock()

    def arm(self, target: int) -> asyncio.Future[None]:
        self.target = target
        self.done = self.loop.create_future()
        return self.done

    def add(self, n: int = 1) -> None:
        with self.lock:
            self.count += n
            reached = self.count >= self.target
        if reached and self.done is not None:
            self.loop.call_soon_threadsafe(_finish, self.done)


Runner = Callable[[str, int, int, int, str], Coroutine[Any, Any, float]]


async def run_paho(host: str, port: int, messages: int, group: int, protocol: str) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    counter = _Counter(asyncio.get_running_loop())
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho")
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    client.on_publish = lambda *_: counter.add()
    client.connect(host, port, 60)
    client.loop_start()
    try:
        await asyncio.sleep(0.2)
        done = counter.arm(messages)
        start = _cpu()
        for first in range(0, messages, group):
            for i in range(first, min(first + group, messages)):
                client.publish(_topic(i % SIGNALS), PAYLOAD, 1)
            await asyncio.sleep(0)
        await done
        return _cpu() - start
    finally:
        client.disconnect()
        client.loop_stop()


def _settings(host: str, port: int, name: str, protocol: str) -> Any:
    from plugins.mqtt.options import parse_broker_url
    from plugins.mqtt.session import SessionSettings

    url = f"mqtt://{host}:{port}"
    return SessionSettings(
        url=url,
        address=parse_broker_url(url),
        client_id=name,
        protocol=protocol,
        qos=1,
        keepalive_s=60,
        connect_timeout_s=10.0,
    )


async def run_session(host: str, port: int, messages: int, group: int, protocol: str) -> float:
    from plugins.mqtt.holder import new_session

    session = new_session(
        _settings(host, port, "bench-session", protocol), 1, asyncio.get_running_loop()
    )
    await session.open()
    session.ready = True
    try:
        groups = [
            [(_topic(i % SIGNALS), PAYLOAD) for i in range(first, min(first + group, messages))]
            for first in range(0, messages, group)
        ]
        start = _cpu()
        deliveries = [session.publish(g) for g in groups[:4]]
        for g in groups[4:]:  # four forwards at once, as the runtime runs them
            await deliveries.pop(0).wait()
            deliveries.append(session.publish(g))
        for delivery in deliveries:
            await delivery.wait()
        return _cpu() - start
    finally:
        await session.close(2.0)


async def run_sink(host: str, port: int, messages: int, group: int, protocol: str) -> float:
    from gateway import PluginContext, Quality, Sample, Signal
    from plugins.mqtt.sink import MqttOptions, MqttSink

    signals = [Signal(f"area/dev{i // 100:03d}/r{i % 100:03d}", "1") for i in range(SIGNALS)]
    options = MqttOptions(
        url=f"mqtt://{host}:{port}",
        client_id="bench-sink",
        meta_topic=None,
        payload="sample",
        protocol=protocol,
    )
    sink = MqttSink(
        options, PluginContext("bench", Path(tempfile.gettempdir()), site="bench", area="area")
    )
    sink.bind(signals)
    t0 = 1_795_000_000_000_000_000
    batches = [
        [
            Sample(
                signals[i % SIGNALS].id, 1000.0 + i * 0.25, "1", t0 + i, t0 + i + 7, Quality.GOOD, i
            )
            for i in range(first, min(first + group, messages))
        ]
        for first in range(0, messages, group)
    ]
    async with sink:
        await sink.forward(batches[0][:1], False)  # connect
        start = _cpu()
        async with asyncio.TaskGroup() as tasks:
            semaphore = asyncio.Semaphore(sink.max_concurrent_forwards)

            async def forward(batch: list[Sample]) -> None:
                async with semaphore:
                    await sink.forward(batch, False)

            for n, batch in enumerate(batches):
                tasks.create_task(forward(batch), name=f"bench-forward-{n}")
        return _cpu() - start


async def run_gmqtt(host: str, port: int, messages: int, group: int, protocol: str) -> float:
    # Imported by name: optional, and without type hints.
    gmqtt: Any = importlib.import_module("gmqtt")
    handler: Any = importlib.import_module("gmqtt.mqtt.handler").MqttPackageHandler

    counter = _Counter(asyncio.get_running_loop())
    original = handler._handle_puback_packet

    def counted(self: Any, cmd: int, packet: bytes) -> None:
        original(self, cmd, packet)
        counter.add()

    handler._handle_puback_packet = counted
    client = gmqtt.Client("bench-gmqtt")
    await client.connect(host, port, version=gmqtt.constants.MQTTv311)
    try:
        done = counter.arm(messages)
        start = _cpu()
        for first in range(0, messages, group):
            for i in range(first, min(first + group, messages)):
                client.publish(_topic(i % SIGNALS), PAYLOAD, qos=1)
            await asyncio.sleep(0)
        await done
        return _cpu() - start
    finally:
        handler._handle_puback_packet = original
        await client.disconnect()


async def run_zmqtt(host: str, port: int, messages: int, group: int, protocol: str) -> float:
    zmqtt: Any = importlib.import_module("zmqtt")
    client: Any = zmqtt.create_client(host, port, client_id="bench-zmqtt")
    async with client:
        start = _cpu()
        for first in range(0, messages, group):
            await asyncio.gather(
                *(
                    client.publish(_topic(i % SIGNALS), PAYLOAD, qos=zmqtt.QoS.AT_LEAST_ONCE)
                    for i in range(first, min(first + group, messages))
                )
            )
        return _cpu() - start


class _Floor(asyncio.Protocol):
    """Counts PUBACKs (4 bytes each) after a CONNACK (4 bytes)."""

    def __init__(self, on_acks: Callable[[int], None]) -> None:
        self.on_acks = on_acks
        self.connack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        data = self.buffer + data
        if not self.connack.done():
            self.connack.set_result(None)
            data = data[4:]
        whole = len(data) - len(data) % 4
        self.buffer = data[whole:]
        self.on_acks(whole // 4)


def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(cid)) + cid
    return bytes([0x10, len(body)]) + body


def _publish_packet(topic: bytes, payload: bytes, mid: int) -> bytes:
    length = 2 + len(topic) + 2 + len(payload)
    header = bytearray([0x32])
    while True:
        byte, length = length % 128, length // 128
        header.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes(header) + struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + payload


async def _run_floor(
    host: str, port: int, messages: int, group: int, connect: bytes, encode: Callable[[int], bytes]
) -> float:
    """Publish ``encode(i)`` for i in 0..messages-1, one write per group; count PUBACKs."""
    loop = asyncio.get_running_loop()
    counter = _Counter(loop)
    transport, protocol = await loop.create_connection(lambda: _Floor(counter.add), host, port)
    try:
        transport.write(connect)
        await protocol.connack
        await asyncio.sleep(0.2)  # the rest of an MQTT 5 CONNACK (its properties): dropped
        protocol.buffer = b""
        done = counter.arm(messages)
        start = _cpu()
        for first in range(0, messages, group):
            transport.write(b"".join(map(encode, range(first, min(first + group, messages)))))
            await asyncio.sleep(0)
        await done
        return _cpu() - start
    finally:
        transport.close()


async def run_floor(host: str, port: int, messages: int, group: int, protocol: str) -> float:
    topics = [_topic(i).encode() for i in range(SIGNALS)]

    def encode(i: int) -> bytes:
        return _publish_packet(topics[i % SIGNALS], PAYLOAD, i % 65535 + 1)

    return await _run_floor(host, port, messages, group, _connect_packet("bench-floor"), encode)


async def run_mqtt5(host: str, port: int, messages: int, group: int, protocol: str) -> float:
    # The codec speaks MQTT 5 only: an MQTT 5 CONNECT. Mosquitto answers a QoS 1 PUBLISH
    # with a 4-byte PUBACK (reason Success, no properties), as in 3.1.1.
    mqtt5: Any = importlib.import_module("mqtt5")
    topics = [_topic(i) for i in range(SIGNALS)]
    qos = mqtt5.QoS.AT_LEAST_ONCE

    def encode(i: int) -> bytes:
        packet = mqtt5.PublishPacket(
            topic=topics[i % SIGNALS], payload=PAYLOAD, qos=qos, packet_id=i % 65535 + 1
        )
        return bytes(packet.write())

    connect = bytes(mqtt5.ConnectPacket(client_id="bench-mqtt5", keep_alive=60).write())
    return await _run_floor(host, port, messages, group, connect, encode)


RUNNERS: dict[str, tuple[Runner, str | None]] = {
    "paho": (run_paho, "paho"),
    "session": (run_session, None),
    "sink": (run_sink, None),
    "gmqtt": (run_gmqtt, "gmqtt"),
    "zmqtt": (run_zmqtt, "zmqtt"),
    "floor": (run_floor, None),
    "mqtt5": (run_mqtt5, "mqtt5"),
}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(ALL_MODES))
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}: choose among {', '.join(ALL_MODES)}")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="mqtt-bench-") as folder:
        config = Path(folder) / "mosquitto.conf"
        config.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 0\nmax_inflight_messages 0\n"
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        )
        broker = await asyncio.create_subprocess_exec(
            _mosquitto(), "-c", str(config), stderr=asyncio.subprocess.DEVNULL
        )
        try:
            for _ in range(100):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                await asyncio.sleep(0.05)
            figures: dict[str, Any] = {}
            for mode in modes:
                runner, package = RUNNERS[mode]
                if package is not None and importlib.util.find_spec(package) is None:
                    figures[mode] = {"skipped": f"{package} is not installed"}
                    continue
                best: float | None = None
                for _ in range(args.rounds):
                    wall = time.perf_counter()
                    cpu = await runner("127.0.0.1", port, args.messages, args.group, args.protocol)
                    wall = time.perf_counter() - wall
                    if best is None or cpu < best:
                        best = cpu
                        figures[mode] = {
                            "cpu_us_per_message": round(cpu / args.messages * 1e6, 2),
                            "wall_s": round(wall, 3),
                        }
        finally:
            broker.terminate()
            await broker.wait()
    return {
        "benchmark": "mqtt_publish",
        "messages": args.messages,
        "group": args.group,
        "rounds": args.rounds,
        "qos": 1,
        "protocol": args.protocol,
        "payload_bytes": len(PAYLOAD),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "modes": figures,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages per round")
    parser.add_argument("--group", type=int, default=500, help="messages per publish call")
    parser.add_argument(
        "--protocol",
        choices=("5", "3.1.1"),
        default="5",
        help="MQTT version of the session and sink modes (paho, gmqtt, floor: 3.1.1; mqtt5: 5)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode (best is kept)")
    parser.add_argument(
        "--modes", default=",".join(ALL_MODES), help=f"comma-separated, of {', '.join(ALL_MODES)}"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    from gateway.logs import configure_logging

    configure_logging("json", "warning")  # to standard error: standard output is the JSON
    print(json.dumps(asyncio.run(main(parse_args())), indent=2))
