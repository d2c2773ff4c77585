"""UCUM ↔ UNECE Recommendation 20 units, for OPC UA ``EUInformation``.

The gateway speaks UCUM (``mL/min``, ``Cel``, ``[pH]``); OPC UA identifies a unit by its UNECE
Recommendation 20 *common code* (``41``, ``CEL``, ``Q30``) packed into an Int32 ``UnitId``
(OPC 10000-8 §5.6.3: each ASCII character of the code shifted in, first character highest), in
the namespace :data:`NAMESPACE_URI`, with a ``DisplayName`` (the symbol) and a ``Description``
(the name). This module is the pure mapping between the two, for whoever builds or reads an
``EUInformation``: an OPC UA server publishing the gateway's signals, a driver reading a
controller's units. It does no I/O and knows nothing of asyncua.

Where the codes come from: UnitId, DisplayName and Description are copied from the OPC
Foundation's ``Schema/UNECE_to_OPCUA.csv`` (repository ``OPCFoundation/UA-Nodeset``), the table
OPC UA conformance tests check ``EUInformation`` against; ``tests/data/unece_units.csv`` holds the
rows used here and the tests compare every row with it. Three Rec 20 codes that table lacks are
used because it has no equivalent for them (:data:`OFF_TABLE_CODES`): ``P1`` percent,
``E90`` reciprocal centimetre, and ``E32`` litre per hour (accepted on input only; ``L/h`` is
published as ``E92``, cubic decimetre per hour, which is the same unit and in the table). A
server that must pass conformance tests may prefer to publish no unit for those.

Not covered: UCUM codes with no Rec 20 unit — arbitrary annotations (``{counts}``, ``{cells}``)
and scaled counts (``10*6/mL``); see :data:`NO_UNECE_UNIT`. Only the units a bioprocess gateway
meets are listed, not all of Rec 20, and no UCUM expression is parsed: ``unece_for_ucum("ml/min")``
and ``unece_for_ucum("cm3/min")`` are ``None`` (UCUM codes are case-sensitive and the lookup is by
the exact code). Units are mapped one to one, never converted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAPPINGS",
    "NAMESPACE_URI",
    "NO_UNECE_UNIT",
    "OFF_TABLE_CODES",
    "UNIT_ID_UNKNOWN",
    "UneceUnit",
    "ucum_for_eu",
    "ucum_for_unece",
    "unece_for_ucum",
    "unit_id_of",
]

NAMESPACE_URI: Final = "http://www.opcfoundation.org/UA/units/un/cefact"
"""``EUInformation.NamespaceUri`` of units identified by a UNECE Rec 20 common code."""

UNIT_ID_UNKNOWN: Final = -1
"""``EUInformation.UnitId`` meaning "no unit id" (OPC 10000-8 §5.6.3)."""


@dataclass(frozen=True, slots=True)
class UneceUnit:
    """A UNECE Rec 20 unit as OPC UA ``EUInformation`` carries it."""

    code: str
    """The Rec 20 common code, e.g. ``"CEL"``."""
    unit_id: int
    """``EUInformation.UnitId``: the common code packed into an Int32 (:func:`unit_id_of`)."""
    display_name: str
    """``EUInformation.DisplayName``: the unit's symbol, e.g. ``"°C"``."""
    description: str
    """``EUInformation.Description``: the unit's name, e.g. ``"degree Celsius"``."""


