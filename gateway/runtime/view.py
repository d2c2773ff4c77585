"""The live view: a table of every signal's latest value on a terminal, summary logs otherwise.

On a terminal the view is laid out for the console's width each time it is drawn
(:class:`LiveTable`): a status block (store, every sink, processors' failures, the emulated
process time), then the signals grouped by instrument (or processor), one line per signal, the
group's common signal-id prefix shown once in its header. Names are never cut (a very long one
wraps); values and quality reasons are cut to what the width leaves, so an 80-column terminal
still shows one distinguishable line per signal.

Every text that comes from outside — a device's value or error, a signal id, a unit, a reason,
a sink's error — is a :class:`rich.text.Text` with a style argument, never markup: ``[pH]`` is
shown as ``[pH]`` and a reason like ``[/x]`` cannot stop the view. Control characters are
replaced, so a device cannot move the cursor or retitle the terminal either.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import structlog
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..model import Quality
from ..spectra import Spectrum, spectrum_summary
from ..timefmt import now_ns
from .sinks import SinkFeeder

if TYPE_CHECKING:
    from .forward import Forwarder
    from .supervisor import Gateway

__all__ = ["LiveTable", "format_value", "log_summary", "process_times", "run_view"]

log = structlog.get_logger("gateway.view")

_STYLE = {Quality.GOOD: "green", Quality.UNCERTAIN: "yellow", Quality.BAD: "red"}
_STATE_STYLE = {
    "connected": "green",
    "up": "green",
    "live": "green",
    "connecting": "yellow",
    "starting": "yellow",
    "down": "red",
    "stopped": "dim",
}

# Control characters would move the cursor, ring the bell or retitle the terminal: a line
# break or tab becomes a space (one line per row), anything else the replacement character.
_CONTROL = {c: " " for c in (9, 10, 13)} | {
    c: "\ufffd" for c in (*range(32), *range(127, 160)) if c not in (9, 10, 13)
}
_TEXT_MAX = 200  # characters of an outside text kept (an error may be a whole traceback)

_COLUMNS = ("signal", "value", "unit", "quality", "age", "seq")
_GAPS = 2 * len(_COLUMNS) - 2  # one space of padding each side between two columns
_UNIT_MAX = 12  # a longer unit wraps in its column rather than pushing the values out

_Row = tuple[str, str, str, str, str, str, str]
"""A signal's cells (name, value, unit, quality, age, seq), plain text, and the quality's style."""

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


def _plain(text: object) -> str:
    """An outside text made safe to print: bounded, without control characters."""
    return str(text)[:_TEXT_MAX].translate(_CONTROL)


def _line(*parts: tuple[str, str] | str) -> Text:
    """One status line that never wraps (cut with an ellipsis): plain parts and (text, style)."""
    line = Text(no_wrap=True, overflow="ellipsis")
    for part in parts:
        if isinstance(part, str):
            line.append(_plain(part))
        else:
            line.append(_plain(part[0]), style=part[1])
    return line


def _age(seconds: float) -> str:
    """How old a reading is, in at most 7 characters."""
    if seconds < 100:
        return f"{max(seconds, 0.0):.1f} s"
    if seconds < 6000:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def process_times(gateway: Gateway) -> list[tuple[str, float]]:
    """(emulator id, process hours) of every running emulator that runs a process (an emulator
    that defines ``process_time_h()``, see :class:`gateway.api.Emulator`)."""
    times = []
    for emulator in gateway.plan.emulators:
        read = getattr(emulator.instance, "process_time_h", None)
        if not callable(read):
            continue
        try:
            hours = float(read())
        except Exception:  # not running (yet, or any more): nothing to show
            continue
        if math.isfinite(hours):
            times.append((emulator.id, hours))
    return times


def _status(gateway: Gateway) -> Iterator[Text]:
    for emulator_id, hours in process_times(gateway):
        yield _line(
            "process time ", (emulator_id, "bold"), f": {hours:.2f} h (day {hours / 24:.2f})"
        )
    stats = gateway.stats
    yield _line(
        f"store: {stats.committed} committed, {stats.dropped} dropped",
        (f", error: {stats.last_error}" if stats.last_error else "", "red"),
    )
    delivery: dict[str, SinkFeeder | Forwarder] = {f.sink_id: f for f in gateway.feeders}
    delivery.update((f.sink_id, f) for f in gateway.forwarders)
    # In the configuration's order; a sink not attached yet is not listed yet.
    for sink in gateway.plan.sinks:
        d = delivery.get(sink.id)
        if d is None:
            continue
        if not isinstance(d, SinkFeeder):
            s = d.stats
            yield _line(
                "sink ",
                (d.sink_id, "bold"),
                ": ",
                (s.state.value, _STATE_STYLE.get(s.state.value, "")),
                f" {s.delivered} delivered ({s.delivered_historical} historical),"
                f" backlog {s.backlog}",
                f", {s.dropped} dropped" if s.dropped else "",
                f", {s.refused} refused ({len(s.quarantined)} quarantined)" if s.refused else "",
                (f", error: {s.last_error}" if s.state == "down" and s.last_error else "", "red"),
            )
        else:
            # Fed live, at most once (the OPC UA server): no backlog in the store, no state.
            yield _line(
                "sink ",
                (d.sink_id, "bold"),
                ": ",
                ("live", _STATE_STYLE["live"]),
                f" {d.delivered} delivered, queued {d.queued}",
                (f", {d.lost} lost" if d.lost else "", "red"),
            )


def _common_prefix(ids: list[str]) -> str:
    """What every id of a group starts with, up to and including its last ``/``."""
    common: list[str] = []
    for segments in zip(*(i.split("/")[:-1] for i in ids), strict=False):
        if any(s != segments[0] for s in segments):
            break
        common.append(segments[0])
    return "".join(f"{s}/" for s in common)


def _groups(gateway: Gateway) -> list[tuple[Text, list[_Row]]]:
    """(header, rows) per instrument, then per processor, then per other producer."""
    by_source: dict[str, list[Any]] = {}
    for output in gateway.outputs:
        by_source.setdefault(output.signal.instrument, []).append(output)
    now = now_ns()
    groups: list[tuple[Text, list[_Row]]] = []

    def rows(source: str) -> tuple[str, list[_Row]]:
        outputs = by_source.pop(source, [])
        prefix = _common_prefix([o.signal.id for o in outputs])
        cells: list[_Row] = []
        for output in outputs:
            name = _plain(output.signal.id[len(prefix) :])
            unit = _plain(output.signal.unit)
            row = output.latest
            if row is None:
                cells.append((name, "—", unit, "waiting", "", "", "dim"))
                continue
            quality = Quality(row[4])
            label = quality.label + (f" ({row[6]})" if row[6] else "")
            cells.append(
                (
                    name,
                    _plain(format_value(row[5])),
                    unit,
                    _plain(label),
                    _age((now - row[3]) / 1e9),
                    str(row[1]),
                    _STYLE[quality],
                )
            )
        return prefix or f"{source}:", cells

    for r in gateway.runners:
        prefix, cells = rows(r.instrument_id)
        state = r.state.value
        header = _line(
            (prefix, "bold"),
            "  ",
            (state, _STATE_STYLE.get(state, "")),
            f" · sessions {r.sessions}",
            f" · {r.identity.label()}" if r.identity is not None else "",
            (f" · {r.last_error}" if state == "down" and r.last_error else "", "red"),
        )
        groups.append((header, cells))
    for p in gateway.processors:
        prefix, cells = rows(p.processor_id)
        header = _line(
            (prefix, "bold"),
            f"  {p.processed} processed",
            (f" · {p.failures} failed (last: {p.last_error})" if p.failures else "", "red"),
            f" · {p.skipped} skipped" if p.skipped else "",
        )
        groups.append((header, cells))
    for source in list(by_source):  # signals of no known producer: shown all the same
        prefix, cells = rows(source)
        groups.append((_line((prefix, "bold")), cells))
    return groups


def _widths(width: int, rows: Iterable[_Row]) -> list[int]:
    """Column widths for ``width`` columns: names, units, ages and seqs as they need, values
    and quality texts share the rest (each cut to its share if both do not fit)."""
    need = [cell_len(c) for c in _COLUMNS]
    for row in rows:
        for i in range(6):
            need[i] = max(need[i], cell_len(row[i]))
    name, value, unit, quality, age, seq = need
    unit = min(unit, _UNIT_MAX)
    fixed = _GAPS + unit + age + seq
    # Keep 2 x 8 columns for values and qualities; a name longer than that leaves wraps.
    name = max(len(_COLUMNS[0]), min(name, width - fixed - 16))
    rest = width - fixed - name
    if value + quality > rest:
        value = max(min(value, max(rest - quality, rest // 2)), 1)
        quality = max(min(quality, rest - value), 1)
    return [name, value, unit, quality, age, seq]


def _grid(widths: list[int], *, header: bool) -> Table:
    table = Table(
        box=None,
        padding=(0, 1),
        pad_edge=False,
        show_header=header,
        header_style="bold",
        expand=False,
    )
    for column, width in zip(_COLUMNS, widths, strict=True):
        right = column in ("value", "age", "seq")
        table.add_column(
            column,
            justify="right" if right else "left",
            width=width,
            # Names and units wrap if they must (never cut); the rest is cut with an ellipsis.
            overflow="fold" if column in ("signal", "unit") else "ellipsis",
            no_wrap=column not in ("signal", "unit"),
        )
    return table


class LiveTable:
    """The live view of a running gateway, read and laid out each time it is rendered."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        gateway = self.gateway
        groups = _groups(gateway)
        widths = _widths(options.max_width, (row for _, rows in groups for row in rows))
        parts: list[Any] = [
            _line((f"PAT Gateway — {gateway.plan.config.area}", "bold")),
            *_status(gateway),
            _grid(widths, header=True),
        ]
        for header, rows in groups:
            parts.append(header)
            if not rows:
                continue
            table = _grid(widths, header=False)
            for name, value, unit, quality, age, seq, style in rows:
                table.add_row(
                    Text(name),
                    Text(value),
                    Text(unit),
                    Text(quality, style=style),
                    Text(age),
                    Text(seq),
                )
            parts.append(table)
        yield Group(*parts)


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
        table = LiveTable(gateway)
        with Live(table, console=console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(view.refresh_s)
                live.refresh()
    while True:
        await asyncio.sleep(view.log_every_s)
        await log_summary(gateway)


async def log_summary(gateway: Gateway) -> None:
    """One line per process time, per sink and per signal (the view when not on a terminal).

    Lines of a kind already written within the log's repeat window (a signal whose value, unit
    and quality are unchanged; a sink in the same state) are counted, not written
    (:class:`gateway.logs.RepeatLimiter`)."""
    for emulator_id, hours in process_times(gateway):
        log.info("process", emulator=emulator_id, process_time_h=round(hours, 4))
    for f in gateway.forwarders:
        log.info(
            "sink",
            sink=f.sink_id,
            state=f.stats.state.value,
            delivered=f.stats.delivered,
            backlog=f.stats.backlog,
            dropped=f.stats.dropped,
        )
    for feeder in gateway.feeders:
        log.info(
            "sink",
            sink=feeder.sink_id,
            state="live",
            delivered=feeder.delivered,
            backlog=feeder.queued,
            lost=feeder.lost,
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
