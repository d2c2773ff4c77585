"""structlog set-up: human-readable console lines by default, JSON lines with a flag.

Libraries that log through the standard library (pymodbus, asyncio) are rendered by the same
processors, so ``--log-format json`` gives JSON for every line. pymodbus's own connection
chatter is kept at ``error`` unless the gateway logs at ``debug``: the drivers already report
each failure, translated, as ``instrument.down``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging"]

_CHATTY = ("pymodbus", "asyncua")


class _StderrLogger:
    """Writes each line to the *current* ``sys.stderr`` (the live view may redirect it)."""

    def msg(self, message: str) -> None:
        stream: TextIO = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _factory(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


class _CurrentStderrHandler(logging.Handler):
    """A handler that writes each record to the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # logging must never take the gateway down
            self.handleError(record)


def configure_logging(fmt: str = "console", level: str = "info") -> None:
    """Route structlog and standard-library logs to standard error as ``fmt`` at ``level``."""
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
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
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