# UCUM code, Rec 20 common code, UnitId, DisplayName, Description — the last three exactly as in
# UNECE_to_OPCUA.csv. The first row for a UCUM code is the one unece_for_ucum returns; later rows
# for the same UCUM code are other codes a server may send for it, accepted by ucum_for_unece.
_TABLE: Final[tuple[tuple[str, str, int, str, str], ...]] = (
    # temperature
    ("Cel", "CEL", 4408652, "°C", "degree Celsius"),
    ("K", "KEL", 4932940, "K", "kelvin"),
    ("[degF]", "FAH", 4604232, "°F", "degree Fahrenheit"),
    # dimensionless
    ("1", "C62", 4404786, "1", "one"),
    ("%", "P1", 20529, "%", "percent"),  # Rec 20; not in UNECE_to_OPCUA.csv
    ("[pH]", "Q30", 5321520, "pH", "pH (potential of Hydrogen)"),
    # rates and frequencies
    ("{rev}/min", "RPM", 5394509, "r/min", "revolutions per minute"),
    ("{rev}/min", "M46", 5059638, "r/min", "revolution per minute"),
    ("/min", "C94", 4405556, "min⁻¹", "reciprocal minute"),
    ("/h", "H10", 4731184, "1/h", "reciprocal hour"),
    ("/s", "C97", 4405559, "s⁻¹", "reciprocal second"),
    ("Hz", "HTZ", 4740186, "Hz", "hertz"),
    ("kHz", "KHZ", 4933722, "kHz", "kilohertz"),
    # volume
    ("mL", "MLT", 5065812, "ml", "millilitre"),
    ("L", "LTR", 5002322, "l", "litre"),
    # volume flow
    ("mL/s", "40", 13360, "ml/s", "millilitre per second"),
    ("mL/min", "41", 13361, "ml/min", "millilitre per minute"),
    ("mL/h", "G55", 4666677, "ml/h", "millilitre per hour"),
    ("L/s", "G51", 4666673, "l/s", "litre per second"),
    ("L/min", "L2", 19506, "l/min", "litre per minute"),
    # The table has no E32 (litre per hour); E92 is the same unit under its SI name.
    ("L/h", "E92", 4536626, "dm³/h", "cubic decimetre per hour"),
    ("L/h", "E32", 4535090, "l/h", "litre per hour"),  # Rec 20; not in UNECE_to_OPCUA.csv
    ("L/d", "LD", 19524, "l/d", "litre per day"),
    # concentration
    ("g/L", "GL", 18252, "g/l", "gram per litre"),
    ("mg/L", "M1", 19761, "mg/l", "milligram per litre"),
    ("ug/L", "H29", 4731449, "µg/l", "microgram per litre"),
    ("mol/L", "C38", 4404024, "mol/l", "mole per litre"),
    ("mmol/L", "M33", 5059379, "mmol/l", "millimole per litre"),
    # amount of substance
    ("mol", "C34", 4404020, "mol", "mole"),
    ("mmol", "C18", 4403512, "mmol", "millimole"),
    # mass and mass flow
    ("kg", "KGM", 4933453, "kg", "kilogram"),
    ("g", "GRM", 4674125, "g", "gram"),
    ("mg", "MGM", 5064525, "mg", "milligram"),
    ("ug", "MC", 19779, "µg", "microgram"),
    ("g/h", "F27", 4600375, "g/h", "gram per hour"),
    ("kg/h", "E93", 4536627, "kg/h", "kilogram per hour"),
    # pressure
    ("bar", "BAR", 4342098, "bar", "bar [unit of pressure]"),
    ("mbar", "MBR", 5063250, "mbar", "millibar"),
    ("Pa", "PAL", 5259596, "Pa", "pascal"),
    ("hPa", "A97", 4274487, "hPa", "hectopascal"),
    ("kPa", "KPA", 4935745, "kPa", "kilopascal"),
    ("[psi]", "PS", 20563, "lbf/in²", "pound-force per square inch"),
    # time
    ("s", "SEC", 5457219, "s", "second [unit of time]"),
    ("ms", "C26", 4403766, "ms", "millisecond"),
    ("us", "B98", 4340024, "µs", "microsecond"),
    ("min", "MIN", 5065038, "min", "minute [unit of time]"),
    ("h", "HUR", 4740434, "h", "hour"),
    ("d", "DAY", 4473177, "d", "day"),
    # length, wavelength, wavenumber
    ("m", "MTR", 5067858, "m", "metre"),
    ("cm", "CMT", 4410708, "cm", "centimetre"),
    ("mm", "MMT", 5066068, "mm", "millimetre"),
    ("um", "4H", 13384, "µm", "micrometre (micron)"),
    ("nm", "C45", 4404277, "nm", "nanometre"),
    ("cm-1", "E90", 4536624, "cm⁻¹", "reciprocal centimetre"),  # Rec 20; not in the CSV
    # electrical
    ("V", "VLT", 5655636, "V", "volt"),
    ("mV", "2Z", 12890, "mV", "millivolt"),
    ("A", "AMP", 4279632, "A", "ampere"),
    ("mA", "4K", 13387, "mA", "milliampere"),
    ("uS/cm", "G42", 4666418, "µS/cm", "microsiemens per centimetre"),
    ("mS/cm", "H61", 4732465, "mS/cm", "millisiemens per centimetre"),
    # power
    ("W", "WTT", 5723220, "W", "watt"),
    ("mW", "C31", 4404017, "mW", "milliwatt"),
)

