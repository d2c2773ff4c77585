"""Physics of an emulated in-line capacitance (viable biomass) probe, Hamilton Incyte / Aber
Futura style.

Pure state and arithmetic, no I/O and no clock: the caller hands each measurement the culture it
sees (:class:`Culture`, from the shared bioreactor process or a constant one) and the hours of
its time base, so tests drive the probe deterministically.

What a real probe measures, and what this one computes:

* Cells with an intact membrane (viable cells) polarise in a radio-frequency field: the
  suspension's permittivity rises by the beta-dispersion, d_eps = 9 P r Cm / 4 (Pauly & Schwan),
  with P the viable biovolume fraction (VCD x cell volume), r the cell radius and Cm the
  membrane capacitance (~1 µF/cm²). Dead cells (leaky membranes) and debris do not count.
* The dispersion is a Debye relaxation with critical frequency fc = 1 / (2 pi r Cm (1/k_i +
  1/(2 k_m))) (k_i cytoplasm, k_m medium conductivity), ~1 MHz for CHO. A dual-frequency probe
  reports eps(f) - eps(f_background) = d_eps (1/(1+(f/fc)²) - 1/(1+(f_bg/fc)²)), which removes
  the medium's and the electrodes' own permittivity.
* The probe's viable cell density is its permittivity times a cell factor (1e6 cells/mL per
  pF/cm), calibrated offline against cell counts. It is *not* the truth: the permittivity grows
  with r⁴ per cell (biovolume and radius), so a slow drift of the mean cell diameter over the
  run (cells grow larger late in culture) biases it, as it does on real probes.
* Conductivity (mS/cm) is the medium's, at the culture temperature (2 %/K from 25 °C), raised by
  the base the pH loop doses, lowered by the non-conducting cells (Maxwell).
* Temperature is the probe's own sensor: the culture's, with a little noise.

The status word (``STATUS_*`` bits) is what the probe's firmware can know by itself: a reading
whose conductivity jumps from its recent level (gas bubbles on the electrodes), a reading outside
the measuring range, a failed electrode. Fouling of the electrodes is invisible to it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ..schedule import Ramp

__all__ = [
    "STATUS_ERROR",
    "STATUS_RANGE",
    "STATUS_UNSTABLE",
    "Culture",
    "ProbeModel",
    "ProbeParams",
    "Reading",
    "calibrated_cell_factor",
    "cell_diameter_um",
    "conductivity_mS_per_cm",
    "permittivity_pF_per_cm",
]

#: Status bit: the reading is unstable (its conductivity jumped from its recent level: bubbles).
STATUS_UNSTABLE = 0x0001
#: Status bit: permittivity or conductivity outside the measuring range.
STATUS_RANGE = 0x0002
#: Status bit: probe failure (electrode or cable); the readings are 0 and worthless.
STATUS_ERROR = 0x0010

#: Measuring range of the permittivity, pF/cm.
PERMITTIVITY_RANGE = (-10.0, 400.0)
#: Measuring range of the conductivity, mS/cm.
CONDUCTIVITY_RANGE = (1.0, 40.0)
#: Cell diameters the model accepts, µm (a drift stops at the bounds).
DIAMETER_RANGE_UM = (8.0, 25.0)
#: Relative jump of the conductivity from its recent level that the firmware flags unstable.
UNSTABLE_JUMP = 0.05
#: Weight of a new stable reading in the firmware's running conductivity level.
_LEVEL_WEIGHT = 0.2
#: Unstable readings in a row, agreeing with each other, after which the firmware takes them for
#: the new level.
_RELEARN_AFTER = 5

_EPSILON_UNIT = 1e12  # F/cm -> pF/cm


@dataclass(frozen=True, slots=True)
class ProbeParams:
    """The probe's electronics and the cells' electrical properties."""

    frequency_khz: float = 580.0
    """Measuring frequency, kHz (below the cells' critical frequency)."""
    background_khz: float = 10000.0
    """Background frequency, kHz, whose permittivity is subtracted (dual-frequency mode)."""
    diameter_um: float = 15.0
    """Mean viable cell diameter at inoculation, µm (CHO: 13-17)."""
    diameter_drift_um_per_d: float = 0.02
    """Slow drift of the mean cell diameter, µm per day of the time base (signed)."""
    membrane_uF_per_cm2: float = 1.0
    """Specific membrane capacitance, µF/cm²."""
    cytoplasm_mS_per_cm: float = 5.0
    """Conductivity of the cytoplasm, mS/cm."""
    medium_mS_per_cm: float = 12.5
    """Conductivity of the fresh medium at 25 °C, mS/cm."""
    base_mS_per_cm_per_mL_L: float = 0.1
    """Conductivity added per mL of base dosed per L of culture, mS/cm (1 M NaOH)."""
    permittivity_noise: float = 0.1
    """Standard deviation of the permittivity noise, pF/cm."""
    conductivity_noise: float = 0.01
    """Standard deviation of the conductivity noise, mS/cm."""
    temperature_noise: float = 0.02
    """Standard deviation of the temperature noise, °C."""

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, not {value!r}")
        if not 0.0 < self.frequency_khz < self.background_khz:
            raise ValueError("need 0 < frequency_khz < background_khz")
        lo, hi = DIAMETER_RANGE_UM
        if not lo <= self.diameter_um <= hi:
            raise ValueError(f"diameter_um {self.diameter_um:g} outside {lo:g}..{hi:g}")
        for name in ("membrane_uF_per_cm2", "cytoplasm_mS_per_cm", "medium_mS_per_cm"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"{name} must be > 0")
        for name in (
            "base_mS_per_cm_per_mL_L",
            "permittivity_noise",
            "conductivity_noise",
            "temperature_noise",
        ):
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True, slots=True)
class Culture:
    """What the probe is immersed in at one measurement (the truth it cannot see directly)."""

    vcd_e6_per_mL: float
    """Viable cell density, 1e6 cells/mL."""
    temperature_C: float
    """Culture temperature, °C."""
    base_mL_per_L: float = 0.0
    """Base dosed so far per litre of culture, mL/L."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement, as the probe reports it."""

    permittivity_pF_per_cm: float
    conductivity_mS_per_cm: float
    vcd_e6_per_mL: float
    temperature_C: float
    status: int
    count: int
    """Measurements taken since power-up (this one included)."""


