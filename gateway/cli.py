"""``patgw``: run, check, export, back up the store, list plugins, print the config schema,
run an emulator.

Exit codes: 0 success; 1 a runtime failure (store unusable, emulator cannot bind...);
2 a usage or configuration error, with one line per problem on standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import structlog
import yaml
from pydantic import ValidationError

from .api import PluginContext, validation_context
from .audit.cli import add_audit_parser, run_audit
from .config import GatewayConfig
from .config_reference import config_reference
from .errors import ConfigError, GatewayError
from .export import FORMATS, DeviceHistory, read_archive
from .loader import format_loc, load_plan, read_config
from .logs import configure_logging
from .model import Sample
from .modelcli import add_model_parser, run_model_args
from .passwords import hash_password
from .pluginmanager import PLUGIN_API_VERSION, build_registry
from .registry import CommandConfigure, PluginKind, Registration, missing_text
from .schema import config_schema
from .service import add_service_parser, run_service
from .store.backup import backup_store
from .store.prune import archive_problems, file_sha256
from .store.sqlite import SampleStore
from .timefmt import duration_argument, parse_iso_ns
from .writecli import add_command_command, add_write_command, cmd_command, cmd_write
from .yamltext import load_yaml

__all__ = ["main"]

log = structlog.get_logger("gateway.cli")


def _version() -> str:
    try:
        return version("pat-gateway")
    except PackageNotFoundError:
        return "unknown"


def _parser(commands: Sequence[Registration[CommandConfigure]] = ()) -> argparse.ArgumentParser:
    """The argument parser: the built-in commands, plus ``commands`` registered by plugins."""
    parser = argparse.ArgumentParser(
        prog="patgw",
        description="PAT Gateway: read process-analytical instruments, durably.",
        epilog="Plugins may add commands, and kinds of model file to 'patgw model' (e.g. the"
        " soft sensor's pls); 'patgw plugins' lists them (kinds 'command' and 'model').",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--log-format", choices=("console", "json"), help="log output")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    # The same options are accepted after the command too (patgw run X --log-format json).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-format", choices=("console", "json"), default=argparse.SUPPRESS, help="log output"
    )
    common.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="run the gateway")
    run.add_argument("config", type=Path)
    run.add_argument(
        "--for", dest="duration", type=duration_argument, metavar="SECONDS", help="stop after"
    )
    run.add_argument("--no-view", action="store_true", help="no live table even on a terminal")

    check = sub.add_parser(
        "check", parents=[common], help="validate a configuration (exit 2 if invalid)"
    )
    check.add_argument("config", type=Path)

    schema = sub.add_parser(
        "schema", parents=[common], help="print the configuration's JSON Schema"
    )
    schema.add_argument(
        "--markdown",
        action="store_true",
        help="print the configuration reference (every key and plugin option) as Markdown",
    )

    plugins = sub.add_parser("plugins", parents=[common], help="list installed plugins")
    plugins.add_argument("--json", action="store_true", help="print JSON")

    export = sub.add_parser("export", parents=[common], help="write committed samples")
    export.add_argument("config", type=Path)
    export.add_argument("--format", choices=sorted(FORMATS), default="jsonl")
    export.add_argument("--signal", metavar="GLOB", help="signal ids to keep, shell wildcards")
    export.add_argument("--since", metavar="ISO-TIME", help="keep samples from this source time")
    export.add_argument("--output", "-o", type=Path, help="file to write (default stdout)")
    export.add_argument(
        "--include-archive",
        action="store_true",
        help="also the samples the store budget pruned, read back from its archive files"
        " (each checked against its recorded SHA-256)",
    )

    backup = sub.add_parser(
        "backup", parents=[common], help="copy the store while the gateway runs (checked)"
    )
    backup.add_argument("config", type=Path)
    backup.add_argument("output", type=Path, metavar="OUT", help="the copy to write")
    backup.add_argument("--force", action="store_true", help="replace OUT if it exists")

    add_audit_parser(sub, common)

    sub.add_parser(
        "hash-password",
        parents=[common],
        help="read a password (prompt, or one line on stdin) and print its hash for a config",
    )

    add_write_command(sub, common)
    add_command_command(sub, common)
    add_model_parser(sub, common)
    add_service_parser(sub, common)

    emulate = sub.add_parser(
        "emulate", parents=[common], help="run an emulated instrument standalone"
    )
    emulate.add_argument("name", help="emulator name, see 'patgw plugins'")
    emulate.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emulate.add_argument("--port", type=int, help="port to listen on")
    emulate.add_argument(
        "--serial",
        action="store_true",
        help="serve on a pseudo-terminal instead of TCP (serial instruments); prints its path",
    )
    emulate.add_argument(
        "--for", dest="duration", type=duration_argument, metavar="SECONDS", help="stop after"
    )
    emulate.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=YAML",
        help="an emulator option, e.g. --option setpoint_rpm=120 (repeatable)",
    )
    for registration in commands:
        command = sub.add_parser(registration.name, parents=[common], help=registration.description)
        command.set_defaults(
            plugin_handler=registration.factory(command), plugin_registration=registration
        )
    return parser


def _command_name(argv: Sequence[str]) -> str | None:
    """The sub-command ``argv`` names (its first positional argument), if any."""
    args = iter(argv)
    for arg in args:
        if arg in ("--log-format", "--log-level"):
            next(args, None)  # the option's value
        elif not arg.startswith("-"):
            return arg
    return None


def _early_option(argv: Sequence[str], name: str, choices: Sequence[str]) -> str | None:
    """The value of option ``name`` in ``argv`` (``--name VALUE`` or ``--name=VALUE``) if it is
    one of ``choices``, before the parser runs."""
    for arg, following in zip(argv, [*argv[1:], None], strict=True):
        value = following if arg == name else arg.removeprefix(f"{name}=")
        if (arg == name or arg.startswith(f"{name}=")) and value in choices:
            return value
    return None


def _plugin_commands(argv: Sequence[str]) -> list[Registration[CommandConfigure]]:
    """The commands plugins register, loaded only when ``argv`` names no built-in command
    (loading every plugin costs about a second)."""
    name = _command_name(argv)
    if name is None or name in _COMMANDS:
        return []
    registry = build_registry()
    return [r for r in registry if r.kind is PluginKind.COMMAND]


def _errors(lines: Sequence[str]) -> int:
    for line in lines:
        print(line, file=sys.stderr)
    return 2


def _install_stop_handlers(stop: asyncio.Event) -> Callable[[], None]:
    """First SIGINT/SIGTERM (on Windows also SIGBREAK, Ctrl-Break): stop cleanly (final
    commit). Second: exit at once. Returns what puts the previous handlers back.

    Windows' event loops have no ``add_signal_handler``: there a plain ``signal.signal``
    handler (run by the main thread, which the proactor loop wakes for a signal) hands the
    signal to the loop with ``call_soon_threadsafe``."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.error("patgw.forced_exit", signal=sig.name)
            os._exit(128 + sig.value)
        log.info("patgw.stop_requested", signal=sig.name)
        stop.set()

    def from_handler(signum: int, _frame: object) -> None:
        loop.call_soon_threadsafe(on_signal, signal.Signals(signum))

    restore: list[Callable[[], object]] = []
    stop_signals = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGBREAK"):
        stop_signals.append(signal.SIGBREAK)
    for sig in stop_signals:
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except NotImplementedError:
            try:
                previous = signal.signal(sig, from_handler)
            except (OSError, ValueError):  # not the main thread
                continue
            restore.append(partial(signal.signal, sig, previous))
        except RuntimeError:  # not the main thread
            continue
        else:
            restore.append(partial(loop.remove_signal_handler, sig))

    def restore_all() -> None:
        for undo in restore:
            undo()

    return restore_all


