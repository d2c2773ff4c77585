"""``patgw`` end to end, in subprocesses: the demo, signals, export, plugins, a vendor's plugin."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jcamp
import pytest
import serial
from conftest import demo_copy, fake_distribution, free_port, patgw, stored_by_signal

from gateway.errors import StoreError

REPO = Path(__file__).resolve().parents[1]


def export_jsonl(config: Path, *extra: str) -> list[dict]:
    result = patgw("export", str(config), "--format", "jsonl", *extra, cwd=config.parent)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_demo_runs_and_exports_contiguous_unit_aware_samples(tmp_path: Path) -> None:
    config, _ = demo_copy(tmp_path)
    duration = 4.0
    result = patgw("run", str(config), "--for", str(duration), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "gateway.stopped" in result.stderr
    samples = export_jsonl(config)
    by_signal: dict[str, list[dict]] = {}
    for s in samples:
        by_signal.setdefault(s["signal"], []).append(s)
    expected_units = {
        "reactor1/feed_pump/flow": "mL/min",
        "reactor1/feed_pump/flow_lph": "L/h",
        "reactor1/feed_pump/speed": "{rev}/min",
        "reactor1/feed_pump/speed_setpoint": "{rev}/min",
        "reactor1/feed_pump/total_volume": "mL",
        "reactor1/feed_pump/running": "1",
        "reactor1/feed_pump/fault_code": "1",
        "reactor1/raman/spectrum": "{counts}",
        "reactor1/raman/integration_time": "ms",
        "reactor1/raman/detector_temperature": "Cel",
        "reactor1/controller/ph": "[pH]",
        "reactor1/controller/ph_setpoint": "[pH]",
        "reactor1/controller/dissolved_oxygen": "%",
        "reactor1/controller/temperature": "Cel",
        "reactor1/controller/agitation": "{rev}/min",
        "reactor1/controller/o2_flow": "L/min",
        "reactor1/controller/base_total": "mL",
        "reactor1/controller/do_low": "1",
        "reactor1/controller/glucose_true": "g/L",
        "reactor1/controller/lactate_true": "g/L",
        "reactor1/softsensor/glucose": "g/L",
        "reactor1/softsensor/glucose_t2": "1",
        "reactor1/softsensor/glucose_q": "1",
        "reactor1/softsensor/lactate": "g/L",
        "reactor1/softsensor/lactate_t2": "1",
        "reactor1/softsensor/lactate_q": "1",
        "reactor1/softsensor/reference_intensity": "{counts}",
    }
    assert {k: v[0]["unit"] for k, v in by_signal.items()} == expected_units
    for signal_id, rows in by_signal.items():
        assert [r["seq"] for r in rows] == list(range(len(rows))), signal_id
        # The pump is read every 0.5 s, the spectrometer every 2 s (500 ms exposures); the
        # controller reports changes only (a setpoint that stays put reports once).
        minimum = duration if "/feed_pump/" in signal_id else 1
        assert len(rows) >= minimum, f"{signal_id}: {len(rows)} samples in {duration} s"
        if "/softsensor/" not in signal_id:  # a prediction may be uncertain (T², Q: its test)
            assert all(r["quality"] == "good" for r in rows), signal_id
        spectral = ["axis"] if signal_id.endswith("/spectrum") else []
        assert list(rows[0]) == [
            *("signal", "value", "unit", *spectral),
            *("source_ts", "gateway_ts", "quality", "seq"),
        ]
    for spectrum in by_signal["reactor1/raman/spectrum"]:
        axis = spectrum["axis"]
        assert len(spectrum["value"]) == len(axis["values"]) >= 1000
        assert axis["unit"] == "cm-1"
        assert min(axis["values"]) <= 400 and max(axis["values"]) >= 1800
    flows = by_signal["reactor1/feed_pump/flow"]
    lph = by_signal["reactor1/feed_pump/flow_lph"]
    assert lph[-1]["value"] == pytest.approx(flows[-1]["value"] * 0.06)
    # The jsonl_file sink got exactly the committed samples.
    sink_lines = (tmp_path / "data" / "demo-samples.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in sink_lines] == samples
    # The spectra as JCAMP-DX, read back by a third-party reader.
    jdx = tmp_path / "raman.jdx"
    args = ["--format", "jcamp", "--signal", "reactor1/raman/spectrum", "-o", str(jdx)]
    result = patgw("export", str(config), *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    parsed = jcamp.readfile(str(jdx))
    blocks = parsed.get("children", [parsed])
    assert len(blocks) == len(by_signal["reactor1/raman/spectrum"])
    assert all(b["data type"] == "RAMAN SPECTRUM" and b["xunits"] == "1/CM" for b in blocks)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_flushes(tmp_path: Path, sig: signal.Signals) -> None:
    config, _ = demo_copy(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--log-format", "json", "run", str(config)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60  # a loaded box: the demo's emulators start first
        store = tmp_path / "data" / "demo.sqlite"
        while not store.exists() or not export_jsonl(config):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "gateway did not commit samples in time"
            time.sleep(0.2)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    stopped = [e for e in events if e["event"] == "gateway.stopped"]
    assert len(stopped) == 1
    # Everything the gateway counted as committed is in the store: the final flush happened.
    assert len(export_jsonl(config)) == stopped[0]["committed"] > 0


def test_check_reports_misspelt_unit_with_its_path(tmp_path: Path) -> None:
    config, _ = demo_copy(tmp_path)
    assert patgw("check", str(config)).returncode == 0
    config.write_text(
        config.read_text().replace("{id: flow, unit: mL/min}", "{id: flow, unit: ml/mn}")
    )
    result = patgw("check", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "instruments[0].signals[0].unit: unknown UCUM unit 'ml/mn'"
    ]


def test_check_warns_on_mqtt_3_but_passes(tmp_path: Path) -> None:
    """MQTT 3.1.1 cannot tell the gateway that a broker refused a message: a warning naming
    the path, exit 0. The shipped demo (MQTT 5) gets none."""
    config, _ = demo_copy(tmp_path, "demo-mqtt.yaml")
    demo = config.read_text()
    result = patgw("check", str(config))
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert 'protocol: "5"' in demo
    config.write_text(config.read_text().replace('protocol: "5"', 'protocol: "3.1.1"'))
    result = patgw("check", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: valid")
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith("warning: sinks[2].options.protocol: MQTT 3.1.1"), warning


def test_schema_is_json_schema_of_the_config() -> None:
    result = patgw("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "GatewayConfig"
    assert {"instruments", "store", "emulators", "sinks"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_plugins_lists_builtins_with_distribution() -> None:
    result = patgw("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.stdout)}
    for key in [("driver", "modbus"), ("sink", "jsonl_file")]:
        assert rows[key]["distribution"] == "pat-gateway"
        assert rows[key]["version"]
    # The emulated instruments are a distribution of their own (firmware_stubs/pyproject.toml).
    assert rows[("emulator", "feed_pump")]["distribution"] == "pat-gateway-emulators"
    assert rows[("driver", "modbus")]["needs"] == "[modbus] installed"
    text = patgw("plugins")
    assert text.returncode == 0 and "modbus" in text.stdout and "DISTRIBUTION" in text.stdout


def test_export_rejects_bad_since_and_filters(tmp_path: Path) -> None:
    config, _ = demo_copy(tmp_path)
    assert patgw("run", str(config), "--for", "2", cwd=tmp_path).returncode == 0
    bad = patgw("export", str(config), "--since", "yesterday", cwd=tmp_path)
    assert bad.returncode == 2 and "--since" in bad.stderr
    everything = export_jsonl(config)
    cut = everything[len(everything) // 2]["source_ts"]
    later = export_jsonl(config, "--since", cut, "--signal", "*/flow")
    assert later and all(s["signal"] == "reactor1/feed_pump/flow" for s in later)
    assert all(s["source_ts"] >= cut for s in later)
    csv_out = patgw("export", str(config), "--format", "csv", "--signal", "*/speed", cwd=tmp_path)
    lines = csv_out.stdout.splitlines()
    assert lines[0] == "signal,value,unit,source_ts,gateway_ts,quality,seq,reason"
    assert len(lines) - 1 == sum(1 for s in everything if s["signal"].endswith("/speed"))


def start_emulator(port: int, *options: str) -> subprocess.Popen[str]:
    """`patgw emulate feed_pump` as a separate process, returned once it accepts connections."""
    args = [sys.executable, "-m", "gateway", "emulate", "feed_pump", "--port", str(port)]
    for option in options:
        args += ["--option", option]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "emulator did not start"
            time.sleep(0.05)


def pump_config(tmp_path: Path, port: int, poll_s: float = 0.1) -> Path:
    config = tmp_path / "g.yaml"
    config.write_text(
        textwrap.dedent(f"""
            area: r9
            store: {{path: {tmp_path / "s.sqlite"}, commit_interval_ms: 50}}
            instruments:
              - id: pump
                driver: modbus
                poll_interval_s: {poll_s}
                backoff: {{initial_s: 0.1, max_s: 0.3}}
                options: {{port: {port}, profile: feed_pump, timeout_s: 0.3}}
                signals: [{{id: flow}}]
        """)
    )
    return config


def quality_runs(samples: list[dict]) -> list[str]:
    runs: list[str] = []
    for s in samples:
        if not runs or runs[-1] != s["quality"]:
            runs.append(s["quality"])
    return runs


def test_emulate_standalone_with_scheduled_fault(tmp_path: Path) -> None:
    """`patgw emulate` with a fault scheduled 4 s after its start: a gateway already polling
    reads good, then the device failure, then good again."""
    port = free_port()
    config = pump_config(tmp_path, port)
    store = tmp_path / "s.sqlite"
    # The gateway first, so that it reads the emulator as soon as it listens: a gateway started
    # after the emulator on a loaded machine may come up after the fault (seen at 4 s).
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", str(config), "--for", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    emulator: subprocess.Popen[str] | None = None

    def runs() -> list[str]:
        if not store.exists():
            return []
        try:
            flows = stored_by_signal(store).get("r9/pump/flow", [])
        except (sqlite3.OperationalError, StoreError):  # its tables not made yet
            return []
        return quality_runs([{"quality": s.quality.name.lower()} for s in flows])

    try:
        deadline = time.monotonic() + 60
        while runs() != ["bad"]:  # polling, nothing listening yet
            assert gateway.poll() is None, gateway.communicate()
            assert time.monotonic() < deadline, f"the gateway never polled: {runs()}"
            time.sleep(0.1)
        schedule = "faults=[{fault: exception_responses, after_s: 4.0, for_s: 1.5}]"
        emulator = start_emulator(port, schedule, "setpoint_rpm=120")
        deadline = time.monotonic() + 60
        while runs() != ["bad", "good", "bad", "good"]:
            assert gateway.poll() is None, gateway.communicate()
            assert time.monotonic() < deadline, f"never saw the fault come and go: {runs()}"
            time.sleep(0.2)
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=30) == 0, gateway.communicate()
        emulator.send_signal(signal.SIGTERM)
        emulator.communicate(timeout=10)
        assert emulator.returncode == 0
    finally:
        for proc in (gateway, emulator):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    samples = export_jsonl(config)
    assert [s["seq"] for s in samples] == list(range(len(samples)))
    # From the first good sample on: the emulator's scheduled fault, and only that.
    first = next(i for i, s in enumerate(samples) if s["quality"] == "good")
    served = samples[first:]
    assert quality_runs(served) == ["good", "bad", "good"]
    assert {s["reason"] for s in served if s["quality"] == "bad"} == {
        "exception 4 (device failure)"
    }
    good = [s["value"] for s in served if s["quality"] == "good"]
    assert good and all(v == pytest.approx(96.0) for v in good)  # 120 rpm x 0.8 mL/rev


def test_emulator_process_killed_and_restarted(tmp_path: Path) -> None:
    """kill -9 of the emulator process mid-run: bad while it is gone, good again after."""
    port = free_port()
    config = pump_config(tmp_path, port)
    emulator = start_emulator(port)
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", str(config), "--for", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def qualities() -> list[str]:
            if not (tmp_path / "s.sqlite").exists():
                return []
            return quality_runs(export_jsonl(config))

        def wait_until(runs: list[str]) -> None:
            deadline = time.monotonic() + 20
            while qualities() != runs:
                assert gateway.poll() is None, gateway.communicate()
                assert time.monotonic() < deadline, f"never saw {runs}: {qualities()}"
                time.sleep(0.2)

        wait_until(["good"])
        emulator.kill()
        emulator.communicate()
        wait_until(["good", "bad"])
        emulator = start_emulator(port)
        wait_until(["good", "bad", "good"])
        gateway.send_signal(signal.SIGTERM)
        _, stderr = gateway.communicate(timeout=20)
        assert gateway.returncode == 0, stderr
    finally:
        for proc in (gateway, emulator):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    samples = export_jsonl(config)
    assert [s["seq"] for s in samples] == list(range(len(samples)))
    assert all(s["reason"].startswith("unreachable:") for s in samples if s["quality"] == "bad")


def test_emulate_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = patgw("emulate", "feed_pump", "--port", str(port), "--for", "1")
    assert result.returncode == 1
    assert "emulator 'feed_pump' cannot start" in result.stderr
    assert "Traceback" not in result.stderr


VENDOR_MODULE = '''
"""A vendor's thermometer driver, written against the public gateway API only."""
from pydantic import BaseModel, ConfigDict
from gateway import Channel, PollingDriver, hookimpl

