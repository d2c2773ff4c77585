"""What the emulated bioreactor controller (DCU) shows: its variables, units and readings.

Pure data and arithmetic, no OPC UA: :mod:`~firmware_stubs.bioreactor.controller` serves what
this module computes. For whoever reads the controller (the gateway's OPC UA driver, a test
client) this is the reference of the variables below ``BioreactorController``:

* ``Temperature.PV`` / ``.SP`` — Double, °C, UnitId 4408652 (CEL), EURange 0-50;
* ``pH.PV`` / ``.SP`` — Double, pH, UnitId 5321520 (Q30), EURange 0-14; the PV is what the
  pH probe reads (the true pH plus the probe's drift under the ``ph_probe_drift`` fault), and
  the pH loop controls on it;
* ``DissolvedOxygen.PV`` / ``.SP`` — Double, % of air saturation, UnitId 20529 (P1), 0-100;
* ``Agitation.PV`` / ``.SP`` — Double, r/min, UnitId 5394509 (RPM), EURange 0-1000;
* ``GasFlows.Air``, ``.O2``, ``.CO2``, ``.N2`` — Double, l/min, UnitId 19506 (L2), EURange up to
  the mass-flow controller's full scale (below);
* ``Pumps.BaseTotal``, ``.AcidTotal``, ``.FeedTotal`` — Double, ml, UnitId 5065812 (MLT), no
  EURange: base dosed by the pH controller, acid dosed (always 0: the model lowers the pH with
  CO2, as CHO processes mostly do), feed medium received;
* ``Batch.Age`` — Double, h, UnitId 4740434 (HUR), no EURange: the batch age, culture time
  since inoculation, as a DCU's batch timer shows it (process time: it runs ``time_scale``
  times faster than the wall clock). A clock, not a measurement of the broth;
* ``Alarms.TemperatureDeviation`` (``|PV - SP| > 1 °C``), ``Alarms.pHDeviation``
  (``|PV - SP| > 0.1``), ``Alarms.DOLow`` (``PV < SP - 10 %``) — Boolean;
* ``Emulation.Glucose``, ``.Lactate``, ``.Titer`` — Double, g/L, UnitId 18252 (GL);
  ``Emulation.Glutamine`` — Double, mM, UnitId 5059379 (M33, millimole per litre);
  ``Emulation.ViableCellDensity`` — Double, 1e6 cells/mL, UnitId -1 with DisplayName
  "10⁶ cells/mL" (Rec. 20 has no code for a cell count per volume); ``Emulation.pH`` — the
  true pH, Double, pH (Q30); none has an EURange.

The ``Emulation`` group is the emulator's own, and **a real controller has no such values**:
they are the process model's *true* concentrations and cell density, which no instrument
measures without error (a real DCU knows the broth only through probes and offline samples).
They exist so that demos and tests can put a soft sensor's predictions (e.g. glucose and lactate
from Raman spectra) next to the truth, for validation only: nothing in the gateway may use them
to detect, estimate or control. ``Pumps.FeedTotal`` is such a truth too: the feed volume the
culture truly received, which is less than the pump's own ``total_volume`` when its tubing
wears (``tubing_wear``). They are read-only and follow the same rules as every
other variable: the same timestamps, StatusCode Good, Bad under the ``bad_values`` fault, still
under ``frozen``.

A perfusion run (decision 0024) adds:

* ``Perfusion.Rate.SP`` / ``.PV`` — Double, l/d (litres per *process* day), UnitId 19524 (LD),
  EURange 0 to 5 working volumes a day: the perfusion pump's rate of fresh medium; the SP is
  writable;
* ``Bleed.Rate.SP`` / ``.PV`` — Double, l/d (LD), EURange 0 to 1 working volume a day: the
  bleed pump's rate of culture with its cells out; the SP is writable; the PV is 0 while the
  low-level interlock (volume below half the working volume) stops the pump;
* ``Harvest.Flow`` — Double, l/d (LD), EURange as the perfusion's: cell-free permeate out of the
  retention filter, level-controlled (perfusion + base - bleed);
* ``Retention.TMP`` — Double, mbar, UnitId 5063250 (MBR), EURange 0-1000: the retention
  filter's transmembrane pressure (it rises as the filter fouls);
* ``Media.Lot`` — Int32, no unit: the lot number of the medium flowing in now;
* ``Volume`` — Double, l, UnitId 5002322 (LTR), EURange 0 to 1.5 working volumes (directly below
  ``BioreactorController``);
* truth: ``Emulation.HarvestTiter``, ``.HarvestHCP`` (in the permeate), ``.HCP`` (in the
  reactor) — Double, g/L (GL); ``Emulation.Sieving`` — the product sieving of the filter, Double,
  UnitId 4404786 (C62, "1"); ``Emulation.SpecificProductivity`` — Double, pg/cell/day, UnitId -1
  (no Rec. 20 code); ``Emulation.Deviation`` — Boolean, an injected process deviation
  (``temperature_excursion``) is active.

Only the setpoints (four, six in perfusion) are writable. A UnitId packs the UNECE Rec. 20 common
code's ASCII characters into an Int32 (OPC UA Part 8 §5.6.3). They are hard-coded here on purpose:
the emulator is the independent check of the driver's own unit mapping, so it shares no code with
it. CEL, RPM, L2, MLT, GL and M33, with their display names, are rows of the OPC Foundation's
``UNECE_to_OPCUA.csv``; P1 (percent) is packed the same way, though the current CSV lacks it. The pH
is Q30 (5321520, "pH"), as the CSV lists it; many real controllers send UnitId -1 with DisplayName
"pH" instead, which the gateway's driver accepts too.

The model has no stirrer: :class:`AgitationDrive` is a motor whose speed follows its setpoint.
Gas flows are derived from the model's controllers, for display only (they do not act back on
the model), with the mass-flow controllers sized for the initial working volume ``V`` (vvm =
volume of gas per volume of culture per minute): the DO controller's kLa demand
``d = (kLa - kLa_min) / (kLa_max - kLa_min)`` drives a two-stage cascade, air from 0.005 to
0.05 vvm over the first half of ``d``, then oxygen from 0 to 0.05 vvm over the second half;
CO2 is the pH controller's acid side (0 to 0.01 vvm as its output goes from 0 to -100 %); N2
strips oxygen, 0 to 0.05 vvm as DO rises 0 to 20 % above its setpoint while kLa is at its
minimum.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .model import PerfusionParams, ProcessParams, ProcessState

__all__ = [
    "ALARM_BANDS",
    "CELSIUS",
    "EMULATION_GROUP",
    "GRAM_PER_LITRE",
    "GROUP_DESCRIPTIONS",
    "HOUR",
    "LITRE",
    "LITRE_PER_DAY",
    "LITRE_PER_MINUTE",
    "MILLIBAR",
    "MILLILITRE",
    "MILLIMOLE_PER_LITRE",
    "MILLION_CELLS_PER_ML",
    "ONE",
    "PERCENT",
    "PG_PER_CELL_DAY",
    "PH",
    "RPM",
    "UNITS_NAMESPACE_URI",
    "AgitationDrive",
    "EngineeringUnit",
    "Variable",
    "readings",
    "variables",
]

#: Namespace of every EUInformation here (OPC UA Part 8 §5.6.3).
UNITS_NAMESPACE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"


@dataclass(frozen=True, slots=True)
class EngineeringUnit:
    """One ``EUInformation``: UNECE common code, its packed UnitId, display name, description."""

    code: str
    """UNECE Rec. 20 common code ("" when there is none)."""
    unit_id: int
    """The code's ASCII characters packed into an Int32 (-1 when there is no code)."""
    display_name: str
    description: str


