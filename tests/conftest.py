"""Shared test helpers: small worlds, condition waits, and a guard against leaked tasks/threads."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import pytest_asyncio
import structlog
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import Plan, PollingDriver, Sample, build_registry, hash_password, load_plan
from gateway.control import Access
from gateway.runtime import Gateway, RunSummary
from gateway.store import SampleStore

if TYPE_CHECKING:
    from asyncua import Client
    from selenium.webdriver.chrome.webdriver import WebDriver

REPO = Path(__file__).resolve().parents[1]

PollingDriverT = TypeVar("PollingDriverT", bound=PollingDriver)


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago, below the kernel's ephemeral range:
    a port the kernel hands out (``bind(0)``) may be taken the next moment by some process's
    outgoing connection before the server under test binds it (EADDRINUSE, seen in CI)."""
    start, stop = _port_slice()
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(start, stop)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def _port_slice() -> tuple[int, int]:
    """The ports this test process hands out: 12000 below the ephemeral range, split between
    pytest-xdist's workers (``scripts/test`` runs several) so that two workers never hand out
    the same port: each keeps its own ``_handed_out``, and a port checked free by one may
    not be bound yet by the server it is for when another checks it."""
    low, _ = _ephemeral_range()
    start = max(1024, low - 12000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2:
        return start, low
    width = (low - start) // count
    index = int(worker[2:]) % count
    return start + index * width, start + (index + 1) * width


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


async def wait_for(
    condition: Callable[[], Any], within: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what or condition}")
        await asyncio.sleep(interval)


def fake_distribution(
    site: Path, name: str, version: str, entry_points: dict[str, str]
) -> dict[str, str]:
    """Make ``site`` hold an installed distribution announcing ``pat_gateway`` entry points,
    as pip would leave it (a ``.dist-info`` folder), and return an environment whose
    PYTHONPATH puts it — and this repository — on the path of a ``patgw`` subprocess."""
    dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[pat_gateway]\n{lines}")
    repo = Path(__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(repo)])}


def stored_by_signal(path: Path) -> dict[str, list[Sample]]:
    """Every sample in the store at ``path``, by signal id, in commit order."""
    store = SampleStore(path, read_only=True)
    try:
        out: dict[str, list[Sample]] = {}
        for sample in store.samples():
            out.setdefault(sample.signal, []).append(sample)
        return out
    finally:
        store.close()


def patgw(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``patgw ARGS`` as a user would, in a subprocess; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def demo_copy(tmp_path: Path, name: str = "demo.yaml") -> tuple[Path, int]:
    """configs/``name`` moved to free ports, as ``tmp_path/configs/name`` beside the shipped
    models: its relative paths (``../data/...``) land in ``tmp_path/data`` as the demo's land in
    the repository's data/ (its HTTP endpoint on a free port too). Returns the feed pump's
    port."""
    port = free_port()
    text = (REPO / "configs" / name).read_text().replace("15020", str(port))
    text = text.replace("14840", str(free_port())).replace("port: 4840", f"port: {free_port()}")
    text = text.replace("port: 9180", f"port: {free_port()}")
    # The continuous demo's own ports (its controller, biomass probe, capture skid, HTTP).
    for fixed in ("14841", "15023", "14851", "port: 9181"):
        number = str(free_port())
        text = text.replace(fixed, f"port: {number}" if fixed.startswith("port") else number)
    folder = tmp_path / "configs"
    folder.mkdir(exist_ok=True)
    if not (folder / "models").exists():
        (folder / "models").symlink_to(REPO / "configs" / "models")
    path = folder / name
    path.write_text(text)
    return path, port


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def pump_instrument(instrument_id: str, port: int, **extra: Any) -> dict[str, Any]:
    """An instrument block reading the emulated feed pump on ``port``."""
    block: dict[str, Any] = {
        "id": instrument_id,
        "driver": "modbus",
        "poll_interval_s": 0.05,
        "backoff": {"initial_s": 0.05, "max_s": 0.2},
        "options": {"host": "127.0.0.1", "port": port, "profile": "feed_pump", "timeout_s": 0.3},
    }
    block.update(extra)
    return block


def plan_for(tmp_path: Path, **config: Any) -> Plan:
    config.setdefault("area", "reactor1")
    config.setdefault("store", {"path": str(tmp_path / "store.sqlite"), "commit_interval_ms": 20})
    config.setdefault("data_dir", str(tmp_path / "data"))
    return load_plan(write_config(tmp_path / "gateway.yaml", config), build_registry())


@asynccontextmanager
async def running(plan: Plan) -> AsyncIterator[tuple[Gateway, asyncio.Task[RunSummary]]]:
    """Run a gateway in the background; stop it (and surface its errors) on exit."""
    gateway = Gateway(plan)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop), name="test.gateway")
    started = asyncio.create_task(gateway.started.wait(), name="test.started")
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        started.cancel()
        task.result()
    try:
        yield gateway, task
    finally:
        stop.set()
        await task


