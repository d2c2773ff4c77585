"""The web console's requests: routing, logins, sessions and CSRF checks (a
:class:`gateway.http.ConsoleHandler`).

Routes::

    GET  /static/NAME    anyone      a file of the manifest (gateway.console.assets), else 404
    GET  /login          anyone      the login form
    POST /login          anyone      user, password: 303 to / with a session cookie; 401, or
                                     429 while the user is locked out (every attempt audited)
    POST /logout         session     ends the session (audited)
    GET  /               read        overview: instruments, sinks, store, clock
    GET  /signals        read        latest value of every signal (?instrument=ID)
    GET  /events         read        Server-Sent Events: the signals' updates (?instrument=ID)
    GET  /trends         read        trends of chosen signals (?signal=ID...&window=S)
    GET  /trends/data    read        their points as JSON (see gateway.console.trendpage)
    GET  /writes         write       a form per write target
    GET  /configuration  configure   what the configuration declares (no options, no secrets)
    GET  /audit          audit       the newest records (?user=U&action=GLOB&limit=N), verified
    GET  /audit/export   audit       the records /audit shows, as a file (&format=jsonl|csv)
    POST /write          session     target, value, reason (and for a signed target meaning,
                                     signature_password; witness, witness_password,
                                     witness_meaning): the controlled write path decides
    POST /command        session     a device command: target, reason, arg.NAME per argument,
                                     the signature's fields as for /write (its forms are on
                                     /writes and on /signals?instrument=ID)
    GET  /spectra[/data] read        spectra and their bands (gateway.console.spectra)
    GET  /models[/data]  read        processors' outputs and alarms (gateway.console.models)
    POST /models/acknowledge  session  an alarm's acknowledgement (the command's permission)

Any other page without a live session is ``303`` to ``/login`` (``401`` for ``/events`` and
the ``/…/data`` answers, which scripts fetch; they also refuse another site's ``Origin``). Every
``POST`` but the login needs the session's CSRF token (form field ``csrf`` or header
``X-CSRF-Token``) and, if the browser sends an ``Origin``, this gateway's own: else ``403``,
and nothing is done.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.parse
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

import structlog

from ..audit import AuditEvent, AuditPaths, AuditRecord, VerifyReport
from ..control import (
    Access,
    CommandRequest,
    CommandTarget,
    Signature,
    WriteRequest,
    WriteTarget,
)
from ..errors import GatewayError
from ..http import Request, Stream, response
from ..localapi import write_status
from ..metrics import health_report
from ..model import SignalKind
from ..security import AuthenticationError, Permission
from ..store.trends import TrendError, TrendReader
from ..timefmt import now_ns
from . import pages, trendpage
from .assets import asset
from .auditview import EXPORT_FORMATS, VerifyCache, audit_filter, export_download
from .commandforms import command_arguments, command_forms
from .events import SignalEvents, event_data
from .models import ModelPages
from .responses import (
    SECURITY_HEADERS,
    asset_response,
    html_response,
    redirect,
    text_response,
)
from .sessions import COOKIE, Session, Sessions
from .signatures import SignatureRefused, signed
from .spectra import SpectraPages

if TYPE_CHECKING:
    from ..runtime.outputs import SignalOutput
    from ..runtime.supervisor import Gateway

__all__ = ["MAX_STREAMS", "Console"]

log = structlog.get_logger("gateway.console")

MAX_STREAMS = 16
"""Event streams open at once (of the HTTP endpoint's 32 connections): the rest stay free for
pages, probes and the API."""
_FORM = "application/x-www-form-urlencoded"
# Fetched by scripts: 401 rather than a redirect without a session, and another site's Origin
# refused (a page elsewhere must not read them with the user's cookie).
_FETCHED = ("/events", "/trends/data", "/spectra/data", "/models/data")
_STATIC = "/static/"


class Console:
    """Answers the console's requests for one running gateway."""

    def __init__(
        self,
        gateway: Gateway,
        access: Access,
        *,
        idle_timeout_s: float,
        secure: bool,
        note: Callable[[AuditEvent], None] | None = None,
        audit: AuditPaths | None = None,
    ) -> None:
        self._gateway = gateway
        self._audit_paths = audit
        self._verified = VerifyCache(audit) if audit is not None else None
        self._access = access
        self._note = note
        self.sessions = Sessions(idle_timeout_s)
        self._cookie_flags = "; HttpOnly; SameSite=Strict; Path=/" + ("; Secure" if secure else "")
        self._scheme = "https" if secure else "http"
        self._checks = asyncio.Semaphore(1)  # one password check at a time (scrypt)
        self._trend_reads = asyncio.Semaphore(2)  # trend reads on worker threads at once
        self._started = time.monotonic()
        self.streams: set[SignalEvents] = set()  # open event streams
        self._encoded: dict[str, tuple[int, bytes]] = {}  # the streams' latest events
        self._spectra = SpectraPages(gateway)
        self._models = ModelPages(gateway)

    async def answer(self, request: Request, body: bytes) -> bytes | Stream:
        answer = await self._answer(request, body)
        if request.method == "HEAD" and isinstance(answer, bytes):
            return answer[: answer.index(b"\r\n\r\n") + 4]  # the head, as for a GET
        return answer

    async def _answer(self, request: Request, body: bytes) -> bytes | Stream:
        path, method = request.path, request.method
        if path.startswith(_STATIC):
            if method == "POST":
                return text_response(HTTPStatus.METHOD_NOT_ALLOWED, "static files are GET only")
            found = asset(path[len(_STATIC) :])
            if found is None:
                return text_response(HTTPStatus.NOT_FOUND, "no such file")
            return asset_response(found.content_type, found.body)
        if path == "/login":
            if method == "POST":
                return self._foreign(request) or await self._login(request, body)
            return html_response(HTTPStatus.OK, pages.login_page())
        session, expired = self.sessions.find(_cookie(request), touch=path != "/events")
        if expired is not None:
            self._audit("logout", expired.identity.name, request, "idle timeout")
        if session is None:
            if path in _FETCHED:
                return text_response(HTTPStatus.UNAUTHORIZED, "log in first")
            return redirect("/login")
        if path in _FETCHED:
            foreign = self._foreign(request)
            if foreign is not None:
                return foreign
        if method == "POST":
            refusal = self._refuse_post(request, body, session)
            if refusal is not None:
                return refusal
            if path == "/logout":
                self.sessions.close(session)
                self._audit("logout", session.identity.name, request)
                return redirect(
                    "/login", (f"Set-Cookie: {COOKIE}=; Max-Age=0{self._cookie_flags}",)
                )
            if path == "/write":
                return await self._write(session, _form(body), request.peer)
            if path == "/command":
                return await self._command(session, _form(body), request.peer)
            if path == "/models/acknowledge":
                return await self._models.acknowledge(session, _form(body))
            return text_response(HTTPStatus.NOT_FOUND, f"nothing to post to at {path}")
        if request.path == "/audit":
            return await self._audit_page(request, session)
        if request.path == "/trends/data":
            return await self._trend_data(request, session)
        if request.path == "/audit/export":
            return await self._audit_export(request, session)
        if path in ("/spectra", "/spectra/data"):
            return await self._spectra.answer(request, session)
        if path in ("/models", "/models/data"):
            return self._models.answer(request, session)
        return self._page(request, session)

    def _scalars(self) -> dict[str, str]:
        """The scalar signals (trends have no spectra), id → UCUM unit, in configuration order."""
        return {
            o.signal.id: o.signal.unit
            for o in self._gateway.outputs
            if o.signal.kind is SignalKind.SCALAR
        }

    async def _trend_data(self, request: Request, session: Session) -> bytes:
        """Trend points from the store as JSON, read on a worker thread (two at a time)."""
        who = session.identity
        if not who.may(Permission.READ):
            return text_response(HTTPStatus.FORBIDDEN, f"user {who.name!r} may not read")
        if not self._gateway.plan.config.store.trends:
            return text_response(HTTPStatus.NOT_FOUND, "trends are off (store.trends: false)")
        try:
            query = trendpage.parse_trend_query(request.query, self._scalars(), now_ns())
        except trendpage.TrendQueryError as exc:
            return text_response(HTTPStatus.BAD_REQUEST, str(exc))
        path = self._gateway.plan.config.store.path

        def read() -> bytes:  # the answer is built here too: ~80 ms at most, off the loop
            with TrendReader(path) as reader:
                trends = reader.trend(query.signals, query.start_ns, query.end_ns, query.points)
            return json.dumps(trendpage.trend_json(trends, query), allow_nan=False).encode()

        try:
            async with self._trend_reads:
                body = await asyncio.to_thread(read)
        except TrendError as exc:  # e.g. a signal with no sample stored yet
            return text_response(HTTPStatus.BAD_REQUEST, str(exc))
        except GatewayError as exc:  # no trends file yet, or the store cannot be read
            return text_response(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
        return response(HTTPStatus.OK, "application/json", body, SECURITY_HEADERS)

    async def _audit_page(self, request: Request, session: Session) -> bytes:
        """The audit trail, newest first, filtered by user and action (shell wildcards), with
        the chain's verification: for users with the ``audit`` permission."""
        who, csrf = session.identity, session.csrf
        if not who.may(Permission.AUDIT):
            return text_response(HTTPStatus.FORBIDDEN, f"user {who.name!r} may not read the audit")
        paths, verified = self._audit_paths, self._verified
        if paths is None or verified is None:
            return text_response(HTTPStatus.SERVICE_UNAVAILABLE, "no audit trail")
        try:
            chosen = audit_filter(request.query)
        except ValueError:  # more fields than the form has: not from this page
            return text_response(HTTPStatus.BAD_REQUEST, "too many query fields")

        def read() -> tuple[list[AuditRecord], VerifyReport]:
            newest = list(chosen.records(paths.path))
            newest.reverse()
            return newest, verified.report()

        try:
            records, report = await asyncio.to_thread(read)
        except GatewayError as exc:
            page = pages.message_page("Audit trail", str(exc), who, csrf)
            return html_response(HTTPStatus.SERVICE_UNAVAILABLE, page)
        page = pages.audit_page(
            records, report, chosen.user, chosen.action, chosen.limit, who, csrf
        )
        return html_response(HTTPStatus.OK, page)

    async def _audit_export(self, request: Request, session: Session) -> bytes:
        """The records the audit page shows for the same query (``user``, ``action``,
        ``limit``), as a file (``format``: ``jsonl`` or ``csv``, as ``patgw audit export``
        writes them); the export is itself recorded (``audit.exported``)."""
        who = session.identity
        if not who.may(Permission.AUDIT):
            return text_response(HTTPStatus.FORBIDDEN, f"user {who.name!r} may not read the audit")
        if self._audit_paths is None:
            return text_response(HTTPStatus.SERVICE_UNAVAILABLE, "no audit trail")
        path = self._audit_paths.path
        try:
            chosen = audit_filter(request.query)
        except ValueError:
            return text_response(HTTPStatus.BAD_REQUEST, "too many query fields")
        if chosen.format not in EXPORT_FORMATS:
            known = ", ".join(EXPORT_FORMATS)
            return text_response(HTTPStatus.BAD_REQUEST, f"format is one of {known}")
        try:
            download = await asyncio.to_thread(export_download, path, chosen)
        except GatewayError as exc:
            return text_response(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
        if request.method == "GET" and self._note is not None:  # a HEAD sends no records
            details = {"interface": "console", "peer": request.peer, **chosen.recorded()}
            self._note(
                AuditEvent(
                    action="audit.exported",
                    user=who.name,
                    target=str(path),
                    details={**details, "records": download.records},
                )
            )
        disposition = f'Content-Disposition: attachment; filename="{download.filename}"'
        return response(
            HTTPStatus.OK, download.content_type, download.body, (*SECURITY_HEADERS, disposition)
        )

    # -- pages --------------------------------------------------------------------------------
    def _page(self, request: Request, session: Session) -> bytes | Stream:
        who, csrf = session.identity, session.csrf
        if not who.may(Permission.READ):
            return text_response(HTTPStatus.FORBIDDEN, f"user {who.name!r} may not read")
        path = request.path
        if path == "/":
            report = health_report(self._gateway, time.monotonic() - self._started)
            return html_response(HTTPStatus.OK, pages.overview_page(report, who, csrf))
        if path in ("/signals", "/events"):
            chosen = urllib.parse.parse_qs(request.query).get("instrument", [""])[0]
            if path == "/events":
                if request.method != "GET":
                    return text_response(HTTPStatus.METHOD_NOT_ALLOWED, "GET /events only")
                return self._events(session, chosen)
            now = now_ns()
            rows = [
                {"id": o.signal.id, "unit": o.signal.unit, "data": event_data(o, now)}
                for o in self._outputs(chosen)
            ]
            instruments = sorted({o.signal.instrument for o in self._gateway.outputs})
            forms = command_forms(self._access.commands, who, csrf, chosen) if chosen else ""
            page = pages.signals_page(rows, instruments, chosen, who, csrf, forms)
            return html_response(HTTPStatus.OK, page)
        if path == "/trends":
            try:
                fields = urllib.parse.parse_qs(
                    request.query, max_num_fields=trendpage.MAX_CHARTS + 2
                )
            except ValueError:  # more fields than the form has: not from this page
                return text_response(HTTPStatus.BAD_REQUEST, "too many query fields")
            scalars = self._scalars()
            picked = [s for s in dict.fromkeys(fields.get("signal", [])) if s in scalars]
            try:
                window = int(fields.get("window", ["900"])[0])
            except ValueError:
                window = 900
            window = window if window in trendpage.WINDOWS_S else 900
            note = ""
            if not self._gateway.plan.config.store.trends:
                note = "Trends are off: set store.trends: true in the configuration."
            page = trendpage.trends_page(scalars, picked, window, who, csrf, note)
            return html_response(HTTPStatus.OK, page)
        if path == "/writes":
            if not who.may(Permission.WRITE):
                return text_response(HTTPStatus.FORBIDDEN, f"user {who.name!r} may not write")
            forms = command_forms(self._access.commands, who, csrf)
            page = pages.writes_page(self._access.targets, who, csrf, forms)
            return html_response(HTTPStatus.OK, page)
        if path == "/configuration":
            if not who.may(Permission.CONFIGURE):
                return text_response(HTTPStatus.FORBIDDEN, f"user {who.name!r} may not configure")
            plan = self._gateway.plan
            page = pages.configuration_page(plan.config, str(plan.source), who, csrf)
            return html_response(HTTPStatus.OK, page)
        return text_response(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    def _outputs(self, instrument: str) -> Iterable[SignalOutput]:
        outputs = self._gateway.outputs
        return (
            outputs if not instrument else [o for o in outputs if o.signal.instrument == instrument]
        )

    def _events(self, session: Session, instrument: str) -> bytes | Stream:
        if len(self.streams) >= MAX_STREAMS:
            return text_response(
                HTTPStatus.SERVICE_UNAVAILABLE, f"at most {MAX_STREAMS} live streams at once"
            )
        return SignalEvents(
            lambda: self._outputs(instrument),
            lambda: self.sessions.alive(session) and not self._gateway.stopping,
            open_streams=self.streams,
            encoded=self._encoded,
        )

    # -- posts --------------------------------------------------------------------------------
    def _refuse_post(self, request: Request, body: bytes, session: Session) -> bytes | None:
        """A 403 if the POST lacks the session's CSRF token or comes from another origin."""
        foreign = self._foreign(request)
        if foreign is not None:
            return foreign
        token = request.headers.get("x-csrf-token")
        if token is None:
            token = _form(body).get("csrf")
        if not session.csrf_matches(token):
            log.warning("console.csrf_refused", user=session.identity.name, peer=request.peer)
            return text_response(
                HTTPStatus.FORBIDDEN, "missing or wrong CSRF token: reload the page and retry"
            )
        return None

    def _foreign(self, request: Request) -> bytes | None:
        """A 403 if the browser says the request comes from another site (``Origin``)."""
        origin = request.headers.get("origin")
        if origin is None or origin == f"{self._scheme}://{request.headers.get('host', '')}":
            return None
        log.warning("console.foreign_origin", origin=origin[:200], peer=request.peer)
        return text_response(HTTPStatus.FORBIDDEN, "this request came from another site")

    async def _login(self, request: Request, body: bytes) -> bytes:
        if request.headers.get("content-type", "").split(";")[0].strip() != _FORM:
            return text_response(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"send the login as {_FORM}")
        form = _form(body)
        name, password = form.get("user", "")[:64], form.get("password", "")
        try:
            async with self._checks:
                identity = await asyncio.to_thread(
                    self._access.authority.authenticate,
                    name,
                    password,
                    interface="console",
                    peer=request.peer,
                )
        except AuthenticationError as exc:
            status = (
                HTTPStatus.TOO_MANY_REQUESTS if exc.why == "locked out" else HTTPStatus.UNAUTHORIZED
            )
            return html_response(status, pages.login_page(str(exc), name))
        token, _session = self.sessions.create(identity, request.peer)
        log.info("console.login", user=identity.name, peer=request.peer)
        return redirect("/", (f"Set-Cookie: {COOKIE}={token}{self._cookie_flags}",))

    async def _write(self, session: Session, form: dict[str, str], peer: str) -> bytes:
        who, csrf = session.identity, session.csrf
        target, reason = form.get("target", ""), form.get("reason", "")
        try:
            value = float(form.get("value", ""))
            if not math.isfinite(value):
                raise ValueError(value)
        except ValueError:
            page = pages.message_page("Write", "the value must be a number", who, csrf)
            return html_response(HTTPStatus.BAD_REQUEST, page)
        declared = self._access.targets.get(target)
        signature = await self._signature(session, form, peer, declared, target, value, "write")
        if isinstance(signature, bytes):
            return signature
        try:
            request = WriteRequest(target, value, who, reason, "console", signature)
            outcome = await self._access.write(request)
        except GatewayError as exc:  # not running (starting, or stopping): nothing written
            page = pages.message_page("Write", str(exc), who, csrf)
            return html_response(HTTPStatus.SERVICE_UNAVAILABLE, page)
        page = pages.write_outcome_page(outcome, who, csrf)
        return html_response(write_status(outcome), page)

    async def _command(self, session: Session, form: dict[str, str], peer: str) -> bytes:
        who, csrf = session.identity, session.csrf
        target, reason = form.get("target", ""), form.get("reason", "")
        declared = self._access.commands.get(target)
        arguments = {} if declared is None else command_arguments(form, declared.command)
        signature = await self._signature(
            session, form, peer, declared, target, arguments, "command"
        )
        if isinstance(signature, bytes):
            return signature
        try:
            request = CommandRequest(target, who, reason, "console", arguments, signature)
            outcome = await self._access.command(request)
        except GatewayError as exc:  # not running (starting, or stopping): nothing sent
            page = pages.message_page("Command", str(exc), who, csrf)
            return html_response(HTTPStatus.SERVICE_UNAVAILABLE, page)
        page = pages.command_outcome_page(outcome, who, csrf)
        return html_response(write_status(outcome), page)

    async def _signature(
        self,
        session: Session,
        form: dict[str, str],
        peer: str,
        declared: WriteTarget | CommandTarget | None,
        target: str,
        value: object,
        kind: str,
    ) -> Signature | bytes | None:
        """The signature ``form`` carries for a ``kind`` ("write" or "command") of ``target``,
        its passwords checked; or the page refusing it, the refusal audited."""
        try:
            config = None if declared is None else declared.config
            return await signed(
                form, config, session.identity, self._access.authority, self._checks, peer
            )
        except SignatureRefused as refused:
            self._access.note_refusal(
                session.identity.name,
                target,
                value,
                "signature",
                refused.message,
                "console",
                action=f"{kind}.refused",
            )
            title = kind.capitalize()
            page = pages.message_page(title, refused.message, session.identity, session.csrf)
            return html_response(refused.status, page)

    def _audit(self, action: str, user: str, request: Request, reason: str = "") -> None:
        if self._note is None:
            return
        self._note(
            AuditEvent(
                action=action,
                user=user,
                target="console",
                reason=reason,
                details={"interface": "console", "peer": request.peer},
            )
        )


def _cookie(request: Request) -> str | None:
    """The session token from the ``Cookie`` header, if any."""
    for part in request.headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def _form(body: bytes) -> dict[str, str]:
    """A url-encoded form's fields (the first of a repeated one); empty if it is not one."""
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        return {}
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form
