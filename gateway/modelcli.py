"""``patgw model``: fit, show and check model files of the kinds plugins register.

::

    patgw model fit [KIND] ...     # KIND pls when omitted (the soft sensor's PLS models)
    patgw model show FILE ...      # the kind named by the file's "kind" member (pls without one)
    patgw model check FILE ...

A kind (:class:`~gateway.registry.ModelKind`) brings its own arguments for each action; this
module picks the kind, adds what every kind shares (``FILE``; ``--config``/``--user``/
``--reason`` of ``fit``, which log an engineer in before the fit and record ``model.fitted`` in
the configuration's audit trail after it) and runs the kind's handler. Exit codes: 0 success;
2 a usage or input error (an unknown kind names the registered ones), one line on standard
error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .audit import AuditEvent
from .registry import ModelKind, PluginKind, Registry, missing_text
from .security import AuthenticationError, NotPermittedError, Permission
from .security.cli import CommandLogin, login_for_command

__all__ = ["ACTIONS", "DEFAULT_KIND", "add_model_parser", "run_model", "run_model_args"]

#: The kind of ``patgw model fit`` without a KIND, and of a model file without ``"kind"``.
DEFAULT_KIND = "pls"
ACTIONS = ("fit", "show", "check")


class _InputError(Exception):
    """A problem with what the user gave; its message is the one line to print."""


def add_model_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``patgw model`` to the ``patgw`` sub-commands: the action, then the kind's
    arguments (parsed once the kind is known)."""
    model = sub.add_parser(
        "model",
        parents=[common],
        help="fit, show and check model files (kinds: 'patgw plugins', kind 'model')",
        description="fit [KIND] (pls when omitted) ...; show FILE ...; check FILE ... — the"
        ' kind of a file is its "kind" member (pls without one). \'patgw model fit KIND'
        " --help' and 'patgw model show FILE --help' list a kind's arguments.",
    )
    model.add_argument("action", choices=ACTIONS, help="what to do")
    model.add_argument("arguments", nargs=argparse.REMAINDER, help="the kind's arguments")


def run_model_args(args: argparse.Namespace, registry: Registry) -> int:
    """Run the ``patgw model`` that ``patgw`` parsed (see :func:`add_model_parser`)."""
    return run_model([args.action, *args.arguments], registry)


def run_model(argv: Sequence[str], registry: Registry) -> int:
    """Run ``patgw model ARGV`` with the model kinds of ``registry``; return the exit code."""
    if not argv or argv[0] not in ACTIONS:
        print(f"patgw model: expected one of {', '.join(ACTIONS)}", file=sys.stderr)
        return 2
    action, rest = argv[0], list(argv[1:])
    try:
        if action == "fit":
            return _fit(rest, registry)
        return _file_action(action, rest, registry)
    except _InputError as exc:
        print(f"patgw model {action}: {exc}", file=sys.stderr)
        return 2


def _kind(registry: Registry, name: str, where: str) -> ModelKind:
    kind = registry.model_kind(name)
    if kind is None:
        known = ", ".join(registry.names(PluginKind.MODEL)) or "none registered"
        raise _InputError(f"{where}unknown model kind {name!r} (kinds: {known})")
    registration = registry.get(PluginKind.MODEL, name)
    missing = registration.missing() if registration is not None else ()
    if registration is not None and missing:
        raise _InputError(
            f"{where}model kind {name!r} {missing_text(registration, missing, registration.extra)}"
        )
    return kind


def _fit(rest: list[str], registry: Registry) -> int:
    name = DEFAULT_KIND
    if rest and not rest[0].startswith("-"):
        name, rest = rest[0], rest[1:]
    kind = _kind(registry, name, "")
    parser = argparse.ArgumentParser(
        prog=f"patgw model fit {name}" if name != DEFAULT_KIND else "patgw model fit",
        description=kind.description,
    )
    parser.set_defaults(model_command="fit", model_kind=name)
    handler = kind.fit(parser)
    _audit_options(parser)
    args = parser.parse_args(rest)
    login = _login(args)
    code = int(handler(args))
    if code == 0 and login is not None:
        _record_fit(login, name, Path(args.output), args.reason)
    return code


def _file_action(action: str, rest: list[str], registry: Registry) -> int:
    # The file is the first argument that is no option: "show FILE", "check FILE --data ...".
    path = next((Path(arg) for arg in rest if not arg.startswith("-")), None)
    name = DEFAULT_KIND if path is None else _file_kind(path)
    kind = _kind(registry, name, f"{path}: ")
    parser = argparse.ArgumentParser(prog=f"patgw model {action}", description=kind.description)
    parser.set_defaults(model_command=action, model_kind=name)
    parser.add_argument("model", type=Path, help=f"model file (kind {name})")
    handler = (kind.show if action == "show" else kind.check)(parser)
    return int(handler(parser.parse_args(rest)))


def _file_kind(path: Path) -> str:
    """The ``"kind"`` member of the model file at ``path``; the default kind for a file
    without one, and for one that cannot be read as a JSON object (its kind reports why)."""
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return DEFAULT_KIND
    if not isinstance(document, dict) or "kind" not in document:
        return DEFAULT_KIND
    kind = document["kind"]
    if not isinstance(kind, str) or not kind:
        raise _InputError(f"{path}: kind: expected the name of a model kind, not {kind!r}")
    return kind


def _audit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="the gateway configuration whose model this is: then --user (an engineer) logs"
        " in (password from a prompt or stdin) and the fit is recorded in its audit trail",
    )
    parser.add_argument("--user", help="who fits the model (with --config)")
    parser.add_argument("--reason", default="", help="why (with --config): kept in the audit trail")


def _login(args: argparse.Namespace) -> CommandLogin | None:
    """With ``--config``: the engineer who fits, logged in (before any work is done)."""
    if args.config is None:
        if args.user is not None:
            raise _InputError("--user needs --config (whose users it is checked against)")
        return None
    if args.user is None:
        raise _InputError("--config needs --user: who fits the model")
    try:
        return login_for_command(args.config, args.user, Permission.CONFIGURE, "model.fit")
    except (AuthenticationError, NotPermittedError) as exc:
        raise _InputError(str(exc)) from exc


def _record_fit(login: CommandLogin, kind: str, output: Path, reason: str) -> None:
    """``model.fitted``: the file written (its SHA-256), its id and version, who and why."""
    content = output.read_bytes()
    try:
        document = json.loads(content)
    except ValueError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    login.record(
        AuditEvent(
            action="model.fitted",
            user=login.identity.name,
            target=str(output.resolve()),
            new=hashlib.sha256(content).hexdigest(),
            reason=reason,
            details={
                "model": document.get("id"),
                "version": document.get("version"),
                "kind": kind,
                "interface": "cli",
            },
        )
    )
