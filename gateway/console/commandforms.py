"""The console's device commands: a form (a button) per declared command, and its arguments
read back from the posted form.

A command's form posts to ``/command`` with the session's CSRF token, the target, a reason, one
field per argument (``arg.<name>``) and, for a command declared with a signature, the signed-write
form's fields (:func:`gateway.console.signatures.signature_fields`). What may run, and how, is
the write path's (:meth:`gateway.control.WritePath.submit_command`), as for the local API.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from ..api import CommandArgument, DeviceCommand
from ..control import CommandOutcome, CommandTarget
from ..security import Identity, Permission
from .signatures import signature_fields

__all__ = ["command_arguments", "command_forms", "command_outcome_rows"]

_PREFIX = "arg."


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def command_forms(
    commands: Mapping[str, CommandTarget], who: Identity, csrf: str, instrument: str = ""
) -> str:
    """A form per declared command (of ``instrument``, if given) for a user who may write;
    "" if there is none or the user may not write."""
    if not who.may(Permission.WRITE):
        return ""
    chosen = [
        (name, target)
        for name, target in sorted(commands.items())
        if not instrument or target.instrument == instrument
    ]
    if not chosen:
        return ""
    forms = ['<section class="commands"><h2>Commands</h2>']
    for name, target in chosen:
        command, config = target.command, target.config
        about = config.description or command.description
        rules = f"role {config.role}"
        if config.signature != "none":
            rules += f"; signature {config.signature}"
        if command.changes_process:
            rules += "; acts on the process"
        label = command.name.replace("_", " ")
        forms.append(
            f'<form method="post" action="/command" class="command"><h3>{_e(name)}</h3>'
            + (f"<p>{_e(about)}</p>" if about else "")
            + f"<p>{_e(rules)}</p>"
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
            f'<input type="hidden" name="target" value="{_e(name)}">'
            + "".join(_argument_field(a) for a in command.arguments)
            + '<label>Reason <input name="reason" required></label>'
            f"{signature_fields(config, who)}"
            f'<button type="submit">{_e(label.capitalize())}</button></form>'
        )
    forms.append("</section>")
    return "".join(forms)


def _argument_field(argument: CommandArgument) -> str:
    name = f"{_PREFIX}{argument.name}"
    need = " required" if argument.required else ""
    unit = f" ({argument.unit})" if argument.unit else ""
    title = f' title="{_e(argument.description)}"' if argument.description else ""
    if argument.kind == "boolean":
        return (
            f'<label{title}>{_e(argument.name)} <input type="checkbox" name="{_e(name)}"'
            ' value="true"></label>'
        )
    mode = ' inputmode="decimal"' if argument.kind in ("number", "integer") else ""
    return (
        f'<label{title}>{_e(argument.name)}{_e(unit)} <input name="{_e(name)}"{mode}{need}></label>'
    )


def command_arguments(form: Mapping[str, str], command: DeviceCommand) -> dict[str, Any]:
    """The arguments a posted form gives ``command``, typed by their declared kind (a number
    that does not parse stays text: the write path refuses it, naming the argument); an empty
    field is left out. Fields of arguments the command does not declare are ignored."""
    arguments: dict[str, Any] = {}
    for argument in command.arguments:
        raw = form.get(f"{_PREFIX}{argument.name}")
        if argument.kind == "boolean":
            arguments[argument.name] = raw == "true"
            continue
        if raw is None or not raw.strip():
            continue
        text = raw.strip()
        if argument.kind in ("number", "integer"):
            try:
                arguments[argument.name] = float(text)
            except ValueError:
                arguments[argument.name] = text
        else:
            arguments[argument.name] = text
    return arguments


def command_outcome_rows(outcome: CommandOutcome) -> list[tuple[str, object]]:
    """A command's outcome as the rows of its page."""
    shown = ", ".join(f"{k} {v}" for k, v in outcome.arguments.items())
    result = ", ".join(f"{k} {v}" for k, v in outcome.result.items())
    return [
        ("outcome", outcome.outcome),
        ("command", outcome.target),
        ("arguments", shown),
        ("result", result),
        ("rule", outcome.rule),
        ("audit records", ", ".join(str(r) for r in outcome.records)),
    ]