def _cmd_run(args: argparse.Namespace) -> int:
    from .runtime import Gateway
    from .runtime.interpreter import configure_interpreter, freeze_long_lived

    config = read_config(args.config)
    configure_logging(
        args.log_format or config.logging.format, args.log_level or config.logging.level
    )
    plan = load_plan(args.config, build_registry())
    for warning in plan.warnings:
        log.warning("config.warning", warning=warning)
    interactive = sys.stdout.isatty() and not args.no_view
    configure_interpreter()

    async def freeze_once_started(gateway: Gateway) -> None:
        await gateway.started.wait()
        freeze_long_lived()  # the runtime built at start-up lives until the stop

    async def main() -> int:
        stop = asyncio.Event()
        restore_handlers = _install_stop_handlers(stop)
        gateway = Gateway(plan, interactive=interactive)
        freezer = asyncio.create_task(freeze_once_started(gateway), name="interpreter.freeze")
        try:
            await gateway.run(stop, args.duration)
        finally:
            restore_handlers()
            freezer.cancel()
            await asyncio.gather(freezer, return_exceptions=True)
        return 0

    return asyncio.run(main())


def _cmd_check(args: argparse.Namespace) -> int:
    plan = load_plan(args.config, build_registry())
    problems = archive_problems(plan.config.store.budget)
    if problems:
        return _errors(problems)
    counts = (
        (len(plan.instruments), "instrument"),
        (len(plan.processors), "processor"),
        (len(plan.signals), "signal"),
        (len(plan.emulators), "emulator"),
        (len(plan.sinks), "sink"),
    )
    parts = ", ".join(f"{n} {word}{'' if n == 1 else 's'}" for n, word in counts)
    for warning in plan.warnings:  # valid all the same: exit 0
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: valid ({parts})")
    # Where the files will be, whatever the working directory of the service that runs it.
    print(f"relative paths resolve against {args.config.parent.absolute()}")
    print(f"store: {plan.config.store.path}")
    print(f"data_dir: {plan.config.data_dir}")
    config = plan.config
    print(f"audit trail: {config.audit.resolved(config.store.path, config.data_dir).path}")
    security = config.security
    print(
        f"users: {len(security.users)}; writable targets:"
        f" {', '.join(sorted(plan.access.targets)) or 'none'}"
    )
    if plan.access.commands:
        print(f"device commands: {', '.join(sorted(plan.access.commands))}")
    if config.http is not None and config.http.api:
        scheme = "https" if config.http.tls is not None else "http"
        print(f"local API: {scheme}://{config.http.host}:{config.http.port}/api/v1")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    if args.markdown:
        print(config_reference(build_registry(), generator="patgw schema --markdown"), end="")
    else:
        print(json.dumps(config_schema(build_registry()), indent=2))
    return 0


