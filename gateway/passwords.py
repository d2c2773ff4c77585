"""Password hashes for the users of a plugin that accepts logins (the northbound OPC UA server).

A configuration never holds a password, only its hash: ``patgw hash-password`` prints one, and a
plugin checks a login with :func:`verify_password`. The hash is scrypt (memory-hard, in the
standard library) with a random 16-byte salt, written as
``scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>`` so the cost can be raised later without
invalidating stored hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["hash_password", "is_password_hash", "verify_password"]

# RFC 7914's interactive-login parameters: ~50 ms and 16 MiB per check on an edge PC.
_N, _R, _P = 2**14, 8, 1
_LENGTH = 32
_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str) -> str:
    """A new salted scrypt hash of ``password`` (refuses an empty one)."""
    if not password:
        raise ValueError("an empty password is not a password")
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _N, _R, _P)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def is_password_hash(text: str) -> bool:
    """Whether ``text`` has the form :func:`hash_password` writes (for config validation)."""
    return _parse(text) is not None


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches ``hashed``; False for a malformed hash. Constant-time."""
    parsed = _parse(hashed)
    if parsed is None:
        return False
    n, r, p, salt, expected = parsed
    try:
        digest = _scrypt(password, salt, n, r, p)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_LENGTH
    )


def _parse(text: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError:
        return None
    # Bounds: at least the cost hash_password uses (a weak hash is refused, not trusted), at
    # most 2x its work per check (a login runs on the event loop) and within _MAXMEM (a hash
    # scrypt would refuse to compute could never match: a silent lock-out).
    if not (n & (n - 1) == 0 and n >= _N and 1 <= r <= 32 and 1 <= p <= 16):
        return None
    if n * r * p > 2 * _N * _R * _P or 128 * n * r > _MAXMEM // 2:
        return None
    if len(salt) < 8 or len(digest) != _LENGTH:
        return None
    return n, r, p, salt, digest


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
