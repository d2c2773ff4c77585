"""``patgw audit verify|export|rotate-key CONFIG``: the audit trail from the command line.

Exit codes as every ``patgw`` command: 0 success; 2 a trail that does not verify, or bad input
(one line per problem on standard error); 1 a trail that cannot be read or written at all.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..config import GatewayConfig
from ..loader import read_config
from ..oscompat import os_user
from ..timefmt import parse_iso_ns
from .config import AuditPaths, trail_for
from .export import export
from .records import AuditError, AuditEvent
from .verify import VerifyReport, verify

__all__ = ["add_audit_parser", "run_audit"]


def add_audit_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Register ``patgw audit`` and its actions under ``sub``."""
    audit = sub.add_parser(
        "audit", parents=[common], help="verify or export the audit trail, rotate its key"
    )
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    check = actions.add_parser(
        "verify",
        parents=[common],
        help="walk the chain and the signed anchors; exit 2 naming the first bad record",
    )
    check.add_argument("config", type=Path)
    check.add_argument(
        "--anchors",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="another anchor file to check against (JSON lines, e.g. collected upstream);"
        " may be repeated",
    )
    out = actions.add_parser("export", parents=[common], help="write audit records")
    out.add_argument("config", type=Path)
    out.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    out.add_argument(
        "--since", type=_iso_time, metavar="ISO-TIME", help="records from this time on (UTC)"
    )
    out.add_argument("--user", help="records of this user only")
    out.add_argument("--action", metavar="GLOB", help="actions to keep, e.g. 'write.*'")
    out.add_argument("--output", "-o", type=Path, help="file to write (default stdout)")
    rotate = actions.add_parser(
        "rotate-key", parents=[common], help="replace the signing key (recorded and anchored)"
    )
    rotate.add_argument("config", type=Path)


def run_audit(args: argparse.Namespace) -> int:
    """Run the ``patgw audit`` action ``args`` names."""
    config = read_config(args.config)
    paths = config.audit.resolved(config.store.path, config.data_dir)
    if not paths.path.exists():
        return _errors(
            [f"audit.path: no audit trail at {paths.path} (has the gateway run with this config?)"]
        )
    if args.audit_command == "rotate-key":
        return _rotate(config, paths)
    if args.audit_command == "verify":
        return _verify(config, paths, args.anchors)
    return _export(paths, args)


def _iso_time(text: str) -> int:
    try:
        return parse_iso_ns(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r} ({exc})") from None


def _errors(lines: list[str]) -> int:
    for line in lines:
        print(line, file=sys.stderr)
    return 2


def _who() -> dict[str, Any]:
    return {"via": "cli", "os_user": os_user()}


def _verify(config: GatewayConfig, paths: AuditPaths, extra: list[Path]) -> int:
    key = paths.key if paths.key.exists() else None
    report = verify(paths.path, anchor_files=[paths.anchor_file, *extra], key_path=key)
    if report.ok:
        print(report.summary())
    else:
        print(f"patgw: {report.summary()}", file=sys.stderr)
        for note in report.notes:
            print(f"patgw: also: {note}", file=sys.stderr)
    _record_verification(config, paths, report)
    return 0 if report.ok else 2


def _record_verification(config: GatewayConfig, paths: AuditPaths, report: VerifyReport) -> None:
    """Append the verification's outcome to the trail when it can be written."""
    if not os.access(paths.path, os.W_OK):
        print(
            f"patgw: {paths.path} is read-only: this verification is not recorded", file=sys.stderr
        )
        return
    details = {
        "records": report.records,
        "head_seq": report.head_seq,
        "first_bad_seq": report.first_bad_seq,
        "problem": report.problem,
        **_who(),
    }
    event = AuditEvent("audit.verified", outcome="ok" if report.ok else "failed", details=details)
    try:
        with trail_for(config) as trail:
            trail.append(event)
    except AuditError as exc:
        print(f"patgw: this verification is not recorded: {exc}", file=sys.stderr)


def _export(paths: AuditPaths, args: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        "fmt": args.format,
        "since_ns": args.since,
        "user": args.user,
        "action": args.action,
    }
    if args.output is None:
        export(paths.path, sys.stdout, **options)
        return 0
    try:
        with args.output.open("w", encoding="utf-8", newline="") as out:
            count = export(paths.path, out, **options)
    except OSError as exc:
        return _errors([f"{args.output}: {exc}"])
    except BaseException:
        args.output.unlink(missing_ok=True)  # no half-written file that looks complete
        raise
    print(f"{count} audit records written to {args.output}", file=sys.stderr)
    return 0


def _rotate(config: GatewayConfig, paths: AuditPaths) -> int:
    with trail_for(config) as trail:
        old = trail.key_id
        record = trail.rotate_key()
        # Who asked: the rotation record itself is written by the trail, this one says who.
        trail.append(
            AuditEvent(
                "audit.key_rotation_requested",
                target=str(paths.key),
                old=old,
                new=trail.key_id,
                details={"rotation_seq": record.seq, **_who()},
            )
        )
        print(f"audit key rotated: {old} -> {trail.key_id} (record {record.seq}); {paths.key}")
    return 0
