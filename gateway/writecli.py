"""``patgw write``: a controlled write through the running gateway's local API.

The password is read from a prompt, or one line on stdin (a witness's from the next line),
never from the command line (it would sit in the shell history and the process list). The
request goes to the configuration's ``http`` endpoint (HTTPS if ``http.tls``, trusting that
certificate), which must serve the API (``http.api: true``). Exit 0 when the write was done and
read back equal, 2 otherwise (refused, failed, read back another value, login refused, or no
gateway running), with the reason on stderr. ``patgw command`` does the same for a device command
(``POST /api/v1/commands``) or a processor's.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import math
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .config import GatewayConfig, HttpConfig
from .loader import read_config

__all__ = ["add_command_command", "add_write_command", "cmd_command", "cmd_write"]

TIMEOUT_S = 30.0


def add_write_command(sub: Any, common: argparse.ArgumentParser) -> None:
    write = sub.add_parser(
        "write",
        parents=[common],
        help="write a declared target (a setpoint) through the running gateway, audited",
    )
    write.add_argument("config", type=Path)
    write.add_argument("target", help="the target's signal id, e.g. reactor1/feed_pump/speed")
    write.add_argument("value", type=_number, help="the value, in the target's unit")
    write.add_argument("--user", required=True, help="who writes (security.users)")
    write.add_argument("--reason", required=True, help="why: kept in the audit trail")
    write.add_argument(
        "--meaning", help="the meaning of your electronic signature, for targets that need one"
    )
    write.add_argument("--witness", help="the second person, for targets that need a witness")
    write.add_argument("--witness-meaning", default="witnessed", help="the witness's meaning")


def add_command_command(sub: Any, common: argparse.ArgumentParser) -> None:
    command = sub.add_parser(
        "command",
        parents=[common],
        help="run a declared device command (reactor1/balance/tare) or give a processor a"
        " command (glucose_loop mode) through the running gateway, audited",
    )
    command.add_argument("config", type=Path)
    command.add_argument(
        "processor",
        metavar="TARGET|PROCESSOR",
        help="a device command declared under commands: (e.g. reactor1/balance/tare), or a"
        " processor's id (e.g. glucose_loop) followed by its command",
    )
    command.add_argument(
        "name", nargs="?", help="a processor's command, e.g. mode (see GET /api/v1/processors)"
    )
    command.add_argument("--user", required=True, help="who gives it (security.users)")
    command.add_argument("--reason", required=True, help="why: kept in the audit trail")
    command.add_argument(
        "--set",
        dest="fields",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a field of the command's body, or a device command's argument (VALUE as JSON if"
        " it parses, else text); repeatable, e.g. --set mode=manual --set output=2.5",
    )
    command.add_argument(
        "--meaning", help="the meaning of your electronic signature, for commands that need one"
    )
    command.add_argument("--witness", help="the second person, for commands that need a witness")
    command.add_argument("--witness-meaning", default="witnessed", help="the witness's meaning")


def cmd_command(args: argparse.Namespace) -> int:
    config = read_config(args.config)
    http = _api_endpoint(config, args.config)
    if isinstance(http, str):
        return _fail(http)
    body: dict[str, Any] = {}
    for field in args.fields:
        key, sep, text = field.partition("=")
        if not sep or not key or key == "reason":
            return _fail(f"--set {field!r}: write KEY=VALUE (the reason goes in --reason)")
        try:
            body[key] = json.loads(text)
        except ValueError:
            body[key] = text
    if args.name is None:
        return _device_command(args, http, body)
    body["reason"] = args.reason
    password = _password(f"password for {args.user}: ")
    route = f"/api/v1/processors/{args.processor}/{args.name}"
    status, document = _post(http, route, args.user, password, body)
    if status is None:
        return _fail(str(document.get("error")))
    if status == 200:
        print(json.dumps(document, indent=2, sort_keys=True))
        return 0
    return _fail(f"{args.processor} {args.name}: {document.get('error') or f'HTTP {status}'}")


def _device_command(args: argparse.Namespace, http: HttpConfig, arguments: dict[str, Any]) -> int:
    """``patgw command CONFIG TARGET``: a device command through ``POST /api/v1/commands``;
    exit 0 when the device acknowledged it, 2 otherwise."""
    if "/" not in args.processor:
        return _fail(
            f"{args.processor!r}: give a processor's command after its id, or a device command"
            " as <area>/<instrument>/<command>"
        )
    password = _password(f"password for {args.user}: ")
    body: dict[str, Any] = {
        "target": args.processor,
        "arguments": arguments,
        "reason": args.reason,
        **_signature_fields(args),
    }
    return _outcome("command", *_post(http, "/api/v1/commands", args.user, password, body))


def _signature_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The body's ``meaning`` and ``witness`` (its password prompted for) from the options."""
    fields: dict[str, Any] = {}
    if args.meaning is not None:
        fields["meaning"] = args.meaning
    if args.witness is not None:
        fields["meaning"] = args.meaning or "performed"
        fields["witness"] = {
            "user": args.witness,
            "password": _password(f"password for {args.witness} (witness): "),
            "meaning": args.witness_meaning,
        }
    return fields


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def cmd_write(args: argparse.Namespace) -> int:
    config = read_config(args.config)
    http = _api_endpoint(config, args.config)
    if isinstance(http, str):
        return _fail(http)
    password = _password(f"password for {args.user}: ")
    body: dict[str, Any] = {
        "target": args.target,
        "value": args.value,
        "reason": args.reason,
        **_signature_fields(args),
    }
    # Long enough for the slowest declared read-back (a write waits for it before answering).
    slowest = max((w.readback_delay_s for w in config.writes), default=0.0)
    answer = _post(http, "/api/v1/writes", args.user, password, body, TIMEOUT_S + slowest)
    return _outcome("write", *answer)