CELSIUS = EngineeringUnit("CEL", 4408652, "°C", "degree Celsius")
PERCENT = EngineeringUnit("P1", 20529, "%", "percent")
PH = EngineeringUnit("Q30", 5321520, "pH", "pH (potential of Hydrogen)")
RPM = EngineeringUnit("RPM", 5394509, "r/min", "revolutions per minute")
LITRE_PER_MINUTE = EngineeringUnit("L2", 19506, "l/min", "litre per minute")
MILLILITRE = EngineeringUnit("MLT", 5065812, "ml", "millilitre")
GRAM_PER_LITRE = EngineeringUnit("GL", 18252, "g/l", "gram per litre")
MILLIMOLE_PER_LITRE = EngineeringUnit("M33", 5059379, "mmol/l", "millimole per litre")
HOUR = EngineeringUnit("HUR", 4740434, "h", "hour")
LITRE = EngineeringUnit("LTR", 5002322, "l", "litre")
LITRE_PER_DAY = EngineeringUnit("LD", 19524, "l/d", "litre per day")
MILLIBAR = EngineeringUnit("MBR", 5063250, "mbar", "millibar")
ONE = EngineeringUnit("C62", 4404786, "1", "one")
#: No Rec. 20 code either: a mass per cell and day.
PG_PER_CELL_DAY = EngineeringUnit(
    "", -1, "pg/(cell·d)", "picogram per cell and day (no UNECE Rec. 20 code)"
)
#: Rec. 20 has no code for a number of cells per volume: UnitId -1 ("no unit id", OPC UA Part 8
#: §5.6.3) and a display name a person reads; a client cannot check it and must trust its config.
MILLION_CELLS_PER_ML = EngineeringUnit(
    "", -1, "10⁶ cells/mL", "million cells per millilitre (no UNECE Rec. 20 code)"
)