@pytest.fixture(autouse=True)
def isolated_logging() -> Iterator[None]:
    """Undo what a test's in-process ``patgw`` did to logging (``configure_logging`` sets a
    global level filter), so later tests that capture log events still see them."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (store writers, executors...).

    The event loop's own default-executor threads (``asyncio_N``) are the loop's to shut down.
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        extra = [
            t
            for t in threading.enumerate()
            if t not in before
            and t.is_alive()
            and not t.daemon
            and not t.name.startswith("asyncio_")
        ]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not extra, f"test leaked threads: {[t.name for t in extra]}"


async def assert_no_leftover_tasks(what: str) -> None:
    """Fail if tasks other than the current one are still running half a second from now."""
    current = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for _ in range(50):
        if not leftover:
            break
        await asyncio.sleep(0.01)
        leftover = [t for t in leftover if not t.done()]
    assert not leftover, f"{what} leaked tasks: {[t.get_name() for t in leftover]}"


@pytest_asyncio.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail an async test that leaves asyncio tasks behind."""
    yield
    await assert_no_leftover_tasks("test")


@dataclass(frozen=True)
class ClientCert:
    """A client's application certificate (DER) and key (PEM) on disk."""

    cert: Path
    key: Path
    uri: str

    @property
    def der(self) -> bytes:
        return self.cert.read_bytes()


def make_client_cert(folder: Path, name: str) -> ClientCert:
    """A self-signed OPC UA client application certificate, as UaExpert makes one."""
    uri = f"urn:test:{name}"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        certificate_builder(subject, subject, key)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(uri), x509.DNSName(socket.gethostname())]
            ),
            critical=False,
        )
        .add_extension(
            x509.KeyUsage(True, True, True, True, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    pair = ClientCert(folder / f"{name}.der", folder / f"{name}.pem", uri)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    write_pem_key(pair.key, key)
    return pair


async def secure_client(
    url: str, who: ClientCert, server_cert: Path, user: str | None, password: str
) -> Client:
    """An asyncua client (not connected) for ``url``: Basic256Sha256 SignAndEncrypt with
    ``who``'s certificate, trusting ``server_cert``, logging in as ``user`` (None: anonymous)."""
    from asyncua import Client, ua  # only the OPC UA tests pay for importing asyncua
    from asyncua.crypto import security_policies

    client = Client(url, timeout=5)
    client.application_uri = who.uri
    await client.set_security(
        security_policies.SecurityPolicyBasic256Sha256,
        str(who.cert),
        str(who.key),
        server_certificate=str(server_cert),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    if user is not None:
        client.set_user(user)
        client.set_password(password)
    return client


async def trusted_client(server: Any, folder: Path, user: str, password: str) -> Client:
    """A client (not connected) of the gateway's OPC UA server sink ``server``, with a new
    certificate in ``folder`` that the server trusts, logging in as ``user``."""
    who = make_client_cert(folder, "historian")
    (server.trusted_dir / who.cert.name).write_bytes(who.cert.read_bytes())
    return await secure_client(
        server.endpoint_url, who, server.own_certificate.cert_path, user, password
    )


def certificate_builder(
    subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey
) -> x509.CertificateBuilder:
    """A test certificate for ``key``'s public key, valid from an hour ago for 30 days; the
    caller adds its extensions and signs it."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )


def write_pem_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    """``key`` as unencrypted PKCS#8 PEM."""
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@asynccontextmanager
async def connected(driver: PollingDriverT) -> AsyncIterator[PollingDriverT]:
    """One session of a polling ``driver``, as the runtime runs it: connect, then always close
    (also after a failed connect)."""
    try:
        await driver.connect()
        yield driver
    finally:
        await driver.close()


# --- MQTT: a real Mosquitto broker (tests/mosquitto.py) ---------------------------------------


@pytest_asyncio.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh, anonymous Mosquitto on a free loopback port (a ``mosquitto.Mosquitto``);
    killed after the test. Fails, never skips, when mosquitto is not installed."""
    from mosquitto import Mosquitto  # imports this module: import it late

    async with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


# --- A real browser: Debian's headless Chromium through Selenium (tests/browser.py) ----------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """A headless Chromium with a fixed window size and its own profile under ``tmp_path``;
    quit after the test. Skips where Chromium is not installed, fails instead under CI."""
    from browser import chromium  # only the browser tests pay for importing Selenium

    with chromium(tmp_path / "chromium") as driver:
        yield driver


@dataclass(frozen=True)
class ModbusRequest:
    """A register request as a scripted Modbus TCP device in a test reads it."""

    tid: int
    unit: int
    function: int
    address: int
    count: int


async def read_modbus_request(reader: asyncio.StreamReader) -> ModbusRequest:
    """Read one Modbus TCP request frame (MBAP header, then as many bytes as it says)."""
    tid, _pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
    pdu = await reader.readexactly(length - 1)
    function, address, count = struct.unpack(">BHH", pdu[:5])
    return ModbusRequest(tid, unit, function, address, count)


def modbus_frame(tid: int, unit: int, pdu: bytes) -> bytes:
    """A Modbus TCP frame: MBAP header for ``tid`` and ``unit``, then ``pdu``."""
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def access_for(users: dict[str, tuple[str, list[str]]], **security: Any) -> Access:
    """The user base of a configuration with ``users`` (name -> (password, roles)) and no
    write targets: for plugins built without a configuration (the OPC UA server)."""
    from gateway.security import Authority, SecurityConfig

    config = SecurityConfig.model_validate(
        {
            "users": [
                {"name": name, "password_hash": hash_password(password), "roles": roles}
                for name, (password, roles) in users.items()
            ],
            **security,
        }
    )
    return Access(Authority(config), {})


def tamper_audit(path: Path, *statements: str) -> None:
    """Change the audit file as someone with write access to it would: triggers dropped first."""
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER IF EXISTS audit_records_no_update")
    db.execute("DROP TRIGGER IF EXISTS audit_records_no_delete")
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()