PAT_GATEWAY_API = "1.0"

class ThermoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start_celsius: float = 20.0

class Thermo(PollingDriver):
    def __init__(self, options, context):
        super().__init__(context)
        self.value = options.start_celsius
    def channels(self):
        return [Channel("temperature", "Cel", description="Probe temperature")]
    async def connect(self):
        pass
    async def poll(self, io):
        io.output("temperature").publish(self.value)
        self.value += 1.0

@hookimpl
def pat_gateway_register_drivers(registry):
    registry.add_driver("thermo", Thermo, ThermoOptions, "Vendor thermometer")
'''


def test_third_party_plugin_discovered_through_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "vendor_thermo.py").write_text(VENDOR_MODULE)
    env = fake_distribution(site, "vendor-thermo", "1.2.3", {"thermo": "vendor_thermo"})

    listing = json.loads(patgw("plugins", "--json", env=env).stdout)
    thermo = [r for r in listing if r["name"] == "thermo"]
    assert thermo == [
        {
            "name": "thermo",
            "kind": "driver",
            "version": "1.2.3",
            "distribution": "vendor-thermo",
            "plugin": "thermo",
            "description": "Vendor thermometer",
            "api": "1.0",
            "refused": None,
            "requires": [],
            "extra": None,
            "missing": [],
            "needs": "-",
        }
    ]

    config = tmp_path / "vendor.yaml"
    config.write_text(
        textwrap.dedent(f"""
        area: lab
        store: {{path: {tmp_path / "v.sqlite"}, commit_interval_ms: 20}}
        instruments:
          - id: probe
            driver: thermo
            poll_interval_s: 0.05
            options: {{start_celsius: 0}}
            signals: [{{id: temperature, unit: "[degF]"}}]
    """)
    )
    run = patgw("run", str(config), "--for", "1", env=env)
    assert run.returncode == 0, run.stderr
    samples = export_jsonl(config)
    assert samples[0]["unit"] == "[degF]"
    # 0, 1, 2 °C published → 32, 33.8, 35.6 °F stored
    assert [round(s["value"], 6) for s in samples[:3]] == [32.0, 33.8, 35.6]

    blocked = patgw("plugins", "--json", env={**env, "PATGW_DISABLE_PLUGINS": "thermo"})
    assert "thermo" not in {r["name"] for r in json.loads(blocked.stdout)}


def test_emulator_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    config, port = demo_copy(tmp_path)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        result = patgw("run", str(config), "--for", "1", cwd=tmp_path)
    assert result.returncode == 1
    assert "emulator 'pump_emulator' (feed_pump) cannot start" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "damage",
    [b"this is not a database" * 100, b"SQLite format 3\x00" + b"\xff" * 4000],
    ids=["garbage", "truncated-header"],
)
def test_corrupted_store_is_a_clear_error(tmp_path: Path, damage: bytes) -> None:
    config, _ = demo_copy(tmp_path)
    store = tmp_path / "data" / "demo.sqlite"
    store.parent.mkdir()
    store.write_bytes(damage)
    result = patgw("run", str(config), "--for", "1", cwd=tmp_path)
    assert result.returncode == 1
    assert "store error while opening" in result.stderr
    assert "Traceback" not in result.stderr
    assert store.read_bytes() == damage  # evidence left untouched


def test_broken_plugin_is_a_clear_error(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken_vendor.py").write_text("raise ImportError('vendor SDK missing')\n")
    env = fake_distribution(site, "broken-vendor", "0.1", {"broken": "broken_vendor"})
    result = patgw("plugins", env=env)
    # Refused, by name and distribution; the other plugins are listed (and load).
    assert result.returncode == 1
    assert "patgw: refused plugin 'broken' (broken-vendor 0.1): cannot load" in result.stderr
    assert "broken = broken_vendor: ImportError('vendor SDK missing')" in result.stderr
    assert "modbus" in result.stdout
    # The operator can rule it out without uninstalling it.
    ok = patgw("plugins", "--json", env={**env, "PATGW_DISABLE_PLUGINS": "broken"})
    assert ok.returncode == 0
    assert "modbus" in ok.stdout


def test_emulate_raman_on_a_serial_line_prints_the_device_to_open() -> None:
    args = [sys.executable, "-m", "gateway", "emulate", "raman", "--serial", "--for", "20"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/"), (path, proc.stderr.read() if proc.stderr else "")
        # A host opens it like any serial device and gets an OBP reply (serial number query:
        # header with message type 0x100, no data, footer).
        header = struct.pack("<HHHHII6sBB16sI", 0xC0C1, 0x1100, 0, 0, 0x100, 7, b"", 0, 0, b"", 20)
        with serial.Serial(path, 115200, timeout=5) as port:
            port.write(header + bytes(16) + struct.pack("<I", 0xC2C3C4C5))
            reply = port.read(64)
        assert reply[:2] == b"\xc1\xc0" and b"EMU-RAMAN" in reply
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_emulate_serial_needs_an_emulator_with_a_serial_line() -> None:
    result = patgw("emulate", "feed_pump", "--serial", "--for", "1")
    assert result.returncode == 2
    assert "--serial: emulator 'feed_pump' has no serial-line mode" in result.stderr


VENDOR_COMMAND = """
from gateway import hookimpl

PAT_GATEWAY_API = "1.0"

def configure(parser):
    parser.add_argument("--name", required=True)
    parser.add_argument("--fail", action="store_true")

    def handler(args):
        if args.fail:
            print("hello: told to fail", file=__import__("sys").stderr)
            return 2
        print(f"hello {args.name}")
        return 0

    return handler

@hookimpl
def pat_gateway_register_commands(registry):
    registry.add_command("hello", configure, "Greets")
"""

VENDOR_RUN = """
from gateway import hookimpl

@hookimpl
def pat_gateway_register_commands(registry):
    registry.add_command("run", lambda parser: None, "Tries to replace patgw run")
"""


def test_a_plugin_adds_a_command_and_cannot_replace_a_built_in_one(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "vendor_hello.py").write_text(VENDOR_COMMAND)
    env = fake_distribution(site, "vendor-hello", "0.2", {"hello": "vendor_hello"})

    ok = patgw("hello", "--name", "operator", env=env)
    assert (ok.returncode, ok.stdout) == (0, "hello operator\n"), ok.stderr
    # The options a command gets after its name, as the built-in ones do.
    assert patgw("hello", "--name", "x", "--log-level", "error", env=env).returncode == 0
    failed = patgw("hello", "--name", "x", "--fail", env=env)
    assert (failed.returncode, failed.stderr) == (2, "hello: told to fail\n")
    usage = patgw("hello", env=env)
    assert usage.returncode == 2 and "--name" in usage.stderr
    listing = json.loads(patgw("plugins", "--json", env=env).stdout)
    assert ("hello", "command") in {(r["name"], r["kind"]) for r in listing}
    unknown = patgw("nosuch", env=env)
    assert unknown.returncode == 2 and "invalid choice: 'nosuch'" in unknown.stderr

    (site / "vendor_run.py").write_text(VENDOR_RUN)
    env = fake_distribution(site, "vendor-run", "0.1", {"vendor_run": "vendor_run"})
    refused = patgw("plugins", env=env)
    assert refused.returncode == 1
    assert refused.stderr.endswith(
        "patgw: refused plugin 'vendor_run' (vendor-run 0.1): command 'run' is built into patgw\n"
    )


def test_the_registry_reserves_exactly_the_built_in_commands() -> None:
    from gateway.cli import _COMMANDS
    from gateway.registry import BUILT_IN_COMMANDS

    assert set(_COMMANDS) == BUILT_IN_COMMANDS