#: The group of the process model's true values: emulator only, never on a real controller.
EMULATION_GROUP = "Emulation"
#: Description of the group objects that need one, so that a person browsing the address space
#: cannot take the true values for measurements.
GROUP_DESCRIPTIONS = {
    EMULATION_GROUP: (
        "Emulator only, no real controller has these: the emulated process's true values, for"
        " comparing soft sensors with the truth (validation only, never for control)"
    ),
    "Batch": "Batch timer: culture time since inoculation (a clock, not a measurement)",
    "Perfusion": "Perfusion pump: fresh medium in, litres per process day",
    "Bleed": "Bleed pump: culture with its cells out, litres per process day",
    "Harvest": "Cell-free permeate out of the retention filter (level-controlled)",
    "Retention": "Cell-retention filter (ATF/TFF)",
    "Media": "Perfusion medium",
}

#: Normal operating ranges of a perfusion run's pumps and vessel, in working volumes (a day).
_PERFUSION_MAX_VVD = 5.0
_BLEED_MAX_VVD = 1.0
_VESSEL_MAX_VOLUMES = 1.5
_TMP_RANGE_MBAR = (0.0, 1000.0)

#: How far a PV may leave its setpoint before the alarm of its loop is raised.
ALARM_BANDS = {"temperature_C": 1.0, "ph": 0.1, "do_low_pct": 10.0}

#: Agitation speed at start, and the range the drive accepts, r/min.
AGITATION_DEFAULT_RPM = 150.0
AGITATION_RANGE_RPM = (0.0, 1000.0)

# Gas cascade, in vvm (L of gas per L of culture per minute), sized for a bench vessel.
_AIR_MIN_VVM = 0.005
_AIR_MAX_VVM = 0.05
_O2_MAX_VVM = 0.05
_CO2_MAX_VVM = 0.01
_N2_MAX_VVM = 0.05
#: DO excess over its setpoint at which the N2 strip is fully open, %.
_N2_FULL_EXCESS_PCT = 20.0


@dataclass(frozen=True, slots=True)
class Variable:
    """One variable of the controller, below ``BioreactorController``."""

    path: str
    """Dotted path below the controller object, e.g. ``"Temperature.PV"``."""
    description: str
    unit: EngineeringUnit | None = None
    """Engineering unit of an analog (Double) variable; ``None`` for a Boolean alarm."""
    eu_range: tuple[float, float] | None = None
    """Normal operating range (``EURange``) where one makes sense."""
    writable: bool = False
    """True for setpoints: clients may write them, within ``eu_range``."""
    integer: bool = False
    """An Int32 without a unit (a count or a number, e.g. the media lot); with no unit and not
    integer, a Boolean."""

    @property
    def is_analog(self) -> bool:
        return self.unit is not None


