"""structlog set-up: human-readable console lines by default, JSON lines with a flag.

Libraries that log through the standard library (pymodbus, asyncio) are rendered by the same
processors, so ``--log-format json`` gives JSON for every line. pymodbus's own connection
chatter is kept at ``error`` unless the gateway logs at ``debug``: the drivers already report
each failure, translated, as ``instrument.down``.

A misbehaving peer must not be able to fill the disk through the log, so every line at ``info``
or above, ours or a library's, passes two guards (:class:`RepeatLimiter`, :func:`truncate`):

- *repeats*: the first line of a kind from one source is written; identical ones from that
  source within the next ``repeat_window_s`` are counted, not written, and the next one written
  after the window carries ``suppressed`` (how many) and ``suppressed_over_s``; if none comes,
  a ``log.repeats_suppressed`` line (the kind's event as ``repeated``, its fields, the count)
  is written as other lines pass once the window is over, or when the kind is forgotten to
  bound memory: no timer task, so a count waits for the next line, at most a second late. The
  source is the instrument (bound as a context variable by the runtime, so a library's lines
  logged on behalf of an instrument carry its id) or the logger; the kind is the event with its
  fields, numbers masked in free text only (a library's message, ``reason``, ``error``...: a
  transaction id or a port does not make a line new) and numeric values ignored (a count or a
  delay), while every other string field is an identity kept whole (``sink``, ``signal``,
  ``topic``...: another sink's line is never a repeat). For our own events (``instrument.down``)
  a line of another kind than the one last written for its source and namespace
  (``instrument``) is a change of state and is written even within its window (at most
  ``STATE_CHANGES_PER_WINDOW`` per window, against an instrument flapping as fast as it can).
  Lines bound with ``audit=True`` (writes to instruments) are never suppressed.
- *size*: a message or field longer than ``max_chars`` is cut, saying how much was cut (pymodbus
  appends hex dumps of the last frames to its errors: up to 107 KB on one line); a library's
  traceback is formatted to text first, so it is cut too.

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
    {
        "timestamp",
        "exc_info",
        "exception",
        "stack",
        "stack_info",
        "_record",
        "_from_structlog",
        "suppressed",
        "suppressed_over_s",
    }
)
# Free-text fields: numbers in them (a transaction id, a port, a delay in a message) are masked.
# Every other string field is an identity (sink, signal, target, topic, url, node...) and is
# part of the kind as is, so a field added later is never masked by mistake.
_FREE_TEXT = frozenset({"event", "reason", "error", "detail", "problem", "why", "hint", "message"})
_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")
# Our own events ("instrument.down"): dotted lowercase names; a library's event is free text.
_OWN_EVENT = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+")
_KIND_CHARS = 160
_MAX_KINDS = 4096
#: State changes (see RepeatLimiter) written per source, event namespace and window beyond
#: the window rule: bounds an instrument that flaps as fast as it can.
STATE_CHANGES_PER_WINDOW = 20
#: Seconds between two looks for finished windows whose repeats are still to be reported.
_SWEEP_S = 1.0

Report = Callable[[dict[str, Any]], None]


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
    level: str
    about: dict[str, Any]  # the first line's event and identity, for a summary of its repeats
    suppressed: int = 0


@dataclass(slots=True)
class _State:
    kind: tuple[str, ...]  # the kind last written in this source and event namespace
    since: float = 0.0  # start of the window counting state changes
    changes: int = 0


class RepeatLimiter:
    """A structlog processor that writes the first line of a kind per source and window and
    counts the rest (see the module docstring). Raises ``structlog.DropEvent`` to suppress.

    For our own events (``instrument.down``), the kind last written per source and namespace
    (``instrument``) is the log's last word on that state: a line of another kind is a state
    change and is written even within its window (up to ``STATE_CHANGES_PER_WINDOW``), so
    down, connected, down never reads "connected". ``report``, when given, receives a summary
    (``log.repeats_suppressed``) of each kind whose window ended with repeats not yet reported,
    looked for at most once a second as lines pass, and of each such kind forgotten to bound
    memory; without it a count is reported only when its kind recurs."""

    def __init__(
        self,
        window_s: float = REPEAT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        report: Report | None = None,
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._report = report
        self._seen: dict[tuple[str, ...], _Seen] = {}
        self._states: dict[tuple[str, str], _State] = {}
        self._swept = clock()
        self._lock = threading.Lock()  # the store writer's thread logs too

    def __call__(
        self, _logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if event_dict.get("audit") or method == "debug" or self.window_s <= 0:
            return event_dict
        source = str(event_dict.get("instrument") or event_dict.get("logger") or "")
        key = self._kind(source, event_dict)
        event = event_dict.get("event")
        own = isinstance(event, str) and _OWN_EVENT.fullmatch(event) is not None
        summaries: list[dict[str, Any]] = []
        try:
            with self._lock:
                now = self._clock()
                if self._report is not None and now - self._swept >= _SWEEP_S:
                    self._swept = now
                    self._sweep(now, summaries)
                state = self._states.get((source, str(event).split(".", 1)[0])) if own else None
                seen = self._seen.get(key)
                if (
                    seen is not None
                    and now - seen.since < self.window_s
                    and not self._state_change(state, key, now)
                ):
                    seen.suppressed += 1
                    raise structlog.DropEvent
                if seen is not None:
                    del self._seen[key]  # re-inserted below, as the newest
                    if seen.suppressed:
                        event_dict["suppressed"] = seen.suppressed
                        event_dict["suppressed_over_s"] = round(now - seen.since, 1)
                elif len(self._seen) >= _MAX_KINDS:
                    self._forget(now, summaries)
                self._seen[key] = _Seen(
                    now, str(event_dict.get("level", method)), _about(event_dict)
                )
                if own:
                    self._written(source, str(event), key, state)
        finally:
            for summary in summaries:
                self._report(summary)  # type: ignore[misc]  # summaries only with a report
        return event_dict

    def _state_change(self, state: _State | None, key: tuple[str, ...], now: float) -> bool:
        """Whether a line within its window is written anyway: another kind than the one last
        written in its namespace, within the namespace's budget of changes per window."""
        if state is None or state.kind == key:
            return False
        if now - state.since >= self.window_s:
            state.since, state.changes = now, 0
        if state.changes >= STATE_CHANGES_PER_WINDOW:
            return False
        state.changes += 1
        return True

    def _written(self, source: str, event: str, key: tuple[str, ...], state: _State | None) -> None:
        if state is not None:
            state.kind = key
            return
        if len(self._states) >= _MAX_KINDS:
            del self._states[next(iter(self._states))]
        self._states[(source, event.split(".", 1)[0])] = _State(key)

    @staticmethod
    def _kind(source: str, event_dict: MutableMapping[str, Any]) -> tuple[str, ...]:
        parts = [source]
        for name, value in event_dict.items():
            if name in _NOT_KIND:
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                parts.append(f"{name}=#")  # a count, a delay: a measurement, not an identity
                continue
            text = value if isinstance(value, str) else repr(value)
            if name == "event":
                text = text.split("\n", 1)[0]
            text = text[:_KIND_CHARS]
            if name in _FREE_TEXT:
                text = _NUMBERS.sub("#", text)
            parts.append(f"{name}={text}")
        return tuple(parts)

    def _summary(self, seen: _Seen, now: float) -> dict[str, Any]:
        return {
            **seen.about,
            "event": "log.repeats_suppressed",
            "level": seen.level,
            "suppressed": seen.suppressed,
            "suppressed_over_s": round(now - seen.since, 1),
        }

    def _sweep(self, now: float, summaries: list[dict[str, Any]]) -> None:
        """Forget finished windows, summarising the repeats they counted."""
        for key in [k for k, v in self._seen.items() if now - v.since >= self.window_s]:
            seen = self._seen.pop(key)
            if seen.suppressed:
                summaries.append(self._summary(seen, now))

    def _forget(self, now: float, summaries: list[dict[str, Any]]) -> None:
        """Bound the memory: drop finished windows, then the oldest kinds (summarised)."""
        self._sweep(now, summaries if self._report is not None else [])
        while len(self._seen) >= _MAX_KINDS:
            seen = self._seen.pop(next(iter(self._seen)))
            if seen.suppressed and self._report is not None:
                summaries.append(self._summary(seen, now))