def cell_diameter_um(params: ProbeParams, hours: float) -> float:
    """Mean viable cell diameter after ``hours`` of the time base, µm (drift within bounds)."""
    lo, hi = DIAMETER_RANGE_UM
    return min(hi, max(lo, params.diameter_um + params.diameter_drift_um_per_d * hours / 24.0))


def conductivity_mS_per_cm(params: ProbeParams, culture: Culture, diameter_um: float) -> float:
    """The suspension's conductivity, mS/cm (noise-free)."""
    medium_25 = params.medium_mS_per_cm + params.base_mS_per_cm_per_mL_L * max(
        0.0, culture.base_mL_per_L
    )
    medium = medium_25 * (1.0 + 0.02 * (culture.temperature_C - 25.0))
    fraction = _volume_fraction(culture.vcd_e6_per_mL, diameter_um)
    # Maxwell: non-conducting spheres at volume fraction P in a conducting medium.
    return max(0.0, medium * (1.0 - fraction) / (1.0 + fraction / 2.0))


def permittivity_pF_per_cm(
    params: ProbeParams, vcd_e6_per_mL: float, diameter_um: float, medium_mS_per_cm: float
) -> float:
    """The dual-frequency permittivity of viable cells, pF/cm (noise-free)."""
    radius_cm = diameter_um * 0.5e-4
    fraction = _volume_fraction(vcd_e6_per_mL, diameter_um)
    membrane_F_per_cm2 = params.membrane_uF_per_cm2 * 1e-6
    delta = 9.0 * fraction * radius_cm * membrane_F_per_cm2 / 4.0 * _EPSILON_UNIT
    # Resistivities in ohm.cm (conductivities in mS/cm); radius in cm, capacitance in F/cm².
    resistance = 1000.0 / params.cytoplasm_mS_per_cm + 1000.0 / (2.0 * medium_mS_per_cm)
    critical_hz = 1.0 / (2.0 * math.pi * radius_cm * membrane_F_per_cm2 * resistance)
    f = params.frequency_khz * 1e3 / critical_hz
    f_bg = params.background_khz * 1e3 / critical_hz
    return delta * (1.0 / (1.0 + f * f) - 1.0 / (1.0 + f_bg * f_bg))


def calibrated_cell_factor(params: ProbeParams, temperature_C: float = 37.0) -> float:
    """The cell factor (1e6 cells/mL per pF/cm) of an offline calibration at inoculation: the
    probe's VCD equals the true VCD for cells of the starting diameter in fresh medium."""
    medium = conductivity_mS_per_cm(params, Culture(0.0, temperature_C), params.diameter_um)
    return 1.0 / permittivity_pF_per_cm(params, 1.0, params.diameter_um, medium)


def _volume_fraction(vcd_e6_per_mL: float, diameter_um: float) -> float:
    radius_cm = diameter_um * 0.5e-4
    cells_per_cm3 = max(0.0, vcd_e6_per_mL) * 1e6
    return min(0.9, cells_per_cm3 * 4.0 / 3.0 * math.pi * radius_cm**3)


