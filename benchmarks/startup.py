"""Start-up: from ``patgw run`` to the first committed sample, and to ready. Prints JSON.

    python benchmarks/startup.py                          # demo.yaml and demo-mqtt.yaml, 5 runs
    python benchmarks/startup.py --configs demo.yaml --runs 3
    python benchmarks/startup.py --patgw /path/to/.venv/bin/patgw   # another checkout's gateway

What is timed. In a plant the instruments are separate devices that are already running when
the gateway (re)starts; here they are the demo's emulators. Each configuration is split in two:
its ``emulators:`` go into a configuration of their own, run once by a separate ``patgw run``
for the whole benchmark, and the rest (instruments, processors, sinks, the HTTP endpoint,
users, writes) is the gateway under test, pointed at them. Both are copies of the shipped file
in a temporary folder, moved to free loopback ports (the demo's fixed ports may be in use).
``configs/demo.yaml`` has the OPC UA server sink, ``demo-mqtt.yaml`` has it and the MQTT sink
(a Mosquitto is started on a free port and given as ``MQTT_URL``).

Each run starts ``patgw run GATEWAY.yaml --no-view --log-format json`` as a subprocess, as a
service manager would, and measures from just before the process is spawned:

- ``first_sample_s``: until the store holds a sample committed by this run (the sample table
  polled every 5 ms on a read-only connection; the store is the same across runs, as for a
  restarted gateway, so the first run of each configuration is a warm-up: it creates the store,
  the audit trail and the OPC UA server's certificate);
- ``ready_s``: until ``/health/ready`` answers 200 (polled every 20 ms): the store commits,
  the instruments run and every sink has started;
- ``events_s``: when the gateway logged its first line (its imports and the configuration are
  done by then), ``gateway.started``, each ``sink.started`` and each ``instrument.connected``
  (from the log's own time stamps);
- ``stop_s``: from SIGTERM, sent once ready and one more second has passed, until the process
  exited, with its exit code.

The medians over the runs are reported with each run's figures. Figures taken while other work
shares the machine are upper bounds: ``cpu_s`` (user + system CPU of the gateway process until
ready) is the less disturbed one to compare two versions by.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.005
HEALTH_POLL_S = 0.02
TARGET_FIRST_SAMPLE_S = 2.0


def log(message: str) -> None:
    print(f"[startup] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def default_patgw() -> str:
    beside = Path(sys.executable).parent / "patgw"
    if beside.exists():
        return str(beside)
    found = shutil.which("patgw")
    if found is None:
        raise SystemExit("patgw not found: give --patgw")
    return found


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto")
    if found is None and os.access("/usr/sbin/mosquitto", os.X_OK):
        found = "/usr/sbin/mosquitto"
    if found is None:
        raise SystemExit("mosquitto not found: install it (apt-get install mosquitto)")
    return found


def split_config(name: str, folder: Path) -> tuple[Path, Path, int]:
    """configs/``name`` on free ports, split into an emulators-only configuration and the
    gateway's, both in ``folder/configs`` (the shipped models beside them, data in
    ``folder/data``); returns both paths and the gateway's HTTP port."""
    text = (REPO / "configs" / name).read_text(encoding="utf-8")
    for fixed in ("15020", "14840", "14841", "15023", "14851"):
        text = text.replace(fixed, str(free_port()))
    text = text.replace("port: 4840", f"port: {free_port()}")
    http_port = free_port()
    for fixed in ("port: 9180", "port: 9181"):
        text = text.replace(fixed, f"port: {http_port}")
    config = yaml.safe_load(text)
    configs = folder / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        (configs / "models").symlink_to(REPO / "configs" / "models")
    emulators = {
        "version": config["version"],
        "site": config["site"],
        "area": "emulators",
        "data_dir": config.get("data_dir", "../data"),
        "store": {"path": "../data/emulators.sqlite"},
        "emulators": config.get("emulators", []),
        "instruments": [],
    }
    gateway = {k: v for k, v in config.items() if k != "emulators"}
    emu_path = configs / f"emulators-{name}"
    gw_path = configs / name
    emu_path.write_text(yaml.safe_dump(emulators, sort_keys=False), encoding="utf-8")
    gw_path.write_text(yaml.safe_dump(gateway, sort_keys=False), encoding="utf-8")
    return emu_path, gw_path, http_port


class Process:
    """A ``patgw run`` (or any command) with its output in a file."""

    def __init__(self, argv: list[str], out: Path, env: dict[str, str]) -> None:
        self.out = out
        self.started = time.time()
        self.t0 = time.monotonic()
        with out.open("wb") as sink:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env
            )

    def text(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def wait_for_line(self, needle: str, within: float) -> None:
        deadline = time.monotonic() + within
        while needle not in self.text():
            if self.popen.poll() is not None:
                raise RuntimeError(f"exited ({self.popen.returncode}): {self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {needle!r} within {within} s: {self.text()[-3000:]}")
            time.sleep(0.05)

    def stop(self, within: float = 30.0) -> tuple[float, int]:
        """SIGTERM; seconds until it exited (killed after ``within``) and its exit code."""
        if self.popen.poll() is not None:
            return 0.0, self.popen.returncode
        t = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(within)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
        return time.monotonic() - t, code


def last_sample_id(store: Path) -> int | None:
    """The highest sample id in the store, None if it cannot be read (yet)."""
    if not store.exists():
        return None
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=0.5)
        ) as db:
            row = db.execute("SELECT max(id) FROM sample").fetchone()
    except sqlite3.Error:
        return None
    return int(row[0]) if row and row[0] is not None else 0


