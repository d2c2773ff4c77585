"""Unit tests for the configuration: schema, loader (paths in every message), secrets, `check`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import gateway
from gateway import (
    Channel,
    ConfigError,
    PluginContext,
    PluginKind,
    Registry,
    Secret,
    SecretRef,
    build_registry,
    load_plan,
)
from gateway.cli import main
from gateway.config import GatewayConfig
from gateway.loader import format_loc, read_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

SECRET_HINT = (
    "secrets come from the environment: write 'env:VARIABLE' or {env: VARIABLE},"
    " never the secret itself"
)


@pytest.fixture(scope="module")
def registry() -> Registry:
    """The installed plugins, found through their entry points."""
    return build_registry()


def write(tmp_path: Path, config: dict[str, Any] | None = None, *, text: str | None = None) -> Path:
    path = tmp_path / "gateway.yaml"
    if text is None:
        text = yaml.safe_dump(config, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def pump(**extra: Any) -> dict[str, Any]:
    """An instrument reading the emulated feed pump through the modbus driver."""
    block: dict[str, Any] = {
        "id": "feed_pump",
        "driver": "modbus",
        "options": {"host": "127.0.0.1", "port": 15020, "profile": "feed_pump"},
    }
    block.update(extra)
    return block


def config(*instruments: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"area": "reactor1", "instruments": list(instruments), **extra}


def problems_of(path: Path, reg: Registry) -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        load_plan(path, reg)
    return list(excinfo.value.problems)


def read_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        read_config(path)
    return list(excinfo.value.problems)


# --- format_loc ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loc", "text"),
    [
        (("instruments", 0, "signals", 2, "unit"), "instruments[0].signals[2].unit"),
        (
            ("instruments", 0, "options", "registers", 3, "type"),
            "instruments[0].options.registers[3].type",
        ),
        (("area",), "area"),
        (("store", "path"), "store.path"),
        ((0,), "[0]"),
        ((0, "id"), "[0].id"),
        (("a", 1, 2), "a[1][2]"),
        ((), "(root)"),
    ],
)
def test_format_loc(loc: Sequence[str | int], text: str) -> None:
    assert format_loc(loc) == text


def test_format_loc_accepts_any_iterable() -> None:
    assert format_loc(iter(["sinks", 1, "type"])) == "sinks[1].type"


# --- read_config: the file's own schema ------------------------------------------------------


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    cfg = read_config(write(tmp_path, {"area": "reactor1"}))
    assert isinstance(cfg, GatewayConfig)
    assert (cfg.version, cfg.site, cfg.area) == (1, "site", "reactor1")
    # Relative to the config file's folder, like every relative path in it.
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.store.path == tmp_path / "data" / "patgw.sqlite"
    assert (cfg.store.commit_interval_ms, cfg.store.synchronous, cfg.store.on_full) == (
        10,
        "normal",
        "drop_newest",
    )
    assert (cfg.logging.format, cfg.logging.level) == ("console", "info")
    assert (cfg.instruments, cfg.emulators, cfg.sinks) == ([], [], [])


def test_instrument_defaults(tmp_path: Path) -> None:
    [inst] = read_config(write(tmp_path, config(pump()))).instruments
    assert inst.enabled is True
    assert inst.poll_interval_s == 1.0
    assert inst.signals is None
    assert (inst.backoff.initial_s, inst.backoff.max_s, inst.backoff.factor) == (0.5, 30.0, 2.0)


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = read_config(write(tmp_path, {"area": "reactor1"}))
    with pytest.raises(ValidationError):
        cfg.area = "other"  # type: ignore[misc]


def test_unknown_ucum_unit_names_its_path_exactly(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        config(
            pump(
                signals=[
                    {"id": "flow"},
                    {"id": "speed"},
                    {"id": "flow_x", "channel": "flow", "unit": "ml/mn"},
                ]
            )
        ),
    )
    assert read_problems(path) == ["instruments[0].signals[2].unit: unknown UCUM unit 'ml/mn'"]


def test_unknown_source_unit_names_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, config(pump(signals=[{"id": "flow", "source_unit": "rpm"}])))
    assert read_problems(path) == ["instruments[0].signals[0].source_unit: unknown UCUM unit 'rpm'"]


@pytest.mark.parametrize(
    ("cfg", "line"),
    [
        ({"area": "reactor1", "colour": "red"}, "colour: Extra inputs are not permitted"),
        (config(pump(colour="red")), "instruments[0].colour: Extra inputs are not permitted"),
        (
            config(pump(signals=[{"id": "flow"}, {"id": "speed", "scale": 2}])),
            "instruments[0].signals[1].scale: Extra inputs are not permitted",
        ),
        (
            {"area": "reactor1", "store": {"file": "x.sqlite"}},
            "store.file: Extra inputs are not permitted",
        ),
        (
            {"area": "reactor1", "sinks": [{"id": "s", "type": "jsonl_file", "path": "x"}]},
            "sinks[0].path: Extra inputs are not permitted",
        ),
    ],
)
def test_extra_fields_are_forbidden_with_their_path(
    tmp_path: Path, cfg: dict[str, Any], line: str
) -> None:
    assert read_problems(write(tmp_path, cfg)) == [line]


def test_missing_area(tmp_path: Path) -> None:
    assert read_problems(write(tmp_path, {"site": "x"})) == ["area: Field required"]


@pytest.mark.parametrize(
    ("cfg", "prefix"),
    [
        ({"area": "reactor1", "version": 2}, "version: "),
        ({"area": "bad area"}, "area: "),
        (config(pump(id="-pump")), "instruments[0].id: "),
        (config(pump(poll_interval_s=0)), "instruments[0].poll_interval_s: "),
        (config(pump(backoff={"jitter": 2})), "instruments[0].backoff.jitter: "),
        ({"area": "reactor1", "store": {"commit_interval_ms": 0}}, "store.commit_interval_ms: "),
        ({"area": "reactor1", "store": {"synchronous": "off"}}, "store.synchronous: "),
        ({"area": "reactor1", "logging": {"level": "trace"}}, "logging.level: "),
        ({"area": "reactor1", "emulators": [{"id": "e"}]}, "emulators[0].type: "),
    ],
)
def test_schema_errors_name_their_path(tmp_path: Path, cfg: dict[str, Any], prefix: str) -> None:
    [line] = read_problems(write(tmp_path, cfg))
    assert line.startswith(prefix)
    assert len(line) > len(prefix)


def test_model_validator_message_has_no_pydantic_prefix(tmp_path: Path) -> None:
    path = write(tmp_path, config(pump(backoff={"initial_s": 5, "max_s": 1})))
    assert read_problems(path) == ["instruments[0].backoff: max_s must be at least initial_s"]


def test_duplicate_instrument_ids_are_rejected(tmp_path: Path) -> None:
    [line] = read_problems(write(tmp_path, config(pump(), pump())))
    assert line == "instruments[1].id: duplicate instrument id 'feed_pump'"


@pytest.mark.parametrize(
    ("section", "item", "what"),
    [
        ("sinks", {"id": "s", "type": "jsonl_file", "options": {"path": "a"}}, "sink id 's'"),
        ("emulators", {"id": "e", "type": "feed_pump"}, "emulator id 'e'"),
    ],
)
def test_duplicate_component_ids_are_rejected(
    tmp_path: Path, section: str, item: dict[str, Any], what: str
) -> None:
    [line] = read_problems(write(tmp_path, {"area": "reactor1", section: [item, item]}))
    assert line.endswith(f"duplicate {what}")


def test_same_id_in_different_sections_is_fine(tmp_path: Path) -> None:
    cfg = config(pump(), emulators=[{"id": "feed_pump", "type": "feed_pump"}])
    assert read_config(write(tmp_path, cfg)).emulators[0].id == "feed_pump"


def test_duplicate_signal_ids_name_the_second_one(tmp_path: Path) -> None:
    path = write(tmp_path, config(pump(signals=[{"id": "flow"}, {"id": "flow", "unit": "L/h"}])))
    assert read_problems(path) == ["instruments[0].signals[1].id: duplicate signal id 'flow'"]


def test_every_schema_problem_is_reported_at_once(tmp_path: Path) -> None:
    cfg = {
        "area": "reactor1",
        "colour": "red",
        "instruments": [pump(signals=[{"id": "flow", "unit": "ml/mn"}])],
        "store": {"commit_interval_ms": 0},
    }
    with pytest.raises(ConfigError) as excinfo:
        read_config(write(tmp_path, cfg))
    problems = excinfo.value.problems
    assert len(problems) == 3
    assert "instruments[0].signals[0].unit: unknown UCUM unit 'ml/mn'" in problems
    assert "colour: Extra inputs are not permitted" in problems
    assert any(p.startswith("store.commit_interval_ms: ") for p in problems)
    assert str(excinfo.value) == "\n".join(problems)


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("area: reactor1\n\tsite: x\n", 2, 1),
        ("area: reactor1\ninstruments:\n  - id: a\n   driver: b\n", 4, 4),
    ],
)
def test_invalid_yaml_reports_line_and_column(
    tmp_path: Path, text: str, line: int, column: int
) -> None:
    path = write(tmp_path, text=text)
    [problem] = read_problems(path)
    assert problem.startswith(f"{path}:{line}:{column}: invalid YAML: ")


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text=text)
    assert read_problems(path) == [f"{path}: the top level must be a mapping of settings"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    [problem] = read_problems(path)
    assert problem.startswith(f"{path}: cannot read: ")


# --- load_plan with the installed plugins ----------------------------------------------------


def test_installed_plugins_are_registered(registry: Registry) -> None:
    assert "modbus" in registry.names(PluginKind.DRIVER)
    assert "feed_pump" in registry.names(PluginKind.EMULATOR)
    assert "jsonl_file" in registry.names(PluginKind.SINK)


def test_demo_config_loads_pump_and_raman_on_one_process(registry: Registry) -> None:
    path = REPO / "configs" / "demo.yaml"
    plan = load_plan(path, registry)
    assert plan.source == path
    assert plan.config.area == "reactor1"
    assert [ip.config.id for ip in plan.instruments] == ["feed_pump", "controller", "raman"]
    assert [(c.id, c.type) for c in plan.emulators] == [
        ("reactor", "bioreactor"),
        ("pump_emulator", "feed_pump"),
        ("raman_emulator", "raman"),
    ]
    assert [c.config.options["process"] for c in plan.emulators[1:]] == ["reactor", "reactor"]
    sinks = [(c.id, c.type) for c in plan.sinks]
    assert sinks == [("jsonl", "jsonl_file"), ("opcua", "opcua_server")]
    signals = plan.signals
    assert len(signals) == 27  # the soft sensor's 6 and its reference_intensity
    assert [(s.id, s.unit) for s in signals[7:10]] == [
        ("reactor1/controller/ph", "[pH]"),
        ("reactor1/controller/ph_setpoint", "[pH]"),
        ("reactor1/controller/dissolved_oxygen", "%"),
    ]
    assert [(s.id, s.unit) for s in signals[15:17]] == [
        ("reactor1/controller/glucose_true", "g/L"),
        ("reactor1/controller/lactate_true", "g/L"),
    ]
    # The soft sensor's signals come after the instruments', in its model's target order.
    assert [(p.config.id, p.config.type) for p in plan.processors] == [("softsensor", "pls")]
    assert [(s.id, s.unit, s.instrument) for s in signals[20:]] == [
        (f"reactor1/softsensor/{name}", unit, "softsensor")
        for target in ("glucose", "lactate")
        for name, unit in ((target, "g/L"), (f"{target}_t2", "1"), (f"{target}_q", "1"))
    ] + [("reactor1/softsensor/reference_intensity", "{counts}", "softsensor")]
    signals = [*signals[:7], *signals[17:20]]
    assert [(s.id, s.unit, s.kind.value) for s in signals[7:]] == [
        ("reactor1/raman/spectrum", "{counts}", "spectrum"),
        ("reactor1/raman/integration_time", "ms", "scalar"),
        ("reactor1/raman/detector_temperature", "Cel", "scalar"),
    ]
    assert [(s.id, s.unit) for s in signals[:7]] == [
        ("reactor1/feed_pump/flow", "mL/min"),
        ("reactor1/feed_pump/flow_lph", "L/h"),
        ("reactor1/feed_pump/speed", "{rev}/min"),
        ("reactor1/feed_pump/speed_setpoint", "{rev}/min"),
        ("reactor1/feed_pump/total_volume", "mL"),
        ("reactor1/feed_pump/running", "1"),
        ("reactor1/feed_pump/fault_code", "1"),
    ]
    assert all(s.instrument == "feed_pump" for s in signals[:7])
    by_id = {sp.signal.id: sp for sp in plan.instruments[0].signals}
    lph = by_id["reactor1/feed_pump/flow_lph"]
    assert lph.channel == "flow"
    assert lph.conversion == gateway.Conversion(0.06, 0.0)
    assert lph.signal.description == "Feed flow in litres per hour"
    assert by_id["reactor1/feed_pump/flow"].conversion.is_identity


DEMO_HTTP = {
    "host": "127.0.0.1",
    "port": 9180,
    "tls": None,
    "api": True,
    "console": None,
    "console_idle_timeout_s": 900.0,
}
"""The demos' HTTP endpoint: health, metrics, the console and the local API on loopback."""


