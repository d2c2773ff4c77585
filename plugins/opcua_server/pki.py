"""The server's own certificate, and the folder of client certificates it trusts.

For the ``opcua_server`` sink and the operators who manage its files. Under
``<data_dir>/opcua/pki/``:

* ``own/cert.der`` and ``own/key.pem`` — the server's application instance certificate and
  its RSA key (mode 0600), made on first start and reused afterwards. Give ``cert.der`` to
  clients that must trust the server.
* ``trusted/`` — one client certificate per file (DER or PEM). Only these clients may open a
  session; the folder is read again whenever its contents change, so trusting a client needs
  no restart. Removing a file refuses new sessions of that client (open ones go on).
* ``rejected/`` — certificates of refused clients, copied so an operator can check one and move
  it to ``trusted/``. At most :data:`MAX_REJECTED` files, so a flood cannot fill the disk; the
  newest are kept (a new one replaces the oldest, and one refused again counts as new), so
  however many certificates a peer sent before, a new client's is there for the operator.

Trust is by exact certificate (SHA-256 of the DER form), the usual OPC UA trust list of
self-signed application certificates; certificate authorities and revocation lists are not
supported yet.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CERT_FILE",
    "KEY_BITS",
    "KEY_FILE",
    "MAX_REJECTED",
    "VALIDITY_YEARS",
    "OwnCertificate",
    "TrustList",
    "fingerprint",
    "load_or_create_own_certificate",
]

log = structlog.get_logger("plugins.opcua_server")

CERT_FILE = "cert.der"
KEY_FILE = "key.pem"
KEY_BITS = 2048  # what Basic256Sha256 and Aes256_Sha256_RsaPss require at least
VALIDITY_YEARS = 5
MAX_REJECTED = 100
_SUFFIXES = {".der", ".pem", ".crt", ".cer"}


def fingerprint(der: bytes) -> str:
    """SHA-256 of a certificate's DER form, as lower-case hex."""
    return hashlib.sha256(der).hexdigest()


def common_name(cert: x509.Certificate) -> str:
    """The subject's common name, or ``?``."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else "?"
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class OwnCertificate:
    """The server's certificate and key, where they are, and whether this start made them."""

    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey
    cert_path: Path
    key_path: Path
    created: bool


def load_or_create_own_certificate(
    folder: Path, application_uri: str, name: str, host: str
) -> OwnCertificate:
    """Reuse the certificate and key in ``folder`` or make new ones. Blocking (key generation
    takes up to a second): call it from a worker thread.

    A pair is reused when both files load, belong together, name ``application_uri`` and have
    not expired; otherwise it is moved to ``folder/replaced-<time>/`` and a new one is made —
    clients that trusted the old certificate must then trust the new one.
    """
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    if cert_path.exists() or key_path.exists():
        problem, pair = _load_pair(cert_path, key_path, application_uri)
        if pair is not None:
            _tighten_key_mode(key_path)
            return OwnCertificate(pair[0], pair[1], cert_path, key_path, created=False)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        archive = folder / f"replaced-{stamp}"
        archive.mkdir(mode=0o700)
        for path in (cert_path, key_path):
            if path.exists():
                path.rename(archive / path.name)
        log.warning(
            "opcua_server.own_certificate_replaced",
            reason=problem,
            old=str(archive),
            new=str(cert_path),
        )
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    cert = _self_signed(key, application_uri, name, host)
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.DER), 0o644)
    log.info(
        "opcua_server.own_certificate_created",
        path=str(cert_path),
        sha256=fingerprint(cert.public_bytes(serialization.Encoding.DER)),
        valid_until=cert.not_valid_after_utc.isoformat(),
    )
    return OwnCertificate(cert, key, cert_path, key_path, created=True)


def _load_pair(
    cert_path: Path, key_path: Path, application_uri: str
) -> tuple[str, tuple[x509.Certificate, rsa.RSAPrivateKey] | None]:
    try:
        cert = x509.load_der_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return f"cannot load: {exc}", None
    if not isinstance(key, rsa.RSAPrivateKey):
        return "the key is not an RSA key", None
    public = cert.public_key()
    if (
        not isinstance(public, rsa.RSAPublicKey)
        or public.public_numbers() != key.public_key().public_numbers()
    ):
        return "the key does not belong to the certificate", None
    if application_uri not in _san_uris(cert):
        return f"the certificate does not name {application_uri}", None
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        return f"the certificate expired on {cert.not_valid_after_utc.isoformat()}", None
    return "", (cert, key)


