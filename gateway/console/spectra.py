"""The console's spectra page: the latest spectrum of a spectrum signal on its axis, the overlay
of the last N from the store, and the bands a soft-sensor model uses, shaded.

Routes (permission ``read``)::

    GET /spectra                    the page (?signal=ID&n=N); its chart is drawn by
                                    static/spectra.js from the data below, refreshed every
                                    few seconds
    GET /spectra/data?signal=ID&n=N the newest N (1..20, default 5) spectra of signal ID, newest
                                    first, on the newest one's axis, with the bands: JSON.
                                    404 for a signal that is not a spectrum signal of this
                                    configuration; 400 for an ``n`` that is not a whole number
                                    in 1..20 (refused, not clamped: the page only offers 1..20)

The sample table has no index by signal (decision 0002: one would cost insert throughput), so
the newest N of one signal are found by walking the primary key backwards from the newest
sample id and stopping at the N-th match (:meth:`gateway.store.SampleStore.newest`). The walk
is bounded by :data:`SCAN_ROWS` rows: a spectrometer that has published nothing for longer
than that shows fewer (or no) spectra instead of a scan of the whole store; the answer says so
(``searched_all``: false). It runs in a worker thread, one at a time, on a read-only
connection opened for the request (as ``patgw export`` reads): never on the event loop, never
on the writer's connection.

The bands come from the processors' ``status()`` (the same document ``GET
/api/v1/processors`` serves): a processor whose status names this signal as its ``input`` and
lists ``bands`` (``use``, ``low``, ``high``, ``unit``) has them shaded, in the axis' unit only.
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import GatewayError
from ..http import Request, response
from ..model import Sample, SignalKind
from ..security import Identity, Permission
from ..spectra import Spectrum
from ..store.sqlite import SampleStore
from ..timefmt import format_ns
from .models import processor_status
from .pages import _e, _layout, human_unit
from .responses import SECURITY_HEADERS, html_response, text_response

if TYPE_CHECKING:
    from ..model import Signal
    from ..runtime.supervisor import Gateway
    from .sessions import Session

__all__ = [
    "DEFAULT_SPECTRA",
    "MAX_SPECTRA",
    "SCAN_ROWS",
    "SpectraPages",
    "axis_label",
    "spectra_document",
    "spectra_page",
]

DEFAULT_SPECTRA = 5
MAX_SPECTRA = 20
SCAN_ROWS = 500_000
"""Rows of the sample table searched back from the newest for one request: at 10,000 samples/s
(1,000 signals at 10 Hz) the last 50 s, at the demo's rate hours. Measured with
``benchmarks/console_spectra.py`` (2-core machine, warm page cache): 36 ms for the whole window
when the signal is not in it, 2 ms for the newest 5 and 4 ms for the newest 20 with a spectrum
every 2,000 rows (the walk stops at the N-th)."""
_JSON = "application/json"
_SIGNIFICANT = 6  # digits a plotted value keeps, relative to its spectrum's largest

# The axis' quantity by its unit, for the chart's label ("Raman shift (cm⁻¹)").
_QUANTITY = {
    "cm-1": "Raman shift",
    "nm": "Wavelength",
    "um": "Wavelength",
    "Hz": "Frequency",
    "eV": "Energy",
}


def axis_label(unit: str) -> str:
    """The x axis' label for people: its quantity and the unit as written, e.g. ``Raman shift
    (cm⁻¹)`` for ``cm-1`` (the gateway's spectrometers measure Raman shift in wavenumbers)."""
    human = human_unit(unit)
    return f"{_QUANTITY.get(unit, 'Axis')} ({human or unit})"


def _rounded(values: npt.NDArray[Any], significant: int) -> list[float | None]:
    """``values`` as JSON numbers to ``significant`` digits of the largest (short texts, same
    picture); non-finite ones as null."""
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    if finite.any():
        peak = float(np.max(np.abs(array[finite])))
        if peak > 0:
            array = np.round(array, significant - 1 - math.floor(math.log10(peak)))
    out: list[float | None] = array.tolist()
    if not finite.all():
        for index in np.flatnonzero(~finite).tolist():
            out[index] = None
    return out


def spectra_document(
    signal: Signal,
    samples: Sequence[Sample],
    bands: Iterable[Mapping[str, Any]],
    searched_all: bool,
) -> dict[str, Any]:
    """The JSON answer of ``/spectra/data``: ``samples`` (newest first) that hold a spectrum
    on the newest one's axis, that axis, and the ``bands`` in its unit."""
    spectra = [s for s in samples if isinstance(s.value, Spectrum)]
    axis = spectra[0].value.axis if spectra else None
    shown = [s for s in spectra if axis is not None and s.value.axis.key == axis.key]
    document: dict[str, Any] = {
        "signal": signal.id,
        "unit": signal.unit,
        "unit_human": human_unit(signal.unit),
        "axis": None,
        "spectra": [
            {
                "seq": s.seq,
                "source_time": format_ns(s.source_ts),
                "quality": s.quality.label,
                "reason": s.reason,
                "values": _rounded(s.value.values, _SIGNIFICANT),
            }
            for s in shown
        ],
        # Read, but not drawn: no value (a bad sample), or another axis (a recalibration).
        "skipped": len(samples) - len(shown),
        "bands": [],
        "scan_rows": SCAN_ROWS,
        "searched_all": searched_all,
    }
    if axis is not None:
        document["axis"] = {
            "unit": axis.unit,
            "unit_human": human_unit(axis.unit),
            "label": axis_label(axis.unit),
            "values": _rounded(axis.values, 10),  # to 1e-9 of the largest: exact on screen
        }
        document["bands"] = [dict(b) for b in bands if b.get("unit") == axis.unit]
    return document


def spectra_page(
    signals: Sequence[Signal], chosen: Signal | None, count: int, who: Identity, csrf: str
) -> str:
    """The page: a signal and N selector, the chart's box and the table of the models' bands
    (both drawn by ``static/spectra.js`` from ``/spectra/data``)."""
    if chosen is None:
        body = "<p>This configuration has no spectrum signal.</p>"
        return _layout("Spectra", body, who, csrf)
    options = "".join(
        f'<option value="{_e(s.id)}"{" selected" if s is chosen else ""}>{_e(s.id)}</option>'
        for s in signals
    )
    counts = "".join(
        f'<option value="{k}"{" selected" if k == count else ""}>{k}</option>'
        for k in range(1, MAX_SPECTRA + 1)
    )
    query = urllib.parse.urlencode({"signal": chosen.id, "n": count})
    ucum = chosen.unit
    parts = [
        '<form method="get" action="/spectra" class="filter">'
        f'<label>Signal <select name="signal">{options}</select></label> '
        f'<label>Overlay of the last <select name="n">{counts}</select> spectra</label> '
        '<button type="submit">Show</button></form>',
        f"<p>{_e(chosen.description)} · values in {_e(human_unit(ucum))} <code>{_e(ucum)}</code>"
        '; axis: <span id="axis-unit">…</span></p>',
        f'<div id="spectrum-chart" data-source="/spectra/data?{_e(query)}"></div>',
        '<p id="spectra-note" class="note"></p>',
    ]
    # Filled by spectra.js from the data (the processors' status), as the chart is.
    parts.append(
        '<section id="bands" hidden><h2>Bands the models use (shaded)</h2><table class="bands">'
        "<thead><tr><th>processor</th><th>model</th><th>use</th><th>range</th></tr></thead>"
        "<tbody></tbody></table></section>"
    )
    assets = (
        "/static/uplot/uPlot.min.css",
        "/static/uplot/uPlot.iife.min.js",
        "/static/spectra.js",
    )
    return _layout("Spectra", "".join(parts), who, csrf, assets)


class SpectraPages:
    """Answers ``/spectra`` and ``/spectra/data`` for one running gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._reads = asyncio.Semaphore(1)  # one store walk at a time, whatever the browsers

    async def answer(self, request: Request, session: Session) -> bytes:
        who = session.identity
        if not who.may(Permission.READ):
            return text_response(HTTPStatus.FORBIDDEN, f"user {who.name!r} may not read")
        try:
            query = dict(urllib.parse.parse_qsl(request.query, max_num_fields=4))
        except ValueError:
            return text_response(HTTPStatus.BAD_REQUEST, "too many query fields")
        signals = self._signals()
        by_id = {s.id: s for s in signals}
        name = query.get("signal")
        data = request.path == "/spectra/data"
        if name is None and not data:
            chosen = signals[0] if signals else None
        else:
            chosen = by_id.get(name or "")
            if chosen is None:
                known = ", ".join(by_id) or "none"
                return text_response(
                    HTTPStatus.NOT_FOUND,
                    f"no spectrum signal {name!r} here (spectrum signals: {known})",
                )
        text = query.get("n", str(DEFAULT_SPECTRA))
        count = int(text) if text.isascii() and text.isdigit() and len(text) <= 3 else 0
        if not 1 <= count <= MAX_SPECTRA:
            return text_response(
                HTTPStatus.BAD_REQUEST, f"n must be a whole number from 1 to {MAX_SPECTRA}"
            )
        if not data or chosen is None:
            page = spectra_page(signals, chosen, count, who, session.csrf)
            return html_response(HTTPStatus.OK, page)
        path = self._gateway.plan.config.store.path
        bands = self.bands(chosen.id)  # on the loop: the processors are the loop's
        try:
            async with self._reads:
                body = await asyncio.to_thread(_data_body, path, chosen, count, bands)
        except GatewayError as exc:
            return text_response(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
        return response(HTTPStatus.OK, _JSON, body, SECURITY_HEADERS)

    def _signals(self) -> list[Signal]:
        """The configuration's spectrum signals (known before the instruments start)."""
        return [s for s in self._gateway.plan.signals if s.kind is SignalKind.SPECTRUM]

    def bands(self, signal: str) -> list[dict[str, Any]]:
        """The bands of every processor that reads ``signal`` and tells them in its status
        (none while the gateway is starting: the page's script asks again)."""
        found: list[dict[str, Any]] = []
        for runner in self._gateway.processors:
            status = processor_status(runner)
            own = status.get("status")
            if not isinstance(own, Mapping) or own.get("input") != signal:
                continue
            model = own.get("model")
            label = (
                f"{model.get('id')} v{model.get('version')}"
                if isinstance(model, Mapping)
                else str(model or "")
            )
            for band in own.get("bands") or ():
                if isinstance(band, Mapping):
                    found.append({"processor": runner.processor_id, "model": label, **band})
        return found


def _data_body(path: Path, signal: Signal, count: int, bands: list[dict[str, Any]]) -> bytes:
    """The ``/spectra/data`` answer's body, built in a worker thread: the newest ``count``
    samples of ``signal`` read on a read-only connection, and their JSON (20 spectra of 2,000
    points are 13 ms of encoding: never on the event loop, where ingestion runs)."""
    store = SampleStore(path, read_only=True)
    try:
        samples, cut_short = store.newest(signal.id, count, scan_rows=SCAN_ROWS)
    finally:
        store.close()
    document = spectra_document(signal, samples, bands, not cut_short)
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"
