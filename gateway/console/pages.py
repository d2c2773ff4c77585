"""The console's pages as HTML text: login, overview, signals, writes and a write's outcome.

Pure functions of what they are given; every piece of text that comes from the configuration,
a device or a user goes through :func:`html.escape` (:func:`_e`). No inline script or style:
behaviour is in ``static/console.js``, looks in ``static/console.css``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..api import DeviceIdentity
from ..security import Identity, Permission
from ..timefmt import format_ns
from ..unece import unece_for_ucum
from .auditview import export_links
from .commandforms import command_outcome_rows
from .signatures import signature_fields, signatures_text

if TYPE_CHECKING:
    from ..audit import AuditRecord, VerifyReport
    from ..config import GatewayConfig
    from ..control import CommandOutcome
    from ..control.path import WriteOutcome, WriteTarget

__all__ = [
    "SignalRow",
    "audit_page",
    "command_outcome_page",
    "configuration_page",
    "device_label",
    "human_unit",
    "login_page",
    "message_page",
    "overview_page",
    "signals_page",
    "write_outcome_page",
    "writes_page",
]

SignalRow = Mapping[str, Any]


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# Where UCUM's code is already what people write, or UNECE's symbol is not (``dm³/h``).
_AS_WRITTEN = {
    "1": "",
    "{rev}/min": "rpm",
    "L/h": "L/h",
    "L/min": "L/min",
    "mL": "mL",
    "mL/min": "mL/min",
    "mL/h": "mL/h",
    "g/L": "g/L",
    "mg/L": "mg/L",
    "mmol/L": "mmol/L",
}


def human_unit(ucum: str) -> str:
    """A unit as people write it (``Cel`` → ``°C``, ``[pH]`` → ``pH``, ``{rev}/min`` →
    ``rpm``, ``{counts}`` → ``counts``); ``""`` for a dimensionless ``1``."""
    known = _AS_WRITTEN.get(ucum)
    if known is not None:
        return known
    unit = unece_for_ucum(ucum)
    if unit is not None and unit.display_name:
        return unit.display_name
    return ucum.replace("[", "").replace("]", "").replace("{", "").replace("}", "")


_UPLOT = ("/static/uplot/uPlot.min.css", "/static/uplot/uPlot.iife.min.js")


def _layout(
    title: str,
    body: str,
    who: Identity | None = None,
    csrf: str = "",
    assets: tuple[str, ...] = (),
) -> str:
    extra = "".join(
        f'<link rel="stylesheet" href="{a}">'
        if a.endswith(".css")
        else f'<script src="{a}" defer></script>'
        for a in assets
    )
    nav = ""
    if who is not None:
        links = [("/", "Overview"), ("/signals", "Signals"), ("/trends", "Trends")]
        links += [("/spectra", "Spectra"), ("/models", "Models")]
        if who.may(Permission.WRITE):
            links.append(("/writes", "Writes"))
        if who.may(Permission.CONFIGURE):
            links.append(("/configuration", "Configuration"))
        if who.may(Permission.AUDIT):
            links.append(("/audit", "Audit trail"))
        items = "".join(f'<a href="{href}">{_e(text)}</a>' for href, text in links)
        roles = ", ".join(sorted(who.roles))
        nav = (
            f'<nav>{items}<span class="who">{_e(who.full_name)} ({_e(roles)})</span>'
            f'<form method="post" action="/logout" class="logout">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
            '<button type="submit">Log out</button></form></nav>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} · PAT Gateway</title>"
        f'<link rel="stylesheet" href="/static/console.css">{extra}'
        '<script src="/static/console.js" defer></script>'
        f"</head><body>{nav}<main><h1>{_e(title)}</h1>{body}</main></body></html>\n"
    )


def login_page(message: str = "", user: str = "") -> str:
    note = f'<p class="error" role="alert">{_e(message)}</p>' if message else ""
    form = (
        f'{note}<form method="post" action="/login" class="login">'
        f'<label>User <input name="user" autocomplete="username" value="{_e(user)}"'
        " required autofocus></label>"
        '<label>Password <input name="password" type="password"'
        ' autocomplete="current-password" required></label>'
        '<button type="submit">Log in</button></form>'
    )
    return _layout("Log in", form)


def message_page(title: str, message: str, who: Identity | None = None, csrf: str = "") -> str:
    return _layout(title, f"<p>{_e(message)}</p>", who, csrf)


def _number(value: object) -> object:
    """A float to 6 significant digits (as console.js shows it); anything else as it is."""
    return f"{value:.6g}" if isinstance(value, float) else value


def _table(headers: Iterable[str], rows: Iterable[Iterable[object]], css: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def device_label(identity: Mapping[str, Any] | None) -> str:
    """An instrument's identity from ``/health`` as one line: ``Acme FP-200 S/N 123 fw 2.1``
    (``(stated)`` after one the configuration gives); empty if none is known yet."""
    if not identity:
        return ""
    fields = {k: v for k, v in identity.items() if k != "source"}
    label = DeviceIdentity(**fields).label()
    return f"{label} (stated)" if label and identity.get("source") == "config" else label


def overview_page(report: Mapping[str, Any], who: Identity, csrf: str) -> str:
    """The ``/health`` document for people: status, instruments, sinks, store, clock."""
    status = report.get("status", "")
    parts = [
        f'<p class="status status-{_e(status)}" id="status">Status: <strong>{_e(status)}'
        f"</strong> · ready: {_e(report.get('ready'))} · up {_e(report.get('uptime_s'))} s</p>",
        "<h2>Instruments</h2>",
        _table(
            ("instrument", "device", "state", "sessions", "failures", "committed", "last error"),
            (
                (
                    name,
                    device_label(i.get("identity")),
                    i["state"],
                    i["sessions"],
                    i["failures"],
                    i["committed"],
                    i["last_error"],
                )
                for name, i in report.get("instruments", {}).items()
            ),
            "instruments",
        ),
        "<h2>Processors</h2>",
        _table(
            ("processor", "processed", "queued", "failures", "restarts", "last error"),
            (
                (name, p["processed"], p["queued"], p["failures"], p["restarts"], p["last_error"])
                for name, p in report.get("processors", {}).items()
            ),
            "processors",
        ),
        "<h2>Sinks</h2>",
        _table(
            ("sink", "state", "delivered", "backlog", "oldest undelivered (s)", "last error"),
            (
                (
                    name,
                    s.get("state"),
                    s.get("delivered"),
                    s.get("backlog"),
                    s.get("oldest_undelivered_age_s"),
                    s.get("last_error"),
                )
                for name, s in report.get("sinks", {}).items()
            ),
            "sinks",
        ),
    ]
    store = report.get("store", {})
    parts += [
        "<h2>Store</h2>",
        _table(
            ("committed", "dropped", "pending", "size (bytes)", "last error"),
            [
                (
                    store.get("committed"),
                    store.get("dropped"),
                    store.get("pending"),
                    store.get("size_bytes"),
                    store.get("last_error"),
                )
            ],
            "store",
        ),
    ]
    clock = report.get("clock")
    if isinstance(clock, Mapping) and clock:
        parts += ["<h2>Clock</h2>", _table(("check", "value"), sorted(clock.items()), "clock")]
    return _layout("Overview", "".join(parts), who, csrf)


def signals_page(
    rows: Iterable[SignalRow],
    instruments: Iterable[str],
    chosen: str,
    who: Identity,
    csrf: str,
    commands: str = "",
) -> str:
    """Every signal (of instrument ``chosen``, if given) with its latest sample; the table is
    kept up to date by ``console.js`` from ``/events``. ``commands``: the chosen instrument's
    command forms (:func:`gateway.console.commandforms.command_forms`), shown below."""
    options = '<option value="">all instruments</option>' + "".join(
        f'<option value="{_e(i)}"{" selected" if i == chosen else ""}>{_e(i)}</option>'
        for i in instruments
    )
    body = [
        f'<form method="get" action="/signals" class="filter"><label>Instrument <select'
        f' name="instrument">{options}</select></label><button type="submit">Show</button>'
        "</form>",
        '<table class="signals" id="signals" data-events="/events'
        + (f"?instrument={_e(chosen)}" if chosen else "")
        + '"><thead><tr><th>signal</th><th>value</th><th>unit</th><th>quality</th>'
        "<th>age (s)</th><th>seq</th></tr></thead><tbody>",
    ]
    for row in rows:
        ucum = row["unit"]
        human = human_unit(ucum)
        unit = (
            f"{_e(human)} <code>{_e(ucum)}</code>" if human != ucum else f"<code>{_e(ucum)}</code>"
        )
        data = row.get("data") or {}
        quality = data.get("quality", "waiting")
        reason = data.get("reason")
        shown = f"{quality} ({reason})" if reason else quality
        body.append(
            f'<tr data-signal="{_e(row["id"])}"><td>{_e(row["id"])}</td>'
            f'<td class="value">{_e(_number(data.get("value", "—")))}</td><td>{unit}</td>'
            f'<td class="quality q-{_e(quality)}">{_e(shown)}</td>'
            f'<td class="age">{_e(data.get("age_s", ""))}</td>'
            f'<td class="seq">{_e(data.get("seq", ""))}</td></tr>'
        )
    body.append(
        "</tbody></table><p>Click a signal for a live chart of its values.</p>"
        '<div id="chart" hidden></div>'
    )
    body.append(commands)
    return _layout("Signals", "".join(body), who, csrf, _UPLOT)


def writes_page(
    targets: Mapping[str, WriteTarget], who: Identity, csrf: str, commands: str = ""
) -> str:
    """A form per declared write target, with its limits; then ``commands`` (the declared
    device commands' forms)."""
    if not targets:
        return _layout("Writes", "<p>No write targets are declared.</p>" + commands, who, csrf)
    forms = []
    for name, target in sorted(targets.items()):
        config = target.config
        limits = f"{config.min} … {config.max} {human_unit(target.unit)}"
        signed = "" if config.signature == "none" else f"; signature {config.signature}"
        forms.append(
            f'<form method="post" action="/write" class="write"><h2>{_e(name)}</h2>'
            f"<p>limits {_e(limits)}; role {_e(config.role)}{_e(signed)}</p>"
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
            f'<input type="hidden" name="target" value="{_e(name)}">'
            '<label>Value <input name="value" inputmode="decimal" required></label>'
            '<label>Reason <input name="reason" required></label>'
            f"{signature_fields(config, who)}"
            '<button type="submit">Write</button></form>'
        )
    return _layout("Writes", "".join(forms) + commands, who, csrf)


def command_outcome_page(outcome: CommandOutcome, who: Identity, csrf: str) -> str:
    body = f'<p class="outcome">{_e(outcome.message)}</p>' + _table(
        ("", ""), command_outcome_rows(outcome)
    )
    return _layout("Command", body + '<p><a href="/writes">Back to writes</a></p>', who, csrf)


def write_outcome_page(outcome: WriteOutcome, who: Identity, csrf: str) -> str:
    rows = [
        ("outcome", outcome.outcome),
        ("target", outcome.target),
        ("value", f"{outcome.value} {outcome.unit}"),
        ("before", outcome.old),
        ("read back", outcome.read_back),
        ("rule", outcome.rule),
        ("audit records", ", ".join(str(r) for r in outcome.records)),
    ]
    body = f'<p class="outcome">{_e(outcome.message)}</p>' + _table(("", ""), rows)
    return _layout("Write", body + '<p><a href="/writes">Back to writes</a></p>', who, csrf)


def configuration_page(config: GatewayConfig, source: str, who: Identity, csrf: str) -> str:
    """What the running configuration declares (for those who configure): its parts, their
    drivers and types, the write targets with their limits, the device commands. Never options
    or secrets."""
    parts = [
        f"<p>File <code>{_e(source)}</code>; site {_e(config.site)}, area {_e(config.area)}.</p>",
        "<h2>Instruments</h2>",
        _table(
            ("instrument", "driver", "enabled", "poll interval (s)", "signals"),
            (
                (
                    i.id,
                    i.driver,
                    i.enabled,
                    i.poll_interval_s,
                    "every channel" if i.signals is None else len(i.signals),
                )
                for i in config.instruments
            ),
            "instruments",
        ),
        "<h2>Processors</h2>",
        _table(
            ("processor", "type", "enabled"), ((p.id, p.type, p.enabled) for p in config.processors)
        ),
        "<h2>Sinks</h2>",
        _table(("sink", "type"), ((k.id, k.type) for k in config.sinks)),
        "<h2>Write targets</h2>",
        _table(
            ("target", "min", "max", "largest step", "rate (/s)", "role", "signature"),
            (
                (w.target, w.min, w.max, w.max_step, w.max_rate_per_s, w.role, w.signature)
                for w in config.writes
            ),
            "targets",
        ),
        "<h2>Device commands</h2>",
        _table(
            ("command", "role", "signature", "description"),
            ((c.target, c.role, c.signature, c.description) for c in config.commands),
            "commands",
        ),
    ]
    return _layout("Configuration", "".join(parts), who, csrf)


def audit_page(
    records: Iterable[AuditRecord],
    report: VerifyReport,
    user: str,
    action: str,
    limit: int,
    who: Identity,
    csrf: str,
) -> str:
    """The newest audit records (newest first), the filter form and the chain's verification."""
    status = (
        f'<p class="status status-ok" id="verify">Verified: {_e(report.summary())}</p>'
        if report.ok
        else f'<p class="status status-bad" id="verify">{_e(report.summary())}'
        + (f" (first bad record: {report.first_bad_seq})" if report.first_bad_seq else "")
        + "</p>"
    )
    form = (
        '<form method="get" action="/audit" class="filter">'
        f'<label>User <input name="user" value="{_e(user)}"></label>'
        f'<label>Action <input name="action" value="{_e(action)}" placeholder="write.*"></label>'
        f'<label>Records <input name="limit" value="{limit}" inputmode="numeric"></label>'
        '<button type="submit">Show</button></form>'
    )
    rows = [
        (
            r.seq,
            format_ns(r.ts_ns),
            r.event.user,
            r.event.action,
            r.event.target,
            "" if r.event.old is None else r.event.old,
            "" if r.event.new is None else r.event.new,
            r.event.outcome,
            r.event.reason,
            signatures_text(r.event.details),
        )
        for r in records
    ]
    table = _table(
        (
            "seq",
            "time (UTC)",
            "user",
            "action",
            "target",
            "old",
            "new",
            "outcome",
            "reason",
            "signature",
        ),
        rows,
        "audit",
    )
    note = (
        export_links(user, action, limit)
        + "<p>Export the whole trail with <code>patgw audit export CONFIG</code>;"
        " verify it with <code>patgw audit verify CONFIG</code>.</p>"
    )
    return _layout("Audit trail", status + form + table + note, who, csrf)
