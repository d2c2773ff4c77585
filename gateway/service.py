"""``patgw service``: the gateway as a service, a systemd unit or a WinSW definition to install.

Printed, not installed: a plant's administrator reads what runs as a service before it does, and
installs it with the system's own tools (docs/operations.md; decision 0038). Both definitions
run ``python -m gateway run CONFIG`` with the interpreter that printed them (its virtual
environment included), and both stop it as Ctrl-C does: systemd with SIGTERM, WinSW with a
Ctrl+C console event, each waiting :func:`stop_wait_s` before it kills, well above the
gateway's own stop bound (``STOP_BOUND_S``).

systemd's unit is hardened: a dedicated user, the whole file system read-only except the state
folder (``ProtectSystem=strict``, ``ReadWritePaths=``) and ``/run/lock`` (the host-wide half of
the store lock, see gateway/store/lock.py), no home folders, a private /tmp, no new
privileges, no capabilities, IP and local sockets only. Every file the configuration writes
(store, data folder, audit trail) must lie in the state folder: checked here, an error naming
the path otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from xml.sax.saxutils import escape

from .config import GatewayConfig
from .errors import ConfigError
from .loader import read_config

__all__ = ["add_service_parser", "run_service", "stop_wait_s", "systemd_unit", "winsw_xml"]

_HOMES = (Path("/home"), Path("/root"), Path("/run/user"))
_TEMPORARY = (Path("/tmp"), Path("/var/tmp"))  # the unit's own, empty ones (PrivateTmp=yes)


def stop_wait_s() -> int:
    """How long a service manager waits for the gateway to stop before it kills it."""
    from .runtime.supervisor import STOP_BOUND_S  # here: every patgw command imports this module

    return math.ceil(3 * STOP_BOUND_S)


def add_service_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register ``patgw service`` and its actions under ``sub``."""
    service = sub.add_parser(
        "service", parents=[common], help="print a service definition (systemd, WinSW)"
    )
    kinds = service.add_subparsers(dest="service_command", required=True, metavar="KIND")
    unit = kinds.add_parser(
        "unit", parents=[common], help="a hardened systemd unit (save as /etc/systemd/system/)"
    )
    unit.add_argument("config", type=Path)
    unit.add_argument("--user", default="patgw", help="the dedicated user it runs as")
    winsw = kinds.add_parser(
        "winsw", parents=[common], help="a WinSW service definition (Windows), as XML"
    )
    winsw.add_argument("config", type=Path)
    winsw.add_argument(
        "--account",
        default="NT AUTHORITY\\LocalService",
        help="the Windows account it runs as (default: LocalService, no administrator rights)",
    )
    for parser in (unit, winsw):
        parser.add_argument(
            "--state-dir",
            type=Path,
            help="the one folder it may write: the store, data_dir and the audit trail must be"
            " in it (default: the folder of the store)",
        )
        parser.add_argument("--name", default="patgw", help="the service's name")


def run_service(args: argparse.Namespace) -> int:
    """``patgw service unit|winsw``: print the definition; exit 2 naming what is wrong."""
    config_path = args.config.absolute()
    config = read_config(config_path)
    state_dir = (args.state_dir or config.store.path.parent).absolute()
    if args.service_command == "unit":
        _check_visible(config_path, state_dir, args.name)
    _check_writes_in(config, state_dir)
    if args.service_command == "unit":
        text = systemd_unit(config_path, state_dir, user=args.user, name=args.name)
    else:
        text = winsw_xml(config_path, state_dir, account=args.account, name=args.name)
    sys.stdout.write(text)
    return 0


def _check_visible(config: Path, state_dir: Path, name: str) -> None:
    """What the systemd unit hides from the service must hold none of its files."""
    problems = [
        f"{what}: {path} is in {hidden}, which the service does not see (PrivateTmp=yes)"
        for what, path in (("config", config), ("--state-dir", state_dir))
        for hidden in _TEMPORARY
        if path.is_relative_to(hidden)
    ]
    if any(state_dir.is_relative_to(home) for home in _HOMES):  # ProtectHome=
        problems.append(f"--state-dir: {state_dir} is in a home folder: use /var/lib/{name}")
    if problems:
        raise ConfigError(problems)
    python = Path(sys.executable).absolute()
    if any(python.is_relative_to(hidden) for hidden in _TEMPORARY):
        print(
            f"patgw: warning: the service will not see {python} (PrivateTmp=yes):"
            " print the unit with an interpreter installed elsewhere",
            file=sys.stderr,
        )


def _check_writes_in(config: GatewayConfig, state_dir: Path) -> None:
    audit = config.audit.resolved(config.store.path, config.data_dir)
    writes = {
        "store.path": config.store.path,
        "data_dir": config.data_dir,
        "audit.path": audit.path,
        "audit.key": audit.key,
        "audit.anchor_file": audit.anchor_file,
    }
    outside = [
        f"{field}: {path} is outside the service's state folder {state_dir}"
        " (the only one it may write: choose it with --state-dir)"
        for field, path in writes.items()
        if not path.absolute().is_relative_to(state_dir)
    ]
    if outside:
        raise ConfigError(outside)