def test_demo_mqtt_is_the_demo_plus_the_mqtt_sink(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two demos must not drift apart: only the store (and audit trail) files and the MQTT
    sink differ; the broker URL comes from MQTT_URL with a loopback default."""
    monkeypatch.delenv("MQTT_URL", raising=False)
    demo = read_config(REPO / "configs" / "demo.yaml").model_dump()
    mqtt = read_config(REPO / "configs" / "demo-mqtt.yaml").model_dump()
    assert mqtt.pop("http") == demo.pop("http") == DEMO_HTTP
    assert mqtt["store"].pop("path") == REPO / "configs" / "../data/demo-mqtt.sqlite"
    demo["store"].pop("path")
    *sinks, upstream = mqtt.pop("sinks")
    assert sinks == demo.pop("sinks")
    assert (upstream["id"], upstream["type"]) == ("mqtt", "mqtt")
    # MQTT 5, spelled out: a broker's ACL refusal is then seen (patgw check warns on 3.1.1).
    assert upstream["options"] == {"url": "mqtt://127.0.0.1:1883", "protocol": "5"}
    assert mqtt == demo
    monkeypatch.setenv("MQTT_URL", "mqtts://broker.example:8883")
    plan = load_plan(REPO / "configs" / "demo-mqtt.yaml", registry)
    assert plan.sinks[-1].instance.url == "mqtts://broker.example:8883"
    assert plan.warnings == ()


def test_demo_sparkplug_is_the_demo_plus_the_sparkplug_sink(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the MQTT demo: only the store file and the upstream sink differ from the demo."""
    monkeypatch.delenv("MQTT_URL", raising=False)
    demo = read_config(REPO / "configs" / "demo.yaml").model_dump()
    spb = read_config(REPO / "configs" / "demo-sparkplug.yaml").model_dump()
    assert spb.pop("http") == demo.pop("http") == DEMO_HTTP
    assert spb["store"].pop("path") == REPO / "configs" / "../data/demo-sparkplug.sqlite"
    demo["store"].pop("path")
    *sinks, upstream = spb.pop("sinks")
    assert sinks == demo.pop("sinks")
    assert (upstream["id"], upstream["type"]) == ("sparkplug", "sparkplug")
    assert upstream["options"] == {
        "url": "mqtt://127.0.0.1:1883",
        "group_id": "pat",
        "primary_host_id": None,
    }
    assert spb == demo
    monkeypatch.setenv("MQTT_URL", "mqtts://broker.example:8883")
    plan = load_plan(REPO / "configs" / "demo-sparkplug.yaml", registry)
    assert plan.sinks[-1].instance.url == "mqtts://broker.example:8883"
    assert plan.sinks[-1].instance.nbirth_topic == "spBv1.0/pat/NBIRTH/demo-site"
    assert plan.warnings == ()


def test_configs_directory_is_not_empty() -> None:
    assert REPO / "configs" / "demo.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path: Path, registry: Registry) -> None:
    plan = load_plan(path, registry)
    assert plan.signals
    ids = [s.id for s in plan.signals]
    assert len(ids) == len(set(ids))


def test_unknown_unit_through_load_plan(tmp_path: Path, registry: Registry) -> None:
    signals = [
        {"id": "flow"},
        {"id": "speed"},
        {"id": "flow_x", "channel": "flow", "unit": "ml/mn"},
    ]
    path = write(tmp_path, config(pump(signals=signals)))
    assert problems_of(path, registry) == [
        "instruments[0].signals[2].unit: unknown UCUM unit 'ml/mn'"
    ]


def test_unknown_driver_names_its_path(tmp_path: Path, registry: Registry) -> None:
    path = write(tmp_path, config(pump(), pump(id="other", driver="profibus")))
    [line] = problems_of(path, registry)
    assert line.startswith("instruments[1].driver: unknown driver 'profibus' (known: ")
    assert "modbus" in line


@pytest.mark.parametrize(
    ("section", "item", "line"),
    [
        ("sinks", {"id": "s", "type": "kafka"}, "sinks[0].type: unknown sink 'kafka'"),
        (
            "emulators",
            {"id": "e", "type": "reactor"},
            "emulators[0].type: unknown emulator 'reactor'",
        ),
    ],
)
def test_unknown_component_type_names_its_path(
    tmp_path: Path, registry: Registry, section: str, item: dict[str, Any], line: str
) -> None:
    [problem] = problems_of(write(tmp_path, {"area": "reactor1", section: [item]}), registry)
    assert problem.startswith(line + " (known: ")


def test_driver_option_errors_carry_the_options_prefix(tmp_path: Path, registry: Registry) -> None:
    options = {"profile": "feed_pump", "port": 70000, "bogus": 1}
    path = write(tmp_path, config(pump(options=options)))
    problems = problems_of(path, registry)
    assert len(problems) == 2
    assert all(p.startswith("instruments[0].options.") for p in problems)
    assert problems[0].startswith("instruments[0].options.port: ")
    assert problems[1] == "instruments[0].options.bogus: Extra inputs are not permitted"


def test_nested_driver_option_error_path(tmp_path: Path, registry: Registry) -> None:
    options = {
        "registers": [{"name": "a", "address": 0}, {"name": "b", "address": 1, "type": "int8"}]
    }
    [line] = problems_of(write(tmp_path, config(pump(options=options))), registry)
    assert line.startswith("instruments[0].options.registers[1].type: ")


def test_driver_option_model_error_names_the_options(tmp_path: Path, registry: Registry) -> None:
    path = write(tmp_path, config(pump(options={"host": "10.0.0.5"})))
    assert problems_of(path, registry) == [
        "instruments[0].options: give a profile or at least one register"
    ]


def test_unknown_profile(tmp_path: Path, registry: Registry) -> None:
    [line] = problems_of(write(tmp_path, config(pump(options={"profile": "nope"}))), registry)
    assert line.startswith("instruments[0].options: unknown profile 'nope'")


def test_register_with_a_non_ucum_unit(tmp_path: Path, registry: Registry) -> None:
    options = {"registers": [{"name": "flow", "address": 0, "unit": "ml/mn"}]}
    path = write(tmp_path, config(pump(options=options)))
    assert problems_of(path, registry) == [
        "instruments[0].options: channel 'flow': unknown UCUM unit 'ml/mn'"
    ]


def test_emulator_option_errors_carry_their_prefix(tmp_path: Path, registry: Registry) -> None:
    cfg = {
        "area": "reactor1",
        "emulators": [{"id": "e", "type": "feed_pump", "options": {"port": -1}}],
    }
    [line] = problems_of(write(tmp_path, cfg), registry)
    assert line.startswith("emulators[0].options.port: ")


def test_incompatible_units_name_the_signal(tmp_path: Path, registry: Registry) -> None:
    path = write(tmp_path, config(pump(signals=[{"id": "speed"}, {"id": "flow", "unit": "g/L"}])))
    assert problems_of(path, registry) == [
        "instruments[0].signals[1].unit: signal reactor1/feed_pump/flow:"
        " cannot convert 'mL/min' to 'g/L': incompatible dimensions"
    ]


def test_signal_naming_an_unknown_channel(tmp_path: Path, registry: Registry) -> None:
    signals = [{"id": "flow"}, {"id": "pressure"}, {"id": "p2", "channel": "pressure"}]
    problems = problems_of(write(tmp_path, config(pump(signals=signals))), registry)
    assert len(problems) == 2
    assert problems[0].startswith(
        "instruments[0].signals[1].id: driver 'modbus' has no channel 'pressure' (channels: "
    )
    assert problems[1].startswith(
        "instruments[0].signals[2].channel: driver 'modbus' has no channel 'pressure'"
    )
    assert "flow" in problems[0]  # the known channels are listed


def test_omitted_signals_publish_every_channel(tmp_path: Path, registry: Registry) -> None:
    plan = load_plan(write(tmp_path, config(pump())), registry)
    [inst] = plan.instruments
    assert [sp.channel for sp in inst.signals] == [
        "speed_setpoint",
        "speed",
        "flow",
        "total_volume",
        "running",
        "fault_code",
        "tubing_ml_per_rev",
        "device_id",
        "heartbeat",
        "watchdog_s",
        "safe_speed",
        "watchdog_tripped",
    ]
    assert all(sp.conversion.is_identity for sp in inst.signals)
    assert all(sp.signal.id == f"reactor1/feed_pump/{sp.channel}" for sp in inst.signals)
    flow = next(sp.signal for sp in inst.signals if sp.channel == "flow")
    assert flow.unit == "mL/min"


def test_source_unit_overrides_the_channel_unit(tmp_path: Path, registry: Registry) -> None:
    signals = [
        {"id": "flow", "source_unit": "L/h", "unit": "mL/min"},
        {"id": "speed", "source_unit": "/min"},
    ]
    plan = load_plan(write(tmp_path, config(pump(signals=signals))), registry)
    flow, speed = plan.instruments[0].signals
    assert flow.signal.unit == "mL/min"
    assert flow.conversion.scale == pytest.approx(1000 / 60)
    assert speed.signal.unit == "/min"  # published in the source unit when no unit is given
    assert speed.conversion.is_identity


def test_disabled_instrument_is_checked_but_not_planned(tmp_path: Path, registry: Registry) -> None:
    plan = load_plan(write(tmp_path, config(pump(enabled=False))), registry)
    assert plan.instruments == ()
    bad = config(pump(enabled=False, signals=[{"id": "flow", "unit": "g/L"}]))
    [line] = problems_of(write(tmp_path, bad), registry)
    assert line.startswith("instruments[0].signals[0].unit: signal reactor1/feed_pump/flow: ")


def test_problems_from_every_section_are_reported_together(
    tmp_path: Path, registry: Registry
) -> None:
    cfg = config(
        pump(signals=[{"id": "flow", "unit": "g/L"}]),
        pump(id="second", driver="profibus"),
        pump(id="third", options={"profile": "feed_pump", "port": 0}),
        sinks=[{"id": "s", "type": "kafka"}],
    )
    problems = problems_of(write(tmp_path, cfg), registry)
    assert [p.split(":")[0] for p in problems] == [
        "instruments[0].signals[0].unit",
        "instruments[1].driver",
        "instruments[2].options.port",
        "sinks[0].type",
    ]


# --- load_plan with a fresh registry and an inline plugin ------------------------------------


class FakeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float = Field(default=1.0, gt=0)
    fail: str | None = None  # the factory raises ValueError with this text
    bad_unit: bool = False  # a channel declared in a unit that is not UCUM
    token: Secret | None = None


class FakeDriver:
    def __init__(self, options: FakeOptions, context: PluginContext) -> None:
        self.options = options
        self.context = context

    def channels(self) -> list[Channel]:
        channels = [
            Channel("flow", "mL/min"),
            Channel("temperature", "Cel", description="Broth temperature"),
            Channel("ph", "[pH]"),
        ]
        if self.options.bad_unit:
            channels.append(Channel("speed", "rpm"))
        return channels

    async def run(self, io: gateway.InstrumentIO) -> None:
        io.connected()
        io.output("flow").publish(1.0)


class MyPlugin:
    def __init__(self) -> None:
        self.built: list[FakeDriver] = []

    def factory(self, options: FakeOptions, context: PluginContext) -> FakeDriver:
        if options.fail:
            raise ValueError(options.fail)
        driver = FakeDriver(options, context)
        self.built.append(driver)
        return driver

    @gateway.hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("fake", self.factory, FakeOptions, "A driver that reads nothing")


@pytest.fixture
def plugin() -> MyPlugin:
    return MyPlugin()


@pytest.fixture
def fake_registry(plugin: MyPlugin) -> Registry:
    return build_registry([plugin], entry_points=False)


def fake(**extra: Any) -> dict[str, Any]:
    block: dict[str, Any] = {"id": "probe", "driver": "fake"}
    block.update(extra)
    return block


def test_fresh_registry_holds_only_the_inline_plugin(fake_registry: Registry) -> None:
    assert fake_registry.names(PluginKind.DRIVER) == ["fake"]
    assert fake_registry.names(PluginKind.SINK) == []
    assert fake_registry.names(PluginKind.EMULATOR) == []
    registration = fake_registry.get(PluginKind.DRIVER, "fake")
    assert registration is not None
    assert registration.options_model is FakeOptions
    assert registration.description == "A driver that reads nothing"
    assert fake_registry.get(PluginKind.DRIVER, "modbus") is None


def test_a_name_registered_by_two_plugins_is_refused_for_both() -> None:
    registry = build_registry([MyPlugin(), MyPlugin()], entry_points=False)
    assert registry.get(PluginKind.DRIVER, "fake") is None
    assert "driver 'fake' is registered by plugin" in str(
        registry.unavailable(PluginKind.DRIVER, "fake")
    )


def test_factory_gets_validated_options_and_context(
    tmp_path: Path, plugin: MyPlugin, fake_registry: Registry
) -> None:
    cfg = config(fake(poll_interval_s=0.25, options={"rate": 3}), data_dir=str(tmp_path / "d"))
    plan = load_plan(write(tmp_path, cfg), fake_registry)
    [driver] = plugin.built
    assert plan.instruments[0].driver is driver
    assert isinstance(driver, gateway.Driver)
    assert driver.options == FakeOptions(rate=3.0)
    assert (driver.context.id, driver.context.poll_interval_s) == ("probe", 0.25)
    assert driver.context.data_dir == tmp_path / "d"


def test_inline_driver_signals_and_conversions(tmp_path: Path, fake_registry: Registry) -> None:
    signals = [
        {"id": "flow"},
        {"id": "flow_lph", "channel": "flow", "unit": "L/h"},
        {"id": "temperature", "unit": "K"},
        {"id": "ph"},
    ]
    plan = load_plan(write(tmp_path, config(fake(signals=signals))), fake_registry)
    got = {
        sp.signal.id: (sp.channel, sp.signal.unit, sp.conversion)
        for sp in plan.instruments[0].signals
    }
    assert got == {
        "reactor1/probe/flow": ("flow", "mL/min", gateway.Conversion()),
        "reactor1/probe/flow_lph": ("flow", "L/h", gateway.Conversion(0.06, 0.0)),
        "reactor1/probe/temperature": ("temperature", "K", gateway.Conversion(1.0, 273.15)),
        "reactor1/probe/ph": ("ph", "[pH]", gateway.Conversion()),
    }
    temperature = plan.instruments[0].signals[2].signal
    assert temperature.description == "Broth temperature"
    assert temperature.instrument == "probe"


def test_inline_driver_incompatible_units(tmp_path: Path, fake_registry: Registry) -> None:
    path = write(tmp_path, config(fake(signals=[{"id": "ph", "unit": "mol/L"}])))
    assert problems_of(path, fake_registry) == [
        "instruments[0].signals[0].unit: signal reactor1/probe/ph:"
        " cannot convert '[pH]' to 'mol/L': incompatible dimensions"
    ]


def test_fresh_registry_does_not_know_modbus(tmp_path: Path, fake_registry: Registry) -> None:
    assert problems_of(write(tmp_path, config(pump())), fake_registry) == [
        "instruments[0].driver: unknown driver 'modbus' (known: fake)"
    ]


def test_empty_registry_says_none_installed(tmp_path: Path) -> None:
    empty = build_registry([], entry_points=False)
    assert problems_of(write(tmp_path, config(pump())), empty) == [
        "instruments[0].driver: unknown driver 'modbus' (known: none installed)"
    ]


def test_inline_option_errors(tmp_path: Path, fake_registry: Registry) -> None:
    path = write(tmp_path, config(fake(options={"rate": 0, "colour": "red"})))
    problems = problems_of(path, fake_registry)
    assert len(problems) == 2
    assert problems[0].startswith("instruments[0].options.rate: ")
    assert problems[1] == "instruments[0].options.colour: Extra inputs are not permitted"


def test_factory_value_error_is_a_problem_at_options(
    tmp_path: Path, fake_registry: Registry
) -> None:
    path = write(tmp_path, config(fake(options={"fail": "cannot use rate 3 with this probe"})))
    assert problems_of(path, fake_registry) == [
        "instruments[0].options: cannot use rate 3 with this probe"
    ]


def test_channel_with_a_non_ucum_unit(tmp_path: Path, fake_registry: Registry) -> None:
    path = write(tmp_path, config(fake(options={"bad_unit": True})))
    assert problems_of(path, fake_registry) == [
        "instruments[0].options: channel 'speed': unknown UCUM unit 'rpm'"
    ]


def test_secret_option_from_the_environment(
    tmp_path: Path, plugin: MyPlugin, fake_registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE_TOKEN", "s3cret")
    load_plan(write(tmp_path, config(fake(options={"token": "env:PROBE_TOKEN"}))), fake_registry)
    assert plugin.built[0].options.token == SecretRef("PROBE_TOKEN")


def test_literal_secret_in_options_is_refused_without_echoing_it(
    tmp_path: Path, fake_registry: Registry
) -> None:
    path = write(tmp_path, config(fake(options={"token": "hunter2"})))
    problems = problems_of(path, fake_registry)
    assert problems == [f"instruments[0].options.token: {SECRET_HINT}"]
    assert not any("hunter2" in p for p in problems)


# --- Secret and SecretRef --------------------------------------------------------------------


class Login(BaseModel):
    user: str = "operator"
    password: Secret


@pytest.mark.parametrize(
    "raw", ["env:PUMP_PASSWORD", {"env": "PUMP_PASSWORD"}, SecretRef("PUMP_PASSWORD")]
)
def test_secret_accepts_environment_references(raw: object) -> None:
    login = Login.model_validate({"password": raw})
    assert login.password == SecretRef("PUMP_PASSWORD")
    assert login.password.env == "PUMP_PASSWORD"


def test_secret_serialises_as_the_reference() -> None:
    login = Login(password="env:PUMP_PASSWORD")  # type: ignore[arg-type]
    assert login.model_dump() == {"user": "operator", "password": "env:PUMP_PASSWORD"}
    assert login.model_dump_json() == '{"user":"operator","password":"env:PUMP_PASSWORD"}'
    assert Login.model_validate(login.model_dump()) == login


@pytest.mark.parametrize(
    "raw",
    ["hunter2", "ENV:PUMP_PASSWORD", {"env": "X", "value": "hunter2"}, {"env": 5}, 1234, None],
)
def test_secret_rejects_a_literal(raw: object) -> None:
    with pytest.raises(ValidationError) as excinfo:
        Login.model_validate({"password": raw})
    [error] = excinfo.value.errors(include_url=False)
    assert error["loc"] == ("password",)
    assert SECRET_HINT in error["msg"]
    assert "hunter2" not in error["msg"]


@pytest.mark.parametrize("raw", ["env:", "env:BAD-NAME", "env:A B", {"env": ""}])
def test_secret_rejects_invalid_variable_names(raw: object) -> None:
    with pytest.raises(ValidationError, match="invalid environment variable name"):
        Login.model_validate({"password": raw})


def test_secret_ref_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATGW_TEST_SECRET", "s3cr3t")
    ref = Login.model_validate({"password": "env:PATGW_TEST_SECRET"}).password
    assert ref.get() == "s3cr3t"
    monkeypatch.setenv("PATGW_TEST_SECRET", "rotated")
    assert ref.get() == "rotated"  # read when needed, never cached


def test_secret_ref_missing_variable_raises_key_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATGW_TEST_ABSENT", raising=False)
    with pytest.raises(KeyError, match="PATGW_TEST_ABSENT"):
        SecretRef("PATGW_TEST_ABSENT").get()


def test_secret_value_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATGW_TEST_SECRET", "s3cr3t")
    login = Login(password="env:PATGW_TEST_SECRET")  # type: ignore[arg-type]
    assert repr(login.password) == "SecretRef(env='PATGW_TEST_SECRET')"
    assert "s3cr3t" not in repr(login)
    assert "s3cr3t" not in login.model_dump_json()


# --- patgw check -----------------------------------------------------------------------------


def test_check_valid_demo(capsys: pytest.CaptureFixture[str]) -> None:
    path = REPO / "configs" / "demo.yaml"
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    configs = REPO / "configs"
    assert out.splitlines() == [
        f"{path}: valid (3 instruments, 1 processor, 27 signals, 3 emulators, 2 sinks)",
        f"relative paths resolve against {configs}",
        f"store: {configs / '../data/demo.sqlite'}",
        f"data_dir: {configs / '../data'}",
        f"audit trail: {configs / '../data/demo.audit.sqlite'}",
        "users: 5; writable targets: reactor1/controller/ph_setpoint,"
        " reactor1/feed_pump/speed_setpoint",
        "local API: http://127.0.0.1:9180/api/v1",
    ]
    assert err == ""


def test_check_unknown_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    signals = [
        {"id": "flow"},
        {"id": "speed"},
        {"id": "flow_x", "channel": "flow", "unit": "ml/mn"},
    ]
    path = write(tmp_path, config(pump(signals=signals)))
    assert main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "instruments[0].signals[2].unit: unknown UCUM unit 'ml/mn'\n"


def test_check_prints_one_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(
        pump(signals=[{"id": "flow", "unit": "g/L"}]),
        pump(id="second", driver="profibus"),
        pump(id="third", options={"profile": "feed_pump", "bogus": 1}),
    )
    assert main(["check", str(write(tmp_path, cfg))]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 3
    assert lines[0] == (
        "instruments[0].signals[0].unit: signal reactor1/feed_pump/flow:"
        " cannot convert 'mL/min' to 'g/L': incompatible dimensions"
    )
    assert lines[1].startswith("instruments[1].driver: unknown driver 'profibus'")
    assert lines[2] == "instruments[2].options.bogus: Extra inputs are not permitted"


def test_check_invalid_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, text="area: reactor1\n\tsite: x\n")
    assert main(["check", str(path)]) == 2
    _, err = capsys.readouterr()
    [line] = err.splitlines()
    assert line.startswith(f"{path}:2:1: invalid YAML: ")


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.yaml"
    assert main(["check", str(path)]) == 2
    _, err = capsys.readouterr()
    [line] = err.splitlines()
    assert line.startswith(f"{path}: cannot read: ")


class _WarnedOptions(BaseModel):
    """A plugin's options whose model contributes a check warning (valid all the same)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: str = "safe"

    def config_warnings(self) -> list[str]:
        return [f"mode: {self.mode!r} may lose data"] if self.mode != "safe" else []


class _Quiet:
    def __init__(self, options: _WarnedOptions, context: gateway.PluginContext) -> None:
        self.options = options

    async def __aenter__(self) -> _Quiet:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass

    async def send(self, samples: object) -> None:
        pass


def test_a_plugins_options_may_contribute_check_warnings_with_their_path(tmp_path: Path) -> None:
    registry = Registry()
    registry.add_sink("warned", _Quiet, _WarnedOptions)
    sinks = [
        {"id": "a", "type": "warned"},
        {"id": "b", "type": "warned", "options": {"mode": "fast"}},
    ]
    store = {"path": str(tmp_path / "s.sqlite")}
    path = write(tmp_path, {"area": "a1", "store": store, "sinks": sinks})
    plan = load_plan(path, registry)
    assert plan.warnings == ("sinks[1].options.mode: 'fast' may lose data",)