def ready(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
    try:
        connection.request("GET", "/health/ready")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def events(text: str, started_wall: float) -> dict[str, float]:
    """Seconds from the spawn to the first of each interesting log event."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or "timestamp" not in record:
            continue
        at = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
        event = str(record.get("event"))
        key = None
        if "first_log_line" not in found:
            found["first_log_line"] = round(at - started_wall, 3)
        if event in ("gateway.started", "opcua_server.started", "gateway.stopping"):
            key = event
        elif event == "sink.started":
            key = f"sink.started.{record.get('sink')}"
        elif event == "instrument.connected":
            key = f"instrument.connected.{record.get('instrument')}"
        if key is not None and key not in found:
            found[key] = round(at - started_wall, 3)
    return found


def one_run(
    patgw: str, config: Path, store: Path, port: int, out: Path, env: dict[str, str], limit: float
) -> dict[str, Any]:
    before = last_sample_id(store) or 0
    process = Process([patgw, "run", str(config), "--no-view", "--log-format", "json"], out, env)
    first: float | None = None
    up: float | None = None
    cpu: float | None = None
    next_health = 0.0
    try:
        while first is None or up is None:
            now = time.monotonic() - process.t0
            if process.popen.poll() is not None:
                raise RuntimeError(f"the gateway exited: {process.text()[-3000:]}")
            if now > limit:
                raise RuntimeError(f"not ready within {limit} s: {process.text()[-3000:]}")
            if first is None:
                last = last_sample_id(store)
                if last is not None and last > before:
                    first = time.monotonic() - process.t0
            if up is None and now >= next_health:
                next_health = now + HEALTH_POLL_S
                if ready(port):
                    up = time.monotonic() - process.t0
                    cpu = proc_cpu_s(process.popen.pid)
            time.sleep(POLL_S)
        time.sleep(1.0)
    finally:
        stop_s, code = process.stop()
    text = process.text()
    return {
        "first_sample_s": round(first, 3),
        "ready_s": round(up, 3),
        "cpu_s": cpu,
        "stop_s": round(stop_s, 3),
        "exit_code": code,
        "stop_timeout_logged": "gateway.stop_timeout" in text,
        "events_s": events(text, process.started),
    }


def bench_config(name: str, args: argparse.Namespace, folder: Path, patgw: str) -> dict[str, Any]:
    emu_path, gw_path, port = split_config(name, folder)
    env = dict(os.environ)
    broker: subprocess.Popen[bytes] | None = None
    emulators: Process | None = None
    try:
        if "mqtt" in name:
            broker_port = free_port()
            conf = folder / "mosquitto.conf"
            conf.write_text(
                f"listener {broker_port} 127.0.0.1\nallow_anonymous true\n"
                f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            )
            broker = subprocess.Popen(
                [mosquitto_binary(), "-c", str(conf)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            env["MQTT_URL"] = f"mqtt://127.0.0.1:{broker_port}"
        emulators = Process(
            [patgw, "run", str(emu_path), "--no-view", "--log-format", "json"],
            folder / f"emulators-{name}.log",
            env,
        )
        emulators.wait_for_line("gateway.started", 120)
        gateway = yaml.safe_load(gw_path.read_text())
        store = (gw_path.parent / gateway["store"]["path"]).resolve()
        runs = []
        for i in range(args.warmup + args.runs):
            out = folder / f"{name}-{i}.log"
            result = one_run(patgw, gw_path, store, port, out, env, args.limit_s)
            log(f"{name} run {i}{' (warm-up)' if i < args.warmup else ''}: {result}")
            if i >= args.warmup:
                runs.append(result)
    finally:
        if emulators is not None:
            emulators.stop()
        if broker is not None:
            broker.terminate()
            broker.wait(10)

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 3)

    return {
        "config": f"configs/{name}",
        "runs": len(runs),
        "first_sample_s_median": median("first_sample_s"),
        "ready_s_median": median("ready_s"),
        "cpu_s_until_ready_median": median("cpu_s"),
        "stop_s_median": median("stop_s"),
        "target_first_sample_s": TARGET_FIRST_SAMPLE_S,
        "first_sample_met": median("first_sample_s") <= TARGET_FIRST_SAMPLE_S,
        "per_run": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Time from `patgw run` to the first committed sample and to ready (JSON).",
        epilog=__doc__.split("\n\n", 2)[1] if __doc__ else None,
    )
    parser.add_argument(
        "--configs",
        default="demo.yaml,demo-mqtt.yaml",
        help="comma-separated files of configs/ (default: demo.yaml,demo-mqtt.yaml)",
    )
    parser.add_argument("--runs", type=int, default=5, help="counted runs per config (5)")
    parser.add_argument("--warmup", type=int, default=1, help="runs not counted, first (1)")
    parser.add_argument("--patgw", help="the patgw program to time (default: this venv's)")
    parser.add_argument(
        "--limit-s", type=float, default=60.0, help="give up on a run after this long (60)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    patgw = args.patgw or default_patgw()
    folder = Path(tempfile.mkdtemp(prefix="patgw-startup-"))
    results = []
    try:
        for name in args.configs.split(","):
            results.append(bench_config(name.strip(), args, folder / name.strip(), patgw))
    finally:
        if args.keep:
            log(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "startup",
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_average": os.getloadavg(),
                },
                "patgw": patgw,
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
