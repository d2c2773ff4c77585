"""The local HTTP endpoint: ``/health`` (JSON) for probes, ``/metrics`` for Prometheus.

Served from the gateway's own event loop with ``asyncio`` streams — no web framework — and
deliberately small and strict:

* HTTP/1.1 (1.0 accepted), ``GET`` and ``HEAD`` only (``405`` with ``Allow`` otherwise), one
  request per connection (``Connection: close``), every response with ``Content-Length``;
* the request head (request line and headers, CRLF-terminated) must arrive within
  ``request_timeout_s`` (``408``) and fit in :data:`MAX_HEAD_BYTES` (``431``, or ``414`` for the
  request line alone); anything malformed is ``400``; a request body is never read;
* writing the response, and then closing, may take ``request_timeout_s`` each: a client that
  does not read it is cut off;
* at most :data:`MAX_CONNECTIONS` connections at once. One more does not wait for a slot: it
  takes that of the oldest connection without a complete request head (a half-open
  "slowloris" one, or one lingering after a refusal), from the address holding the most of
  them. A connection whose whole head is already in its socket when it is accepted — a
  probe's, sent with the connection — is never such a victim, so probes are answered however
  many half-open connections are kept open, from another address or from theirs (see
  docs/decisions/0011-http-connection-eviction.md). Only if every connection is being
  answered is a new one refused (one without its head), or the oldest closed for it (one
  with). Counted in ``patgw_http_connections_evicted_total`` and ``..._refused_total``, and
  logged (``http.connections_at_cap``, at most every 10 s).

Routes (query strings are ignored)::

    /metrics        200  Prometheus text format 0.0.4 (gateway.metrics.GatewayCollector)
    /health         200 when ready, else 503  JSON: status, ready, instruments, sinks, store
    /health/live    200  {"live": true}
    /health/ready   200 when ready, else 503  {"ready": ...}
    /api/...        the local API, when served (an :class:`ApiHandler`, gateway.localapi)
    anything else   the web console, when served (a :class:`ConsoleHandler`, gateway.console)

Both handlers may be sent ``POST`` requests (a body of at most :data:`MAX_BODY_BYTES`). The
console may answer with a :class:`Stream` (Server-Sent Events) instead of a complete response:
the connection stays in the answer phase while the stream writes to it, each write bounded like
a response's — a client that leaves more than :data:`STREAM_BUFFER_BYTES` unread for
``request_timeout_s`` is cut off — until the stream ends, the client goes or the gateway stops.

Answers are read from the gateway's counters at request time (see :mod:`gateway.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from enum import StrEnum
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric

from .config import HttpConfig
from .errors import GatewayError
from .metrics import health_report, is_ready, new_registry

if TYPE_CHECKING:
    from .runtime.supervisor import Gateway

__all__ = [
    "API_PREFIX",
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "MAX_HEAD_BYTES",
    "REQUEST_TIMEOUT_S",
    "STREAM_BUFFER_BYTES",
    "ApiHandler",
    "ConsoleHandler",
    "Request",
    "Stream",
    "json_response",
    "response",
    "serve_http",
]

log = structlog.get_logger("gateway.http")

MAX_HEAD_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 32
MAX_BODY_BYTES = 64 * 1024
API_PREFIX = "/api/"
STREAM_BUFFER_BYTES = 16 * 1024
"""What a stream may leave unsent (in our buffer, and asked of the kernel's send buffer)
before its writes wait for the client to read; a client that does not within
``request_timeout_s`` is cut off."""

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_ALLOWED = ("GET", "HEAD")
# RFC 9110 token: method and header field names.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")


class _Reject(Exception):
    """The request cannot be answered normally; respond with ``status`` and close."""

    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _ClientGone(Exception):
    """The client closed the connection before sending anything."""


async def serve_http(
    gateway: Gateway,
    config: HttpConfig,
    *,
    on_listening: Callable[[str, int], None] | None = None,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    api: ApiHandler | None = None,
    console: ConsoleHandler | None = None,
) -> None:
    """Serve ``/health`` and ``/metrics`` of ``gateway`` on ``config.host``:``config.port``
    (and the ``api`` and ``console`` handlers' routes, if given) until cancelled; then stop
    listening and close every open connection.

    ``on_listening(host, port)`` is called once the socket is bound, with the actual port
    (``config.port`` 0 picks a free one). A failure to bind raises :class:`GatewayError`.
    """
    endpoint = _Endpoint(gateway, request_timeout_s, api, console)
    ssl_context = _ssl_context(config)
    try:
        server = await asyncio.start_server(
            endpoint.accept,
            config.host,
            config.port,
            limit=MAX_HEAD_BYTES,
            ssl=ssl_context,
            ssl_handshake_timeout=request_timeout_s if ssl_context else None,
        )
    except OSError as exc:
        # asyncio rewords bind errors ("error while attempting to bind on address ..."): the
        # errno's own text is clearer; a resolver error (negative code) keeps its message.
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror
        where = _host_port(config.host, config.port)
        raise GatewayError(f"cannot serve HTTP on {where}: {reason or exc}") from exc
    try:
        port = int(server.sockets[0].getsockname()[1])
        scheme = "https" if ssl_context else "http"
        url = f"{scheme}://{_host_port(config.host, port)}/"
        log.info("http.listening", host=config.host, port=port, url=url)
        if on_listening is not None:
            on_listening(config.host, port)
        await asyncio.Future()  # until cancelled
    finally:
        server.close()
        await endpoint.aclose()


def _ssl_context(config: HttpConfig) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls.certificate, config.tls.private_key)
    except (OSError, ssl.SSLError) as exc:
        raise GatewayError(
            f"http.tls: cannot load the certificate {config.tls.certificate} and key"
            f" {config.tls.private_key}: {exc}"
        ) from exc
    return context


class ApiHandler(Protocol):
    """Answers the requests under :data:`API_PREFIX` (see :mod:`gateway.localapi`)."""

    async def answer(self, request: Request, body: bytes) -> bytes: ...


class Stream(Protocol):
    """A response written over time (Server-Sent Events): ``head`` first, then whatever
    :meth:`run` sends, until it returns. ``send`` waits while the client is behind, and raises
    (ending the connection) if it stays behind longer than the request timeout or has gone."""

    head: bytes

    async def run(self, send: Callable[[bytes], Awaitable[None]]) -> None: ...


class ConsoleHandler(Protocol):
    """Answers every request that is not for ``/metrics``, ``/health*`` or the API (see
    :mod:`gateway.console`): a complete response, or a :class:`Stream`."""

    async def answer(self, request: Request, body: bytes) -> bytes | Stream: ...


def _is_console_path(path: str) -> bool:
    return not (
        path.startswith(API_PREFIX)
        or path == "/metrics"
        or path == "/health"
        or path.startswith("/health/")
    )


async def _read_body(reader: asyncio.StreamReader, request: Request) -> bytes:
    """A request's body: exactly Content-Length bytes, at most :data:`MAX_BODY_BYTES`."""
    if "transfer-encoding" in request.headers:
        raise _Reject(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
    length_text = request.headers.get("content-length")
    if length_text is None:
        if request.method == "POST":
            raise _Reject(HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length")
        return b""
    if not (length_text.isascii() and length_text.isdigit()):
        raise _Reject(HTTPStatus.BAD_REQUEST, "malformed Content-Length")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise _Reject(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a request body is at most {MAX_BODY_BYTES} bytes"
        )
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise _Reject(HTTPStatus.BAD_REQUEST, "connection closed mid-body") from exc


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Phase(StrEnum):
    """Where a connection is; what is evicted first at the cap."""

    HEAD = "head"  # waiting for a complete request head
    LINGER = "linger"  # refused; waiting for the client to close after reading the answer
    ANSWER = "answer"  # a complete request: its response is being written


@dataclass(eq=False, slots=True)
class _Connection:
    host: str  # the peer's address
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None = None
    phase: _Phase = _Phase.HEAD


_EVICTION_LOG_S = 10.0  # at most one warning at the cap this often (a flood is thousands)


class _Endpoint:
    """The connections of one server and the routes they are answered from."""

    def __init__(
        self,
        gateway: Gateway,
        request_timeout_s: float,
        api: ApiHandler | None = None,
        console: ConsoleHandler | None = None,
    ) -> None:
        self._gateway = gateway
        self._api = api
        self._console = console
        posts = api is not None or console is not None
        self._allowed = (*_ALLOWED, "POST") if posts else _ALLOWED
        self._registry = new_registry(gateway)
        self._registry.register(_HttpCollector(self))
        self._timeout_s = request_timeout_s
        self._started = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()  # every task, evicted ones until they end
        self.open: dict[asyncio.Task[None], _Connection] = {}  # counted, oldest first
        self.evicted: Counter[str] = Counter()  # by the phase the connection was in
        self.refused = 0  # new connections closed at once: every slot was being answered
        self._cap_logged_total = 0
        self._cap_logged_at = -_EVICTION_LOG_S
        self._closing = False

    def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called by the server for each new connection: answer it in a task of its own,
        making room at the cap."""
        complete = _head_waiting(writer)
        if self._closing or (len(self.open) >= MAX_CONNECTIONS and not self._evict(complete)):
            writer.transport.abort()
            return
        peer = writer.get_extra_info("peername")
        phase = _Phase.ANSWER if complete else _Phase.HEAD
        connection = _Connection(str(peer[0]) if peer else "", writer, phase=phase)
        task = asyncio.get_running_loop().create_task(
            self._serve(reader, connection), name="http.connection"
        )
        connection.task = task
        self.open[task] = connection
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.open.pop(task, None)

    def _evict(self, complete: bool) -> bool:
        """Close one connection to make room for a new one (whose request head has arrived
        whole if ``complete``); False if the new one is refused instead. See the module
        docstring for which."""
        connections = list(self.open.values())
        candidates = [c for c in connections if c.phase is not _Phase.ANSWER]
        if not candidates and complete:
            candidates = connections
        if not candidates:
            self.refused += 1
            self._log_at_cap("refused", "")
            return False
        per_host = Counter(c.host for c in candidates)
        most = max(per_host.values())
        victim = next(c for c in candidates if per_host[c.host] == most)  # the oldest of them
        assert victim.task is not None
        del self.open[victim.task]
        victim.task.cancel()
        victim.writer.transport.abort()
        self.evicted[victim.phase.value] += 1
        self._log_at_cap(f"evicted ({victim.phase.value})", victim.host)
        return True

    def _log_at_cap(self, what: str, host: str) -> None:
        now = time.monotonic()
        if now - self._cap_logged_at < _EVICTION_LOG_S:
            return
        total = sum(self.evicted.values()) + self.refused
        log.warning(
            "http.connections_at_cap",
            limit=MAX_CONNECTIONS,
            last=what,
            host=host or None,
            since_last_log=total - self._cap_logged_total,
            evicted_total=sum(self.evicted.values()),
            refused_total=self.refused,
        )
        self._cap_logged_at = now
        self._cap_logged_total = total

    async def aclose(self) -> None:
        """Close every open connection and wait for their tasks to end."""
        self._closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _serve(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        writer = connection.writer
        head_only = False
        rejected = True
        try:
            try:
                async with asyncio.timeout(self._timeout_s):
                    lines = await _read_head(reader)
                    request = _parse(lines, self._allowed)
                    body = await _read_body(reader, request)
                # From here the request is being answered (an API write may take a while): it
                # is no victim for eviction unless every connection is being answered.
                connection.phase = _Phase.ANSWER
                head_only = request.method == "HEAD"
                rejected = False
                seen = Request(
                    request.method, request.path, request.query, request.headers, connection.host
                )
                if self._api is not None and request.path.startswith(API_PREFIX):
                    response: bytes | Stream = await self._api.answer(seen, body)
                elif self._console is not None and _is_console_path(request.path):
                    response = await self._console.answer(seen, body)
                elif request.method not in _ALLOWED:
                    raise _Reject(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD are allowed")
                else:
                    response = self._route(request.path, head_only)
            except _ClientGone:
                return
            except TimeoutError:
                response = _error(HTTPStatus.REQUEST_TIMEOUT, "request head not received in time")
            except _Reject as exc:
                log.debug("http.rejected", status=int(exc.status), detail=exc.detail)
                response = _error(exc.status, exc.detail)
            except Exception:  # a bug here must not take the gateway down
                log.exception("http.handler_failed")
                response = _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error", head_only)
            connection.phase = _Phase.ANSWER
            if isinstance(response, bytes):
                writer.write(response)
            else:
                await self._stream(response, writer)
            async with asyncio.timeout(self._timeout_s):
                await writer.drain()
            if rejected:
                connection.phase = _Phase.LINGER
                await _linger(reader, writer)
            # Until the response has left our buffer: a client that does not read would
            # otherwise keep the socket (and its buffer) open, uncounted, for ever.
            writer.close()
            async with asyncio.timeout(self._timeout_s):
                await writer.wait_closed()
        except Exception:  # the client went away or does not read: nothing more to say
            writer.transport.abort()
        finally:
            writer.close()

    async def _stream(self, stream: Stream, writer: asyncio.StreamWriter) -> None:
        """Write ``stream`` to the client, never buffering more than about
        :data:`STREAM_BUFFER_BYTES` (ours) plus as much in the kernel, nor waiting for a client
        that does not read longer than the request timeout (then the connection is cut)."""
        transport = writer.transport
        transport.set_write_buffer_limits(high=STREAM_BUFFER_BYTES)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_BUFFER_BYTES)

        async def send(data: bytes) -> None:
            if transport.is_closing():
                raise ConnectionResetError("the client went away")
            writer.write(data)
            async with asyncio.timeout(self._timeout_s):
                await writer.drain()  # at once, unless the client is behind

        await send(stream.head)
        await stream.run(send)

    def _route(self, path: str, head_only: bool) -> bytes:
        gateway = self._gateway
        if path == "/metrics":
            body = generate_latest(self._registry)
            return _response(HTTPStatus.OK, CONTENT_TYPE_PLAIN_0_0_4, body, head_only)
        if path == "/health":
            report = health_report(gateway, time.monotonic() - self._started)
            return _json(HTTPStatus.OK if report["ready"] else _UNAVAILABLE, report, head_only)
        if path == "/health/live":
            return _json(HTTPStatus.OK, {"live": True}, head_only)
        if path == "/health/ready":
            ready = is_ready(gateway)
            return _json(HTTPStatus.OK if ready else _UNAVAILABLE, {"ready": ready}, head_only)
        return _error(HTTPStatus.NOT_FOUND, f"no such resource: {path}", head_only)


class _HttpCollector:
    """The endpoint's own metrics, next to the gateway's."""

    def __init__(self, endpoint: _Endpoint) -> None:
        self._endpoint = endpoint

    def collect(self) -> Iterator[Metric]:
        endpoint = self._endpoint
        yield GaugeMetricFamily(
            "patgw_http_connections_open",
            f"Connections open to this endpoint (at most {MAX_CONNECTIONS}).",
            value=len(endpoint.open),
        )
        evicted = CounterMetricFamily(
            "patgw_http_connections_evicted_total",
            "Connections closed to make room for a new one (phase: head, not a complete"
            " request yet; linger, refused; answer, its response still being written).",
            labels=["phase"],
        )
        for phase in _Phase:
            evicted.add_metric([phase.value], endpoint.evicted[phase.value])
        yield evicted
        yield CounterMetricFamily(
            "patgw_http_connections_refused_total",
            "New connections closed unanswered: every open one was being answered.",
            value=endpoint.refused,
        )


_UNAVAILABLE = HTTPStatus.SERVICE_UNAVAILABLE
_LINGER_S = 1.0


def _head_waiting(writer: asyncio.StreamWriter) -> bool:
    """Whether a whole request head already waits in the connection's socket (peeked on a
    duplicate descriptor, not read): a probe's does, by the time its connection is accepted;
    a slowloris connection's never does."""
    transport_socket = writer.get_extra_info("socket")
    if transport_socket is None:
        return False
    try:
        with transport_socket.dup() as sock:
            sock.setblocking(False)  # the same open file as the transport's: it already is
            data = sock.recv(MAX_HEAD_BYTES + 4, socket.MSG_PEEK)
    except OSError:  # BlockingIOError: nothing has arrived yet
        return False
    # Leading empty lines are skipped by the reader (RFC 9112 2.2): not a head's end.
    return b"\r\n\r\n" in data.lstrip(b"\r\n")


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After refusing a request, let the client read the answer: closing with unread input
    would reset the connection and could discard the answer before the client sees it."""
    writer.write_eof()
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(_LINGER_S):
            while await reader.read(65536):
                pass


async def _read_head(reader: asyncio.StreamReader) -> list[bytes]:
    """The request line and header lines (without their CRLF), up to the empty line."""
    lines: list[bytes] = []
    total = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            raise _too_large(not lines) from exc
        except asyncio.IncompleteReadError as exc:
            if not lines and not exc.partial.strip():
                raise _ClientGone from exc
            raise _Reject(HTTPStatus.BAD_REQUEST, "connection closed mid-request") from exc
        total += len(line)
        if total > MAX_HEAD_BYTES:
            raise _too_large(not lines)
        if not line.endswith(b"\r\n"):
            raise _Reject(HTTPStatus.BAD_REQUEST, "lines must end with CRLF")
        if line == b"\r\n":
            if lines:
                return lines
            continue  # RFC 9112 2.2: an empty line before the request line is ignored
        lines.append(line[:-2])


def _too_large(request_line: bool) -> _Reject:
    if request_line:
        return _Reject(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
    return _Reject(
        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
        f"request head longer than {MAX_HEAD_BYTES} bytes",
    )


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request head: method, path (without the query), query and headers (names in
    lower case; a repeated header keeps its last value)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    peer: str = ""


def _parse(lines: list[bytes], allowed: tuple[str, ...] = _ALLOWED) -> Request:
    """Check the request head; return it parsed."""
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _VERSION.fullmatch(parts[2]):
        raise _Reject(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _Reject(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.1 is served")
    hosts = 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):  # also refuses obsolete line folding
            raise _Reject(HTTPStatus.BAD_REQUEST, "malformed header line")
        hosts += name.lower() == b"host"
        headers[name.decode("ascii").lower()] = value.strip().decode("latin-1")
    if hosts > 1 or (hosts == 0 and version == b"HTTP/1.1"):
        raise _Reject(HTTPStatus.BAD_REQUEST, "an HTTP/1.1 request needs exactly one Host")
    if method.decode() not in allowed:
        raise _Reject(HTTPStatus.METHOD_NOT_ALLOWED, f"only {', '.join(allowed)} are allowed")
    if not target.startswith(b"/") or not target.isascii():
        raise _Reject(HTTPStatus.BAD_REQUEST, "the request target must be a path")
    path, _, query = target.decode().partition("?")
    return Request(method.decode(), path, query, headers)


def response(
    status: HTTPStatus,
    content_type: str,
    body: bytes,
    headers: tuple[str, ...] = (),
    *,
    head_only: bool = False,
) -> bytes:
    """A complete response (``Connection: close``, ``Cache-Control: no-store``) with
    ``headers`` added; only the head if ``head_only`` (a ``HEAD`` request)."""
    return _response(status, content_type, body, head_only, headers)


def json_response(
    status: HTTPStatus, document: dict[str, Any], headers: tuple[str, ...] = ()
) -> bytes:
    """A complete response with ``document`` as its JSON body (for the local API)."""
    body = json.dumps(document, separators=(",", ":")).encode() + b"\n"
    return _response(status, _JSON, body, False, headers)


def _json(status: HTTPStatus, document: dict[str, Any], head_only: bool) -> bytes:
    body = json.dumps(document, separators=(",", ":")).encode() + b"\n"
    return _response(status, _JSON, body, head_only)


def _error(status: HTTPStatus, detail: str, head_only: bool = False) -> bytes:
    body = f"{int(status)} {status.phrase}: {detail}\n".encode()
    return _response(status, _TEXT, body, head_only)


def _response(
    status: HTTPStatus,
    content_type: str,
    body: bytes,
    head_only: bool,
    extra: tuple[str, ...] = (),
) -> bytes:
    headers = [
        f"HTTP/1.1 {int(status)} {status.phrase}",
        f"Date: {formatdate(usegmt=True)}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if status is HTTPStatus.METHOD_NOT_ALLOWED:
        headers.append(f"Allow: {', '.join(_ALLOWED)}")
    headers.extend(extra)
    head = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body
