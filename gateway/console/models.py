"""The console's models page: what the processors derive — a soft sensor's predictions, T² and
Q against their limits, a twin's estimates with their uncertainty — and their alarms, each
with an Acknowledge button.

Routes::

    GET  /models              read     the page; static/models.js refreshes it from the data
    GET  /models/data         read     JSON: every processor output's latest sample and every
                                       processor's alarms (what the page shows, nothing more)
    POST /models/acknowledge  session  processor, alarm, reason (and the CSRF token): the
                                       processor's ``acknowledge`` command, exactly as
                                       ``POST /api/v1/processors/ID/acknowledge`` calls it
                                       (:func:`gateway.localapi.call_command`: the command's
                                       permission, a reason, the processor's own audit record)

Everything comes from what the runtime already keeps: each output's ``latest`` row and each
processor's ``status()`` (the local API's ``/api/v1/processors`` document). A processor tells
the console, through its status, the ``limits`` of its output channels (``{"glucose_t2":
31.2}``) and its ``alarms`` (``{name: {"state", "severity", "reason", "pending"}}``); an
output ``<name>_sd`` is shown as the ± of output ``<name>``. ``gateway/`` knows no plugin: any
processor that says the same is shown the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import structlog

from ..http import Request, json_response
from ..localapi import call_command
from ..security import Identity, Permission
from ..timefmt import now_ns
from .events import event_data
from .pages import _e, _layout, human_unit, message_page
from .responses import SECURITY_HEADERS, html_response, text_response

if TYPE_CHECKING:
    from ..runtime.outputs import SignalOutput
    from ..runtime.processors import ProcessorRunner
    from ..runtime.supervisor import Gateway
    from .sessions import Session

__all__ = [
    "ModelPages",
    "OutputRow",
    "ProcessorView",
    "models_page",
    "processor_status",
    "processor_views",
]

log = structlog.get_logger("gateway.console")
_FAILED_STATUS: set[str] = set()  # processors whose status() failed (logged once each)

_SD = "_sd"
_ACKNOWLEDGE = "acknowledge"


@dataclass(frozen=True, slots=True)
class OutputRow:
    """One output of a processor as the page shows it (``sd``: its ``<name>_sd`` output)."""

    channel: str
    signal: str
    unit: str
    data: Mapping[str, Any] | None
    limit: float | None = None
    sd_signal: str | None = None
    sd: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ProcessorView:
    """One processor: what it is, its outputs, its alarms and who may acknowledge them."""

    id: str
    type: str
    model: str
    outputs: list[OutputRow]
    alarms: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    acknowledge: str | None = None  # the acknowledge command's permission, if it has one


def processor_status(runner: ProcessorRunner) -> dict[str, Any]:
    """``runner.status()``, the local API's processor document; a processor whose own
    ``status()`` raises (a plugin's bug) is shown without it, and logged once, rather than
    taking the page down."""
    try:
        return runner.status()
    except Exception as exc:  # a plugin's code: any error is its bug, not the page's
        if runner.processor_id not in _FAILED_STATUS:
            _FAILED_STATUS.add(runner.processor_id)
            log.error("console.status_failed", processor=runner.processor_id, error=repr(exc))
        return {"id": runner.processor_id, "type": runner.plan.config.type, "status": {}}


def processor_views(
    runners: Sequence[ProcessorRunner], outputs: Mapping[str, SignalOutput], now: int
) -> list[ProcessorView]:
    """What the page shows of each processor, from its status and its outputs' latest rows."""
    views = []
    for runner in runners:
        status = processor_status(runner)
        own = status.get("status")
        own = own if isinstance(own, Mapping) else {}
        limits = own.get("limits")
        limits = limits if isinstance(limits, Mapping) else {}
        alarms = own.get("alarms")
        alarms = alarms if isinstance(alarms, Mapping) else {}
        channels = {sp.channel: sp.signal for sp in runner.plan.signals}
        rows = []
        for channel, signal in channels.items():
            if channel.endswith(_SD) and channel[: -len(_SD)] in channels:
                continue  # shown as the ± of its value
            output = outputs.get(signal.id)
            sd_signal = channels.get(channel + _SD)
            sd_output = outputs.get(sd_signal.id) if sd_signal is not None else None
            limit = limits.get(channel)
            rows.append(
                OutputRow(
                    channel,
                    signal.id,
                    signal.unit,
                    event_data(output, now) if output is not None else None,
                    float(limit) if isinstance(limit, int | float) else None,
                    sd_signal.id if sd_signal is not None else None,
                    event_data(sd_output, now) if sd_output is not None else None,
                )
            )
        command = status.get("commands", {}).get(_ACKNOWLEDGE)
        views.append(
            ProcessorView(
                runner.processor_id,
                str(status.get("type", "")),
                _model_name(own.get("model")),
                rows,
                {str(k): v for k, v in alarms.items() if isinstance(v, Mapping)},
                str(command["permission"]) if isinstance(command, Mapping) else None,
            )
        )
    return views


def _model_name(model: object) -> str:
    if isinstance(model, Mapping):
        return f"{model.get('id', '')} v{model.get('version', '')}"
    return "" if model is None else str(model)


def _shown(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _over(row: OutputRow) -> bool:
    value = (row.data or {}).get("value")
    return (
        row.limit is not None
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value > row.limit
    )


def models_page(views: Sequence[ProcessorView], who: Identity, csrf: str) -> str:
    """Every processor's outputs (value ± sd, unit, limit, quality with its reason, age) and
    alarms (state, severity, cause, and an Acknowledge form for those who may)."""
    if not views:
        return _layout("Models", "<p>This configuration has no processors.</p>", who, csrf)
    parts = []
    for view in views:
        model = f" · model {_e(view.model)}" if view.model.strip(" v") else ""
        with_sd = any(row.sd_signal for row in view.outputs)  # an ± sd column only then
        parts.append(
            f'<section class="processor" data-processor="{_e(view.id)}">'
            f"<h2>{_e(view.id)}</h2><p>{_e(view.type)}{model}</p>"
            '<table class="outputs"><thead><tr><th>output</th><th>value</th>'
            + ("<th>± sd</th>" if with_sd else "")
            + "<th>unit</th><th>limit</th><th>quality</th><th>age (s)</th></tr></thead><tbody>"
        )
        for row in view.outputs:
            data = row.data or {}
            quality = data.get("quality", "waiting")
            reason = data.get("reason")
            human = human_unit(row.unit)
            unit = (
                f"{_e(human)} <code>{_e(row.unit)}</code>"
                if human != row.unit
                else (f"<code>{_e(row.unit)}</code>")
            )
            sd = (row.sd or {}).get("value") if row.sd_signal else None
            limit = "" if row.limit is None else f"{row.limit:.6g}"
            over = " over" if _over(row) else ""
            parts.append(
                f'<tr data-signal="{_e(row.signal)}"'
                + (f' data-sd-signal="{_e(row.sd_signal)}"' if row.sd_signal else "")
                + (f' data-limit="{row.limit!r}"' if row.limit is not None else "")
                + f'><td>{_e(row.channel)}</td><td class="value{over}">'
                f"{_e(_shown(data.get('value')))}</td>"
                + (f'<td class="sd">± {_e(_shown(sd))}</td>' if row.sd_signal else "")
                + ("<td></td>" if with_sd and not row.sd_signal else "")
                + f'<td>{unit}</td><td class="limit">{_e(limit)}</td>'
                f'<td class="quality q-{_e(quality)}">'
                f"{_e(f'{quality} ({reason})' if reason else quality)}</td>"
                f'<td class="age">{_e(data.get("age_s", ""))}</td></tr>'
            )
        parts.append("</tbody></table>")
        if view.alarms:
            may = view.acknowledge is not None and who.may(Permission(view.acknowledge))
            parts.append(
                '<h3>Alarms</h3><table class="alarms"><thead><tr><th>alarm</th><th>state</th>'
                "<th>severity</th><th>cause</th><th></th></tr></thead><tbody>"
            )
            for name, alarm in sorted(view.alarms.items()):
                form = ""
                if may:
                    hidden = "" if alarm.get("pending") else " hidden"
                    form = (
                        f'<form method="post" action="/models/acknowledge" class="ack"{hidden}>'
                        f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
                        f'<input type="hidden" name="processor" value="{_e(view.id)}">'
                        f'<input type="hidden" name="alarm" value="{_e(name)}">'
                        '<input name="reason" placeholder="reason" required>'
                        '<button type="submit">Acknowledge</button></form>'
                    )
                state = str(alarm.get("state", ""))
                parts.append(
                    f'<tr data-alarm="{_e(view.id)}/{_e(name)}"><td>{_e(name)}</td>'
                    f'<td class="state alarm-{_e(state.split(",")[0])}">{_e(state)}</td>'
                    f'<td class="severity">{_e(alarm.get("severity", ""))}</td>'
                    f'<td class="cause">{_e(alarm.get("reason", ""))}</td>'
                    f"<td>{form}</td></tr>"
                )
            parts.append("</tbody></table>")
        parts.append("</section>")
    return _layout("Models", "".join(parts), who, csrf, ("/static/models.js",))


def models_document(views: Sequence[ProcessorView]) -> dict[str, Any]:
    """``/models/data``: the latest sample of every output (and its sd) by signal id, and the
    alarms by ``processor/alarm``."""
    signals: dict[str, Any] = {}
    alarms: dict[str, Any] = {}
    for view in views:
        for row in view.outputs:
            signals[row.signal] = row.data
            if row.sd_signal is not None:
                signals[row.sd_signal] = row.sd
        for name, alarm in view.alarms.items():
            alarms[f"{view.id}/{name}"] = dict(alarm)
    return {"signals": signals, "alarms": alarms}


class ModelPages:
    """Answers ``/models``, ``/models/data`` and ``POST /models/acknowledge``."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def _views(self) -> list[ProcessorView]:
        outputs = {o.signal.id: o for o in self._gateway.outputs}
        return processor_views(self._gateway.processors, outputs, now_ns())

    def answer(self, request: Request, session: Session) -> bytes:
        who = session.identity
        if not who.may(Permission.READ):
            return text_response(HTTPStatus.FORBIDDEN, f"user {who.name!r} may not read")
        if not self._gateway.processors and self._gateway.plan.processors:
            # Starting: the processors run (and have a status) once the store is open.
            text = "The gateway is starting: its processors show here once it runs."
            return text_response(HTTPStatus.SERVICE_UNAVAILABLE, text)
        if request.path == "/models/data":
            return json_response(HTTPStatus.OK, models_document(self._views()), SECURITY_HEADERS)
        return html_response(HTTPStatus.OK, models_page(self._views(), who, session.csrf))

    async def acknowledge(self, session: Session, form: Mapping[str, str]) -> bytes:
        """The processor's ``acknowledge`` command with the form's alarm and reason; a page
        saying what happened, with the command's status (403, 400, 404, 409 or 200)."""
        who, csrf = session.identity, session.csrf
        name, alarm = form.get("processor", ""), form.get("alarm", "")
        runner = {p.processor_id: p for p in self._gateway.processors}.get(name)
        if runner is None:
            page = message_page("Acknowledge", f"no processor {name!r}", who, csrf)
            return html_response(HTTPStatus.NOT_FOUND, page)
        document = {"alarm": alarm, "reason": form.get("reason", "")}
        status, answer = await call_command(runner, _ACKNOWLEDGE, who, document)
        if status == HTTPStatus.OK:
            text = f"Alarm {name}/{alarm} acknowledged: {answer.get('state', '')}."
        else:
            text = f"Not acknowledged: {answer.get('error', status.phrase)}"
        body = f'<p class="outcome">{_e(text)}</p><p><a href="/models">Back to models</a></p>'
        return html_response(status, _layout("Acknowledge", body, who, csrf))