def variables(
    params: ProcessParams, perfusion: PerfusionParams | None = None
) -> tuple[Variable, ...]:
    """Every variable the controller serves, in address-space order (with ``perfusion``, those
    of a perfusion run too). The gas flows' ranges are the mass-flow controllers' full scale
    for the run's initial working volume."""
    v = params.volume_L
    loops = (
        ("Temperature", "culture temperature", CELSIUS, (0.0, 50.0)),
        ("pH", "culture pH", PH, (0.0, 14.0)),
        ("DissolvedOxygen", "dissolved oxygen, % of air saturation", PERCENT, (0.0, 100.0)),
        ("Agitation", "stirrer speed", RPM, AGITATION_RANGE_RPM),
    )
    found: list[Variable] = []
    for loop, what, unit, eu_range in loops:
        found += _loop(loop, what, unit, eu_range)
    for gas, max_vvm, what in (
        ("Air", _AIR_MAX_VVM, "air sparged (first stage of the DO cascade)"),
        ("O2", _O2_MAX_VVM, "oxygen sparged (second stage of the DO cascade)"),
        ("CO2", _CO2_MAX_VVM, "CO2 sparged by the pH controller to lower the pH"),
        ("N2", _N2_MAX_VVM, "nitrogen sparged to strip oxygen when DO is above its setpoint"),
    ):
        found.append(
            Variable(f"GasFlows.{gas}", f"Flow of {what}", LITRE_PER_MINUTE, (0.0, v * max_vvm))
        )
    found += [
        Variable("Pumps.BaseTotal", "Base solution dosed by the pH controller", MILLILITRE),
        Variable("Pumps.AcidTotal", "Acid dosed (none: the pH is lowered with CO2)", MILLILITRE),
        Variable(
            "Pumps.FeedTotal",
            "Feed medium the culture truly received since inoculation (emulator truth: less"
            " than the pump's own total when its tubing wears)",
            MILLILITRE,
        ),
        Variable("Batch.Age", "Batch age: culture time since inoculation", HOUR),
        Variable(
            "Alarms.TemperatureDeviation",
            f"Temperature more than {ALARM_BANDS['temperature_C']:g} °C from its setpoint",
        ),
        Variable("Alarms.pHDeviation", f"pH more than {ALARM_BANDS['ph']:g} from its setpoint"),
        Variable(
            "Alarms.DOLow", f"DO more than {ALARM_BANDS['do_low_pct']:g} % below its setpoint"
        ),
    ]
    for leaf, what, unit in (
        ("Glucose", "glucose", GRAM_PER_LITRE),
        ("Lactate", "lactate", GRAM_PER_LITRE),
        ("Glutamine", "glutamine", MILLIMOLE_PER_LITRE),
        ("ViableCellDensity", "viable cell density", MILLION_CELLS_PER_ML),
        ("Titer", "product (antibody) titer", GRAM_PER_LITRE),
        ("pH", "pH (the probe behind pH.PV may drift from it)", PH),
    ):
        found.append(_truth(leaf, what, unit))
    if perfusion is not None:
        found += _perfusion_variables(v)
    return tuple(found)


def _loop(
    loop: str, what: str, unit: EngineeringUnit, eu_range: tuple[float, float]
) -> tuple[Variable, Variable]:
    """A loop's measured value and its writable setpoint."""
    return (
        Variable(f"{loop}.PV", f"Measured {what}", unit, eu_range),
        Variable(f"{loop}.SP", f"Setpoint of the {what}", unit, eu_range, True),
    )


def _truth(leaf: str, what: str, unit: EngineeringUnit | None) -> Variable:
    return Variable(
        f"{EMULATION_GROUP}.{leaf}",
        f"True {what} of the emulated process (emulator only: no real controller has it)",
        unit,
    )


def _perfusion_variables(v: float) -> list[Variable]:
    """The pumps, filter, medium and volume of a perfusion run, and its truths."""
    perfusion_range = (0.0, _PERFUSION_MAX_VVD * v)
    bleed_range = (0.0, _BLEED_MAX_VVD * v)
    found = [
        *_loop(
            "Perfusion.Rate",
            "perfusion rate (fresh medium in), l per process day",
            LITRE_PER_DAY,
            perfusion_range,
        ),
        *_loop(
            "Bleed.Rate",
            "bleed rate (culture with cells out), l per process day",
            LITRE_PER_DAY,
            bleed_range,
        ),
        Variable(
            "Harvest.Flow",
            "Cell-free permeate out of the retention filter, l per process day",
            LITRE_PER_DAY,
            perfusion_range,
        ),
        Variable(
            "Retention.TMP",
            "Transmembrane pressure of the cell-retention filter",
            MILLIBAR,
            _TMP_RANGE_MBAR,
        ),
        Variable("Media.Lot", "Lot number of the perfusion medium flowing in now", integer=True),
        Variable("Volume", "Working volume", LITRE, (0.0, _VESSEL_MAX_VOLUMES * v)),
    ]
    for leaf, what, unit in (
        ("HarvestTiter", "product (antibody) titer in the harvest", GRAM_PER_LITRE),
        ("HarvestHCP", "host-cell protein in the harvest", GRAM_PER_LITRE),
        ("HCP", "host-cell protein in the reactor", GRAM_PER_LITRE),
        ("Sieving", "product sieving of the retention filter (harvest / reactor titer)", ONE),
        ("SpecificProductivity", "specific productivity", PG_PER_CELL_DAY),
        ("Deviation", "state of an injected process deviation (True while active)", None),
    ):
        found.append(_truth(leaf, what, unit))
    return found


