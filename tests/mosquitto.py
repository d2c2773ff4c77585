"""A real Mosquitto broker on loopback, and a real MQTT client that records what it receives.

For the ``mqtt`` sink's tests. :class:`Mosquitto` starts the system's ``mosquitto`` binary on a
free loopback port with its own configuration in a test folder (anonymous, with a password
file, an ACL file, or behind TLS), and can stop, kill, pause and restart it on the same port,
and reload its ACL (SIGHUP). The Debian
package also starts a system broker on port 1883; these tests never use it.
:class:`Subscriber` is a paho-mqtt client on its own thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
import pytest
from conftest import certificate_builder, free_port, wait_for, write_pem_key
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

__all__ = [
    "BrokerTls",
    "Mosquitto",
    "Received",
    "Subscriber",
    "make_broker_tls",
    "mosquitto_binary",
]


def mosquitto_binary() -> str:
    """The ``mosquitto`` executable; fails the test (never skips) when it is missing."""
    found = shutil.which("mosquitto")
    if found is None and os.access("/usr/sbin/mosquitto", os.X_OK):
        found = "/usr/sbin/mosquitto"
    if found is None:
        pytest.fail("mosquitto not found: install it (apt-get install mosquitto); .ci/run does")
    return found


@dataclass(frozen=True)
class BrokerTls:
    """PEM files of a test certificate authority and of a broker certificate it signed."""

    ca: Path
    cert: Path
    key: Path


def make_broker_tls(folder: Path, host: str = "127.0.0.1") -> BrokerTls:
    """A CA and a server certificate for ``host`` (an IP address) and ``localhost``."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "PAT Gateway test CA")])
    ca_cert = (
        certificate_builder(ca_name, ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        certificate_builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mosquitto")]), ca_name, key
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    tls = BrokerTls(folder / "ca.pem", folder / "broker.pem", folder / "broker.key")
    tls.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_pem_key(tls.key, key)
    return tls


def _password_line(user: str, password: str) -> str:
    # Mosquitto's own "$6$" format (salted SHA-512), which mosquitto 2.x still reads; used
    # only when mosquitto_passwd is not installed next to the broker.
    salt = os.urandom(12)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return f"{user}:$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"


def write_password_file(path: Path, users: dict[str, str]) -> None:
    """A mosquitto password file, made with ``mosquitto_passwd -b`` when it is installed."""
    tool = shutil.which("mosquitto_passwd")
    path.write_text("")
    for user, password in users.items():
        if tool is None:
            with path.open("a") as file:
                file.write(_password_line(user, password))
        else:
            subprocess.run([tool, "-b", str(path), user, password], check=True, timeout=10)


class Mosquitto:
    """A mosquitto process on ``127.0.0.1:port``; the port stays the same across restarts.

    ``users`` turns anonymous access off and logs in with a password file; ``acl`` is the text
    of an ACL file (Mosquitto's ``acl_file`` format: ``topic deny pat/x`` lines and such; change
    it with :meth:`set_acl`); ``tls`` makes the listener TLS-only; ``persistence`` keeps
    retained messages, persistent sessions and their queued messages across a :meth:`stop`
    (SIGTERM saves them to ``folder``) and :meth:`start` (not across :meth:`kill`);
    ``debug_log`` logs every packet (e.g. to count :meth:`denied` publishes);
    ``max_queued_messages`` is Mosquitto's option (0: no limit). Use as ``async with`` or call
    :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        folder: Path,
        *,
        port: int | None = None,
        users: dict[str, str] | None = None,
        tls: BrokerTls | None = None,
        persistence: bool = False,
        acl: str | None = None,
        debug_log: bool = False,
        max_queued_messages: int = 0,
    ) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.users = users
        self.tls = tls
        self.persistence = persistence
        self.acl = acl
        self.debug_log = debug_log
        self.max_queued_messages = max_queued_messages
        self.acl_file = folder / "acl"
        self.process: asyncio.subprocess.Process | None = None
        self.config = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.users else 'true'}",
            *(
                ["persistence true", f"persistence_location {self.folder}/"]
                if self.persistence
                else ["persistence false"]
            ),
            # 0: no limit, so a slow test subscriber loses nothing. (But Mosquitto 2.0.11 then
            # drops an MQTT 5 connection right after refusing one of its messages.)
            f"max_queued_messages {self.max_queued_messages}",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            *(["log_type debug"] if self.debug_log else []),
            # As root, mosquitto switches to the "mosquitto" user, which cannot read the test
            # folder: stay who we are (a no-op for other users).
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
        ]
        if self.users:
            password_file = self.folder / "passwords"
            write_password_file(password_file, self.users)
            lines.append(f"password_file {password_file}")
        if self.acl is not None:
            self.acl_file.write_text(self.acl)
            lines.append(f"acl_file {self.acl_file}")
        if self.tls:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.cert}",
                f"keyfile {self.tls.key}",
            ]
        self.config.write_text("\n".join(lines) + "\n")

    def _accepts(self) -> bool:
        process = self.process
        if process is not None and process.returncode is not None:
            pytest.fail(f"mosquitto exited with {process.returncode}: {self.output()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def output(self) -> str:
        """What mosquitto printed and logged (for failure messages)."""
        texts = []
        for path in (self.folder / "mosquitto.out", self.log):
            if path.exists():
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts).strip()

    async def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        assert self.process is None, "already running"
        if not self.config.exists():
            self._write_config()
        with (self.folder / "mosquitto.out").open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                mosquitto_binary(),
                "-c",
                str(self.config),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        await wait_for(self._accepts, within=5.0, what=f"mosquitto on port {self.port}")

    async def _end(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):  # it has just exited by itself
            process.send_signal(signal.SIGCONT)  # a paused broker handles SIGTERM once resumed
            process.send_signal(sig)
        async with asyncio.timeout(5.0):
            await process.wait()

    async def stop(self) -> None:
        """SIGTERM: mosquitto closes its connections and exits."""
        await self._end(signal.SIGTERM)

    async def kill(self) -> None:
        """SIGKILL: connections break as in a crash."""
        await self._end(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered (a hung broker)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def set_acl(self, acl: str) -> None:
        """Replace the ACL file and have the running broker reload it (SIGHUP); returns once
        the broker logged the reload."""
        assert self.process is not None and self.acl is not None, "started with an acl"
        self.acl = acl
        before = self.output().count("Reloading config")
        self.acl_file.write_text(acl)
        self.process.send_signal(signal.SIGHUP)
        await wait_for(
            lambda: self.output().count("Reloading config") > before,
            within=5.0,
            what="mosquitto reloading its configuration",
        )

    def denied(self, topic: str) -> int:
        """How many PUBLISH packets to ``topic`` the broker refused (needs ``debug_log``)."""
        assert self.debug_log, "start the broker with debug_log=True"
        return sum(
            1
            for line in self.output().splitlines()
            if "Denied PUBLISH" in line and f", '{topic}', " in line
        )

    async def restart(self) -> None:
        """Stop (if running) and start again on the same port."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Mosquitto:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.kill()


class Received(NamedTuple):
    """One message as a subscriber got it."""

    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho-mqtt client subscribed to ``topic`` (``#``: everything but ``$`` topics) at QoS 1
    that records every message it receives in :attr:`messages`, in order of arrival.

    ``persistent`` makes it a consumer that misses nothing across a broker restart: a fixed
    client id (``client_id``, default ``test-sub-persistent``), a persistent session
    (clean_session false: with a :class:`Mosquitto` that has ``persistence``, the broker keeps
    the subscription and queues QoS 1 messages for it while it is away, also across a
    restart) and reconnection every second while the connection is lost. :attr:`connects`
    counts the accepted connections.
    """

    def __init__(
        self,
        broker: Mosquitto,
        topic: str = "#",
        *,
        username: str | None = None,
        password: str | None = None,
        persistent: bool = False,
        client_id: str | None = None,
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.persistent = persistent
        self.messages: list[Received] = []
        self.connects = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        if client_id is None:
            client_id = "test-sub-persistent" if persistent else f"test-sub-{id(self)}"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False if persistent else None,
        )
        if persistent:
            client.reconnect_delay_set(min_delay=1, max_delay=1)
        if username is not None:
            client.username_pw_set(username, password)
        if broker.tls is not None:
            client.tls_set_context(ssl.create_default_context(cafile=broker.tls.ca))
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, *_: Any
    ) -> None:
        if reason.is_failure:
            return
        with self._lock:
            self.connects += 1
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, *_: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(
                Received(message.topic, bytes(message.payload), bool(message.retain))
            )

    def on(self, topic: str) -> list[Received]:
        """The messages received on ``topic``."""
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def since(self, start: int) -> list[Received]:
        """The messages received after the first ``start`` (the network thread appends to
        :attr:`messages` meanwhile)."""
        with self._lock:
            return self.messages[start:]

    def topics(self) -> set[str]:
        with self._lock:
            return {m.topic for m in self.messages}

    async def __aenter__(self) -> Subscriber:
        await asyncio.to_thread(self.client.connect, "127.0.0.1", self.broker.port, 30)
        self.client.loop_start()
        await wait_for(self._subscribed.is_set, within=5.0, what="the subscription")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)
