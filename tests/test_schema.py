"""``patgw schema`` really describes the configuration, plugin options included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway import build_registry
from gateway.schema import config_schema

REPO = Path(__file__).resolve().parents[1]
SCHEMA = config_schema(build_registry())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def test_schema_is_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_matches_the_schema(path: Path) -> None:
    errors = list(VALIDATOR.iter_errors(yaml.safe_load(path.read_text())))
    assert not errors, [e.message for e in errors]


def demo() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    return loaded


def test_plugin_options_are_checked_by_the_schema() -> None:
    config = demo()
    config["instruments"][0]["options"]["regsiters"] = []  # misspelt key
    pump = next(e for e in config["emulators"] if e["type"] == "feed_pump")
    pump["options"]["setpoint_rpm"] = 1000  # above the pump's 400
    messages = [e.message for e in VALIDATOR.iter_errors(config)]
    assert any("regsiters" in m for m in messages)
    assert any("1000" in m for m in messages)


def test_register_maps_get_completion() -> None:
    register = SCHEMA["$defs"]["RegisterSpec"]["properties"]
    assert register["type"]["enum"] == ["int16", "uint16", "int32", "uint32", "float32", "float64"]
    assert "modbus" in SCHEMA["$defs"]["InstrumentConfig"]["properties"]["driver"]["examples"]


@pytest.mark.parametrize(
    ("password", "valid"),
    [("env:OPC_PASS", True), ({"env": "OPC_PASS"}, True), ("plain-secret", False)],
)
def test_secrets_in_the_schema_take_both_spellings_and_no_literal(
    password: object, valid: bool
) -> None:
    config = demo()
    controller = next(i for i in config["instruments"] if i["driver"] == "opcua")
    controller["options"] |= {"username": "gateway", "password": password}
    messages = [e.message for e in VALIDATOR.iter_errors(config)]
    assert (messages == []) is valid, messages