class AgitationDrive:
    """The stirrer motor the process model lacks: its speed follows the setpoint with a
    first-order lag of ``tau_s`` wall seconds, and each reading carries a little noise.

    Not thread-safe; the controller calls it from the event loop only.
    """

    def __init__(
        self,
        setpoint_rpm: float = AGITATION_DEFAULT_RPM,
        *,
        tau_s: float = 1.0,
        noise_rpm: float = 0.3,
        seed: int = 0,
    ) -> None:
        if not tau_s > 0.0:
            raise ValueError(f"tau_s must be > 0, not {tau_s!r}")
        self.setpoint_rpm = setpoint_rpm
        self.speed_rpm = setpoint_rpm
        self.tau_s = tau_s
        self.noise_rpm = noise_rpm
        self._rng = random.Random(seed)

    def step(self, dt_s: float) -> None:
        """Let ``dt_s`` wall seconds pass (exact for a constant setpoint, however they split)."""
        if dt_s > 0.0:
            self.speed_rpm += (self.setpoint_rpm - self.speed_rpm) * -math.expm1(-dt_s / self.tau_s)

    def reading(self) -> float:
        """The measured speed now: the true speed plus noise, never below 0."""
        return max(0.0, self.speed_rpm + self._rng.gauss(0.0, self.noise_rpm))


def readings(
    state: ProcessState, params: ProcessParams, agitation: AgitationDrive
) -> dict[str, float | bool]:
    """The value of every variable of :func:`variables`, by path, for the process ``state``."""
    v = params.volume_L
    span = params.kla_max_per_h - params.kla_min_per_h
    demand = (state.kla_per_h - params.kla_min_per_h) / span if span > 0.0 else 0.0
    demand = min(1.0, max(0.0, demand))
    air = _AIR_MIN_VVM + (_AIR_MAX_VVM - _AIR_MIN_VVM) * min(1.0, 2.0 * demand)
    o2 = _O2_MAX_VVM * max(0.0, 2.0 * demand - 1.0)
    co2 = _CO2_MAX_VVM * min(1.0, max(0.0, -state.ph_output_pct / 100.0))
    excess = (state.do_pct - state.do_sp_pct) / _N2_FULL_EXCESS_PCT
    n2 = _N2_MAX_VVM * min(1.0, max(0.0, excess)) if demand == 0.0 else 0.0
    return {
        "Temperature.PV": state.temperature_C,
        "Temperature.SP": state.temperature_sp_C,
        "pH.PV": state.ph_probe,
        "pH.SP": state.ph_sp,
        "DissolvedOxygen.PV": state.do_pct,
        "DissolvedOxygen.SP": state.do_sp_pct,
        "Agitation.PV": agitation.reading(),
        "Agitation.SP": agitation.setpoint_rpm,
        "GasFlows.Air": v * air,
        "GasFlows.O2": v * o2,
        "GasFlows.CO2": v * co2,
        "GasFlows.N2": v * n2,
        "Pumps.BaseTotal": state.base_added_mL,
        "Pumps.AcidTotal": 0.0,
        "Pumps.FeedTotal": state.fed_volume_L * 1000.0,
        "Alarms.TemperatureDeviation": abs(state.temperature_C - state.temperature_sp_C)
        > ALARM_BANDS["temperature_C"],
        "Batch.Age": state.time_h,
        "Alarms.pHDeviation": abs(state.ph_probe - state.ph_sp) > ALARM_BANDS["ph"],
        "Alarms.DOLow": state.do_pct < state.do_sp_pct - ALARM_BANDS["do_low_pct"],
        "Emulation.Glucose": state.glucose_g_L,
        "Emulation.Lactate": state.lactate_g_L,
        "Emulation.Glutamine": state.glutamine_mM,
        "Emulation.ViableCellDensity": state.vcd_e6_per_mL,
        "Emulation.Titer": state.titer_g_L,
        "Emulation.pH": state.ph,
        # A perfusion run's (0, lot 1 and no deviation in a fed-batch).
        "Perfusion.Rate.PV": state.perfusion_L_per_d,
        "Perfusion.Rate.SP": state.perfusion_sp_L_per_d,
        "Bleed.Rate.PV": state.bleed_L_per_d,
        "Bleed.Rate.SP": state.bleed_sp_L_per_d,
        "Harvest.Flow": state.harvest_L_per_d,
        "Retention.TMP": state.tmp_mbar,
        "Media.Lot": state.media_lot,
        "Volume": state.volume_L,
        "Emulation.HarvestTiter": state.harvest_titer_g_L,
        "Emulation.HarvestHCP": state.harvest_hcp_g_L,
        "Emulation.HCP": state.hcp_g_L,
        "Emulation.Sieving": state.product_sieving,
        "Emulation.SpecificProductivity": state.qp_pg_per_cell_day,
        "Emulation.Deviation": state.deviation,
    }
