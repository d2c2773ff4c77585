"""gateway.unece: UCUM ↔ UNECE Rec 20 for OPC UA EUInformation, checked against the official table.

``tests/data/unece_units.csv`` holds the rows of the OPC Foundation's ``UNECE_to_OPCUA.csv`` that
the module uses, copied verbatim (its header names the commit), so a typo in the module's table
fails here instead of failing an OPC UA conformance test later.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway import validate_ucum
from gateway.unece import (
    MAPPINGS,
    NAMESPACE_URI,
    NO_UNECE_UNIT,
    OFF_TABLE_CODES,
    UNIT_ID_UNKNOWN,
    UneceUnit,
    ucum_for_eu,
    ucum_for_unece,
    unece_for_ucum,
    unit_id_of,
)

REPO = Path(__file__).resolve().parents[1]


def read_reference() -> dict[str, UneceUnit]:
    lines = (REPO / "tests" / "data" / "unece_units.csv").read_text(encoding="utf-8").splitlines()
    rows = csv.DictReader(line for line in lines if not line.startswith("#"))
    return {
        row["UNECECode"]: UneceUnit(
            row["UNECECode"], int(row["UnitId"]), row["DisplayName"], row["Description"]
        )
        for row in rows
    }


REFERENCE = read_reference()
CANONICAL = {ucum: unece_for_ucum(ucum) for ucum, _ in MAPPINGS}
ALL_UNITS = [unit for _, unit in MAPPINGS]


def ids(units: list[UneceUnit]) -> list[str]:
    return [unit.code for unit in units]


def units_in(node: Any) -> Iterator[str]:
    """Every string value of a ``unit`` key anywhere in a parsed YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "unit" and isinstance(value, str):
                yield value
            else:
                yield from units_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from units_in(item)


def shipped_units() -> set[str]:
    files = [*(REPO / "configs").glob("*.yaml"), *(REPO / "plugins/modbus/profiles").glob("*.yaml")]
    return {unit for path in files for unit in units_in(yaml.safe_load(path.read_text("utf-8")))}


# --- the Part 8 formula -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "unit_id"),
    [("CEL", 4408652), ("MLT", 5065812), ("41", 13361), ("4H", 13384), ("P1", 20529), ("A", 65)],
)
def test_unit_id_of_packs_ascii_first_character_highest(code: str, unit_id: int) -> None:
    # CEL and MLT are the examples the domain primer quotes; 41 and 4H are two-character codes.
    assert unit_id_of(code) == unit_id


@given(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=3)
)
def test_unit_id_of_is_the_big_endian_ascii_bytes_and_a_positive_int32(code: str) -> None:
    unit_id = unit_id_of(code)
    assert unit_id == int.from_bytes(code.encode("ascii"), "big")
    assert 0 < unit_id < 2**31
    assert unit_id.to_bytes(len(code), "big").decode("ascii") == code


@pytest.mark.parametrize("code", ["", "ABCD", "µS", " C", "C\n", "K L", "\x00"])
def test_unit_id_of_rejects_what_is_not_a_common_code(code: str) -> None:
    with pytest.raises(ValueError, match="not a UNECE common code"):
        unit_id_of(code)


# --- the table against the OPC Foundation's ----------------------------------------------------


@pytest.mark.parametrize("unit", ALL_UNITS, ids=ids(ALL_UNITS))
def test_every_unit_id_is_the_formula_applied_to_its_code(unit: UneceUnit) -> None:
    assert unit.unit_id == unit_id_of(unit.code)


@pytest.mark.parametrize(
    "unit",
    [u for u in ALL_UNITS if u.code not in OFF_TABLE_CODES],
    ids=ids([u for u in ALL_UNITS if u.code not in OFF_TABLE_CODES]),
)
def test_every_unit_is_exactly_the_reference_row(unit: UneceUnit) -> None:
    assert unit == REFERENCE[unit.code]


def test_the_reference_extract_is_consistent_and_fully_used() -> None:
    # The extract's own ids obey the formula (a transcription check on the extract itself), and
    # it holds no row the module does not use and none of the codes the table lacks.
    assert all(row.unit_id == unit_id_of(code) for code, row in REFERENCE.items())
    used = {unit.code for unit in ALL_UNITS}
    assert set(REFERENCE) == used - OFF_TABLE_CODES
    assert used >= OFF_TABLE_CODES
    assert not OFF_TABLE_CODES & set(REFERENCE)


@pytest.mark.parametrize(
    ("code", "unit_id", "display_name", "description"),
    [
        ("P1", 20529, "%", "percent"),
        ("E32", 4535090, "l/h", "litre per hour"),
        ("E90", 4536624, "cm⁻¹", "reciprocal centimetre"),
    ],
)
def test_off_table_codes_carry_their_rec20_symbol_and_name(
    code: str, unit_id: int, display_name: str, description: str
) -> None:
    (unit,) = [u for u in ALL_UNITS if u.code == code]
    assert unit == UneceUnit(code, unit_id, display_name, description)


def test_codes_and_unit_ids_are_unique() -> None:
    assert len({u.code for u in ALL_UNITS}) == len(ALL_UNITS)
    assert len({u.unit_id for u in ALL_UNITS}) == len(ALL_UNITS)


@pytest.mark.parametrize("ucum", sorted(CANONICAL))
def test_every_ucum_code_in_the_table_is_valid_ucum(ucum: str) -> None:
    assert validate_ucum(ucum) == ucum