def _san_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _self_signed(
    key: rsa.RSAPrivateKey, application_uri: str, name: str, host: str
) -> x509.Certificate:
    # OPC 10000-6 §6.2.2 application instance certificate: the ApplicationUri and the host
    # names in SubjectAltName, key usages for signing and for key/data encipherment.
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PAT Gateway"),
        ]
    )
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    for dns in dict.fromkeys([socket.gethostname(), "localhost"]):
        alt_names.append(x509.DNSName(dns))
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host not in ("localhost", socket.gethostname()):
            alt_names.append(x509.DNSName(host))
    else:
        if not address.is_unspecified:
            alt_names.append(x509.IPAddress(address))
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))  # tolerate a client clock a little behind
        .not_valid_after(now + dt.timedelta(days=365 * VALIDITY_YEARS + VALIDITY_YEARS // 4))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,  # it signs itself
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _write_private(path: Path, data: bytes) -> None:
    _write_atomically(path, data, 0o600)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    # Created with its final mode (a key is never readable by others, not even for a moment),
    # then renamed over the target so a crash leaves the old file or the new one, not half.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    # O_BINARY: Windows would otherwise write a DER certificate's 0x0a bytes as 0x0d 0x0a.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _tighten_key_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(0o600)
        log.warning("opcua_server.key_mode_fixed", path=str(path), was=oct(mode), now="0o600")


class TrustList:
    """Client certificates trusted by exact match, read from a folder whenever it changes.

    Cheap to ask: one directory listing per question (asked once or twice per session
    activation, never per sample); the files are read again only when a name, size or
    modification time changed.
    """

    def __init__(self, trusted_dir: Path, rejected_dir: Path) -> None:
        self.trusted_dir = trusted_dir
        self.rejected_dir = rejected_dir
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._fingerprints: frozenset[str] = frozenset()

    def prepare(self) -> None:
        """Create the folders (trusted starts empty: nobody is trusted) and read them."""
        self.trusted_dir.mkdir(parents=True, exist_ok=True)
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        self._refresh()

    def is_trusted(self, der: bytes) -> bool:
        """Whether the certificate (DER) is in the trusted folder."""
        self._refresh()
        return fingerprint(der) in self._fingerprints

    def __len__(self) -> int:
        return len(self._fingerprints)

    def reject(self, cert: x509.Certificate) -> Path | None:
        """Copy a refused certificate to the rejected folder, for an operator to look at."""
        der = cert.public_bytes(serialization.Encoding.DER)
        label = re.sub(r"[^A-Za-z0-9._-]+", "_", common_name(cert))[:40] or "client"
        path = self.rejected_dir / f"{label}_{fingerprint(der)[:16]}.der"
        try:
            if path.exists():
                os.utime(path)  # refused again: among the newest, kept the longest
                return path
            self._make_room()
            _write_atomically(path, der, 0o644)
        except OSError as exc:
            log.warning("opcua_server.reject_copy_failed", path=str(path), error=str(exc))
            return None
        return path

    def _make_room(self) -> None:
        """Delete the oldest rejected certificates so that one more makes :data:`MAX_REJECTED`."""
        files = sorted(
            (entry.stat().st_mtime_ns, entry.path)
            for entry in os.scandir(self.rejected_dir)
            if entry.is_file() and not entry.name.startswith(".")
        )
        for _, oldest in files[: max(0, len(files) - MAX_REJECTED + 1)]:
            Path(oldest).unlink(missing_ok=True)

    def _refresh(self) -> None:
        try:
            entries = sorted(
                (entry.name, entry.stat().st_mtime_ns, entry.stat().st_size)
                for entry in os.scandir(self.trusted_dir)
                if entry.is_file() and Path(entry.name).suffix.lower() in _SUFFIXES
            )
        except OSError as exc:
            log.error(
                "opcua_server.trust_list_unreadable", path=str(self.trusted_dir), error=str(exc)
            )
            self._signature, self._fingerprints = None, frozenset()
            return
        signature = tuple(entries)
        if signature == self._signature:
            return
        found: set[str] = set()
        for name, _, _ in entries:
            for cert in _read_certificates(self.trusted_dir / name):
                found.add(fingerprint(cert.public_bytes(serialization.Encoding.DER)))
        self._signature, self._fingerprints = signature, frozenset(found)
        log.info(
            "opcua_server.trust_list_loaded", path=str(self.trusted_dir), certificates=len(found)
        )


def _read_certificates(path: Path) -> Sequence[x509.Certificate]:
    try:
        data = path.read_bytes()
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except (OSError, ValueError) as exc:
        log.warning("opcua_server.trusted_file_ignored", path=str(path), error=str(exc))
        return []
