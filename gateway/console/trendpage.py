"""The console's trends page: several signals over the last minutes to hours, from the store.

``GET /trends`` is the page (a signal picker, a window, one chart per signal); the charts are
drawn by ``static/trends.js`` from ``GET /trends/data``, which answers JSON read by
:class:`gateway.store.trends.TrendReader` on a worker thread: per signal, at most ``points``
points, each the min, max and mean of its bucket and its lowest quality, so decimation never
hides a spike. The page refreshes the window every few seconds (the live tail, as fresh as the
last commit) until the user zooms in (drag on a chart), which asks for that window at full
resolution instead.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..model import Quality
from ..security import Identity
from ..store.trends import Trend
from .pages import _e, _layout, human_unit

__all__ = [
    "MAX_CHARTS",
    "MAX_POINTS",
    "WINDOWS_S",
    "TrendQuery",
    "TrendQueryError",
    "parse_trend_query",
    "trend_json",
    "trends_page",
]

WINDOWS_S = {300: "5 min", 900: "15 min", 3600: "1 h", 6 * 3600: "6 h", 24 * 3600: "24 h"}
"""The windows the page offers (seconds before now)."""
MAX_CHARTS = 8
"""Signals one page (and one data request) shows at most."""
MAX_POINTS = 2000
"""Points per signal one data request may ask for (a chart's width in pixels, about)."""
MAX_SPAN_S = 7 * 24 * 3600
"""The longest window or zoom one request may ask for."""
_DEFAULT_CHARTS = 4
_NS = 1_000_000_000
_LATEST_NS = 7_258_118_400 * _NS  # 2200-01-01: far from int64's end (2262)


class TrendQueryError(ValueError):
    """A ``/trends/data`` query that is not one this page makes (400)."""


@dataclass(frozen=True, slots=True)
class TrendQuery:
    signals: tuple[str, ...]
    start_ns: int
    end_ns: int
    points: int


def parse_trend_query(query: str, known: Iterable[str], now: int) -> TrendQuery:
    """``signal`` (repeated, at most :data:`MAX_CHARTS`, each one of ``known``), then either
    ``window`` (seconds before ``now``, 1 s .. 7 days) or ``start`` and ``end`` (milliseconds
    since the epoch, UTC, from 1970 to 2200, at most 7 days apart: a read's cost follows its
    span), and ``points`` (10 .. :data:`MAX_POINTS`, default 600)."""
    try:
        fields = urllib.parse.parse_qs(query, max_num_fields=MAX_CHARTS + 4, strict_parsing=False)
    except ValueError as exc:
        raise TrendQueryError("too many query fields") from exc
    signals = tuple(dict.fromkeys(fields.get("signal", [])))
    if not signals:
        raise TrendQueryError("ask for at least one signal (signal=...)")
    if len(signals) > MAX_CHARTS:
        raise TrendQueryError(f"at most {MAX_CHARTS} signals at once")
    allowed = set(known)
    unknown = [s for s in signals if s not in allowed]
    if unknown:
        raise TrendQueryError(f"no such scalar signal: {unknown[0][:200]}")
    points = _integer(fields, "points", 600)
    if not 10 <= points <= MAX_POINTS:
        raise TrendQueryError(f"points must be 10..{MAX_POINTS}")
    if "start" in fields or "end" in fields:
        start_ns = _integer(fields, "start", 0) * 1_000_000
        end_ns = _integer(fields, "end", 0) * 1_000_000
        if not 0 <= start_ns < end_ns <= _LATEST_NS:
            raise TrendQueryError("end must be after start, both in 1970 .. 2200 (ms since 1970)")
        if end_ns - start_ns > MAX_SPAN_S * _NS:
            raise TrendQueryError("start and end may be at most 7 days apart")
    else:
        window = _integer(fields, "window", 900)
        if not 1 <= window <= MAX_SPAN_S:
            raise TrendQueryError("window must be 1 s .. 7 days")
        start_ns, end_ns = now - window * _NS, now
    return TrendQuery(signals, start_ns, end_ns, points)


def _integer(fields: Mapping[str, list[str]], name: str, default: int) -> int:
    values = fields.get(name)
    if not values:
        return default
    try:
        return int(values[0])
    except ValueError as exc:
        raise TrendQueryError(f"{name} must be an integer") from exc


def _finite(values: Sequence[float | None]) -> list[float | None]:
    return [v if v is None or math.isfinite(v) else None for v in values]


def trend_json(trends: Mapping[str, Trend], query: TrendQuery) -> dict[str, Any]:
    """The JSON answer: times in seconds (uPlot's x), values as stored (non-finite → null)."""
    out: dict[str, Any] = {}
    for name, t in trends.items():
        counts = {q.name.lower(): 0 for q in Quality}
        for quality in t.quality:
            counts[quality.name.lower()] += 1
        out[name] = {
            "unit": t.unit,
            "human_unit": human_unit(t.unit),
            "resolution_s": t.resolution_ns / _NS,
            "source": t.source,
            "behind": t.behind,
            "t": [ts / _NS for ts in t.time_ns],
            "lo": _finite(t.lo),
            "hi": _finite(t.hi),
            "mean": _finite(t.mean),
            "worst": [q.name.lower() for q in t.quality],
            "points_by_quality": counts,
        }
    return {"start_s": query.start_ns / _NS, "end_s": query.end_ns / _NS, "signals": out}


def trends_page(
    signals: Mapping[str, str],
    chosen: Sequence[str],
    window_s: int,
    who: Identity,
    csrf: str,
    note: str = "",
) -> str:
    """The picker (``signals``: id → UCUM unit, the scalar ones) and a chart box per chosen
    signal; ``note`` explains why there is nothing to show (trends off, no trends file)."""
    if not chosen:
        chosen = list(signals)[:_DEFAULT_CHARTS]
    options = "".join(
        f'<option value="{_e(s)}"{" selected" if s in chosen else ""}>{_e(s)}</option>'
        for s in signals
    )
    windows = "".join(
        f'<option value="{w}"{" selected" if w == window_s else ""}>{_e(text)}</option>'
        for w, text in WINDOWS_S.items()
    )
    body = [
        '<form method="get" action="/trends" class="filter trends-pick">'
        f'<label>Signals (up to {MAX_CHARTS}) <select name="signal" multiple size="6">'
        f"{options}</select></label>"
        f'<label>Window <select name="window">{windows}</select></label>'
        '<button type="submit">Show</button></form>',
    ]
    if note:
        body.append(f'<p class="error" role="alert">{_e(note)}</p>')
    else:
        body.append(
            '<p class="hint">Live: redrawn every 2 s. Drag across a chart to zoom in (full'
            ' resolution from the store); <button type="button" id="trend-live">back to'
            " live</button>. Each point is its bucket's mean, with its min and max.</p>"
            f'<div id="trends" data-window="{window_s}">'
        )
        for signal in chosen[:MAX_CHARTS]:
            unit = signals.get(signal, "")
            human = human_unit(unit)
            label = f"{human} ({unit})" if human and human != unit else unit
            body.append(
                f'<section class="trend" data-signal="{_e(signal)}" data-unit="{_e(label)}">'
                f"<h2>{_e(signal)} <code>{_e(unit)}</code></h2>"
                '<div class="chart"></div><p class="trend-status"></p></section>'
            )
        body.append("</div>")
    assets = ("/static/uplot/uPlot.min.css", "/static/uplot/uPlot.iife.min.js", "/static/trends.js")
    return _layout("Trends", "".join(body), who, csrf, assets)