class ProbeModel:
    """One probe: its calibration, faults and noise stream, measured explicitly.

    ``seed`` (≥ 0) selects the noise stream: the same cultures, hours and faults give the same
    readings. Not thread-safe.
    """

    def __init__(
        self, params: ProbeParams | None = None, *, cell_factor: float | None = None, seed: int = 0
    ) -> None:
        self.params = params if params is not None else ProbeParams()
        self.cell_factor = (
            calibrated_cell_factor(self.params) if cell_factor is None else cell_factor
        )
        self.check_cell_factor(self.cell_factor)
        self._rng = random.Random(seed)
        self.count = 0
        #: Probability that a measurement has a gas bubble on the electrodes (0 = none).
        self.bubble_probability = 0.0
        #: The fouling layer's permittivity offset over the hours of the time base, or none.
        self.fouling: Ramp | None = None
        #: A probe failure is latched (electrode or cable).
        self.failed = False
        #: The permittivity a zero set aside, pF/cm, subtracted from every later measurement.
        self.zero_offset = 0.0
        self._last_raw: float | None = None  # the last measured permittivity, before the zero
        self._level: float | None = None  # the firmware's running conductivity level
        self._unstable: list[float] = []  # conductivities of the unstable readings in a row

    @staticmethod
    def check_cell_factor(value: float) -> None:
        """``ValueError`` unless ``value`` is a usable cell factor: finite, in (0, 100]."""
        if not (math.isfinite(value) and 0.0 < value <= 100.0):
            raise ValueError(f"cell factor {value!r} outside (0, 100] 1e6 cells/mL per pF/cm")

    def set_cell_factor(self, value: float) -> None:
        """Change the calibration (what a write of the cell-factor register does)."""
        self.check_cell_factor(value)
        self.cell_factor = float(value)

    def zero(self) -> None:
        """Zero the permittivity (what a write of 1 to the zero register does): the latest
        measurement, before any earlier zero, becomes the baseline subtracted from the next
        ones — in medium before inoculation, or to take a fouling layer out. ``ValueError``
        while a probe failure is latched or before the first measurement."""
        if self.failed:
            raise ValueError("cannot zero: a probe failure is latched")
        if self._last_raw is None:
            raise ValueError("cannot zero before the first measurement")
        self.zero_offset = self._last_raw

    def clean(self, culture: Culture, hours: float) -> tuple[float, float]:
        """Noise- and fault-free permittivity (pF/cm) and conductivity (mS/cm) of ``culture``
        after ``hours``: what a perfect probe would read."""
        diameter = cell_diameter_um(self.params, hours)
        conductivity = conductivity_mS_per_cm(self.params, culture, diameter)
        # The cells' critical frequency depends on the medium around them (no cells: P = 0).
        medium = conductivity_mS_per_cm(
            self.params, Culture(0.0, culture.temperature_C, culture.base_mL_per_L), diameter
        )
        return (
            permittivity_pF_per_cm(self.params, culture.vcd_e6_per_mL, diameter, medium),
            conductivity,
        )

    def measure(self, culture: Culture, hours: float) -> Reading:
        """Take one measurement of ``culture`` after ``hours`` of the time base."""
        p = self.params
        rng = self._rng
        self.count += 1
        permittivity, conductivity = self.clean(culture, hours)
        permittivity += rng.gauss(0.0, p.permittivity_noise)
        conductivity += rng.gauss(0.0, p.conductivity_noise)
        temperature = culture.temperature_C + rng.gauss(0.0, p.temperature_noise)
        if self.fouling is not None:
            permittivity += self.fouling.at(hours)
        if self.bubble_probability > 0.0 and rng.random() < self.bubble_probability:
            # A bubble screens part of the electrodes: the conductivity dips, the permittivity
            # spikes either way (the electrode polarisation changes with it).
            covered = rng.uniform(0.2, 0.8)
            conductivity *= 1.0 - covered
            permittivity *= 1.0 + rng.choice((-1.0, 1.0)) * covered
        if not self.failed:
            self._last_raw = permittivity
            permittivity -= self.zero_offset
        status = 0
        if self.failed:
            permittivity = conductivity = 0.0
            status |= STATUS_ERROR
        else:
            level = self._level
            if level is not None and abs(conductivity - level) > UNSTABLE_JUMP * level:
                status |= STATUS_UNSTABLE
                run = self._unstable = [*self._unstable[1 - _RELEARN_AFTER :], conductivity]
                middle = sorted(run)[len(run) // 2]
                if len(run) == _RELEARN_AFTER and all(
                    abs(c - middle) <= UNSTABLE_JUMP * middle for c in run
                ):
                    # Not bubbles (they scatter) but a real step, steady since: follow it.
                    self._level = middle
                    self._unstable = []
            else:
                self._unstable = []
                self._level = (
                    conductivity
                    if level is None
                    else level + _LEVEL_WEIGHT * (conductivity - level)
                )
            lo, hi = PERMITTIVITY_RANGE
            c_lo, c_hi = CONDUCTIVITY_RANGE
            if not (lo <= permittivity <= hi and c_lo <= conductivity <= c_hi):
                status |= STATUS_RANGE
        return Reading(
            permittivity_pF_per_cm=permittivity,
            conductivity_mS_per_cm=conductivity,
            vcd_e6_per_mL=permittivity * self.cell_factor,
            temperature_C=temperature,
            status=status,
            count=self.count,
        )
