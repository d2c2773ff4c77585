"""The local API, under ``/api/v1`` of the HTTP endpoint (``http.api: true``).

Every request carries HTTP Basic credentials of a user in ``security.users``; each login is
checked (scrypt, in a worker thread so the event loop keeps serving) and audited like any
other. Routes::

    GET  /api/v1/whoami    any user      who the credentials belong to: roles, permissions
    GET  /api/v1/targets   read          the declared write targets with their limits
    POST /api/v1/writes    (the target's role)  a controlled write (see gateway.control)
    GET  /api/v1/commands  read          the declared device commands with their arguments
    POST /api/v1/commands  (the command's role)  a device command (tare, start...), audited
    POST /api/v1/users/NAME/unlock  manage_users  lift NAME's lock-out (audited)
    GET  /api/v1/audit     audit         records (?since=ISO&user=U&action=GLOB&limit=N)
    GET  /api/v1/processors              read  every processor: state, commands, what it owns
    GET  /api/v1/processors/ID           read  one processor
    POST /api/v1/processors/ID/COMMAND   (the command's permission)  e.g. a loop's mode,
                                         an alarm's acknowledgement; body {"reason", ...}

A write's body is JSON: ``{"target", "value", "reason"}``, plus ``"meaning"`` for a target
that needs an electronic signature and ``"witness": {"user", "password", "meaning"}`` for a
witnessed one. The answer is the write's outcome (JSON): ``200`` done, ``409`` written but read
back another value, ``502`` the device failed, ``403`` the user may not, ``422`` refused by a
rule (limits, step, rate, reason, signature), ``503`` the instrument is down or the audit trail
cannot be written; ``401`` for missing or refused credentials.

A device command's body is ``{"target", "arguments", "reason"}`` (``arguments`` an object,
optional), with ``"meaning"`` and ``"witness"`` as for a write; the answer is its outcome:
``200`` done (with the ``result`` the device reported), ``502`` the device failed, and the
refusals' statuses as for a write (``422`` also for arguments the command does not take).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import dataclasses
import json
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from .api import CommandCall
from .audit import read_records
from .control import (
    Access,
    CommandOutcome,
    CommandRequest,
    CommandTarget,
    Signature,
    WriteOutcome,
    WriteRequest,
)
from .control.path import authenticate_witness
from .errors import GatewayError
from .http import Request, json_response
from .security import AuthenticationError, Identity, NotPermittedError, Permission
from .timefmt import parse_iso_ns

if TYPE_CHECKING:
    from .runtime.processors import ProcessorRunner

__all__ = ["LocalApi", "call_command", "command_listing", "write_status"]

log = structlog.get_logger("gateway.api")

_STATUS_BY_RULE = {
    "role": HTTPStatus.FORBIDDEN,
    "not-declared": HTTPStatus.NOT_FOUND,
    "instrument-down": HTTPStatus.SERVICE_UNAVAILABLE,
    "audit-unavailable": HTTPStatus.SERVICE_UNAVAILABLE,
}
_STATUS_BY_OUTCOME = {
    "done": HTTPStatus.OK,
    "mismatch": HTTPStatus.CONFLICT,
    "failed": HTTPStatus.BAD_GATEWAY,
}
_USERS = "/api/v1/users/"
_PROCESSORS = "/api/v1/processors"
_CHALLENGE = ('WWW-Authenticate: Basic realm="patgw", charset="UTF-8"',)


class LocalApi:
    """Answers ``/api/v1`` requests for one running gateway."""

    def __init__(
        self,
        access: Access,
        audit_path: Path | None = None,
        processors: Callable[[], Mapping[str, ProcessorRunner]] = dict,
    ) -> None:
        self.access = access
        self.audit_path = audit_path
        self.processors = processors
        # One password check at a time: a flood of logins uses one core, not all of them.
        self._checks = asyncio.Semaphore(1)

    async def answer(self, request: Request, body: bytes) -> bytes:
        try:
            identity = await self._authenticate(request)
        except AuthenticationError as exc:
            return json_response(HTTPStatus.UNAUTHORIZED, {"error": str(exc)}, _CHALLENGE)
        route = (request.method, request.path.rstrip("/"))
        if route == ("GET", "/api/v1/whoami"):
            return json_response(HTTPStatus.OK, _whoami(identity))
        if route == ("GET", "/api/v1/targets"):
            if not identity.may(Permission.READ):
                return _forbidden(identity, Permission.READ)
            return json_response(HTTPStatus.OK, {"targets": self._targets()})
        if route == ("POST", "/api/v1/writes"):
            return await self._write(identity, request, body)
        if route == ("GET", "/api/v1/commands"):
            if not identity.may(Permission.READ):
                return _forbidden(identity, Permission.READ)
            return json_response(HTTPStatus.OK, {"commands": self._commands()})
        if route == ("POST", "/api/v1/commands"):
            return await self._command(identity, request, body)
        if route == ("GET", "/api/v1/audit"):
            if not identity.may(Permission.AUDIT):
                return _forbidden(identity, Permission.AUDIT)
            return await self._audit(request.query)
        method, path = route
        if path == _PROCESSORS or path.startswith(_PROCESSORS + "/"):
            return await self._processor(identity, method, path[len(_PROCESSORS) + 1 :], body)
        if method == "POST" and path.startswith(_USERS) and path.endswith("/unlock"):
            name = path[len(_USERS) : -len("/unlock")]
            try:
                was = self.access.authority.unlock(name, identity)
            except NotPermittedError as exc:
                return json_response(HTTPStatus.FORBIDDEN, {"error": str(exc)})
            return json_response(HTTPStatus.OK, {"user": name, "was_locked_out": was})
        known = (
            "GET /api/v1/whoami, GET /api/v1/targets, POST /api/v1/writes,"
            " GET /api/v1/commands, POST /api/v1/commands,"
            " POST /api/v1/users/NAME/unlock, GET /api/v1/audit, GET /api/v1/processors,"
            " GET /api/v1/processors/ID, POST /api/v1/processors/ID/COMMAND"
        )
        return json_response(
            HTTPStatus.NOT_FOUND,
            {"error": f"no such resource: {request.method} {request.path} (routes: {known})"},
        )

    async def _processor(self, identity: Identity, method: str, rest: str, body: bytes) -> bytes:
        """``GET`` the processors' state, or ``POST`` one processor's command."""
        runners = self.processors()
        name, _, command = rest.partition("/")
        if method == "GET" and not command:
            if not identity.may(Permission.READ):
                return _forbidden(identity, Permission.READ)
            if not name:
                return json_response(
                    HTTPStatus.OK, {"processors": [r.status() for r in runners.values()]}
                )
            runner = runners.get(name)
            if runner is None:
                return _no_processor(name, runners)
            return json_response(HTTPStatus.OK, runner.status())
        if method != "POST" or not name or not command or "/" in command:
            return json_response(
                HTTPStatus.NOT_FOUND,
                {"error": "use GET /api/v1/processors[/ID] or POST /api/v1/processors/ID/COMMAND"},
            )
        runner = runners.get(name)
        if runner is None:
            return _no_processor(name, runners)
        try:
            document = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError, RecursionError):  # nested too deep
            document = None
        status, answer = await call_command(runner, command, identity, document)
        return json_response(status, answer)

    async def _audit(self, query: str) -> bytes:
        """The newest ``limit`` (default 1000) records matching ``since`` (ISO time), ``user``
        and ``action`` (shell wildcards), oldest first."""
        if self.audit_path is None:
            return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "no audit trail"})
        params = dict(urllib.parse.parse_qsl(query))
        try:
            limit = int(params.get("limit", "1000"))
            since_ns = parse_iso_ns(params["since"]) if "since" in params else None
        except ValueError as exc:
            return _bad(f"bad query: {exc}")
        if not 1 <= limit <= 100_000:
            return _bad("limit must be 1..100000")
        path = self.audit_path

        def newest() -> list[dict[str, Any]]:
            records = read_records(
                path, since_ns=since_ns, user=params.get("user"), action=params.get("action")
            )
            return [record.fields() for record in collections.deque(records, maxlen=limit)]

        try:
            found = await asyncio.to_thread(newest)
        except GatewayError as exc:
            return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
        return json_response(HTTPStatus.OK, {"records": found})

    async def _authenticate(self, request: Request) -> Identity:
        name, password = _basic_credentials(request.headers.get("authorization"))
        async with self._checks:
            return await asyncio.to_thread(
                self.access.authority.authenticate,
                name,
                password,
                interface="api",
                peer=request.peer,
            )

    async def _write(self, identity: Identity, request: Request, body: bytes) -> bytes:
        document = _object(body, '{"target", "value", "reason"}')
        if isinstance(document, bytes):
            return document
        target, value, reason = (
            document.get("target"),
            document.get("value"),
            document.get("reason"),
        )
        if not isinstance(target, str) or not target:
            return _bad('"target" (a signal id) is missing')
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _bad('"value" must be a number')
        try:
            number = float(value)
        except OverflowError:
            return _bad('"value" is too large for a number')
        signature = await self._signed(document, request)
        if isinstance(signature, bytes):
            return signature
        return await _answer(
            self.access.write(
                WriteRequest(target, number, identity, reason or "", "api", signature)
            )
        )

    async def _command(self, identity: Identity, request: Request, body: bytes) -> bytes:
        document = _object(body, '{"target", "arguments", "reason"}')
        if isinstance(document, bytes):
            return document
        target, arguments, reason = (
            document.get("target"),
            document.get("arguments", {}),
            document.get("reason"),
        )
        if not isinstance(target, str) or not target:
            return _bad('"target" (a command, e.g. reactor1/balance/tare) is missing')
        if not isinstance(arguments, dict):
            return _bad('"arguments" must be a JSON object')
        signature = await self._signed(document, request)
        if isinstance(signature, bytes):
            return signature
        return await _answer(
            self.access.command(
                CommandRequest(target, identity, reason or "", "api", arguments, signature)
            )
        )

    async def _signed(self, document: dict[str, Any], request: Request) -> Signature | bytes | None:
        """The request's signature, its passwords checked, once its text fields are known to
        be storable; or the answer refusing it."""
        reason = document.get("reason")
        if reason is not None and not isinstance(reason, str):
            return _bad('"reason" must be text')
        for field in ("target", "reason", "meaning"):
            if not _encodable(document.get(field)):
                return _bad(f'"{field}" is not valid Unicode text (a lone surrogate)')
        try:
            return await self._signature(document, request)
        except AuthenticationError as exc:
            return json_response(HTTPStatus.UNAUTHORIZED, {"error": str(exc)})
        except ValueError as exc:
            return _bad(str(exc))

    def _commands(self) -> list[dict[str, Any]]:
        return [
            command_listing(name, target) for name, target in sorted(self.access.commands.items())
        ]

    async def _signature(self, document: dict[str, Any], request: Request) -> Signature | None:
        meaning = document.get("meaning")
        witness_doc = document.get("witness")
        if meaning is None and witness_doc is None:
            return None
        if not isinstance(meaning, str):
            raise ValueError('"meaning" must be text (e.g. "performed")')
        witness: Identity | None = None
        witness_meaning = ""
        if witness_doc is not None:
            if not isinstance(witness_doc, dict) or not all(
                isinstance(witness_doc.get(k), str) for k in ("user", "password")
            ):
                raise ValueError('"witness" must be {"user", "password", "meaning"}')
            witness_meaning = str(witness_doc.get("meaning") or "witnessed")
            async with self._checks:
                witness = await asyncio.to_thread(
                    authenticate_witness,
                    self.access.authority,
                    witness_doc["user"],
                    witness_doc["password"],
                    "api",
                    request.peer,
                )
        return Signature(meaning, witness, witness_meaning)

    def _targets(self) -> list[dict[str, Any]]:
        return [
            {
                "target": name,
                "unit": target.unit,
                "instrument": target.instrument,
                **target.config.model_dump(exclude={"target"}),
                "owner": self.access.owner(name),
            }
            for name, target in sorted(self.access.targets.items())
        ]


def command_listing(name: str, target: CommandTarget) -> dict[str, Any]:
    """A declared command as the API (and the console) lists it."""
    command = target.command
    return {
        "target": name,
        "instrument": target.instrument,
        "command": command.name,
        "description": target.config.description or command.description,
        "changes_process": command.changes_process,
        "role": target.config.role,
        "signature": target.config.signature,
        "arguments": [dataclasses.asdict(a) for a in command.arguments],
    }


def write_status(outcome: WriteOutcome | CommandOutcome) -> HTTPStatus:
    """The HTTP status that tells a write's (or a command's) outcome (see the module)."""
    if outcome.outcome == "refused":
        return _STATUS_BY_RULE.get(outcome.rule, HTTPStatus.UNPROCESSABLE_ENTITY)
    return _STATUS_BY_OUTCOME.get(outcome.outcome, HTTPStatus.INTERNAL_SERVER_ERROR)


async def call_command(
    runner: ProcessorRunner, command: str, identity: Identity, document: Any
) -> tuple[HTTPStatus, dict[str, Any]]:
    """Use ``runner``'s ``command`` as ``identity`` with the JSON ``document`` (None: the body
    was not JSON), as ``POST /api/v1/processors/ID/COMMAND`` does; the HTTP status and the
    JSON answer. The command's permission is checked here; what it does and audits is the
    processor's. Shared by the local API and the console (its alarms' acknowledge button)."""
    commands = runner.commands()
    entry = commands.get(command)
    if entry is None:
        known = ", ".join(sorted(commands)) or "none"
        return HTTPStatus.NOT_FOUND, {
            "error": f"processor {runner.processor_id!r} has no command {command!r}"
            f" (commands: {known})"
        }
    permission = Permission(entry.permission)
    if not identity.may(permission):
        return HTTPStatus.FORBIDDEN, _forbidden_answer(identity, permission)
    if document is None:
        return HTTPStatus.BAD_REQUEST, {"error": "the body must be JSON"}
    if not isinstance(document, dict):
        return HTTPStatus.BAD_REQUEST, {"error": 'the body must be a JSON object with a "reason"'}
    reason = document.get("reason")
    if not isinstance(reason, str) or not reason.strip() or not _encodable(reason):
        return HTTPStatus.BAD_REQUEST, {
            "error": '"reason" (text) is required: it is kept in the audit trail'
        }
    call = CommandCall(identity.name, identity.full_name, identity.roles, document, reason.strip())
    try:
        answer = await entry.handler(call)
    except ValueError as exc:
        return HTTPStatus.BAD_REQUEST, {"error": str(exc)}
    except GatewayError as exc:
        return HTTPStatus.CONFLICT, {"error": str(exc)}
    log.info("api.command", processor=runner.processor_id, command=command, user=identity.name)
    return HTTPStatus.OK, dict(answer)


def _object(body: bytes, shape: str) -> dict[str, Any] | bytes:
    """The body as a JSON object, or the answer refusing it (``shape`` names its fields)."""
    try:
        document = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested too deep
        return _bad("the body must be JSON")
    if not isinstance(document, dict):
        return _bad(f"the body must be a JSON object: {shape}")
    return document


async def _answer(submitted: Awaitable[WriteOutcome | CommandOutcome]) -> bytes:
    """The answer to a write or command handed to the write path."""
    try:
        outcome = await submitted
    except GatewayError as exc:  # not running (starting, or stopping): nothing done
        return json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
    return json_response(write_status(outcome), outcome.as_dict())


def _basic_credentials(header: str | None) -> tuple[str, str]:
    if not header:
        raise AuthenticationError("log in: this API needs a user name and password (Basic)")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise AuthenticationError("only Basic authentication (over loopback or TLS) is accepted")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise AuthenticationError("malformed Basic credentials") from exc
    name, colon, password = decoded.partition(":")
    if not colon or not name:
        raise AuthenticationError("malformed Basic credentials")
    return name[:64], password


def _encodable(text: object) -> bool:
    """Whether ``text`` (if text) can be stored: JSON allows lone surrogates, UTF-8 does not."""
    if not isinstance(text, str):
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _whoami(identity: Identity) -> dict[str, Any]:
    return {
        "user": identity.name,
        "full_name": identity.full_name,
        "roles": sorted(identity.roles),
        "permissions": sorted(identity.permissions),
    }


def _forbidden(identity: Identity, permission: Permission) -> bytes:
    return json_response(HTTPStatus.FORBIDDEN, _forbidden_answer(identity, permission))


def _forbidden_answer(identity: Identity, permission: Permission) -> dict[str, Any]:
    return {"error": f"user {identity.name!r} may not do this: it needs {permission.value!r}"}


def _no_processor(name: str, runners: Mapping[str, ProcessorRunner]) -> bytes:
    known = ", ".join(sorted(runners)) or "none"
    return json_response(
        HTTPStatus.NOT_FOUND, {"error": f"no processor {name!r} (processors: {known})"}
    )


def _bad(message: str) -> bytes:
    return json_response(HTTPStatus.BAD_REQUEST, {"error": message})