def _needs(requires: Sequence[str], extra: str | None, missing: Sequence[str]) -> str:
    """The NEEDS column of ``patgw plugins``: the extra (or modules) and whether installed."""
    if not requires and extra is None:
        return "-"
    what = f"[{extra}]" if extra is not None else ", ".join(requires)
    return f"{what} missing: {', '.join(missing)}" if missing else f"{what} installed"


def _cmd_plugins(args: argparse.Namespace) -> int:
    registry = build_registry()
    rows: list[dict[str, Any]] = []
    for entry in registry:
        missing = entry.missing()
        rows.append(
            {
                "name": entry.name,
                "kind": entry.kind.value,
                "version": entry.version,
                "distribution": entry.distribution,
                "plugin": entry.plugin,
                "description": entry.description,
                "api": entry.api,
                "refused": None,
                "requires": list(entry.requires),
                "extra": entry.extra,
                "missing": list(missing),
                "needs": _needs(entry.requires, entry.extra, missing),
            }
        )
    # A refused plugin's names are unknown (its hooks never ran): one row for the plugin.
    rows += [
        {
            "name": refusal.name or refusal.plugin,
            "kind": refusal.kind.value if refusal.kind is not None else "plugin",
            "version": refusal.version,
            "distribution": refusal.distribution,
            "plugin": refusal.plugin,
            "description": "",
            "api": None,
            "refused": refusal.reason,
            "requires": [],
            "extra": None,
            "missing": [],
            "needs": "-",
        }
        for refusal in registry.refused
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        usable = [r for r in rows if r["refused"] is None]
        columns = ("name", "kind", "api", "version", "distribution", "needs", "description")
        widths = {c: max([len(c)] + [len(str(r[c] or "-")) for r in usable]) for c in columns}
        print(f"plugin API of this gateway: {PLUGIN_API_VERSION}")
        print("  ".join(c.upper().ljust(widths[c]) for c in columns))
        for r in usable:
            print("  ".join(str(r[c] or "-").ljust(widths[c]) for c in columns))
    for refusal in registry.refused:
        print(f"patgw: refused {refusal}", file=sys.stderr)
    return 1 if registry.refused else 0


def _cmd_model(args: argparse.Namespace) -> int:
    return run_model_args(args, build_registry())


def _cmd_export(args: argparse.Namespace) -> int:
    config = read_config(args.config)
    since = None
    if args.since:
        try:
            since = parse_iso_ns(args.since)
        except ValueError as exc:
            return _errors([f"--since: not an ISO 8601 time: {args.since!r} ({exc})"])
    if not config.store.path.exists():
        return _errors(
            [f"store.path: {config.store.path} does not exist (has the gateway run with it?)"]
        )
    store = SampleStore(config.store.path, read_only=True)
    origin = f"PAT Gateway {_version()}, {config.site}/{config.area}"
    try:
        # One snapshot: a gateway pruning meanwhile can neither hide a sample nor show it twice.
        with store.snapshot():
            if args.include_archive:
                samples = _with_archive(config, store, args.signal, since)
            else:
                samples = store.samples(args.signal, since)
            writer = FORMATS[args.format]
            devices = DeviceHistory(
                store.identities(), {s.id: s.instrument for s in store.signals()}
            )
            if args.output:
                try:
                    with args.output.open("w", encoding="utf-8", newline="") as out:
                        result = writer(samples, out, origin, devices=devices)
                except BaseException:
                    args.output.unlink(missing_ok=True)  # no half-written file that looks complete
                    raise
            else:
                result = writer(samples, sys.stdout, origin, devices=devices)
    finally:
        store.close()
    what = "spectra" if args.format == "jcamp" else "samples"
    for why, count in result.skipped.items():
        print(f"patgw: skipped {count} {why}", file=sys.stderr)
    if args.format == "jcamp" and not result.written:
        if args.output:
            args.output.unlink(missing_ok=True)  # no empty file that looks like an export
        which = f" of signals matching {args.signal!r}" if args.signal else ""
        return _errors([f"--format jcamp: no spectra{which} in {config.store.path}"])
    if args.output:
        print(f"{result.written} {what} written to {args.output}", file=sys.stderr)
    return 0


def _cmd_backup(args: argparse.Namespace) -> int:
    config = read_config(args.config)
    if not config.store.path.exists():
        return _errors([f"store.path: {_absolute(config.store.path)} does not exist"])
    try:
        result = backup_store(config.store.path, args.output, replace=args.force)
    except FileExistsError:
        return _errors([f"{args.output} exists; --force replaces it"])
    except (ValueError, OSError) as exc:  # the store itself, a folder, no such folder
        return _errors([f"{args.output}: {exc}"])
    print(
        f"{_absolute(config.store.path)} copied to {args.output} ({result.size_bytes} bytes,"
        f" schema {result.schema_version}, integrity_check ok)",
        file=sys.stderr,
    )
    return 0


def _absolute(path: Path) -> Path:
    return path if path.is_absolute() else Path.cwd() / path


def _with_archive(
    config: GatewayConfig, store: SampleStore, signal_glob: str | None, since: int | None
) -> Iterator[Sample]:
    """The archived samples (every file checked first), then those still in the store."""
    runs = store.archived_runs()
    archive = config.store.budget.archive if config.store.budget is not None else None
    if runs and archive is None:
        raise GatewayError(
            f"{len(runs)} archive files are recorded in {config.store.path}, but the"
            " configuration has no store.budget.archive.path to find them in"
        )
    files = []
    for run in runs:
        assert archive is not None
        path = archive.path / run.file
        try:
            digest, size = file_sha256(path)
        except OSError as exc:
            raise GatewayError(
                f"archive file {path} (samples {run.first_id}..{run.last_id}) cannot be read: {exc}"
            ) from exc
        if digest != run.sha256 or size != run.size:
            raise GatewayError(
                f"archive file {path} does not match its record: SHA-256 {digest} ({size} bytes),"
                f" recorded {run.sha256} ({run.size} bytes)"
            )
        files.append(path)
    above = store.pruned_through()
    for path in files:
        yield from read_archive(path, signal_glob, since)
    yield from store.samples(signal_glob, since, above_id=above)


def _cmd_hash_password(args: argparse.Namespace) -> int:
    # Never from the command line: it would sit in the shell history and the process list.
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            return _errors(["the two passwords differ"])
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        print(hash_password(password))
    except ValueError as exc:
        return _errors([str(exc)])
    return 0


def _cmd_emulate(args: argparse.Namespace) -> int:
    configure_logging(args.log_format or "console", args.log_level or "info")
    registration = build_registry().get(PluginKind.EMULATOR, args.name)
    if registration is None:
        known = ", ".join(build_registry().names(PluginKind.EMULATOR)) or "none"
        return _errors(
            [
                f"unknown emulator {args.name!r} (known: {known}); this repository's come in"
                " the distribution pat-gateway-emulators (docs/install.md)"
            ]
        )
    missing = registration.missing()
    if missing:
        text = missing_text(registration, missing, registration.extra)
        return _errors([f"emulator {args.name!r} {text}"])
    raw: dict[str, Any] = {"host": args.host}
    if args.port is not None:
        raw["port"] = args.port
    if args.serial:
        if "serial" not in registration.options_model.model_fields:
            return _errors([f"--serial: emulator {args.name!r} has no serial-line mode"])
        raw["serial"] = True
    for item in args.option:
        key, sep, text = item.partition("=")
        if not sep or not key:
            return _errors([f"--option {item!r}: write KEY=VALUE"])
        try:
            raw[key] = load_yaml(text)
        except yaml.YAMLError as exc:
            return _errors([f"--option {key}: invalid YAML value: {exc}"])
    try:
        # Paths given on the command line are the shell's: relative to the working directory.
        options = registration.options_model.model_validate(
            raw, context=validation_context(Path.cwd())
        )
    except ValidationError as exc:
        return _errors(
            [f"{format_loc(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)]
        )
    emulator = registration.factory(options, PluginContext(args.name, Path("data").absolute()))

    async def main() -> int:
        stop = asyncio.Event()
        restore_handlers = _install_stop_handlers(stop)
        try:
            await emulator.__aenter__()
        except OSError as exc:
            restore_handlers()
            print(f"patgw: emulator {args.name!r} cannot start: {exc}", file=sys.stderr)
            return 1
        try:
            endpoint = getattr(emulator, "endpoint", None)
            if endpoint is None:
                endpoint = f"{args.host}:{getattr(emulator, 'port', args.port)}"
            log.info("emulator.running", emulator=args.name, endpoint=endpoint)
            # On stdout alone, so a script can read where to connect (a pty path differs per run).
            print(endpoint, flush=True)
            with suppress(TimeoutError):
                async with asyncio.timeout(args.duration):
                    await stop.wait()
        finally:
            restore_handlers()
            await emulator.__aexit__(None, None, None)
        return 0

    return asyncio.run(main())


_COMMANDS = {
    "run": _cmd_run,
    "check": _cmd_check,
    "schema": _cmd_schema,
    "plugins": _cmd_plugins,
    "export": _cmd_export,
    "backup": _cmd_backup,
    "emulate": _cmd_emulate,
    "hash-password": _cmd_hash_password,
    "write": cmd_write,
    "command": cmd_command,
    "audit": run_audit,
    "model": _cmd_model,
    "service": run_service,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``patgw`` program."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Loading plugins may log (a refused plugin, one without an API version) before the parser
    # has run: to standard error, in the format asked for, never into a command's output.
    log_format = _early_option(argv, "--log-format", ("console", "json"))
    log_level = _early_option(argv, "--log-level", ("debug", "info", "warning", "error"))
    configure_logging(log_format or "console", log_level or "warning")
    try:
        commands = _plugin_commands(argv)
    except GatewayError as exc:  # a plugin that cannot load
        print(f"patgw: {exc}", file=sys.stderr)
        return 1
    args = _parser(commands).parse_args(argv)
    if args.command != "run":
        configure_logging(args.log_format or "console", args.log_level or "warning")
    try:
        handler = getattr(args, "plugin_handler", None)
        if handler is not None:
            registration = args.plugin_registration
            missing = registration.missing()
            if missing:
                text = missing_text(registration, missing, registration.extra)
                return _errors([f"patgw {registration.name}: {text}"])
            return int(handler(args))
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        return _errors(exc.problems)
    except GatewayError as exc:
        print(f"patgw: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error of ours. Silence the final flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ExceptionGroup as group:
        matched, rest = group.split(GatewayError)
        if rest is None and matched is not None:  # e.g. a sink that cannot start, in a group
            for error in matched.exceptions:
                print(f"patgw: {error}", file=sys.stderr)
            return 1
        log.exception("patgw.internal_error", error=repr(group))
        print(f"patgw: internal error: {group!r} (details above)", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: say so in one line, with the details in the log
        log.exception("patgw.internal_error", error=repr(exc))
        print(f"patgw: internal error: {exc!r} (details above)", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        log.error("patgw.internal_error", error=repr(group), exc_info=group)
        print(f"patgw: internal error: {group!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
