"""Environment variables in configuration files: ``${NAME}``, ``${NAME:-default}``,
``${NAME-default}`` and ``$$``, expanded in string values after YAML parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import ConfigError, build_registry, load_plan
from gateway.cli import main
from gateway.config import GatewayConfig
from gateway.loader import read_config

REPO = Path(__file__).resolve().parents[1]

SET = "PATGW_TEST_SET"  # set to "value" by the fixture below
EMPTY = "PATGW_TEST_EMPTY"  # set to ""
UNSET = "PATGW_TEST_UNSET"  # never set
SYNTAX = "write ${NAME}, ${NAME:-default} or ${NAME-default}, and $$ for a literal $"


def not_set(name: str) -> str:
    return f"environment variable {name} is not set (write ${{{name}:-default}} to give a default)"


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv(SET, "value")
    monkeypatch.setenv(EMPTY, "")
    monkeypatch.delenv(UNSET, raising=False)
    return monkeypatch


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def sink_options(tmp_path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` written as a sink's (free-form) options, read back after expansion."""
    cfg = {"area": "r1", "sinks": [{"id": "out", "type": "mqtt", "options": options}]}
    config = read_config(write(tmp_path, yaml.safe_dump(cfg, sort_keys=False)))
    return config.sinks[0].options


def expand(tmp_path: Path, value: str) -> object:
    return sink_options(tmp_path, {"value": value})["value"]


def read_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        read_config(path)
    return list(excinfo.value.problems)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("${PATGW_TEST_SET}", "value"),
        ("${PATGW_TEST_SET:-default}", "value"),
        ("${PATGW_TEST_SET-default}", "value"),
        ("${PATGW_TEST_UNSET:-default}", "default"),
        ("${PATGW_TEST_UNSET-default}", "default"),
        ("${PATGW_TEST_UNSET:-}", ""),
        ("${PATGW_TEST_UNSET-}", ""),
        # set but empty: `:-` takes the default, `-` and a plain reference keep the empty value
        ("${PATGW_TEST_EMPTY:-default}", "default"),
        ("${PATGW_TEST_EMPTY-default}", ""),
        ("${PATGW_TEST_EMPTY}", ""),
        # inside text, several in one string, a default with URL punctuation
        ("mqtt://${PATGW_TEST_SET}:1883/x", "mqtt://value:1883/x"),
        ("${PATGW_TEST_SET}-${PATGW_TEST_SET}", "value-value"),
        ("${PATGW_TEST_UNSET:-mqtt://127.0.0.1:1883}", "mqtt://127.0.0.1:1883"),
        ("${PATGW_TEST_UNSET:-a b-c:d $x}", "a b-c:d $x"),  # a default is literal text
        ("${PATGW_TEST_UNSET-URL:x}", "URL:x"),
    ],
)
def test_reference_forms(tmp_path: Path, value: str, expected: str) -> None:
    assert expand(tmp_path, value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$$", "$"),
        ("cost: $$5", "cost: $5"),
        ("$${PATGW_TEST_SET}", "${PATGW_TEST_SET}"),  # an escaped reference is not expanded
        ("$$$${PATGW_TEST_SET}", "$${PATGW_TEST_SET}"),
        ("$$$", "$$"),
        # a `$` not followed by `$` or `{` is literal: configs written before this keep working
        ("$meta", "$meta"),
        ("a$b", "a$b"),
        ("price $5", "price $5"),
        ("trailing $", "trailing $"),
        ("$ {PATGW_TEST_SET}", "$ {PATGW_TEST_SET}"),
        ("{PATGW_TEST_SET}", "{PATGW_TEST_SET}"),
        ("{rev}/min", "{rev}/min"),
    ],
)
def test_escapes_and_literal_dollars(tmp_path: Path, value: str, expected: str) -> None:
    assert expand(tmp_path, value) == expected


@pytest.mark.parametrize(
    "text", ["a: b", "[1, 2]", "{x: 1}", "- item", "502", "true", "null", "&a b", "#x", "'q'"]
)
def test_a_value_never_becomes_yaml(
    tmp_path: Path, environment: pytest.MonkeyPatch, text: str
) -> None:
    environment.setenv("PATGW_TEST_X", text)
    assert expand(tmp_path, "${PATGW_TEST_X}") == text