OFF_TABLE_CODES: Final = frozenset({"P1", "E32", "E90"})
"""Rec 20 codes used here that the OPC Foundation's ``UNECE_to_OPCUA.csv`` does not list."""

NO_UNECE_UNIT: Final = frozenset(
    {
        "{counts}",
        "{cells}",
        "10*6/mL",
        "10*6/L",
        "10*9/L",
        # A capacitance probe's permittivity and cell factor, and a UV detector's milli
        # absorbance units: Rec 20 has no code for them.
        "pF/cm",
        "10*6.cm/(mL.pF)",
        "{mAU}",
    }
)
"""UCUM codes the gateway meets that have no Rec 20 unit: :func:`unece_for_ucum` gives ``None``."""

# Display names a server may send without a usable unit id, for units whose UCUM code is
# unambiguous from the symbol alone.
_BY_DISPLAY_NAME: Final[dict[str, str]] = {"pH": "[pH]", "%": "%"}


MAPPINGS: Final[tuple[tuple[str, UneceUnit], ...]] = tuple(
    (ucum, UneceUnit(code, unit_id, display_name, description))
    for ucum, code, unit_id, display_name, description in _TABLE
)
"""Every (UCUM code, UNECE unit) pair known here, canonical pair first for each UCUM code."""

_BY_UCUM: Final[dict[str, UneceUnit]] = {}
for _ucum, _unit in MAPPINGS:
    _BY_UCUM.setdefault(_ucum, _unit)
_UCUM_BY_CODE: Final[dict[str, str]] = {unit.code: ucum for ucum, unit in MAPPINGS}
_UCUM_BY_UNIT_ID: Final[dict[int, str]] = {unit.unit_id: ucum for ucum, unit in MAPPINGS}
del _ucum, _unit


def unit_id_of(code: str) -> int:
    """The OPC UA ``UnitId`` of a Rec 20 common code (OPC 10000-8 §5.6.3).

    Each character's ASCII value is shifted in, first character highest:
    ``"CEL"`` → ``0x43454C`` = 4408652, ``"41"`` → ``0x3431`` = 13361. Raises
    :class:`ValueError` for a code that is not 1 to 3 printable, non-blank ASCII characters.
    """
    if not 1 <= len(code) <= 3 or not all("!" <= char <= "~" for char in code):
        raise ValueError(f"not a UNECE common code: {code!r} (1 to 3 printable ASCII characters)")
    unit_id = 0
    for char in code:
        unit_id = unit_id << 8 | ord(char)
    return unit_id


def unece_for_ucum(ucum: str) -> UneceUnit | None:
    """The UNECE unit for a UCUM code, or ``None`` when there is none (``{counts}``, ``10*6/mL``).

    The lookup is by the exact, case-sensitive UCUM code; where Rec 20 has several codes for the
    unit, the one in the OPC Foundation's table is returned (``{rev}/min`` → ``RPM``).
    """
    return _BY_UCUM.get(ucum)


def ucum_for_unece(code_or_unit_id: str | int) -> str | None:
    """The UCUM code for a Rec 20 common code (``"RPM"``) or OPC UA ``UnitId`` (5394509).

    Every code known here is accepted, including those :func:`unece_for_ucum` never returns
    (``M46`` and ``RPM`` both give ``{rev}/min``). ``None`` for a code or id not known here,
    including :data:`UNIT_ID_UNKNOWN`.
    """
    if isinstance(code_or_unit_id, str):
        return _UCUM_BY_CODE.get(code_or_unit_id)
    return _UCUM_BY_UNIT_ID.get(code_or_unit_id)


def ucum_for_eu(namespace_uri: str, unit_id: int, display_name: str) -> str | None:
    """The UCUM code for an ``EUInformation`` as a server sends it, or ``None``.

    By unit id when the namespace is :data:`NAMESPACE_URI` and the id is known here; otherwise
    by the display name, for the few symbols that name one unit unambiguously (``"pH"`` →
    ``[pH]``, ``"%"`` → ``%``) — servers that leave the unit id at -1 or use their own namespace
    often still send those. The unit id wins when both are present and disagree.
    """
    if namespace_uri == NAMESPACE_URI and unit_id != UNIT_ID_UNKNOWN:
        ucum = _UCUM_BY_UNIT_ID.get(unit_id)
        if ucum is not None:
            return ucum
    return _BY_DISPLAY_NAME.get(display_name.strip())
