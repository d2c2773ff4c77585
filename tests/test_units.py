"""Unit tests for gateway.units: UCUM validation and conversions compiled to a multiply-add."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway
from gateway import Conversion, UnitError, compile_conversion, validate_ucum
from gateway.units import IDENTITY

VALID_CODES = [
    "mL/min",
    "g/L",
    "Cel",
    "cm-1",
    "[pH]",
    "%",
    "10*6/mL",
    "{rev}/min",
    "1",
    "mL",
    "L/h",
    "/min",
    "mS/cm",
    "K",
    "[degF]",
    "mol/L",
    "{cells}",
]

INVALID_CODES = [
    "ml/mn",  # 'mn' is no UCUM unit
    "rpm",  # not UCUM; UCUM writes {rev}/min
    "",
    " mL",  # surrounding white space is not part of a code
    "mL ",
    "m L",
    "mL//min",
    "L/",
    "foo",
]


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", VALID_CODES)
def test_valid_codes_are_returned_unchanged(code: str) -> None:
    assert validate_ucum(code) == code


@pytest.mark.parametrize("code", INVALID_CODES)
def test_invalid_codes_raise_unit_error_quoting_the_code(code: str) -> None:
    with pytest.raises(UnitError) as excinfo:
        validate_ucum(code)
    assert str(excinfo.value) == f"unknown UCUM unit {code!r}"


def test_unit_error_is_a_gateway_error() -> None:
    with pytest.raises(gateway.GatewayError):
        validate_ucum("rpm")


def test_invalid_code_is_rejected_every_time() -> None:
    """The parse cache must not turn a failure into a success on a second look-up."""
    for _ in range(2):
        with pytest.raises(UnitError):
            validate_ucum("ml/mn")


# --- conversions with known figures ----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "target", "scale", "offset"),
    [
        ("mL/min", "L/h", 0.06, 0.0),
        ("mL", "L", 0.001, 0.0),
        ("L/h", "mL/min", 1000.0 / 60.0, 0.0),
        ("Cel", "K", 1.0, 273.15),
        ("K", "Cel", 1.0, -273.15),
        ("Cel", "[degF]", 1.8, 32.0),
        ("[degF]", "Cel", 5.0 / 9.0, -160.0 / 9.0),
        ("10*6/mL", "/L", 1e9, 0.0),
        ("%", "1", 0.01, 0.0),
        ("1", "%", 100.0, 0.0),
        ("mS/cm", "S/m", 0.1, 0.0),
        ("cm-1", "/m", 100.0, 0.0),
        ("g/L", "mg/mL", 1.0, 0.0),
        ("{rev}/min", "/s", 1.0 / 60.0, 0.0),
        ("{rev}/min", "/min", 1.0, 0.0),  # an annotation is the unit 1
    ],
)
def test_conversion_figures(source: str, target: str, scale: float, offset: float) -> None:
    conv = compile_conversion(source, target)
    assert isinstance(conv, Conversion)
    assert conv.scale == pytest.approx(scale, rel=1e-12)
    assert conv.offset == pytest.approx(offset, rel=1e-12, abs=1e-12)


def test_exact_flow_and_temperature_figures() -> None:
    # Exact where the arithmetic is exact in binary floating point.
    assert compile_conversion("mL/min", "L/h") == Conversion(0.06, 0.0)
    assert compile_conversion("Cel", "K") == Conversion(1.0, 273.15)
    assert compile_conversion("10*6/mL", "/L") == Conversion(1e9, 0.0)
    assert compile_conversion("%", "1") == Conversion(0.01, 0.0)


def test_converted_values() -> None:
    assert compile_conversion("mL/min", "L/h")(250.0) == pytest.approx(15.0)
    assert compile_conversion("Cel", "[degF]")(100.0) == pytest.approx(212.0)
    assert compile_conversion("Cel", "[degF]")(-40.0) == pytest.approx(-40.0)
    assert compile_conversion("Cel", "K")(37.0) == pytest.approx(310.15)
    assert compile_conversion("10*6/mL", "/L")(2.5) == pytest.approx(2.5e9)


@pytest.mark.parametrize("code", ["mL/min", "Cel", "[pH]", "10*6/mL", "1", "{rev}/min"])
def test_same_unit_is_the_identity(code: str) -> None:
    conv = compile_conversion(code, code)
    assert conv == IDENTITY
    assert conv.is_identity
    assert conv(12.345) == 12.345


def test_same_invalid_unit_still_fails() -> None:
    with pytest.raises(UnitError, match="ml/mn"):
        compile_conversion("ml/mn", "ml/mn")


@pytest.mark.parametrize(
    ("source", "target"),
    [("ml/mn", "L/h"), ("mL/min", "ml/mn"), ("rpm", "/min"), ("", "mL")],
)
def test_conversion_with_an_invalid_code_fails(source: str, target: str) -> None:
    with pytest.raises(UnitError, match="unknown UCUM unit"):
        compile_conversion(source, target)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("mL/min", "g/L"),
        ("[pH]", "mol/L"),
        ("[pH]", "1"),
        ("mL", "g"),
        ("Cel", "1"),
        ("mL", "Cel"),
    ],
)
def test_incompatible_units_raise_naming_both(source: str, target: str) -> None:
    with pytest.raises(UnitError) as excinfo:
        compile_conversion(source, target)
    message = str(excinfo.value)
    assert repr(source) in message
    assert repr(target) in message
    assert "incompatible" in message


# --- the Conversion object -------------------------------------------------------------------


def test_conversion_call_is_multiply_add() -> None:
    conv = Conversion(2.0, 3.0)
    assert conv(5.0) == 13.0
    assert conv(0.0) == 3.0
    assert not conv.is_identity
    assert not Conversion(1.0, 0.5).is_identity
    assert not Conversion(2.0, 0.0).is_identity
    assert Conversion().is_identity


def test_conversion_is_frozen() -> None:
    conv = Conversion(2.0, 3.0)
    with pytest.raises(AttributeError):
        conv.scale = 5.0  # type: ignore[misc]


def test_then_applies_self_first() -> None:
    first = Conversion(2.0, 1.0)  # x*2 + 1
    second = Conversion(10.0, -3.0)  # y*10 - 3
    both = first.then(second)
    assert both == Conversion(20.0, 7.0)
    for x in (-4.0, 0.0, 1.5, 100.0):
        assert both(x) == second(first(x))
    # Order matters: the other way round is a different conversion.
    assert second.then(first) == Conversion(20.0, -5.0)


def test_then_with_identity_changes_nothing() -> None:
    conv = Conversion(1.8, 32.0)
    assert conv.then(IDENTITY) == conv
    assert IDENTITY.then(conv) == conv


def test_then_composes_real_conversions() -> None:
    # K -> Cel -> [degF] equals K -> [degF]
    chained = compile_conversion("K", "Cel").then(compile_conversion("Cel", "[degF]"))
    direct = compile_conversion("K", "[degF]")
    assert chained.scale == pytest.approx(direct.scale, rel=1e-9)
    assert chained.offset == pytest.approx(direct.offset, rel=1e-9)
    assert chained(273.15) == pytest.approx(32.0)
    # mL/min -> L/h -> mL/min is the identity
    there_and_back = compile_conversion("mL/min", "L/h").then(compile_conversion("L/h", "mL/min"))
    assert there_and_back.scale == pytest.approx(1.0, rel=1e-12)
    assert there_and_back.offset == 0.0


# --- property: a round trip returns the value ------------------------------------------------

PAIRS = [
    ("mL/min", "L/h"),
    ("Cel", "[degF]"),
    ("Cel", "K"),
    ("10*6/mL", "/L"),
    ("%", "1"),
    ("mS/cm", "S/m"),
]


@settings(max_examples=200, deadline=None)
@given(
    pair=st.sampled_from(PAIRS),
    value=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
)
def test_round_trip_returns_the_value(pair: tuple[str, str], value: float) -> None:
    a, b = pair
    forward, back = compile_conversion(a, b), compile_conversion(b, a)
    assert math.isclose(back(forward(value)), value, rel_tol=1e-9, abs_tol=1e-9)


# -- what pint answered, remembered on disk --------------------------------------------------------
_PROBE = """
import json, sys
from gateway import UnitError, compile_conversion, validate_ucum
out = {"valid": validate_ucum("mL/min")}
conversion = compile_conversion("Cel", "[degF]")
out["conv"] = [conversion.scale, conversion.offset]
out["pint_before_invalid"] = "pint" in sys.modules
try:
    validate_ucum("ml/mn")
    out["invalid"] = None