def test_a_value_is_not_expanded_again(tmp_path: Path, environment: pytest.MonkeyPatch) -> None:
    environment.setenv("PATGW_TEST_X", "${PATGW_TEST_SET} $$")
    assert expand(tmp_path, "${PATGW_TEST_X}") == "${PATGW_TEST_SET} $$"


def test_a_numeric_value_is_converted_by_the_field(
    tmp_path: Path, environment: pytest.MonkeyPatch
) -> None:
    environment.setenv("PATGW_TEST_MS", "250")
    text = "area: r1\nstore: {commit_interval_ms: '${PATGW_TEST_MS}'}\n"
    assert read_config(write(tmp_path, text)).store.commit_interval_ms == 250
    assert expand(tmp_path, "${PATGW_TEST_MS}") == "250"  # a free-form option stays a string


def test_a_bad_value_is_reported_by_the_field(
    tmp_path: Path, environment: pytest.MonkeyPatch
) -> None:
    environment.setenv("PATGW_TEST_MS", "fast")
    text = "area: r1\nstore: {commit_interval_ms: '${PATGW_TEST_MS}'}\n"
    [problem] = read_problems(write(tmp_path, text))
    assert problem.startswith("store.commit_interval_ms: Input should be a valid integer")


def test_nested_lists_and_mappings(tmp_path: Path) -> None:
    options = {
        "url": "${PATGW_TEST_SET}",
        "topics": ["a/${PATGW_TEST_SET}", {"name": "${PATGW_TEST_UNSET-b}", "qos": 1}],
        "deep": {"deeper": [["${PATGW_TEST_SET}", 2, None, True, 1.5]]},
    }
    assert sink_options(tmp_path, options) == {
        "url": "value",
        "topics": ["a/value", {"name": "b", "qos": 1}],
        "deep": {"deeper": [["value", 2, None, True, 1.5]]},
    }


def test_mapping_keys_are_not_expanded(tmp_path: Path) -> None:
    options = {"${PATGW_TEST_SET}": "${PATGW_TEST_SET}", "$$": "$$"}
    assert sink_options(tmp_path, options) == {"${PATGW_TEST_SET}": "value", "$$": "$"}


def test_top_level_and_model_fields_are_expanded(tmp_path: Path) -> None:
    text = (
        "area: r1\n"
        "site: ${PATGW_TEST_UNSET:-plant_7}\n"
        "store: {path: '${PATGW_TEST_SET}/gw.sqlite'}\n"
        "instruments:\n"
        "  - {id: p, driver: modbus, description: 'Pump ${PATGW_TEST_SET}'}\n"
    )
    config = read_config(write(tmp_path, text))
    assert isinstance(config, GatewayConfig)
    assert config.site == "plant_7"
    assert config.store.path == tmp_path / "value" / "gw.sqlite"
    assert config.instruments[0].description == "Pump value"


def test_unset_variable_names_the_path(tmp_path: Path) -> None:
    text = "area: r1\nsinks:\n  - {id: up, type: mqtt, options: {url: '${PATGW_TEST_UNSET}'}}\n"
    assert read_problems(write(tmp_path, text)) == [f"sinks[0].options.url: {not_set(UNSET)}"]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        "area: r1\n"
        "site: ${PATGW_TEST_UNSET}\n"
        "instruments:\n"
        "  - id: p\n"
        "    driver: modbus\n"
        "    options: {host: '${PATGW_TEST_SET}', registers: [{name: '${PATGW_TEST_NOPE}'}]}\n"
        "    signals: [{id: flow}, {id: speed, unit: '${PATGW_TEST_UNSET}/${PATGW_TEST_NOPE}'}]\n"
        "sinks:\n"
        "  - {id: up, type: mqtt, options: {url: '${PATGW_TEST_SET', port: '${1}'}}\n"
    )
    assert read_problems(write(tmp_path, text)) == [
        f"site: {not_set(UNSET)}",
        f"instruments[0].options.registers[0].name: {not_set('PATGW_TEST_NOPE')}",
        f"instruments[0].signals[1].unit: {not_set(UNSET)}",
        f"instruments[0].signals[1].unit: {not_set('PATGW_TEST_NOPE')}",
        f"sinks[0].options.url: unclosed variable reference '${{PATGW_TEST_SET': {SYNTAX}",
        f"sinks[0].options.port: invalid variable reference '${{1}}': {SYNTAX}",
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("${", f"unclosed variable reference '${{': {SYNTAX}"),
        ("x ${PATGW_TEST_SET:-y", f"unclosed variable reference '${{PATGW_TEST_SET:-y': {SYNTAX}"),
        ("${}", f"invalid variable reference '${{}}': {SYNTAX}"),
        ("${9LIVES}", f"invalid variable reference '${{9LIVES}}': {SYNTAX}"),
        ("${MQTT.URL}", f"invalid variable reference '${{MQTT.URL}}': {SYNTAX}"),
        ("${A B}", f"invalid variable reference '${{A B}}': {SYNTAX}"),
        ("${A:?required}", f"invalid variable reference '${{A:?required}}': {SYNTAX}"),
        ("${A:+alt}", f"invalid variable reference '${{A:+alt}}': {SYNTAX}"),
        (
            "${A:-${B}}",
            "nested variable reference in the default of '${A:-${B}' is not supported",
        ),
    ],
)
def test_malformed_references_are_errors(tmp_path: Path, value: str, problem: str) -> None:
    path = write(tmp_path, yaml.safe_dump({"area": "r1", "data_dir": value}))
    assert read_problems(path) == [f"data_dir: {problem}"]


