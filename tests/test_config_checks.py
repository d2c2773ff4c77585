"""Issue 12, items 6 and 11: operators' mistakes caught by ``patgw check`` (exit 2, naming the
path), and relative paths that mean the same files whatever the working directory.

* an ``env:`` secret whose variable is unset or empty: ``check`` and ``run`` exit 2 naming the
  option's path and the variable, as an unset ``${VAR}`` already did;
* a key given twice in one YAML mapping (a pasted second ``store:`` block): refused with both
  line numbers, in a config file, in a ``--option`` of ``patgw emulate`` and in a profile;
* ``--for`` that is not a finite number of seconds above 0: a usage error, exit 2;
* relative paths in a config (the store, ``data_dir``, every plugin path option) resolve
  against the config file's folder, so a service started in another directory finds them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port, patgw, pump_instrument, stored_by_signal, write_config
from pydantic import BaseModel, ConfigDict

import gateway
from gateway import (
    Channel,
    ConfigError,
    ConfigPath,
    PluginContext,
    PluginKind,
    Registry,
    Secret,
    SecretRef,
    SerialPort,
    build_registry,
    load_plan,
    load_yaml,
    validation_context,
)
from gateway.loader import read_config

REPO = Path(__file__).resolve().parents[1]
SECRET = "PATGW_TEST_CHECK_SECRET"


def without(*names: str, **extra: str) -> dict[str, str]:
    """The environment of a ``patgw`` subprocess, without ``names``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in names}
    return {**env, **extra}


# --- item 6: secrets ------------------------------------------------------------------------


