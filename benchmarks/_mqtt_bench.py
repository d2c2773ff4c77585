"""What the MQTT benchmarks share: a Mosquitto broker on loopback, CPU and memory of processes,
a minimal MQTT subscriber for a process of its own, and a description of the machine.

Used by ``upstream.py`` (synthetic driver, in-process gateway) and ``modbus_mqtt.py`` (Modbus
emulators, the gateway as a ``patgw run`` subprocess). Not a test helper: the tests have their own
broker (``tests/mosquitto.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt

from gateway import parse_iso_ns


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


class Control:
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


def is_sample_topic(topic: bytes) -> bool:
    """Not the retained metadata of a signal, nor the gateway's status or audit anchor."""
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


class RawSubscriber:
    """A minimal MQTT 3.1.1 subscriber on a blocking socket: CONNECT, SUBSCRIBE ``topic_filter``
    at QoS 1, then PUBLISH in and PUBACK out — every PUBACK of one read in one ``send``. Each
    message whose topic ``keep`` accepts is recorded in ``received`` as ``(arrival ns, topic,
    payload)``, stamped with the time its bytes were read."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        clean: bool,
        topic_filter: str = "pat/#",
        keep: Callable[[bytes], bool] = is_sample_topic,
    ) -> None:
        self.address = (host, port)
        self.client_id = client_id
        self.clean = clean
        self.topic_filter = topic_filter
        self.keep = keep
        self.received: list[tuple[int, bytes, bytes]] = []
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
        subscribe = (1).to_bytes(2, "big") + _mqtt_string(self.topic_filter) + b"\x01"
        sock.sendall(_packet(0x82, subscribe))
        sock.settimeout(None)  # blocking: waits are select()'s, and a send never times out
        self.sock = sock
        self.buffer.clear()
        self.last_ping = time.monotonic()

    def subscribe(self, within: float = 10.0) -> None:
        """Connect, and wait for the broker's acknowledgement of the subscription."""
        self.connect()
        deadline = time.monotonic() + within
        while not self.subscribed:
            if time.monotonic() > deadline:
                raise RuntimeError("the broker did not acknowledge the subscription")
            self.receive()

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
        keep = self.keep
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
                topic = bytes(buffer[body + 2 : topic_end])
                if keep(topic):
                    record((at, topic, bytes(buffer[start:stop])))
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


class SubscriberProcess:
    """A subscriber in a process of its own, seen from the benchmark: ``target(conn, *args)``
    runs there; it uses :class:`Control` on ``conn`` (``ready``, then told to stop) and sends
    back its result, a picklable object."""

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded event loop
        self._conn, child = context.Pipe()
        self._process = context.Process(target=target, args=(child, *args), daemon=True)
        self._process.start()
        child.close()

    async def _recv(self, within: float) -> Any:
        if not await asyncio.to_thread(self._conn.poll, within):
            raise RuntimeError(f"no answer from the subscriber within {within:g} s")
        return self._conn.recv()

    async def ready(self) -> None:
        await self._recv(60)

    async def message(self, within: float) -> Any:
        """The next thing the subscriber sends before its result (one it chose to send)."""
        return await self._recv(within)

    async def finish(self, max_wait_s: float, quiet_s: float = 1.0) -> Any:
        """Wait until it has received everything (nothing for ``quiet_s``); its result."""
        self._conn.send(("stop", quiet_s, max_wait_s))
        result = await self._recv(max_wait_s + 300)
        await asyncio.to_thread(self._process.join, 10)
        return result

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


@functools.lru_cache(maxsize=65536)
def _second_ns(prefix: str) -> int:
    return parse_iso_ns(prefix + "Z")


def timestamp_ns(text: str) -> int:
    """``parse_iso_ns``, with the whole second looked up once: ``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ``
    is what the gateway writes."""
    if len(text) == 30 and text[19] == ".":
        return _second_ns(text[:19]) + int(text[20:29])
    return parse_iso_ns(text)


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