# --- forward: UCUM → UNECE --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ucum", "code"),
    [
        ("Cel", "CEL"),
        ("K", "KEL"),
        ("[degF]", "FAH"),
        ("%", "P1"),
        ("[pH]", "Q30"),
        ("{rev}/min", "RPM"),
        ("/min", "C94"),
        ("mL", "MLT"),
        ("L", "LTR"),
        ("mL/min", "41"),
        ("mL/h", "G55"),
        ("L/min", "L2"),
        ("L/h", "E92"),
        ("g/L", "GL"),
        ("mg/L", "M1"),
        ("mmol/L", "M33"),
        ("mol/L", "C38"),
        ("g", "GRM"),
        ("kg", "KGM"),
        ("bar", "BAR"),
        ("mbar", "MBR"),
        ("Pa", "PAL"),
        ("kPa", "KPA"),
        ("s", "SEC"),
        ("ms", "C26"),
        ("us", "B98"),
        ("min", "MIN"),
        ("h", "HUR"),
        ("d", "DAY"),
        ("nm", "C45"),
        ("cm-1", "E90"),
        ("1", "C62"),
        ("mV", "2Z"),
        ("V", "VLT"),
        ("mA", "4K"),
        ("uS/cm", "G42"),
        ("mS/cm", "H61"),
        ("W", "WTT"),
        ("Hz", "HTZ"),
    ],
)
def test_units_of_bioprocess_instruments_map_to_their_rec20_code(ucum: str, code: str) -> None:
    unit = unece_for_ucum(ucum)
    assert unit is not None and unit.code == code


@pytest.mark.parametrize("ucum", sorted(NO_UNECE_UNIT))
def test_ucum_codes_without_a_rec20_unit_map_to_none(ucum: str) -> None:
    assert validate_ucum(ucum) == ucum
    assert unece_for_ucum(ucum) is None
    assert ucum not in CANONICAL


@pytest.mark.parametrize("ucum", ["ml/min", "cm3/min", "CEL", "rpm", "", " mL"])
def test_lookup_is_by_the_exact_ucum_code(ucum: str) -> None:
    assert unece_for_ucum(ucum) is None


def test_every_unit_in_shipped_configs_and_profiles_maps_or_is_known_to_have_none() -> None:
    units = shipped_units()
    assert {"mL/min", "{rev}/min", "Cel", "[pH]"} <= units  # the walk finds the units
    assert not {u for u in units if unece_for_ucum(u) is None} - NO_UNECE_UNIT


# --- inverse: UNECE → UCUM --------------------------------------------------------------------


@pytest.mark.parametrize(("ucum", "unit"), MAPPINGS, ids=ids(ALL_UNITS))
def test_every_code_and_unit_id_maps_back_to_its_ucum_code(ucum: str, unit: UneceUnit) -> None:
    assert ucum_for_unece(unit.code) == ucum
    assert ucum_for_unece(unit.unit_id) == ucum


@pytest.mark.parametrize("ucum", sorted(CANONICAL))
def test_forward_then_inverse_is_the_identity(ucum: str) -> None:
    unit = unece_for_ucum(ucum)
    assert unit is not None
    assert ucum_for_unece(unit.code) == ucum_for_unece(unit.unit_id) == ucum


def test_several_codes_for_one_unit_all_map_back_and_one_is_canonical() -> None:
    assert ucum_for_unece("RPM") == ucum_for_unece("M46") == "{rev}/min"
    assert ucum_for_unece("E92") == ucum_for_unece("E32") == "L/h"
    assert unece_for_ucum("{rev}/min") == REFERENCE["RPM"]
    assert unece_for_ucum("L/h") == REFERENCE["E92"]


@pytest.mark.parametrize("key", ["XYZ", "cel", "", UNIT_ID_UNKNOWN, 0, unit_id_of("C73")])
def test_unknown_codes_and_ids_map_to_none(key: str | int) -> None:
    assert ucum_for_unece(key) is None


# --- EUInformation as a server sends it -------------------------------------------------------


def test_eu_by_unit_id_in_the_unece_namespace() -> None:
    assert ucum_for_eu(NAMESPACE_URI, 4408652, "°C") == "Cel"
    assert ucum_for_eu(NAMESPACE_URI, unit_id_of("M46"), "rpm") == "{rev}/min"
    # The unit id wins over a display name that says otherwise.
    assert ucum_for_eu(NAMESPACE_URI, unit_id_of("MLT"), "%") == "mL"


@pytest.mark.parametrize(
    ("namespace_uri", "unit_id"),
    [
        (NAMESPACE_URI, UNIT_ID_UNKNOWN),
        ("", UNIT_ID_UNKNOWN),
        ("urn:vendor:units", 42),
        # A known Rec 20 code not mapped here: picohenry, whose symbol is also "pH".
        (NAMESPACE_URI, unit_id_of("C73")),
    ],
)
def test_eu_falls_back_on_the_display_name(namespace_uri: str, unit_id: int) -> None:
    assert ucum_for_eu(namespace_uri, unit_id, "pH") == "[pH]"
    assert ucum_for_eu(namespace_uri, unit_id, " % ") == "%"


def test_eu_ids_outside_the_unece_namespace_are_not_read_as_rec20() -> None:
    assert ucum_for_eu("urn:vendor:units", unit_id_of("CEL"), "°C") is None


@pytest.mark.parametrize("display_name", ["", "°C", "furlong", "ph", "counts"])
def test_eu_unknown_everything_is_none(display_name: str) -> None:
    assert ucum_for_eu(NAMESPACE_URI, UNIT_ID_UNKNOWN, display_name) is None
    assert ucum_for_eu("", 0, display_name) is None