except UnitError as exc:
    out["invalid"] = str(exc)
print(json.dumps(out))
"""


def _probe(cache: str, home: Path | None = None) -> dict[str, Any]:
    """Validate and convert in a new process (``PATGW_UNIT_CACHE=cache``)."""
    env = {**os.environ, "PATGW_UNIT_CACHE": cache}
    if home is not None:
        env |= {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_a_second_start_with_the_same_units_does_not_import_pint(tmp_path: Path) -> None:
    first = _probe(str(tmp_path))
    assert first["pint_before_invalid"] is True
    (memo,) = tmp_path.glob("ucum-*.json")
    second = _probe(str(tmp_path))
    assert second["pint_before_invalid"] is False  # answered from the memo
    assert second["valid"] == "mL/min"
    assert second["conv"] == first["conv"]  # exactly: floats round-trip through JSON
    assert math.isclose(first["conv"][0], 1.8) and math.isclose(first["conv"][1], 32.0)
    # An invalid code is parsed again (never remembered), for its message.
    assert second["invalid"] == first["invalid"]
    assert "unknown UCUM unit 'ml/mn'" in first["invalid"]
    text = memo.read_text()
    assert "ml/mn" not in text and "mL/min" in text


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "",
        '{"valid": "mL/min", "conversions": {}}',
        '{"valid": [1], "conversions": {}}',
        '{"valid": [], "conversions": {"Cel\\n[degF]": ["x", 1.0]}}',
    ],
    ids=["not-json", "empty", "valid-not-a-list", "code-not-text", "conversion-not-numbers"],
)
def test_a_damaged_memo_is_ignored_and_replaced(tmp_path: Path, content: str) -> None:
    _probe(str(tmp_path))
    (memo,) = tmp_path.glob("ucum-*.json")
    memo.write_text(content)
    again = _probe(str(tmp_path))
    assert again["pint_before_invalid"] is True and again["valid"] == "mL/min"
    assert math.isclose(again["conv"][0], 1.8)
    assert "mL/min" in memo.read_text()


def test_the_memo_can_be_switched_off(tmp_path: Path) -> None:
    for _ in range(2):
        result = _probe("off", home=tmp_path)
        assert result["pint_before_invalid"] is True and result["valid"] == "mL/min"
    assert not list(tmp_path.rglob("ucum-*.json"))


def test_by_default_the_memo_is_in_the_users_cache_folder(tmp_path: Path) -> None:
    _probe("", home=tmp_path)
    (memo,) = (tmp_path / ".cache" / "patgw").glob("ucum-*.json")
    assert "pint" in memo.name and "ucumvert" in memo.name  # a library upgrade starts afresh