def secret_config(folder: Path) -> Path:
    """An OPC UA instrument and an MQTT sink, both logging in with the password in SECRET."""
    folder.mkdir(parents=True, exist_ok=True)
    login = {"username": "gw", "password": f"env:{SECRET}"}
    node = {"name": "t", "node": "ctl:Reactor.Temperature", "unit": "Cel"}
    return write_config(
        folder / "gateway.yaml",
        {
            "area": "r1",
            "instruments": [
                {
                    "id": "controller",
                    "driver": "opcua",
                    "options": {
                        "url": f"opc.tcp://127.0.0.1:{free_port()}",
                        "namespaces": {"ctl": "urn:test"},
                        "nodes": [node],
                        **login,
                    },
                }
            ],
            "sinks": [
                {
                    "id": "upstream",
                    "type": "mqtt",
                    "options": {"url": f"mqtt://127.0.0.1:{free_port()}", **login},
                }
            ],
        },
    )


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize(("value", "state"), [(None, "not set"), ("", "empty")])
def test_an_unset_or_empty_secret_stops_check_and_run(
    tmp_path: Path, command: str, value: str | None, state: str
) -> None:
    config = secret_config(tmp_path / "site")
    env = without(SECRET) if value is None else without(SECRET, **{SECRET: value})
    extra = ["--for", "3", "--no-view"] if command == "run" else []
    result = patgw(command, str(config), *extra, env=env, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert result.stderr.splitlines() == [
        f"instruments[0].options.password: environment variable {SECRET} is {state}",
        f"sinks[0].options.password: environment variable {SECRET} is {state}",
    ]
    assert not (tmp_path / "site" / "data").exists()  # nothing ran


def test_a_set_secret_passes_check(tmp_path: Path) -> None:
    result = patgw("check", str(secret_config(tmp_path)), env=without(SECRET, **{SECRET: "pw"}))
    assert result.returncode == 0, result.stderr
    assert "valid (1 instrument, 0 processors, 1 signal, 0 emulators, 1 sink)" in result.stdout


def test_an_empty_secret_is_refused_when_read_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin reading its secret later (at connect) gets the same reason, not an empty
    password sent to the device."""
    monkeypatch.setenv(SECRET, "")
    with pytest.raises(KeyError, match=f"environment variable {SECRET} is empty"):
        SecretRef(SECRET).get()
    monkeypatch.setenv(SECRET, "pw")
    assert SecretRef(SECRET).get() == "pw"


# --- item 6: a key given twice ----------------------------------------------------------------


def test_a_store_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "area: r1\nstore:\n  path: first.sqlite\nsite: plant\nstore:\n  path: second.sqlite\n"
    )
    for command in (["check"], ["run", "--for", "3"]):
        result = patgw(*command, str(config), cwd=tmp_path)
        assert (result.returncode, result.stdout) == (2, ""), result.stderr
        assert result.stderr.splitlines() == [
            f"{config}:5:1: invalid YAML: duplicate key 'store': first given on line 2,"
            " again on line 5"
        ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml"]


def test_a_users_block_given_twice_in_plugin_options_is_refused(tmp_path: Path) -> None:
    user = "\n      - {name: %s, password_hash: 'scrypt$16384$8$1$AAAA$AAAA'}"
    text = (
        "area: r1\nsinks:\n  - id: north\n    type: opcua_server\n    options:\n"
        f"     users:{user % 'alice'}\n     port: 4841\n     users:{user % 'bob'}\n"
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as refused:
        read_config(config)
    assert list(refused.value.problems) == [
        f"{config}:9:6: invalid YAML: duplicate key 'users': first given on line 6, again on line 9"
    ]


def test_load_yaml_compares_keys_as_values_and_lets_merged_keys_be_overridden() -> None:
    with pytest.raises(yaml.YAMLError, match="duplicate key 1: first given on line 1"):
        load_yaml("1: a\n0x1: b\n")  # the same int key, spelt twice
    with pytest.raises(yaml.YAMLError, match="duplicate key True"):
        load_yaml("outer:\n  inner: {yes: 1, true: 2}\n")
    # A merge brings defaults in; a key written beside it overrides one: that is no mistake.
    merged = load_yaml("base: &b {x: 1, y: 2}\nitem:\n  <<: *b\n  y: 3\n")
    assert merged == {"base": {"x": 1, "y": 2}, "item": {"x": 1, "y": 3}}
    assert load_yaml("[{a: 1}, {a: 2}]") == [{"a": 1}, {"a": 2}]  # equal keys, two mappings


def test_a_profile_with_a_key_given_twice_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plugins.modbus import profiles

    (tmp_path / "twice.yaml").write_text(
        "description: a pasted map\nword_order: little\nregisters: []\nword_order: big\n"
    )
    monkeypatch.setattr(profiles, "_DIR", tmp_path)
    with pytest.raises(ValueError, match="duplicate key 'word_order': first given on line 2"):
        profiles.load_profile("twice")


def test_an_emulator_option_with_a_key_given_twice_is_refused() -> None:
    fault = "faults=[{fault: exception_responses, after_s: 30, for_s: 1, after_s: 0.1}]"
    result = patgw(
        "emulate", "feed_pump", "--port", str(free_port()), "--for", "2", "--option", fault
    )
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert "--option faults: invalid YAML value" in result.stderr
    assert "duplicate key 'after_s': first given on line 1" in result.stderr


# --- item 6: durations ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "-inf", "0", "soon"])
def test_run_for_a_duration_that_is_no_positive_number_is_a_usage_error(
    tmp_path: Path, value: str
) -> None:
    config = write_config(tmp_path / "gateway.yaml", {"area": "r1"})
    # --for=-inf: argparse takes a separate "-inf" for an option (refused before too)
    given = ["--for", value] if value != "-inf" else [f"--for={value}"]
    result = patgw("run", str(config), *given, "--no-view", cwd=tmp_path, timeout=30)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert "argument --for: " in result.stderr and repr(value) in result.stderr
    assert not (tmp_path / "data").exists()  # it never started


@pytest.mark.parametrize("value", ["-5", "nan"])
def test_emulate_for_a_duration_that_is_no_positive_number_is_a_usage_error(value: str) -> None:
    result = patgw("emulate", "feed_pump", "--port", str(free_port()), "--for", value, timeout=30)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert "argument --for: a duration must be a finite number of seconds above 0" in (
        result.stderr
    )


# --- item 11: paths relative to the config file ----------------------------------------------


def test_a_config_run_from_another_directory_keeps_its_files_beside_it(tmp_path: Path) -> None:
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    config = write_config(
        (site.mkdir() or site) / "gateway.yaml",
        {
            "area": "r1",
            "store": {"path": "data/gw.sqlite", "commit_interval_ms": 20},
            "emulators": [{"id": "pump_emulator", "type": "feed_pump", "options": {"port": port}}],
            "instruments": [pump_instrument("pump", port, signals=[{"id": "flow"}])],
            "sinks": [{"id": "file", "type": "jsonl_file", "options": {"path": "out/s.jsonl"}}],
        },
    )
    result = patgw("run", str(config), "--for", "3", "--no-view", cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(elsewhere.iterdir()) == []  # nothing where the service happened to start
    stored = stored_by_signal(site / "data" / "gw.sqlite")["r1/pump/flow"]
    assert stored and len((site / "out" / "s.jsonl").read_text().splitlines()) == len(stored)
    # export from a third directory reads the same store
    exported = patgw("export", str(config), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert len(exported.stdout.splitlines()) == len(stored)


def test_check_says_where_relative_paths_resolve(tmp_path: Path) -> None:
    site, home = tmp_path / "site", tmp_path / "home"
    home.mkdir()
    config = write_config(
        (site.mkdir() or site) / "gateway.yaml",
        {"area": "r1", "store": {"path": "~/gw.sqlite"}, "data_dir": "../shared"},
    )
    result = patgw("check", "site/gateway.yaml", cwd=tmp_path, env=without(HOME=str(home)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "site/gateway.yaml: valid (0 instruments, 0 processors, 0 signals, 0 emulators, 0 sinks)",
        f"relative paths resolve against {site}",
        f"store: {home / 'gw.sqlite'}",  # ~ is the home folder; absolute paths stay
        f"data_dir: {site / '../shared'}",
        f"audit trail: {home / 'gw.audit.sqlite'}",  # beside the store, named after it
        "users: 0; writable targets: none",
    ]
    assert config.exists() and not (home / "gw.sqlite").exists()  # check creates nothing


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    user: str
    password: Secret


class VendorOptions(BaseModel):
    """A vendor's options: only the public API's types, nothing of the gateway's internals."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: ConfigPath
    certificates: tuple[ConfigPath, ...] = ()
    port: SerialPort = "COM3"
    login: Login | None = None


class VendorDriver:
    def __init__(self, options: VendorOptions, context: PluginContext) -> None:
        self.options = options

    def channels(self) -> list[Channel]:
        return [Channel("x", "1")]

    async def run(self, io: gateway.InstrumentIO) -> None:
        io.connected()


class VendorPlugin:
    @gateway.hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("vendor", VendorDriver, VendorOptions, "A vendor's driver")


def vendor_plan(folder: Path, **options: Any) -> VendorOptions:
    config = write_config(
        folder / "gateway.yaml",
        {"area": "r1", "instruments": [{"id": "v", "driver": "vendor", "options": options}]},
    )
    plan = load_plan(config, build_registry([VendorPlugin()], entry_points=False))
    driver = plan.instruments[0].driver
    assert isinstance(driver, VendorDriver)
    return driver.options


def test_a_vendor_plugin_inherits_config_relative_paths_and_secret_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    options = vendor_plan(
        tmp_path,
        model="models/m.json",
        certificates=["/etc/pki/a.pem", "~/b.pem", "../pki/c.pem"],
        port="data/device.tty",
    )
    assert options.model == tmp_path / "models" / "m.json"
    assert options.certificates == (
        Path("/etc/pki/a.pem"),
        tmp_path / "home" / "b.pem",
        tmp_path / "../pki/c.pem",
    )
    assert options.port == str(tmp_path / "data" / "device.tty")
    for port in ("COM3", "ttyS0", "socket://127.0.0.1:15030", "/dev/ttyUSB0"):
        assert vendor_plan(tmp_path, model="m", port=port).port == port
    # Outside a configuration file (options built in code, or from the command line), a
    # relative path stays relative: to the working directory, as the shell means it.
    assert VendorOptions(model=Path("m.json")).model == Path("m.json")
    in_context = VendorOptions.model_validate(
        {"model": "m.json"}, context=validation_context(tmp_path)
    )
    assert in_context.model == tmp_path / "m.json"

    with pytest.raises(ConfigError) as nobody:
        vendor_plan(tmp_path, model="~patgw_no_such_user/m.json")
    assert list(nobody.value.problems) == [
        "instruments[0].options.model: cannot expand '~patgw_no_such_user/m.json':"
        " Could not determine home directory."
    ]

    monkeypatch.delenv(SECRET, raising=False)
    with pytest.raises(ConfigError) as unset:
        vendor_plan(tmp_path, model="m", login={"user": "u", "password": f"env:{SECRET}"})
    assert list(unset.value.problems) == [
        f"instruments[0].options.login.password: environment variable {SECRET} is not set"
    ]


# Every path option of the built-in plugins: (kind, plugin, options, the resolved paths).
BUILT_IN_PATHS: list[tuple[PluginKind, str, dict[str, Any], list[str]]] = [
    (PluginKind.SINK, "jsonl_file", {"path": "out/s.jsonl"}, ["path"]),
    (
        PluginKind.SINK,
        "mqtt",
        {
            "url": "mqtts://127.0.0.1",
            "tls": {"ca_file": "pki/ca.pem", "cert_file": "pki/c.pem", "key_file": "pki/k.pem"},
        },
        ["tls.ca_file", "tls.cert_file", "tls.key_file"],
    ),
    (
        PluginKind.SINK,
        "opcua_server",
        {"trusted_clients_dir": "pki/trusted"},
        ["trusted_clients_dir"],
    ),
    (
        PluginKind.DRIVER,
        "opcua",
        {
            "url": "opc.tcp://127.0.0.1:4840",
            "security": "Basic256Sha256",
            "certificate": "pki/c.der",
            "private_key": "pki/k.pem",
            "server_certificate": "pki/s.der",
            "nodes": [{"name": "t", "node": "i=2258", "unit": "s"}],
        },
        ["certificate", "private_key", "server_certificate"],
    ),
    (PluginKind.DRIVER, "ocean_obp", {"port": "dev/raman.tty", "axis": "wavelength"}, ["port"]),
    (
        PluginKind.DRIVER,
        "modbus",
        {"transport": "rtu", "serial_port": "dev/pump.tty", "profile": "feed_pump"},
        ["serial_port"],
    ),
    (
        PluginKind.PROCESSOR,
        "pls",
        {"model": "models/m.json", "spectrum": "raman/spectrum"},
        ["model"],
    ),
    (PluginKind.EMULATOR, "raman", {"serial": True, "link": "dev/raman.tty"}, ["link"]),
]


@pytest.mark.parametrize(
    ("kind", "name", "raw", "fields"), BUILT_IN_PATHS, ids=[row[1] for row in BUILT_IN_PATHS]
)
def test_every_built_in_path_option_resolves_against_the_config_folder(
    tmp_path: Path, kind: PluginKind, name: str, raw: dict[str, Any], fields: list[str]
) -> None:
    registration = build_registry().get(kind, name)
    assert registration is not None
    options = registration.options_model.model_validate(raw, context=validation_context(tmp_path))
    for field in fields:
        value: Any = options
        written: Any = raw
        for part in field.split("."):
            value, written = getattr(value, part), written[part]
        assert Path(value) == tmp_path / written, field


def test_the_demo_keeps_its_files_in_the_repository_data_folder() -> None:
    """configs/demo.yaml names ../data/...: the repository's data/, as `scripts/demo` (which
    runs from the repository) always had it, and now from any working directory."""
    plan = load_plan(REPO / "configs" / "demo.yaml", build_registry())
    data = REPO / "data"

    def norm(path: str | Path) -> Path:
        return Path(os.path.normpath(path))  # without following a left-over symlink

    assert norm(plan.config.store.path) == data / "demo.sqlite"
    assert norm(plan.config.data_dir) == data
    jsonl = next(s.instance for s in plan.sinks if s.type == "jsonl_file")
    assert norm(jsonl.path) == data / "demo-samples.jsonl"
    north = next(s.instance for s in plan.sinks if s.type == "opcua_server")
    assert norm(north.trusted_dir) == data / "opcua" / "pki" / "trusted"
    raman = next(e.instance for e in plan.emulators if e.type == "raman")
    assert raman.emulator.link is not None and norm(raman.emulator.link) == data / "raman.tty"
    spectrometer = next(i.driver for i in plan.instruments if i.config.driver == "ocean_obp")
    assert norm(spectrometer.options.port) == data / "raman.tty"
    model = plan.processors[0].processor.options.model
    assert model == REPO / "configs" / "models" / "raman-glucose-lactate.json"
