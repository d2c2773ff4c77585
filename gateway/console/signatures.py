"""Electronic signatures on the console's writes (and device commands): the form's fields and
the password checks.

A target declared with ``signature: required`` is written only with the writer's signature:
their password re-entered (the session's login does not count) and its meaning; a
``witnessed`` one also with a second person's (user name, password, meaning). The passwords
are checked by the same :class:`gateway.security.Authority` as every login, with purpose
``signature`` (audited as ``signature`` / ``signature.failed``, failures counting toward the
lock-out), one scrypt check at a time in a worker thread; the rest — the meaning given, the
witness another person who qualifies for the target — is the write path's
(:class:`gateway.control.WritePath`), exactly as for the local API. Passwords go nowhere but
the check: not into logs, audit records, pages or URLs.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from ..control import CommandTargetConfig, Signature
from ..control.config import WriteTargetConfig
from ..control.path import authenticate_witness
from ..security import AuthenticationError, Authority, Identity

__all__ = [
    "MEANINGS",
    "WITNESS_MEANINGS",
    "SignatureRefused",
    "signature_fields",
    "signatures_text",
    "signed",
]

MEANINGS = ("performed", "approved", "reviewed", "verified")
"""The meanings the form offers for the writer's signature (the write path takes any text)."""
WITNESS_MEANINGS = ("witnessed", "reviewed", "approved", "verified")
"""The meanings the form offers for the witness's (``patgw write``'s default: witnessed)."""
MAX_MEANING = 64


class SignatureRefused(Exception):
    """A signature the console refuses before the write path sees the request (a password
    missing or wrong): ``message`` for the page, ``status`` for the answer."""

    def __init__(self, message: str, status: HTTPStatus) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _select(name: str, label: str, meanings: tuple[str, ...], required: bool) -> str:
    options = '<option value="">choose…</option>' if required else ""
    options += "".join(f'<option value="{_e(m)}">{_e(m)}</option>' for m in meanings)
    need = " required" if required else ""
    return f'<label>{label} <select name="{name}"{need}>{options}</select></label>'


def signature_fields(config: WriteTargetConfig | CommandTargetConfig, who: Identity) -> str:
    """The form fields a write to ``config``'s target (or a run of its command) needs for its
    signature(s) (none: "")."""
    if config.signature == "none":
        return ""
    fields = (
        '<fieldset class="signature"><legend>Electronic signature</legend>'
        f"<p>Signed by {_e(who.full_name)} ({_e(who.name)}): re-enter your password.</p>"
        + _select("meaning", "Meaning", MEANINGS, True)
        + '<label>Your password <input name="signature_password" type="password"'
        ' autocomplete="off" required></label></fieldset>'
    )
    if config.signature == "witnessed":
        fields += (
            '<fieldset class="witness"><legend>Second person (witness)</legend>'
            f"<p>Another user who may write with the role {_e(config.role)}.</p>"
            '<label>Witness <input name="witness" autocomplete="off" required></label>'
            '<label>Witness password <input name="witness_password" type="password"'
            ' autocomplete="off" required></label>'
            + _select("witness_meaning", "Witness meaning", WITNESS_MEANINGS, False)
            + "</fieldset>"
        )
    return fields


async def signed(
    form: Mapping[str, str],
    config: WriteTargetConfig | CommandTargetConfig | None,
    who: Identity,
    authority: Authority,
    checks: asyncio.Semaphore,
    peer: str,
) -> Signature | None:
    """The signature the ``form`` carries for a write to ``config``'s target, its passwords
    checked; None if the target needs none (the fields are ignored) or no meaning is given
    (the write path refuses it). Raises :class:`SignatureRefused` for a missing or wrong
    password (the check itself is audited by the authority)."""
    if config is None or config.signature == "none":
        return None
    meaning = form.get("meaning", "").strip()
    if not meaning:
        return None
    if len(meaning) > MAX_MEANING:
        raise SignatureRefused(
            f"a signature's meaning is at most {MAX_MEANING} characters", HTTPStatus.BAD_REQUEST
        )
    password = form.get("signature_password", "")
    if not password:
        raise SignatureRefused(
            "re-enter your password to sign this write", HTTPStatus.UNPROCESSABLE_ENTITY
        )
    try:
        async with checks:
            await asyncio.to_thread(
                authority.authenticate,
                who.name,
                password,
                interface="console",
                peer=peer,
                purpose="signature",
            )
    except AuthenticationError as exc:
        raise _refused("your signature", exc) from exc
    witness: Identity | None = None
    witness_meaning = ""
    name = form.get("witness", "").strip()[:64]
    if name:
        witness_password = form.get("witness_password", "")
        if not witness_password:
            raise SignatureRefused(
                "the witness must enter their password", HTTPStatus.UNPROCESSABLE_ENTITY
            )
        witness_meaning = form.get("witness_meaning", "").strip()[:MAX_MEANING] or "witnessed"
        try:
            async with checks:
                witness = await asyncio.to_thread(
                    authenticate_witness, authority, name, witness_password, "console", peer
                )
        except AuthenticationError as exc:
            raise _refused("the witness's signature", exc) from exc
    return Signature(meaning, witness, witness_meaning)


def signatures_text(details: Mapping[str, Any] | None) -> str:
    """The signatures an audit record's ``details`` hold, for people: "approved by Demo
    Engineer (engineer); witnessed by …"; "" if none."""
    if not details:
        return ""
    parts = []
    for key in ("signature", "witness"):
        signed = details.get(key)
        if isinstance(signed, Mapping):
            meaning, name, user = (signed.get(k, "") for k in ("meaning", "name", "user"))
            parts.append(f"{meaning} by {name} ({user})")
    return "; ".join(parts)


def _refused(whose: str, exc: AuthenticationError) -> SignatureRefused:
    locked = exc.why == "locked out"
    status = HTTPStatus.TOO_MANY_REQUESTS if locked else HTTPStatus.UNAUTHORIZED
    return SignatureRefused(f"{whose} was refused ({exc}): nothing was written", status)
