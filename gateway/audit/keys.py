"""The gateway's Ed25519 signing key: created once (mode 0600, public key beside it), loaded,
replaced atomically on rotation. A key is named by its id: the first 16 bytes of the SHA-256 of
its raw public key, in hex."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..oscompat import O_BINARY, fsync_folder
from .records import AuditError

__all__ = ["SigningKey", "key_id", "public_key_from_hex", "verify_signature"]


def key_id(public: Ed25519PublicKey) -> str:
    """The short, stable name of a public key."""
    return hashlib.sha256(_raw(public)).hexdigest()[:32]


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_hex(text: str) -> Ed25519PublicKey:
    """A public key from its raw bytes in hex (as the chain's key records hold it)."""
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an Ed25519 public key: {text!r}") from exc


def verify_signature(public: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``public``'s signature of ``data``."""
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key and what names it."""

    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def id(self) -> str:
        return key_id(self.public)

    @property
    def public_hex(self) -> str:
        return _raw(self.public).hex()

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """The key in ``path`` (PEM, PKCS#8, unencrypted); :class:`AuditError` if unusable."""
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise AuditError(f"audit key {path} cannot be read: {exc}") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise AuditError(f"audit key {path} is not an Ed25519 key")
        return cls(private)

    def save(self, path: Path) -> None:
        """Write the key to ``path`` (mode 0600, replacing atomically) and its public key to
        ``path`` + ``.pub``; both synced to disk before this returns."""
        pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public = self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_atomic(path, pem, 0o600)
            _write_atomic(public_path(path), public, 0o644)
        except OSError as exc:
            raise AuditError(f"audit key {path} cannot be written: {exc}") from exc


def public_path(path: Path) -> Path:
    """Where the public key of the key in ``path`` is kept."""
    return path.with_name(path.name + ".pub")


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # O_EXCL with the final mode: the private key is never readable by others, not even briefly.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_BINARY, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_folder(path.parent)