def _outcome(kind: str, status: int | None, document: dict[str, Any]) -> int:
    """Print a write's or command's outcome (``kind``); its exit status: 0 done, 2 otherwise."""
    if status is None:
        return _fail(str(document.get("error")))
    if status == 200:
        print(document.get("message", "done"))
        _records(document)
        return 0
    message = document.get("message") or document.get("error") or f"HTTP {status}"
    rule = document.get("rule")
    _fail(
        f"{kind} {document.get('outcome', 'refused')}: {message}" + (f" [{rule}]" if rule else "")
    )
    _records(document)
    return 2


def _records(document: dict[str, Any]) -> None:
    records = document.get("audit_records")
    if records:
        print(f"audit records: {', '.join(str(r) for r in records)}", file=sys.stderr)


def _fail(message: str) -> int:
    print(f"patgw: {message}", file=sys.stderr)
    return 2


def _password(prompt: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def _api_endpoint(config: GatewayConfig, path: Path) -> HttpConfig | str:
    http = config.http
    if http is None or not http.api:
        return f"{path}: the local API is off (set http.api: true and restart the gateway)"
    if http.port == 0:
        return f"{path}: http.port is 0 (any free port): give it a fixed port to write through it"
    return http


def _post(
    http: HttpConfig,
    route: str,
    user: str,
    password: str,
    body: dict[str, Any],
    timeout_s: float = TIMEOUT_S,
) -> tuple[int | None, dict[str, Any]]:
    host = "127.0.0.1" if http.host in ("0.0.0.0", "") else http.host
    host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
    scheme = "https" if http.tls is not None else "http"
    url = f"{scheme}://{host}:{http.port}{route}"
    handlers: list[urllib.request.BaseHandler] = [
        # Never through a proxy (http_proxy...): the request carries a password, and the
        # gateway is this machine's.
        urllib.request.ProxyHandler({})
    ]
    if http.tls is not None:
        # The configured certificate is trusted as it is (self-signed, or the leaf of a chain:
        # partial chains accepted), beside the system's authorities.
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=str(http.tls.certificate))
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.check_hostname = False  # 127.0.0.1: the certificate is pinned instead
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Basic {credentials}", "Content-Type": "application/json"},
    )
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return int(response.status), _document(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), _document(exc.read())
    except TimeoutError:
        return None, {
            "error": f"no answer from {url} within {timeout_s:g} s: the write may have been"
            " executed; see `patgw audit export` for its outcome"
        }
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, {
            "error": f"cannot reach the gateway's API at {url}: {reason} (is `patgw run` running"
            " with this configuration?)"
        }


def _document(raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except ValueError:
        return {"error": raw.decode("utf-8", "replace").strip()}
    return document if isinstance(document, dict) else {"error": str(document)}
