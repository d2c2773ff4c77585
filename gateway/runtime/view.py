"""The live view: a table of every signal's latest value on a terminal, summary logs otherwise."""

from __future__ import annotations

import asyncio
import math
import sys
from typing import TYPE_CHECKING, Any

import structlog
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..model import Quality
from ..spectra import Spectrum, spectrum_summary
from ..timefmt import now_ns

if TYPE_CHECKING:
    from .supervisor import Gateway

__all__ = ["format_value", "run_view"]

log = structlog.get_logger("gateway.view")

_STYLE = {Quality.GOOD: "green", Quality.UNCERTAIN: "yellow", Quality.BAD: "red"}
_STATE_STYLE = {
    "connected": "green",
    "up": "green",
    "connecting": "yellow",
    "starting": "yellow",
    "down": "red",
    "stopped": "dim",
}


_summaries: dict[int, tuple[Spectrum, str]] = {}

_LINES_PER_STEP = 100  # summary lines logged between two turns of the event loop


def format_value(value: Any) -> str:
    """A reading as a short text: numbers to 6 significant digits, a spectrum as a one-line
    summary (points, axis range, maximum, peaks)."""
    if value is None:
        return "—"
    if isinstance(value, Spectrum):
        # The view refreshes several times a second; summarise each spectrum once.
        cached = _summaries.get(id(value))
        if cached is None or cached[0] is not value:
            if len(_summaries) > 64:
                _summaries.clear()
            cached = _summaries[id(value)] = (value, spectrum_summary(value))
        return cached[1]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, int):
        return str(value)
    size = getattr(value, "size", None)
    if size is not None:
        return f"[{size} points]"
    return str(value)[:24]


def _table(gateway: Gateway) -> Table:
    now = now_ns()
    table = Table(title=f"PAT Gateway — {gateway.plan.config.area}", expand=False)
    for column in ("signal", "value", "unit", "quality", "age", "seq"):
        table.add_column(column, justify="right" if column in ("value", "age", "seq") else "left")
    for output in gateway.outputs:
        row = output.latest
        if row is None:
            table.add_row(output.signal.id, "—", output.signal.unit, "waiting", "", "")
            continue
        quality = Quality(row[4])
        label = quality.label + (f" ({row[6]})" if row[6] else "")
        table.add_row(
            output.signal.id,
            format_value(row[5]),
            output.signal.unit,
            f"[{_STYLE[quality]}]{label[:60]}[/]",
            f"{(now - row[3]) / 1e9:.1f} s",
            str(row[1]),
        )
    states = "  ".join(
        f"{r.instrument_id}: [{_STATE_STYLE.get(r.state.value, 'white')}]{r.state.value}[/]"
        f" (sessions {r.sessions})"
        for r in gateway.runners
    )
    stats = gateway.stats
    table.caption = f"{states}\nstore: {stats.committed} committed, {stats.dropped} dropped" + (
        f", error: {stats.last_error}" if stats.last_error else ""
    )
    for p in gateway.processors:
        table.caption += (
            f"\nprocessor {p.processor_id}: {p.processed} processed"
            + (f", {p.failures} failed (last: {p.last_error})" if p.failures else "")
            + (f", {p.skipped} skipped" if p.skipped else "")
        )
    for f in gateway.forwarders:
        s = f.stats
        style = _STATE_STYLE.get(s.state.value, "white")
        table.caption += (
            f"\nsink {f.sink_id}: [{style}]{s.state.value}[/] {s.delivered} delivered"
            f" ({s.delivered_historical} historical), backlog {s.backlog}"
            + (f", {s.dropped} dropped" if s.dropped else "")
            + (f", {s.refused} refused ({len(s.quarantined)} quarantined)" if s.refused else "")
            + (f", error: {s.last_error}" if s.state == "down" and s.last_error else "")
        )
    return table


async def run_view(gateway: Gateway, *, interactive: bool) -> None:
    """Refresh the table on a terminal; log one summary line per signal when not on one.

    The view is a convenience: if it fails, it says so once and the gateway runs on.
    """
    try:
        await _run_view(gateway, interactive=interactive)
    except Exception as exc:
        log.exception("view.failed", error=repr(exc))


async def _run_view(gateway: Gateway, *, interactive: bool) -> None:
    view = gateway.plan.config.view
    if interactive:
        console = Console(file=sys.stdout)
        with Live(_table(gateway), console=console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(view.refresh_s)
                live.update(_table(gateway), refresh=True)
    while True:
        await asyncio.sleep(view.log_every_s)
        for f in gateway.forwarders:
            log.info(
                "sink",
                sink=f.sink_id,
                state=f.stats.state.value,
                delivered=f.stats.delivered,
                backlog=f.stats.backlog,
                dropped=f.stats.dropped,
            )
        for index, output in enumerate(gateway.outputs):
            if index % _LINES_PER_STEP == _LINES_PER_STEP - 1:
                # Thousands of signals are thousands of lines: let the loop run between steps.
                await asyncio.sleep(0)
            row = output.latest
            if row is not None:
                log.info(
                    "signal",
                    signal=output.signal.id,
                    value=format_value(row[5]),
                    unit=output.signal.unit,
                    quality=Quality(row[4]).label,
                    seq=row[1],
                )
