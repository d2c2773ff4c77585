"""Password hashes for plugin logins, and `patgw hash-password`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway import hash_password, is_password_hash, verify_password


def test_hash_verifies_only_its_password_and_is_salted() -> None:
    first, second = hash_password("pump-operator"), hash_password("pump-operator")
    assert first != second  # a fresh salt every time
    assert verify_password("pump-operator", first) and verify_password("pump-operator", second)
    assert not verify_password("pump-operator ", first)
    assert not verify_password("", first)
    assert is_password_hash(first)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "pump-operator",  # a plain password is not a hash
        "scrypt$16384$8$1$c2FsdHNhbHQ=",  # a part missing
        "scrypt$16385$8$1$c2FsdHNhbHRzYWx0$" + "A" * 44,  # n not a power of two
        "scrypt$1073741824$8$1$c2FsdHNhbHRzYWx0$" + "A" * 44,  # absurd cost
        "scrypt$16384$8$1$!!!$" + "A" * 44,  # not base64
        "bcrypt$16384$8$1$c2FsdHNhbHRzYWx0$" + "A" * 44,
    ],
)
def test_malformed_hashes_never_verify(text: str) -> None:
    assert not is_password_hash(text)
    assert not verify_password("anything", text)


def test_empty_password_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        hash_password("")


def test_cli_reads_the_password_from_stdin_never_argv() -> None:
    run = [sys.executable, "-m", "gateway", "hash-password"]
    result = subprocess.run(run, input="s3cret\n", capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    hashed = result.stdout.strip()
    assert verify_password("s3cret", hashed)
    empty = subprocess.run(run, input="\n", capture_output=True, text=True, check=False)
    assert empty.returncode == 2 and "empty password" in empty.stderr


@pytest.mark.parametrize(
    ("n", "r", "p"),
    [(2**10, 8, 1), (2**15, 8, 16), (2**14, 16, 16), (2**16, 8, 16), (2**20, 8, 1)],
)
def test_hashes_too_weak_or_too_costly_are_refused(n: int, r: int, p: int) -> None:
    # Too weak to trust, too slow for a login on the event loop, or beyond scrypt's memory cap
    # (which would never verify: a silent lock-out).
    salt, digest = "c2FsdHNhbHRzYWx0c2FsdA==", "A" * 43 + "="
    assert not is_password_hash(f"scrypt${n}${r}${p}${salt}${digest}")
