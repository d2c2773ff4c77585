"""structlog set-up: human-readable console lines by default, JSON lines with a flag.

Libraries that log through the standard library (pymodbus, asyncio) are rendered by the same
processors, so ``--log-format json`` gives JSON for every line. pymodbus's own connection
chatter is kept at ``error`` unless the gateway logs at ``debug``: the drivers already report
each failure, translated, as ``instrument.down``.

A misbehaving peer must not be able to fill the disk through the log, so every line at ``info``
or above, ours or a library's, passes two guards (:class:`RepeatLimiter`, :func:`truncate`):

- *repeats*: the first line of a kind from one source is written; identical ones from that
  source within the next ``repeat_window_s`` are counted, not written, and the next one written
  after the window carries ``suppressed`` (how many) and ``suppressed_over_s``. The source is
  the instrument (bound as a context variable by the runtime, so a library's lines logged on
  behalf of an instrument carry its id) or the logger; the kind is the event with its fields,
  numbers masked (a transaction id or a delay does not make a line new). Lines bound with
  ``audit=True`` (writes to instruments) are never suppressed.
- *size*: a message or field longer than ``max_chars`` is cut, saying how much was cut (pymodbus
  appends hex dumps of the last frames to its errors: up to 107 KB on one line).

Some library lines at ``error`` describe a peer's fault, not the gateway's (asyncua logs each
request it refuses to an unauthenticated client): they are written at ``warning``.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

__all__ = ["RepeatLimiter", "configure_logging", "truncate"]

_CHATTY = ("pymodbus", "asyncua")

#: Seconds during which lines of one kind from one source are counted instead of written.
REPEAT_WINDOW_S = 60.0
#: Longest message or field written as is; a traceback may be eight times as long.
MAX_CHARS = 512

# (logger name prefix, message start) of library lines at error that report a peer's fault.
_PEER_FAULTS = (
    ("asyncua.server", "sending service fault response"),
    ("asyncua.server", "Got malformed header"),
    ("asyncua.server", "Rejected active session"),
    ("asyncua.common.connection", "Message size"),
    ("asyncua.common.connection", "Number of message chunks"),
)
# Fields that differ on every line or are not text: never part of a line's kind.
_NOT_KIND = frozenset(
    {"timestamp", "exc_info", "exception", "stack", "stack_info", "_record", "_from_structlog"}
)
_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")
_KIND_CHARS = 160
_MAX_KINDS = 4096


class _StderrLogger:
    """Writes each line to the *current* ``sys.stderr`` (the live view may redirect it)."""

    def msg(self, message: str) -> None:
        stream: TextIO = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


@dataclass(slots=True)
class _Seen:
    since: float  # start of the current window
    suppressed: int = 0


class RepeatLimiter:
    """A structlog processor that writes the first line of a kind per source and window and
    counts the rest (see the module docstring). Raises ``structlog.DropEvent`` to suppress."""

    def __init__(
        self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[tuple[str, ...], _Seen] = {}
        self._lock = threading.Lock()  # the store writer's thread logs too

    def __call__(
        self, _logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if event_dict.get("audit") or method == "debug" or self.window_s <= 0:
            return event_dict
        key = self._kind(event_dict)
        with self._lock:
            now = self._clock()
            seen = self._seen.get(key)
            if seen is not None and now - seen.since < self.window_s:
                seen.suppressed += 1
                raise structlog.DropEvent
            if seen is not None:
                del self._seen[key]  # re-inserted below, as the newest
                if seen.suppressed:
                    event_dict["suppressed"] = seen.suppressed
                    event_dict["suppressed_over_s"] = round(now - seen.since, 1)
            elif len(self._seen) >= _MAX_KINDS:
                self._forget(now)
            self._seen[key] = _Seen(now)
        return event_dict

    def _kind(self, event_dict: MutableMapping[str, Any]) -> tuple[str, ...]:
        source = str(event_dict.get("instrument") or event_dict.get("logger") or "")
        parts = [source]
        for name, value in event_dict.items():
            if name in _NOT_KIND:
                continue
            text = value if isinstance(value, str) else repr(value)
            if name == "event":
                text = text.split("\n", 1)[0]
            parts.append(f"{name}={_NUMBERS.sub('#', text[:_KIND_CHARS])}")
        return tuple(parts)

    def _forget(self, now: float) -> None:
        """Bound the memory: drop finished windows, then the oldest kinds."""
        for key in [k for k, v in self._seen.items() if now - v.since >= self.window_s]:
            del self._seen[key]
        while len(self._seen) >= _MAX_KINDS:
            del self._seen[next(iter(self._seen))]


def truncate(max_chars: int = MAX_CHARS) -> structlog.types.Processor:
    """A structlog processor cutting long strings, saying how many characters were cut."""

    def cut(text: str, limit: int) -> str:
        if len(text) <= limit:
            return text
        return f"{text[:limit]}... [{len(text) - limit} more characters cut]"

    def processor(
        _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for name, value in event_dict.items():
            if isinstance(value, str) and len(value) > max_chars:
                limit = 8 * max_chars if name in ("exception", "stack") else max_chars
                event_dict[name] = cut(value, limit)
        return event_dict

    return processor


def _peer_faults_as_warnings(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if event_dict.get("level") == "error":
        name = str(event_dict.get("logger", ""))
        event = str(event_dict.get("event", ""))
        if any(name.startswith(n) and event.startswith(m) for n, m in _PEER_FAULTS):
            event_dict["level"] = "warning"
    return event_dict


def _factory(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


class _CurrentStderrHandler(logging.Handler):
    """A handler that writes each record to the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except structlog.DropEvent:
            return  # a repeat, counted by the limiter
        except Exception:  # logging must never take the gateway down
            self.handleError(record)
            return
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception:  # logging must never take the gateway down
            self.handleError(record)


def configure_logging(
    fmt: str = "console",
    level: str = "info",
    *,
    repeat_window_s: float = REPEAT_WINDOW_S,
    max_chars: int = MAX_CHARS,
) -> None:
    """Route structlog and standard-library logs to standard error as ``fmt`` at ``level``,
    suppressing repeats within ``repeat_window_s`` (0: none) and cutting strings longer than
    ``max_chars``."""
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric = logging.getLevelNamesMapping()[level.upper()]
    # One limiter for our lines and the libraries': a kind is counted once, whoever logs it.
    limiter = RepeatLimiter(repeat_window_s)
    cutter = truncate(max_chars)
    structlog.configure(
        processors=[
            *shared,
            limiter,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            cutter,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_factory,
        cache_logger_on_first_use=False,
    )
    handler = _CurrentStderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _peer_faults_as_warnings,
                limiter,
                cutter,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    # Replace only our own handler, so embedders' (and pytest's) handlers stay in place.
    for old in [h for h in root.handlers if isinstance(h, _CurrentStderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.INFO))
    for name in _CHATTY:
        chatty_level = logging.DEBUG if numeric <= logging.DEBUG else logging.ERROR
        logging.getLogger(name).setLevel(chatty_level)
