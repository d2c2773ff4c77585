"""UCUM unit codes: validation at configuration time and conversions compiled to a multiply-add.

UCUM (unitsofmeasure.org) is the gateway's internal unit language. Codes are parsed with
``ucumvert`` into ``pint`` units once, when the configuration loads; a conversion between two
units is then reduced to ``value * scale + offset`` (:class:`Conversion`), so the per-sample cost
is one multiply and one add, with no pint on the hot path.

What pint and ucumvert answered is remembered on disk (:class:`_Memo`: codes found valid and
compiled conversions, in the user's cache folder, keyed by both libraries' versions): a start
whose units were all seen before imports neither library (on the benchmark's configuration:
7 MB resident and ~0.5 s less for ``patgw run``). Invalid codes are never remembered: they
are parsed again for their message.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import math
import os
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .errors import UnitError

__all__ = ["IDENTITY", "Conversion", "compile_conversion", "validate_ucum"]


@dataclass(frozen=True, slots=True)
class Conversion:
    """A linear unit conversion ``y = x * scale + offset`` (temperatures need the offset)."""

    scale: float = 1.0
    offset: float = 0.0

    @property
    def is_identity(self) -> bool:
        """True when converting changes nothing, so the hot path can skip it."""
        return self.scale == 1.0 and self.offset == 0.0

    def __call__(self, value: float) -> float:
        return value * self.scale + self.offset

    def then(self, other: Conversion) -> Conversion:
        """The conversion that applies ``self`` first, then ``other``."""
        return Conversion(self.scale * other.scale, self.offset * other.scale + other.offset)


IDENTITY = Conversion()


@functools.cache
def _ucum() -> tuple[Any, Any, Any]:
    """Build the pint registry and UCUM parser once per process."""
    import pint
    import ucumvert
    from ucumvert import UcumToPintTransformer, get_ucum_parser

    try:
        # Parsed definitions cached on disk (the user's cache folder, keyed by the files'
        # content): building the registry drops from ~0.5 s to ~0.05 s, a good part of start-up.
        registry: Any = pint.UnitRegistry(
            autoconvert_offset_to_baseunit=False, cache_folder=":auto:"
        )
    except Exception:  # no writable cache folder, a cache file being written by another process
        registry = pint.UnitRegistry(autoconvert_offset_to_baseunit=False)
    registry.load_definitions(Path(ucumvert.__file__).resolve().parent / "pint_ucum_defs.txt")
    # ucumvert maps [pH] to "pH_value" but leaves it undefined. pH is logarithmic; we give it a
    # dimension of its own so it converts only to itself and never silently to mol/L.
    registry.define("pH_value = [acidity]")
    return registry, get_ucum_parser(), UcumToPintTransformer(ureg=registry)


@functools.cache
def _parse(code: str) -> Any:
    registry, parser, transformer = _ucum()
    from ucumvert import parse_ucum

    if not code or code != code.strip():
        raise UnitError(f"unknown UCUM unit {code!r}")
    try:
        tree = parse_ucum(code, parser)
    except Exception as exc:  # ucumvert raises lark errors of several kinds
        raise UnitError(f"unknown UCUM unit {code!r}") from exc
    try:
        parsed = transformer.transform(tree)
    except Exception as exc:  # valid UCUM that pint cannot represent, e.g. Cel/min
        raise UnitError(
            f"UCUM unit {code!r} is valid but not supported (no linear conversion is defined"
            " for it); use an equivalent such as K/min"
        ) from exc
    if not isinstance(parsed, registry.Quantity):
        # A bare annotation such as "{cells}" is the dimensionless unit 1 in UCUM.
        parsed = registry.Quantity(1, "dimensionless")
    return parsed


_MEMO_FORMAT = 1  # bump when what _parse accepts or compile_conversion computes changes
_MEMO_MAX = 4096  # entries of each kind: a configuration has dozens; fuzzing must not grow it


class _Memo:
    """Valid codes and conversions found by pint in earlier runs (a JSON file, replaced
    atomically; a missing, unreadable or foreign file is ignored: it is only a cache).
    ``PATGW_UNIT_CACHE=off`` disables it; ``PATGW_UNIT_CACHE=<folder>`` moves it."""

    def __init__(self) -> None:
        self.valid: set[str] = set()
        self.conversions: dict[str, tuple[float, float]] = {}
        self.path = self._path()
        self._dirty = False
        if self.path is not None:
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                data = json.loads(self.path.read_text(encoding="utf-8"))
                valid = data["valid"]
                conversions = data["conversions"]
                if all(type(code) is str for code in valid) and all(
                    type(k) is str and len(v) == 2 and all(type(x) is float for x in v)
                    for k, v in conversions.items()
                ):
                    self.valid = set(valid)
                    self.conversions = {k: (v[0], v[1]) for k, v in conversions.items()}

    @staticmethod
    def _path() -> Path | None:
        setting = os.environ.get("PATGW_UNIT_CACHE", "")
        if setting.lower() in ("off", "0", "no", "false"):
            return None
        if setting:
            folder = Path(setting)
        else:
            base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
                os.path.expanduser("~"), ".cache"
            )
            folder = Path(base) / "patgw"
        versions = []
        for package in ("pint", "ucumvert"):
            try:
                versions.append(version(package))
            except PackageNotFoundError:
                return None
        return folder / f"ucum-{_MEMO_FORMAT}-pint{versions[0]}-ucumvert{versions[1]}.json"

    def remember_valid(self, code: str) -> None:
        if code not in self.valid and len(self.valid) < _MEMO_MAX:
            self.valid.add(code)
            self._changed()

    def remember_conversion(self, key: str, conversion: Conversion) -> None:
        if len(self.conversions) >= _MEMO_MAX:
            return
        self.conversions[key] = (float(conversion.scale), float(conversion.offset))
        self._changed()

    def _changed(self) -> None:
        if not self._dirty and self.path is not None:
            self._dirty = True
            atexit.register(self.save)

    def save(self) -> None:
        """Write the file (at exit, if anything was learnt); failures are ignored."""
        if not self._dirty or self.path is None:
            return
        self._dirty = False
        data = {"valid": sorted(self.valid), "conversions": self.conversions}
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ucum-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(data, out)
                os.replace(tmp, self.path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


@functools.cache
def _memo() -> _Memo:
    return _Memo()


def validate_ucum(code: str) -> str:
    """Return ``code`` if it is a valid UCUM code, else raise :class:`UnitError`."""
    memo = _memo()
    if code not in memo.valid:
        _parse(code)
        memo.remember_valid(code)
    return code


def compile_conversion(source: str, target: str) -> Conversion:
    """Compile the conversion from UCUM unit ``source`` to ``target`` into a :class:`Conversion`.

    Raises :class:`UnitError` when either code is invalid or the units are not commensurable
    (``mL/min`` → ``g/L``).
    """
    if source == target:
        validate_ucum(source)
        return IDENTITY
    memo = _memo()
    key = f"{source}\n{target}"
    known = memo.conversions.get(key)
    if known is not None:
        return Conversion(*known)
    conversion = _compile(source, target)
    memo.remember_conversion(key, conversion)
    return conversion


def _compile(source: str, target: str) -> Conversion:
    src, dst = _parse(source), _parse(target)
    if not src.is_compatible_with(dst):
        raise UnitError(f"cannot convert {source!r} to {target!r}: incompatible dimensions")
    registry = _ucum()[0]

    def convert(x: float) -> float:
        # The magnitudes carry prefactors such as the 10*6 in "10*6/mL".
        quantity = registry.Quantity(x * src.magnitude, src.units)
        return float(quantity.to(dst.units).magnitude / dst.magnitude)

    offset = convert(0.0)
    scale = convert(1.0) - offset
    probe = 1234.5
    if not math.isclose(convert(probe), probe * scale + offset, rel_tol=1e-9, abs_tol=1e-9):
        raise UnitError(f"cannot convert {source!r} to {target!r}: conversion is not linear")
    return Conversion(scale, offset)