def _percent(text: str) -> str:
    """``text`` in a systemd setting taken whole: ``%`` doubled (it starts a specifier)."""
    return text.replace("%", "%%")


def _quote(word: str) -> str:
    """One word of a systemd setting that takes a list: ``%`` doubled, quoted when needed."""
    word = _percent(word)
    if word and not any(c.isspace() or c in "\"'\\;" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(config: Path, state_dir: Path, *, user: str, name: str = "patgw") -> str:
    """A hardened systemd unit running the gateway on ``config`` as ``user``."""
    python = Path(sys.executable).absolute()
    under_home = any(p.is_relative_to(h) for p in (config, python) for h in _HOMES)
    run = [str(python), "-m", "gateway", "--log-format", "json", "run", str(config), "--no-view"]
    check = [str(python), "-m", "gateway", "check", str(config)]
    state = [f"ReadWritePaths={_quote(str(state_dir))}"]
    if state_dir.parent == Path("/var/lib"):  # systemd creates it, owned by the user
        state = [f"StateDirectory={_quote(state_dir.name)}", "StateDirectoryMode=0750"]
    lines = [
        f"# PAT Gateway as a systemd service; printed by `patgw service unit {config}`.",
        f"# Install: save as /etc/systemd/system/{name}.service, create the user",
        f"# (useradd --system --no-create-home --shell /usr/sbin/nologin {user}),",
        f"# then: systemctl daemon-reload && systemctl enable --now {name}",
        "[Unit]",
        f"Description=PAT Gateway ({_percent(str(config))})",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=exec",
        f"User={user}",
        f"Group={user}",
        "# Serial instruments: add the group that owns the ports, e.g.",
        "# SupplementaryGroups=dialout",
        "# Secrets the configuration names as ${NAME}: EnvironmentFile=/etc/patgw/NAME.env",
        "Environment=PYTHONDONTWRITEBYTECODE=1",
        f"WorkingDirectory={_percent(str(state_dir))}",
        "ExecStartPre=" + " ".join(_quote(w) for w in check),
        "ExecStart=" + " ".join(_quote(w) for w in run),
        "Restart=on-failure",
        "RestartSec=5s",
        "# A stop is SIGTERM to the gateway (its children after it): it commits and closes.",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        f"TimeoutStopSec={stop_wait_s()}s",
        "UMask=0027",
        *state,
        "# The host-wide half of the store lock (gateway/store/lock.py); - : if it exists.",
        "ReadWritePaths=-/run/lock",
        "ProtectSystem=strict",
        f"ProtectHome={'read-only' if under_home else 'yes'}",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "SystemCallArchitectures=native",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def winsw_xml(
    config: Path, state_dir: Path, *, account: str = "NT AUTHORITY\\LocalService", name: str
) -> str:
    """A WinSW service definition running the gateway on ``config`` as ``account``."""
    python = Path(sys.executable).absolute()
    run = ["-m", "gateway", "--log-format", "json", "run", str(config), "--no-view"]
    arguments = "".join(f"  <argument>{escape(word)}</argument>\n" for word in run)
    return (
        "<!-- PAT Gateway as a Windows service with WinSW; printed by"
        f" `patgw service winsw`. Save as {escape(name)}.xml beside WinSW.exe renamed"
        f" {escape(name)}.exe, then: {escape(name)}.exe install, {escape(name)}.exe start."
        " The account needs write access to the state folder only. -->\n"
        "<service>\n"
        f"  <id>{escape(name)}</id>\n"
        f"  <name>PAT Gateway ({escape(name)})</name>\n"
        f"  <description>PAT Gateway on {escape(str(config))}</description>\n"
        f"  <executable>{escape(str(python))}</executable>\n"
        f"{arguments}"
        f"  <workingdirectory>{escape(str(state_dir))}</workingdirectory>\n"
        '  <env name="PYTHONDONTWRITEBYTECODE" value="1"/>\n'
        "  <startmode>Automatic</startmode>\n"
        "  <delayedAutoStart>true</delayedAutoStart>\n"
        "  <!-- A stop is Ctrl+C to the gateway: it commits and closes. -->\n"
        f"  <stoptimeout>{stop_wait_s()} sec</stoptimeout>\n"
        '  <onfailure action="restart" delay="5 sec"/>\n'
        '  <onfailure action="restart" delay="30 sec"/>\n'
        "  <resetfailure>1 hour</resetfailure>\n"
        f"  <logpath>{escape(str(state_dir / 'logs'))}</logpath>\n"
        '  <log mode="roll-by-size">\n'
        "    <sizeThreshold>10240</sizeThreshold>\n"
        "    <keepFiles>8</keepFiles>\n"
        "  </log>\n"
        "  <serviceaccount>\n"
        f"    <username>{escape(account)}</username>\n"
        "  </serviceaccount>\n"
        "</service>\n"
    )