def _about(event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """What a summary of a line's repeats says about it: its event (first line) as
    ``repeated``, and its source and other fields, short."""
    about: dict[str, Any] = {}
    for name, value in event_dict.items():
        if name in _NOT_KIND or name == "level":
            continue
        if name == "event":
            name, value = "repeated", str(value).split("\n", 1)[0]
        if isinstance(value, str):
            value = value[:_KIND_CHARS]
        elif not isinstance(value, (int, float, bool)) and value is not None:
            value = repr(value)[:_KIND_CHARS]
        about[name] = value
    return about


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
    cutter = truncate(max_chars)
    stamper = structlog.processors.TimeStamper(fmt="iso", utc=True)

    def report(summary: dict[str, Any]) -> None:
        """Write a summary of repeats, rendered as any line (called outside the chains)."""
        try:
            line = renderer(None, "info", cutter(None, "info", stamper(None, "info", summary)))
            sys.stderr.write(f"{line}\n")
            sys.stderr.flush()
        except Exception:  # logging must never take the gateway down
            return

    # One limiter for our lines and the libraries': a kind is counted once, whoever logs it.
    limiter = RepeatLimiter(repeat_window_s, report=report)
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
                # A library's traceback is text before it is cut (it may hold a peer's bytes).
                structlog.processors.format_exc_info,
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