def test_yaml_aliases_are_expanded(tmp_path: Path) -> None:
    text = (
        "area: r1\n"
        "sinks:\n"
        "  - {id: a, type: mqtt, options: &shared {url: '${PATGW_TEST_SET}', tags: [x]}}\n"
        "  - {id: b, type: mqtt, options: *shared}\n"
    )
    config = read_config(write(tmp_path, text))
    assert [s.options for s in config.sinks] == [{"url": "value", "tags": ["x"]}] * 2


def test_a_recursive_alias_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        read_config(write(tmp_path, "area: r1\nsite: &loop [${PATGW_TEST_SET}, *loop]\n"))


# --- through load_plan and patgw check --------------------------------------------------------


def test_plugin_options_get_the_expanded_values(
    tmp_path: Path, environment: pytest.MonkeyPatch
) -> None:
    environment.setenv("PATGW_TEST_PORT", "15099")
    text = (
        "area: r1\n"
        "instruments:\n"
        "  - id: pump\n"
        "    driver: modbus\n"
        "    options:\n"
        "      host: ${PATGW_TEST_UNSET:-127.0.0.2}\n"
        "      port: ${PATGW_TEST_PORT}\n"
        "      profile: feed_pump\n"
    )
    plan = load_plan(write(tmp_path, text), build_registry())
    options = plan.instruments[0].config.options
    assert options["host"] == "127.0.0.2"
    assert options["port"] == "15099"  # the driver's options model makes it an int


def test_a_secret_is_still_only_env_reference(
    tmp_path: Path, environment: pytest.MonkeyPatch
) -> None:
    """A `${VAR}` in a Secret field puts the secret itself in the file: refused, not echoed."""
    environment.setenv("PATGW_TEST_PASSWORD", "hunter2")
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    controller = next(i for i in demo["instruments"] if i["driver"] == "opcua")
    controller["options"] |= {"username": "gw", "password": "${PATGW_TEST_PASSWORD}"}
    index = demo["instruments"].index(controller)
    (tmp_path / "models").symlink_to(REPO / "configs" / "models")  # the demo's model, beside it
    with pytest.raises(ConfigError) as excinfo:
        load_plan(write(tmp_path, yaml.safe_dump(demo)), build_registry())
    [problem] = excinfo.value.problems
    assert problem.startswith(f"instruments[{index}].options.password: secrets come from")
    assert "hunter2" not in problem

    controller["options"]["password"] = "env:PATGW_TEST_PASSWORD"
    plan = load_plan(write(tmp_path, yaml.safe_dump(demo)), build_registry())
    assert plan.instruments[index].config.options["password"] == "env:PATGW_TEST_PASSWORD"


def test_check_reports_unset_variables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "area: r1\ndata_dir: ${PATGW_TEST_UNSET}\nsite: ${PATGW_TEST_NOPE}\n"
    assert main(["check", str(write(tmp_path, text))]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"data_dir: {not_set(UNSET)}",
        f"site: {not_set('PATGW_TEST_NOPE')}",
    ]


def test_check_with_variables_set(
    tmp_path: Path, environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environment.setenv("PATGW_TEST_SITE", "plant_7")
    path = write(tmp_path, "area: r1\nsite: ${PATGW_TEST_SITE}\n")
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == (
        f"{path}: valid (0 instruments, 0 processors, 0 signals, 0 emulators, 0 sinks)"
    )
    assert err == ""
