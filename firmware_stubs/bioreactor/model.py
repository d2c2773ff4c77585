"""A deterministic fed-batch CHO cell culture: the process behind every emulated instrument.

Pure state and arithmetic, no I/O and no clock. The emulated feed pump adds feed
(:meth:`FedBatchModel.add_feed`), the emulated Raman spectrometer reads concentrations
(:attr:`FedBatchModel.state`) to synthesise spectra, and a bioreactor-controller emulator reads
temperature, pH and dissolved oxygen. The caller decides how much process time passes
(:meth:`FedBatchModel.advance`); :class:`~firmware_stubs.bioreactor.clock.ProcessClock` maps wall
time onto it.

The model is an unstructured, unsegregated culture model of the kind used in CHO process
development (Monod growth on glucose and glutamine, first-order death, specific uptake and
production rates), plus three closed loops as a bioreactor controller (DCU) runs them:

* temperature: a first-order vessel losing heat to the room, heated by a PI-controlled blanket;
* pH: lactate and respiratory CO2 acidify a bicarbonate buffer; a split-range PI controller adds
  base (1 M, counted and added to the volume) above its midpoint and sparges CO2 below it;
* dissolved oxygen: cells take up oxygen in proportion to their number; a PI controller sets the
  volumetric transfer coefficient kLa (the gassing/agitation cascade, lumped), DO kept in 0-100 %.

Everything is integrated by explicit Euler with one fixed step (``ProcessParams.step_h``); the
step count is derived from the exact (rational) sum of every ``advance``, so how a span of time is
split into calls never changes the result. Process noise is drawn once per step from a seeded
PCG64 stream, so a run depends only on the parameters, the seed and the inputs.

Dissolved species are kept as *amounts* in the vessel (g, mmol, cells) and divided by the volume
only when read: feeding dilutes without any extra term, and the glucose balance
``glucose mass - initial mass == glucose_fed_g - glucose_consumed_g - glucose_removed_g`` holds to
rounding.

**Perfusion mode** (``FedBatchModel(params, perfusion=PerfusionParams(...))``, decision 0024):
fresh medium flows in at ``perfusion_L_per_d``, culture with its cells leaves by the bleed
(``bleed_L_per_d``), and a cell-retention device (ATF/TFF) lets cell-free permeate out as the
harvest, level-controlled so the volume stays at ``params.volume_L`` (harvest = perfusion + base -
bleed). Cells, viable and dead, leave only by the bleed; glucose, glutamine and lactate leave with
every outflow; product and host-cell protein (HCP) pass the filter by a sieving coefficient that
fouling lowers. Growth slows with density (contact inhibition), so constant rates settle where
growth balances bleed and death; specific productivity declines slowly with culture age; dead
cells lyse and release HCP. The model tracks which medium lot the vessel's liquid came from
(ideal mixing). With ``perfusion=None`` (fed-batch) none of this runs and the results are the
fed-batch model's, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from fractions import Fraction

import numpy as np

__all__ = [
    "FedBatchModel",
    "PerfusionParams",
    "ProcessParams",
    "ProcessState",
    "perfusion_process_params",
    "steady_state_problem",
]

#: Molar mass of lactic acid, g/mmol: turns a lactate rate in g/L/h into an acid load in mM/h.
_LACTATE_G_PER_MMOL = 0.09008

#: A step boundary closer than this (in steps) counts as reached, so that splits of the same
#: time whose float sums differ in the last bit (3 * 1/3 h against 1 h) give the same step count.
_SNAP_STEPS = Fraction(1, 10**9)

#: ProcessParams fields that must be strictly positive.
_POSITIVE_PARAMS = (
    "volume_L",
    "viability_pct",
    "ks_glucose_g_L",
    "ks_glutamine_mM",
    "ks_lactate_g_L",
    "lactate_shift_glucose_g_L",
    "thermal_tau_h",
    "heater_gain_C_per_h",
    "temperature_ti_h",
    "buffer_capacity_mM_per_pH",
    "base_M",
    "ph_ti_h",
    "o2_saturation_mM",
    "do_ti_h",
)

#: Normal deviates drawn from the generator at a time; each step takes a fixed number of them.
_NOISE_BLOCK = 3 * 1024


def _check_numbers(params: ProcessParams | PerfusionParams, positive: tuple[str, ...]) -> None:
    """Every field of ``params`` a finite number ≥ 0, those named in ``positive`` > 0;
    ``ValueError`` naming the first that is not."""
    kind = type(params).__name__
    for field in fields(params):
        value = getattr(params, field.name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{kind}.{field.name} = {value!r}: need a finite number ≥ 0")
    for name in positive:
        if getattr(params, name) <= 0:
            raise ValueError(f"{kind}.{name} must be > 0")


@dataclass(frozen=True, slots=True)
class ProcessParams:
    """Initial conditions, kinetics, setpoints and controller tuning of one fed-batch run.

    The defaults describe a 2 L bench-scale CHO fed-batch making a monoclonal antibody. Kinetic
    constants are round, literature-plausible values for CHO, not a fit to one cell line: growth
    rates of 0.03-0.05 /h (doubling in 14-23 h), glucose uptake of 100-400 pg/cell/day, specific
    productivity of 10-50 pg/cell/day and oxygen uptake of 0.2-0.3 pmol/cell/h (e.g. 2.85e-13
    mol/cell/h in Jorjani & Ozturk, J. Biotechnol. 78 (2000) 139) are the usual ranges. Cell
    amounts use the unit of the viable cell density, 1e6 cells/mL.
    """

    # Initial conditions.
    volume_L: float = 2.0
    """Working volume at inoculation, L (must be > 0)."""
    vcd_e6_per_mL: float = 0.5
    """Viable cell density at inoculation, 1e6 cells/mL."""
    viability_pct: float = 98.0
    """Viability of the inoculum, % of all cells (must be > 0)."""
    glucose_g_L: float = 6.0
    """Glucose in the basal medium, g/L."""
    lactate_g_L: float = 0.2
    """Lactate carried over with the inoculum, g/L."""
    glutamine_mM: float = 4.0
    """Glutamine in the basal medium, mM."""
    titer_g_L: float = 0.0
    """Product (antibody) at inoculation, g/L."""

    # Feed medium.
    feed_glucose_g_L: float = 400.0
    """Glucose in the feed medium, g/L: a concentrated glucose feed, so bolus volumes are small."""
    feed_glutamine_mM: float = 0.0
    """Glutamine in the feed medium, mM (0: glutamine runs out and ends the growth phase)."""

    # Growth and death.
    mu_max_per_h: float = 0.04
    """Maximum specific growth rate, 1/h (doubling time ln 2 / 0.04 ≈ 17 h)."""
    ks_glucose_g_L: float = 0.15
    """Monod half-saturation constant of growth and uptake on glucose, g/L (≈ 0.8 mM)."""
    ks_glutamine_mM: float = 0.3
    """Monod half-saturation constant of growth and uptake on glutamine, mM."""
    kd_per_h: float = 0.001
    """Specific death rate with every nutrient in excess, 1/h."""
    kd_limited_per_h: float = 0.002
    """Extra specific death rate once growth is arrested by a missing nutrient, 1/h; scaled by
    the square of the limitation (1 - growth factor), so it matters only near arrest."""
    kd_glucose_starved_per_h: float = 0.03
    """Extra specific death rate without any glucose, 1/h, scaled by the square of the glucose
    limitation: cells starved of their energy source die within days."""

    # Uptake and production.
    q_glucose_pg_per_cell_h: float = 9.0
    """Maximum specific glucose uptake, pg/cell/h (≈ 220 pg/cell/day ≈ 1.2 pmol/cell/day)."""
    q_glutamine_pmol_per_cell_h: float = 0.007
    """Maximum specific glutamine uptake, pmol/cell/h (≈ 0.17 pmol/cell/day)."""
    lactate_yield_g_per_g: float = 0.5
    """Lactate made per glucose taken up while growing at mu_max, g/g (overflow metabolism);
    it scales with mu / mu_max, so lactate production stops when growth stops."""
    q_lactate_uptake_pg_per_cell_h: float = 2.0
    """Maximum specific lactate uptake ("lactate shift"), pg/cell/h (≈ 50 pg/cell/day)."""
    ks_lactate_g_L: float = 0.3
    """Half-saturation constant of lactate uptake, g/L."""
    lactate_shift_glucose_g_L: float = 1.0
    """Glucose concentration at which lactate uptake is half-inhibited, g/L: cells turn to
    lactate when glucose runs low."""
    q_product_pg_per_cell_day: float = 25.0
    """Specific productivity of the antibody, pg/cell/day: non-growth-associated, but scaled by
    the glucose Monod factor (secretion needs energy)."""

    # Setpoints.
    temperature_sp_C: float = 36.8
    """Temperature setpoint, °C."""
    ph_sp: float = 7.0
    """pH setpoint."""
    do_sp_pct: float = 40.0
    """Dissolved oxygen setpoint, % of air saturation."""

    # Temperature: first-order vessel plus a PI-controlled heating blanket.
    ambient_C: float = 22.0
    """Room temperature the vessel loses heat to, °C."""
    thermal_tau_h: float = 1.5
    """Time constant of the vessel's heat loss to the room, h."""
    heater_gain_C_per_h: float = 30.0
    """Heating rate at full heater power, °C/h."""
    temperature_kp_per_C: float = 0.5
    """Proportional gain of the temperature loop, heater fraction per °C."""
    temperature_ti_h: float = 0.5
    """Integral time of the temperature loop, h."""
    temperature_noise_C_per_sqrt_h: float = 0.05
    """Intensity of temperature process noise (room draughts), °C/√h."""

    # pH: buffer, acid loads, split-range PI on base / CO2.
    buffer_capacity_mM_per_pH: float = 25.0
    """Buffer capacity of the medium (bicarbonate, phosphate, HEPES), mM acid per pH unit."""
    co2_acid_mM_per_h_per_vcd: float = 0.004
    """Acid load of the respiratory CO2 that gassing does not strip, mM/h per 1e6 cells/mL."""
    base_M: float = 1.0
    """Concentration of the base solution (e.g. Na2CO3 as equivalents), mol/L."""
    base_max_mM_per_h: float = 5.0
    """Base addition at full controller output, mmol per litre of culture per hour."""
    co2_max_mM_per_h: float = 2.0
    """Acid load of CO2 sparging at full controller output (the other half of the range), mM/h."""
    ph_kp_per_pH: float = 10.0
    """Proportional gain of the pH loop, output fraction (-1 CO2 … +1 base) per pH unit."""
    ph_ti_h: float = 1.0
    """Integral time of the pH loop, h."""
    ph_deadband: float = 0.01
    """Half-width of the band around the pH setpoint in which the controller acts on no error
    (as DCUs do, so that noise does not make base and CO2 fight), pH units."""
    ph_noise_per_sqrt_h: float = 0.002
    """Intensity of pH process noise, pH units/√h."""

    # Dissolved oxygen: uptake by cells, PI controller on kLa.
    q_o2_pmol_per_cell_h: float = 0.25
    """Specific oxygen uptake rate, pmol/cell/h."""
    o2_saturation_mM: float = 0.21
    """Dissolved oxygen at 100 % air saturation and culture temperature, mM."""
    kla_min_per_h: float = 0.5
    """Oxygen transfer coefficient with the gassing at its minimum (headspace only), 1/h."""
    kla_max_per_h: float = 60.0
    """Oxygen transfer coefficient with the gassing cascade at its maximum, 1/h."""
    do_kp_per_h_pct: float = 0.5
    """Proportional gain of the DO loop, kLa in 1/h per % DO."""
    do_ti_h: float = 0.25
    """Integral time of the DO loop, h."""
    do_noise_pct_per_sqrt_h: float = 2.0
    """Intensity of DO process noise (bubbles, foam), %/√h."""

    step_h: float = 1 / 360
    """Fixed integration step, h (1/360 h = 10 s of process time). Read as the nearest fraction
    with a denominator of at most 1e6, so keep it a simple fraction of an hour; keep it at or
    below about 1/60 h, as the DO loop (about 90 /h at peak kLa) is the stiffest dynamics.
    Accepted range 1e-4 to 1 h."""

    def __post_init__(self) -> None:
        # Divisors, and a culture that exists.
        _check_numbers(self, _POSITIVE_PARAMS)
        if self.viability_pct > 100:
            raise ValueError("ProcessParams.viability_pct must be ≤ 100")
        if self.kla_min_per_h > self.kla_max_per_h:
            raise ValueError("ProcessParams.kla_min_per_h must be ≤ kla_max_per_h")
        if not 1e-4 <= self.step_h <= 1:
            raise ValueError("ProcessParams.step_h must be in [1e-4, 1] h")


#: Highest oxygen transfer coefficient of a perfusion vessel, 1/h: at 40-60e6 cells/mL the
#: culture takes up 10-15 mM O2 per hour, which needs a kLa of about 100 /h at 40 % DO
#: (micro-sparged oxygen, as perfusion bioreactors have); the fed-batch default (60 /h) would
#: leave the DO at 0.
PERFUSION_KLA_MAX_PER_H = 150.0


def perfusion_process_params(**changes: float) -> ProcessParams:
    """:class:`ProcessParams` for a perfusion vessel: the defaults with the gassing sized for
    perfusion densities (:data:`PERFUSION_KLA_MAX_PER_H`), then ``changes``."""
    return dataclasses.replace(ProcessParams(kla_max_per_h=PERFUSION_KLA_MAX_PER_H), **changes)


#: PerfusionParams fields that must be strictly positive.
_POSITIVE_PERFUSION = ("density_inhibition_e6_per_mL", "density_inhibition_exponent")
#: PerfusionParams fields that are fractions (0..1).
_FRACTIONS = ("product_sieving", "hcp_sieving")


@dataclass(frozen=True, slots=True)
class PerfusionParams:
    """What makes a run a perfusion run: the initial pump rates, the perfusion medium, the
    cell-retention filter and the kinetics that matter only over weeks of culture.

    The defaults describe a 2 L CHO perfusion settling near 50e6 cells/mL with about 1.3 vessel
    volumes of medium a day (cell-specific perfusion rate ~25 pL/cell/day) and a bleed of about
    a tenth of it, glucose a few g/L above zero: round, literature-plausible values, not a fit.
    """

    perfusion_L_per_d: float = 2.6
    """Fresh medium in at the start, L/day (process time); the controller's Perfusion.Rate.SP."""
    bleed_L_per_d: float = 0.3
    """Culture (with its cells) out at the start, L/day; the controller's Bleed.Rate.SP."""
    medium_glucose_g_L: float = 12.0
    """Glucose in the perfusion medium, g/L."""
    medium_glutamine_mM: float = 10.0
    """Glutamine in the perfusion medium, mM."""
    density_inhibition_e6_per_mL: float = 32.0
    """Viable cell density at which growth is halved by density (contact inhibition, spent
    factors the medium does not wash out), 1e6 cells/mL (must be > 0): the growth rate is
    multiplied by ``1 / (1 + (VCD / this) ** exponent)``."""
    density_inhibition_exponent: float = 3.0
    """How sharply growth falls off around ``density_inhibition_e6_per_mL`` (must be > 0)."""
    product_sieving: float = 0.95
    """Fraction of the reactor's product concentration that passes the clean retention filter
    into the harvest (0..1)."""
    hcp_sieving: float = 0.9
    """Same for host-cell protein (0..1)."""
    qp_decline_per_d: float = 0.01
    """Loss of specific productivity per day of culture (cell-line stability): ``qP(t) = qP0 *
    exp(-qp_decline_per_d * days)``; 0.01 loses about a quarter in 30 days."""
    q_hcp_pg_per_cell_day: float = 2.0
    """Host-cell protein secreted by viable cells, pg/cell/day."""
    lysis_per_h: float = 0.02
    """Dead cells lyse at this specific rate, 1/h (and leave the cell count)."""
    hcp_per_lysed_cell_pg: float = 100.0
    """Host-cell protein a lysed cell releases, pg."""
    tmp_mbar_per_vvd: float = 25.0
    """Transmembrane pressure of the clean filter per vessel volume a day of harvest, mbar;
    fouling raises it as ``1 / (1 - fouling)`` at the same flux."""

    def __post_init__(self) -> None:
        _check_numbers(self, _POSITIVE_PERFUSION)
        for name in _FRACTIONS:
            if getattr(self, name) > 1:
                raise ValueError(f"PerfusionParams.{name} must be ≤ 1")


def max_net_growth_per_d(params: ProcessParams, perfusion: PerfusionParams) -> float:
    """The fastest net growth (growth minus death) the culture can reach in fresh perfusion
    medium at low density, 1/day: a bleed (per vessel volume) above it washes the cells out."""
    glucose = perfusion.medium_glucose_g_L
    glutamine = perfusion.medium_glutamine_mM
    f_nutrients = (
        glucose
        / (params.ks_glucose_g_L + glucose)
        * (glutamine / (params.ks_glutamine_mM + glutamine))
    )
    return 24.0 * (params.mu_max_per_h * f_nutrients - params.kd_per_h)


def steady_state_problem(params: ProcessParams, perfusion: PerfusionParams) -> str | None:
    """Why these initial rates cannot reach a steady state, or ``None`` if they can: a harvest
    that would be negative or zero (the bleed takes all the medium, or more), or a bleed faster
    than the cells can grow. Both rates 0 (a batch start, perfusion started later by the
    controller's setpoints) is fine."""
    perf, bleed = perfusion.perfusion_L_per_d, perfusion.bleed_L_per_d
    if perf == 0.0 and bleed == 0.0:
        return None
    if bleed >= perf:
        return (
            f"bleed_L_per_d ({bleed:g}) must be below perfusion_L_per_d ({perf:g}): the harvest"
            f" (perfusion - bleed) would be {perf - bleed:g} L/d, and the volume cannot be held"
        )
    growth = max_net_growth_per_d(params, perfusion)
    dilution = bleed / params.volume_L
    if dilution >= growth:
        return (
            f"bleed_L_per_d ({bleed:g}) removes {dilution:.3g} vessel volumes a day, but the"
            f" cells grow at most {max(growth, 0.0):.3g} /day net in this medium"
            f" (mu_max {params.mu_max_per_h:g} /h): they would wash out; keep the bleed below"
            f" {max(growth, 0.0) * params.volume_L:.3g} L/d (a fraction of that for a steady"
            " state at high density)"
        )
    return None


@dataclass(frozen=True, slots=True)
class ProcessState:
    """A snapshot of the culture and its controller, as instruments would measure it."""

    time_h: float
    """Process time since inoculation, h (a whole number of integration steps)."""
    volume_L: float
    """Working volume, L: initial volume + feed + base."""
    vcd_e6_per_mL: float
    """Viable cell density, 1e6 cells/mL."""
    viability_pct: float
    """Viable cells as % of all cells."""
    glucose_g_L: float
    """Glucose, g/L."""
    lactate_g_L: float
    """Lactate, g/L."""
    glutamine_mM: float
    """Glutamine, mM."""
    titer_g_L: float
    """Product (antibody), g/L."""
    temperature_C: float
    """Culture temperature, °C."""
    ph: float
    """Culture pH (the truth)."""
    ph_probe: float
    """pH the controller's probe reads, and its pH loop controls on: the true pH plus the
    probe's drift (equal to ``ph`` unless a drift is set with
    :meth:`FedBatchModel.set_ph_probe_drift`)."""
    do_pct: float
    """Dissolved oxygen, % of air saturation (0-100)."""
    fed_volume_L: float
    """Feed medium added so far, L."""
    glucose_fed_g: float
    """Glucose added with the feed so far, g (fed volume * feed concentration)."""
    glucose_consumed_g: float
    """Glucose taken up by the cells so far, g."""
    base_added_mL: float
    """Base solution added by the pH controller so far, mL."""
    heater_pct: float
    """Heater output, % of full power."""
    kla_per_h: float
    """Oxygen transfer coefficient set by the DO controller, 1/h."""
    ph_output_pct: float
    """Output of the split-range pH controller, -100 … +100 %: above 0 it doses base, below 0
    it sparges CO2 (what a controller emulator turns into a CO2 gas flow)."""
    temperature_sp_C: float
    """Temperature setpoint in force, °C."""
    ph_sp: float
    """pH setpoint in force."""
    do_sp_pct: float
    """DO setpoint in force, % of air saturation."""

    # Perfusion (decision 0024): all 0 (lot 1, no deviation) in a fed-batch run unless noted.
    perfusion_L_per_d: float = 0.0
    """Fresh perfusion medium flowing in, L/day of process time (the pump's actual rate)."""
    bleed_L_per_d: float = 0.0
    """Culture with its cells flowing out through the bleed, L/day (0 while the low-level
    interlock stops it)."""
    perfusion_sp_L_per_d: float = 0.0
    """Perfusion rate set (the controller's Perfusion.Rate.SP), L/day."""
    bleed_sp_L_per_d: float = 0.0
    """Bleed rate set (the controller's Bleed.Rate.SP), L/day."""
    harvest_L_per_d: float = 0.0
    """Cell-free permeate out of the retention filter, L/day: perfusion + base - bleed at
    constant volume (the harvest pump is level-controlled), over the last integration step."""
    harvest_titer_g_L: float = 0.0
    """Product in the permeate, g/L: product sieving x reactor titer."""
    harvest_hcp_g_L: float = 0.0
    """Host-cell protein in the permeate, g/L: HCP sieving x reactor HCP."""
    media_lot: int = 1
    """Lot number of the perfusion medium flowing in now (starts at 1)."""
    deviation: bool = False
    """An injected process deviation (``temperature_excursion``) is active now: truth, for
    validation only."""
    lot_shares: dict[int, float] = dataclasses.field(default_factory=lambda: {1: 1.0})
    """Share of the vessel's liquid (and so of the harvest leaving now) that came in with each
    medium lot, by lot number; sums to 1 (the initial fill counts as lot 1). A fresh dict per
    snapshot."""
    hcp_g_L: float = 0.0
    """Host-cell protein in the reactor, g/L."""
    product_sieving: float = 0.0
    """Product sieving of the retention filter now, 0..1 (falls as it fouls; 0 without one)."""
    hcp_sieving: float = 0.0
    """HCP sieving of the retention filter now, 0..1."""
    filter_fouling: float = 0.0
    """Fraction of the retention filter's permeability lost to fouling, 0..<1."""
    tmp_mbar: float = 0.0
    """Transmembrane pressure of the retention filter, mbar."""
    qp_pg_per_cell_day: float = 0.0
    """Specific productivity now (before the glucose limitation), pg/cell/day: declines with
    culture age in perfusion, constant in fed-batch."""
    glucose_removed_g: float = 0.0
    """Glucose carried out by bleed and harvest so far, g (the medium's is in glucose_fed_g)."""
    harvest_total_L: float = 0.0
    """Permeate harvested so far, L."""
    bleed_total_L: float = 0.0
    """Culture bled so far, L."""
    product_made_g: float = 0.0
    """Product secreted so far, g, in either mode (the balance: made = in the vessel - initial
    + harvested + bled)."""
    product_harvested_g: float = 0.0
    """Product carried out with the harvest so far, g."""
    product_bled_g: float = 0.0
    """Product carried out with the bleed so far, g."""
    hcp_made_g: float = 0.0
    """Host-cell protein secreted or released by lysis so far, g."""
    hcp_harvested_g: float = 0.0
    """Host-cell protein carried out with the harvest so far, g."""
    hcp_bled_g: float = 0.0
    """Host-cell protein carried out with the bleed so far, g."""


class FedBatchModel:
    """One bioreactor run, advanced explicitly in process time. Not thread-safe.

    ``seed`` (≥ 0) selects the process-noise stream: the same parameters, seed and sequence of
    ``advance``/``add_feed`` calls give bit-identical states, however the time is split.
    ``perfusion`` makes it a perfusion run (see the module docstring); ``None`` = fed-batch.
    """

    def __init__(
        self,
        params: ProcessParams | None = None,
        seed: int = 0,
        *,
        perfusion: PerfusionParams | None = None,
    ) -> None:
        p = params if params is not None else ProcessParams()
        self.params = p
        self.perfusion = perfusion
        """The perfusion parameters of a perfusion run; ``None`` for a fed-batch."""
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._noise: list[float] = []
        self._noise_at = 0

        self._step = Fraction(p.step_h).limit_denominator(10**6)
        self._dt = float(self._step)
        self._elapsed = Fraction(0)
        self._steps = 0

        # Amounts in the vessel: cells in units of 1e6 cells/mL * L (= 1e9 cells), glucose,
        # lactate and product in g, glutamine in mmol.
        v = p.volume_L
        self._volume = v
        self._viable = p.vcd_e6_per_mL * v
        self._dead = self._viable * (100.0 - p.viability_pct) / p.viability_pct
        self._glucose = p.glucose_g_L * v
        self._lactate = p.lactate_g_L * v
        self._glutamine = p.glutamine_mM * v
        self._product = p.titer_g_L * v
        self.initial_glucose_g = self._glucose
        """Glucose in the vessel at inoculation, g: the reference of the glucose balance."""

        # Faults: a factor on the growth rate, and the pH probe's offset and its drift.
        self._growth_factor = 1.0
        self._ph_offset = 0.0
        self._ph_drift_per_h = 0.0
        self._ph_drift_limit = 0.0

        self._fed = 0.0
        self._glucose_fed = 0.0
        self._glucose_consumed = 0.0
        self._base_mL = 0.0
        self._product_made = 0.0

        # Perfusion: pump rates (L/day) as set and as running over the last step, the filter,
        # the ageing of productivity, HCP and what left the vessel.
        self._perfusion_rate = perfusion.perfusion_L_per_d if perfusion else 0.0
        self._bleed_rate = perfusion.bleed_L_per_d if perfusion else 0.0
        self._bleed_now = self._bleed_rate
        self._harvest_now = max(0.0, self._perfusion_rate - self._bleed_rate)
        self._fouling = 0.0
        self._fouling_per_h = 0.0
        self._fouling_limit = 0.0
        self._qp_factor = 1.0
        self._hcp = 0.0
        self._hcp_made = 0.0
        self._hcp_harvested = 0.0
        self._hcp_bled = 0.0
        self._glucose_removed = 0.0
        self._harvest_total = 0.0
        self._bleed_total = 0.0
        self._product_harvested = 0.0
        self._product_bled = 0.0
        # Media lots: the liquid of the lot flowing in now (L), the older lots' amounts as of
        # when each was replaced, and one factor by which washout has shrunk all older lots
        # since (they only ever shrink together).
        self._media_lot = 1
        self._lot_now = v
        self._older_lots: dict[int, float] = {}
        self._older_scale = 1.0
        # An injected temperature excursion: the culture (and its probe) is this far off what
        # the loop holds.
        self._excursion_C = 0.0

        self._temperature_sp = p.temperature_sp_C
        self._ph_sp = p.ph_sp
        self._do_sp = p.do_sp_pct
        self._temperature = p.temperature_sp_C
        self._ph = p.ph_sp
        self._do = p.do_sp_pct
        # The controllers start bumpless, at the output that holds the initial state steady, as
        # after the hours of conditioning a vessel gets before inoculation.
        self._heater = (p.temperature_sp_C - p.ambient_C) / (
            p.thermal_tau_h * p.heater_gain_C_per_h
        )
        self._heater = min(1.0, max(0.0, self._heater))
        self._temperature_i = self._heater
        our = self._our_pct_per_h(p.vcd_e6_per_mL)
        kla = our / max(100.0 - p.do_sp_pct, 1.0)
        self._kla = min(p.kla_max_per_h, max(p.kla_min_per_h, kla))
        self._do_i = self._kla
        acid = p.co2_acid_mM_per_h_per_vcd * p.vcd_e6_per_mL
        self._ph_i = min(1.0, acid / p.base_max_mM_per_h) if p.base_max_mM_per_h > 0 else 0.0
        self._ph_out = self._ph_i

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> ProcessState:
        """The culture now (at the last whole integration step)."""
        v = self._volume
        total = self._viable + self._dead
        perf = self.perfusion
        # Without a retention filter (fed-batch) no sieving, no pressure.
        open_fraction = 1.0 - self._fouling
        product_sieving = perf.product_sieving * open_fraction if perf else 0.0
        hcp_sieving = perf.hcp_sieving * open_fraction if perf else 0.0
        flux_vvd = self._harvest_now / self.params.volume_L
        return ProcessState(
            time_h=float(self._steps * self._step),
            volume_L=v,
            vcd_e6_per_mL=self._viable / v,
            viability_pct=100.0 * self._viable / total if total > 0 else 0.0,
            glucose_g_L=self._glucose / v,
            lactate_g_L=self._lactate / v,
            glutamine_mM=self._glutamine / v,
            titer_g_L=self._product / v,
            temperature_C=self._temperature + self._excursion_C,
            ph=self._ph,
            ph_probe=self._ph + self._ph_offset,
            do_pct=self._do,
            fed_volume_L=self._fed,
            glucose_fed_g=self._glucose_fed,
            glucose_consumed_g=self._glucose_consumed,
            base_added_mL=self._base_mL,
            heater_pct=100.0 * self._heater,
            kla_per_h=self._kla,
            ph_output_pct=100.0 * self._ph_out,
            temperature_sp_C=self._temperature_sp,
            ph_sp=self._ph_sp,
            do_sp_pct=self._do_sp,
            perfusion_L_per_d=self._perfusion_rate,
            bleed_L_per_d=self._bleed_now,
            perfusion_sp_L_per_d=self._perfusion_rate,
            bleed_sp_L_per_d=self._bleed_rate,
            harvest_L_per_d=self._harvest_now,
            harvest_titer_g_L=product_sieving * self._product / v,
            harvest_hcp_g_L=hcp_sieving * self._hcp / v,
            media_lot=self._media_lot,
            deviation=self._excursion_C != 0.0,
            lot_shares=self._lot_shares(),
            hcp_g_L=self._hcp / v,
            product_sieving=product_sieving,
            hcp_sieving=hcp_sieving,
            filter_fouling=self._fouling,
            tmp_mbar=perf.tmp_mbar_per_vvd * flux_vvd / open_fraction if perf else 0.0,
            qp_pg_per_cell_day=self.params.q_product_pg_per_cell_day * self._qp_factor,
            glucose_removed_g=self._glucose_removed,
            harvest_total_L=self._harvest_total,
            bleed_total_L=self._bleed_total,
            product_made_g=self._product_made,
            product_harvested_g=self._product_harvested,
            product_bled_g=self._product_bled,
            hcp_made_g=self._hcp_made,
            hcp_harvested_g=self._hcp_harvested,
            hcp_bled_g=self._hcp_bled,
        )

    def _lot_shares(self) -> dict[int, float]:
        amounts = {lot: amount * self._older_scale for lot, amount in self._older_lots.items()}
        amounts[self._media_lot] = self._lot_now
        total = sum(amounts.values())
        if total <= 0.0:
            return {self._media_lot: 1.0}
        return {lot: amount / total for lot, amount in amounts.items()}

    @property
    def elapsed_h(self) -> float:
        """Process hours since inoculation, all the time given to :meth:`advance` (the last
        whole step plus the remainder carried into the next call)."""
        return float(self._elapsed)

    def set_growth_factor(self, factor: float) -> None:
        """Multiply the specific growth rate by ``factor`` (0..1) from now: a biological upset
        (1 = none). ``ValueError`` outside 0..1."""
        if not (math.isfinite(factor) and 0.0 <= factor <= 1.0):
            raise ValueError(f"growth factor must be in 0..1, not {factor!r}")
        self._growth_factor = float(factor)

    def set_ph_probe_drift(self, rate_per_h: float, limit: float = 1.0) -> None:
        """Let the pH probe drift from now on by ``rate_per_h`` pH units per process hour (signed),
        its offset from the true pH capped at ``limit`` in size; the pH loop controls on the
        drifting reading, so the true pH moves the other way. ``ValueError`` for a
        non-finite rate or a limit not > 0."""
        if not math.isfinite(rate_per_h):
            raise ValueError(f"pH drift rate must be finite, not {rate_per_h!r}")
        if not (math.isfinite(limit) and limit > 0.0):
            raise ValueError(f"pH drift limit must be > 0, not {limit!r}")
        self._ph_drift_per_h = float(rate_per_h)
        self._ph_drift_limit = float(limit)

    def recalibrate_ph_probe(self) -> None:
        """Stop the drift and zero the probe's offset (a recalibrated or new probe)."""
        self._ph_drift_per_h = 0.0
        self._ph_offset = 0.0

    def set_filter_fouling(self, rate_per_h: float, limit: float = 0.8) -> None:
        """Let the retention filter foul from now on: it loses ``rate_per_h`` of its
        permeability per process hour, up to ``limit`` (0 < limit < 1). The transmembrane
        pressure rises as ``1 / (1 - fouling)`` and the sieving of product and HCP falls as
        ``1 - fouling``. ``ValueError`` for a run without a filter or a bad rate or limit."""
        self._need_perfusion("retention filter")
        if not (math.isfinite(rate_per_h) and rate_per_h > 0.0):
            raise ValueError(f"fouling rate must be > 0 per hour, not {rate_per_h!r}")
        if not (math.isfinite(limit) and 0.0 < limit < 1.0):
            raise ValueError(f"fouling limit must be in (0, 1), not {limit!r}")
        self._fouling_per_h = float(rate_per_h)
        self._fouling_limit = float(limit)

    def replace_filter(self) -> None:
        """A clean retention filter: fouling back to 0 and no longer growing."""
        self._fouling_per_h = 0.0
        self._fouling = 0.0

    def change_media_lot(self) -> int:
        """The perfusion medium flowing in is from the next lot from now on; its number.
        ``ValueError`` in a fed-batch run (no medium flows in)."""
        self._need_perfusion("perfusion medium")
        scale = self._older_scale
        self._older_lots = {lot: amount * scale for lot, amount in self._older_lots.items()}
        self._older_lots[self._media_lot] = self._lot_now
        self._older_scale = 1.0
        self._media_lot += 1
        self._lot_now = 0.0
        return self._media_lot

    def start_temperature_excursion(self, delta_C: float) -> None:
        """A process deviation from now on: the culture's temperature (and the probe reading
        it, Temperature.PV) is ``delta_C`` off what the loop holds, as a step, until
        :meth:`end_temperature_excursion`; ``ProcessState.deviation`` is True meanwhile.
        ``ValueError`` for 0, a non-finite value or one larger than 20 °C."""
        if not (math.isfinite(delta_C) and delta_C != 0.0 and abs(delta_C) <= 20.0):
            raise ValueError(f"excursion must be a finite non-zero ≤ 20 °C, not {delta_C!r}")
        self._excursion_C = float(delta_C)

    def end_temperature_excursion(self) -> None:
        """The temperature is back under control (no deviation)."""
        self._excursion_C = 0.0

    def _need_perfusion(self, what: str) -> None:
        if self.perfusion is None:
            raise ValueError(f"a fed-batch run has no {what}")

    def advance(self, dt_h: float) -> None:
        """Let ``dt_h`` hours of process time pass.

        Time is integrated in whole steps of ``params.step_h``; a remainder shorter than a step
        is carried into the next call. Raises ``ValueError`` for a negative, NaN or infinite
        ``dt_h``.
        """
        if not (dt_h >= 0.0 and math.isfinite(dt_h)):
            raise ValueError(f"dt_h must be a finite number ≥ 0, not {dt_h!r}")
        self._elapsed += Fraction(dt_h)
        target = math.floor(self._elapsed / self._step + _SNAP_STEPS)
        n = target - self._steps
        if n > 0:
            self._integrate(n)
            self._steps = target

    def add_feed(self, volume_L: float) -> None:
        """Add a bolus of ``volume_L`` litres of feed medium now.

        The pump emulator calls this with every increment it delivers. Raises ``ValueError``
        for a negative, NaN or infinite volume.
        """
        if not (volume_L >= 0.0 and math.isfinite(volume_L)):
            raise ValueError(f"feed volume must be a finite number ≥ 0 L, not {volume_L!r}")
        p = self.params
        glucose = volume_L * p.feed_glucose_g_L
        self._volume += volume_L
        self._fed += volume_L
        self._glucose += glucose
        self._glucose_fed += glucose
        self._glutamine += volume_L * p.feed_glutamine_mM

    def set_setpoints(
        self,
        *,
        temperature_C: float | None = None,
        ph: float | None = None,
        do_pct: float | None = None,
        perfusion_L_per_d: float | None = None,
        bleed_L_per_d: float | None = None,
    ) -> None:
        """Change controller setpoints (what an operator writes to the bioreactor controller).

        Raises ``ValueError`` for a value outside 0-50 °C, pH 0-14 or DO 0-100 %, a negative or
        non-finite pump rate (L/day), or a pump rate in a run without perfusion; nothing changes
        then.
        """
        checks = (
            ("temperature_C", temperature_C, 0.0, 50.0),
            ("ph", ph, 0.0, 14.0),
            ("do_pct", do_pct, 0.0, 100.0),
            ("perfusion_L_per_d", perfusion_L_per_d, 0.0, math.inf),
            ("bleed_L_per_d", bleed_L_per_d, 0.0, math.inf),
        )
        for name, value, low, high in checks:
            if value is not None and not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"setpoint {name} = {value!r} outside {low:g}..{high:g}")
        if (perfusion_L_per_d is not None or bleed_L_per_d is not None) and not self.perfusion:
            raise ValueError("a fed-batch run has no perfusion or bleed pump")
        if perfusion_L_per_d is not None:
            self._perfusion_rate = float(perfusion_L_per_d)
        if bleed_L_per_d is not None:
            self._bleed_rate = float(bleed_L_per_d)
        if temperature_C is not None:
            self._temperature_sp = float(temperature_C)
        if ph is not None:
            self._ph_sp = float(ph)
        if do_pct is not None:
            self._do_sp = float(do_pct)

    # ------------------------------------------------------------------ integration

    def _our_pct_per_h(self, vcd_e6_per_mL: float) -> float:
        p = self.params
        # pmol/cell/h * 1e9 cells/L (per 1e6 cells/mL) = mmol/L/h; as % of air saturation.
        return p.q_o2_pmol_per_cell_h * vcd_e6_per_mL * 100.0 / p.o2_saturation_mM

    def _refill_noise(self) -> None:
        self._noise = self._rng.standard_normal(_NOISE_BLOCK).tolist()
        self._noise_at = 0

    def _integrate(self, n: int) -> None:
        """Run ``n`` explicit Euler steps. The hot loop: plain floats in locals only."""
        p = self.params
        dt = self._dt
        sqrt_dt = math.sqrt(dt)

        mu_max = p.mu_max_per_h
        mu_eff = mu_max * self._growth_factor
        ks_g = p.ks_glucose_g_L
        ks_q = p.ks_glutamine_mM
        kd0 = p.kd_per_h
        kd_limited = p.kd_limited_per_h
        kd_starved = p.kd_glucose_starved_per_h
        # Specific rates per step on an amount of cells in 1e9 cells: pg/cell * 1e9 = 1e-3 g,
        # pmol/cell * 1e9 = 1 mmol.
        glc_step = p.q_glucose_pg_per_cell_h * 1e-3 * dt
        gln_step = p.q_glutamine_pmol_per_cell_h * dt
        lac_yield = p.lactate_yield_g_per_g / mu_max if mu_max > 0 else 0.0
        lac_up_step = p.q_lactate_uptake_pg_per_cell_h * 1e-3 * dt
        ks_l = p.ks_lactate_g_L
        k_shift = p.lactate_shift_glucose_g_L
        prod_step = p.q_product_pg_per_cell_day / 24.0 * 1e-3 * dt

        t_sp = self._temperature_sp
        ambient = p.ambient_C
        inv_tau = 1.0 / p.thermal_tau_h
        heater_gain = p.heater_gain_C_per_h
        t_kp = p.temperature_kp_per_C
        t_ki_dt = t_kp / p.temperature_ti_h * dt
        t_noise = p.temperature_noise_C_per_sqrt_h * sqrt_dt

        ph_sp = self._ph_sp
        ph_drift_dt = self._ph_drift_per_h * dt
        ph_drift_limit = self._ph_drift_limit
        ph_offset = self._ph_offset
        inv_beta = 1.0 / p.buffer_capacity_mM_per_pH
        co2_acid_dt = p.co2_acid_mM_per_h_per_vcd * dt
        base_max_dt = p.base_max_mM_per_h * dt
        co2_max_dt = p.co2_max_mM_per_h * dt
        # mmol of base → mL of base solution (mol/L = mmol/mL).
        base_mL_per_mmol = 1.0 / p.base_M
        ph_db = p.ph_deadband
        ph_kp = p.ph_kp_per_pH
        ph_ki_dt = ph_kp / p.ph_ti_h * dt
        ph_noise = p.ph_noise_per_sqrt_h * sqrt_dt
        lac_mM_per_g = 1.0 / _LACTATE_G_PER_MMOL

        do_sp = self._do_sp
        our_per_vcd = p.q_o2_pmol_per_cell_h * 100.0 / p.o2_saturation_mM
        kla_min = p.kla_min_per_h
        kla_max = p.kla_max_per_h
        do_kp = p.do_kp_per_h_pct
        do_ki_dt = do_kp / p.do_ti_h * dt
        do_noise = p.do_noise_pct_per_sqrt_h * sqrt_dt

        # Perfusion: per-step volumes (L), medium, filter, density inhibition, lysis and HCP.
        perf = self.perfusion
        perfusing = perf is not None
        in_dt = self._perfusion_rate / 24.0 * dt
        bleed_dt = self._bleed_rate / 24.0 * dt
        v_set = p.volume_L
        # The bleed's low-level interlock: it stops below half the working volume.
        v_low = 0.5 * v_set
        med_glc = perf.medium_glucose_g_L if perf else 0.0
        med_gln = perf.medium_glutamine_mM if perf else 0.0
        inv_k_x = 1.0 / perf.density_inhibition_e6_per_mL if perf else 0.0
        n_x = perf.density_inhibition_exponent if perf else 1.0
        sieve_p = perf.product_sieving if perf else 0.0
        sieve_h = perf.hcp_sieving if perf else 0.0
        # qP decays per step; exactly 1.0 in fed-batch, so its products are unchanged.
        qp_decay = math.exp(-perf.qp_decline_per_d / 24.0 * dt) if perf else 1.0
        lysis_dt = perf.lysis_per_h * dt if perf else 0.0
        hcp_secr_dt = perf.q_hcp_pg_per_cell_day / 24.0 * 1e-3 * dt if perf else 0.0
        hcp_per_lysed = perf.hcp_per_lysed_cell_pg * 1e-3 if perf else 0.0
        foul_dt = self._fouling_per_h * dt
        foul_limit = self._fouling_limit
        fouling = self._fouling
        qp = self._qp_factor
        hcp = self._hcp
        product_made = self._product_made
        hcp_made = self._hcp_made
        hcp_harvested = self._hcp_harvested
        hcp_bled = self._hcp_bled
        glucose_fed = self._glucose_fed
        removed = self._glucose_removed
        harvest_total = self._harvest_total
        bleed_total = self._bleed_total
        product_harvested = self._product_harvested
        product_bled = self._product_bled
        lot_now = self._lot_now
        older_scale = self._older_scale
        bleed_v = harvest_v = 0.0

        volume = self._volume
        viable = self._viable
        dead = self._dead
        glucose = self._glucose
        lactate = self._lactate
        glutamine = self._glutamine
        product = self._product
        consumed = self._glucose_consumed
        base_total = self._base_mL
        temp = self._temperature
        temp_i = self._temperature_i
        ph = self._ph
        ph_i = self._ph_i
        do = self._do
        do_i = self._do_i
        heater = self._heater
        kla = self._kla
        ph_out = self._ph_out

        noise = self._noise
        at = self._noise_at
        for _ in range(n):
            if at + 3 > len(noise):
                self._refill_noise()
                noise = self._noise
                at = 0

            inv_v = 1.0 / volume
            glc_c = glucose * inv_v
            gln_c = glutamine * inv_v
            f_glc = glc_c / (ks_g + glc_c)
            f_gln = gln_c / (ks_q + gln_c)
            f_growth = f_glc * f_gln
            mu = mu_eff * f_growth
            if perfusing:
                # Density inhibition: not a nutrient limit, so no extra death from it.
                mu = mu / (1.0 + (viable * inv_v * inv_k_x) ** n_x)

            # Uptake is clamped to what is in the vessel and booked as clamped, so amounts
            # never go negative and the balances stay exact.
            glc_up = glc_step * f_glc * viable
            if glc_up > glucose:
                glc_up = glucose
            gln_up = gln_step * f_gln * viable
            if gln_up > glutamine:
                gln_up = glutamine
            lac_made = lac_yield * mu * glc_up
            lac_c = lactate * inv_v
            lac_up = (
                lac_up_step * viable * lac_c / (ks_l + lac_c) * k_shift / (k_shift + glc_c)
                if lac_c > 0.0
                else 0.0
            )
            if lac_up > lactate + lac_made:
                lac_up = lactate + lac_made

            growth = mu * dt * viable
            limited = 1.0 - f_growth
            starved = 1.0 - f_glc
            kd = kd0 + kd_limited * limited * limited + kd_starved * starved * starved
            death = kd * dt * viable
            if death > viable:
                death = viable
            vcd = viable * inv_v

            glucose -= glc_up
            consumed += glc_up
            glutamine -= gln_up
            # Left to right, so a clamped uptake leaves exactly 0.0.
            lactate = lactate + lac_made - lac_up
            made = prod_step * qp * f_glc * viable
            product += made
            product_made += made
            qp *= qp_decay
            viable += growth - death
            dead += death

            # Temperature: PI heater with conditional integration (no windup at the limits).
            err = t_sp - temp
            u = t_kp * err + temp_i
            if u > 1.0:
                u = 1.0
            elif u < 0.0:
                u = 0.0
            else:
                temp_i += t_ki_dt * err
            heater = u
            temp += ((ambient - temp) * inv_tau + heater_gain * u) * dt + t_noise * noise[at]

            # pH: split range, +1 = full base, -1 = full CO2 sparge. The deadband shifts the
            # error towards zero instead of cutting it, so the output has no step at its edges.
            # The loop sees the probe: the true pH plus the probe's (drifting) offset.
            if ph_drift_dt != 0.0:
                ph_offset += ph_drift_dt
                if ph_offset > ph_drift_limit:
                    ph_offset = ph_drift_limit
                elif ph_offset < -ph_drift_limit:
                    ph_offset = -ph_drift_limit
            err = ph_sp - (ph + ph_offset)
            if err > ph_db:
                err -= ph_db
            elif err < -ph_db:
                err += ph_db
            else:
                err = 0.0
            u = ph_kp * err + ph_i
            if u > 1.0:
                u = 1.0
            elif u < -1.0:
                u = -1.0
            else:
                ph_i += ph_ki_dt * err
            ph_out = u
            # Acid load of this step in mM: net lactate made plus unstripped CO2.
            acid = (lac_made - lac_up) * inv_v * lac_mM_per_g + co2_acid_dt * vcd
            if u > 0.0:
                correction = base_max_dt * u
                base_mL = correction * volume * base_mL_per_mmol
                base_total += base_mL
                volume += base_mL * 1e-3
            else:
                correction = co2_max_dt * u
            ph += (correction - acid) * inv_beta + ph_noise * noise[at + 1]

            # DO: PI on kLa, clamped to the cascade's range; DO itself clamped to 0-100 %.
            err = do_sp - do
            u = do_kp * err + do_i
            if u > kla_max:
                u = kla_max
            elif u < kla_min:
                u = kla_min
            else:
                do_i += do_ki_dt * err
            kla = u
            do += (kla * (100.0 - do) - our_per_vcd * vcd) * dt + do_noise * noise[at + 2]
            if do < 0.0:
                do = 0.0
            elif do > 100.0:
                do = 100.0
            at += 3

            if perfusing:
                # Dead cells lyse, releasing HCP; viable cells secrete it.
                lysed = lysis_dt * dead
                dead -= lysed
                hcp_new = hcp_secr_dt * viable + hcp_per_lysed * lysed
                hcp += hcp_new
                hcp_made += hcp_new
                if foul_dt != 0.0:
                    fouling += foul_dt
                    if fouling > foul_limit:
                        fouling = foul_limit
                # Medium in, then out: the bleed (whole culture) and the harvest pump, which
                # holds the level (what the medium, base and feed added, less the bleed).
                volume += in_dt
                glc_in = in_dt * med_glc
                glucose += glc_in
                glucose_fed += glc_in
                glutamine += in_dt * med_gln
                lot_now += in_dt
                bleed_v = bleed_dt if volume > v_low else 0.0
                harvest_v = volume - bleed_v - v_set
                if harvest_v < 0.0:
                    harvest_v = 0.0
                inv_v = 1.0 / volume
                f_bleed = bleed_v * inv_v
                f_harvest = harvest_v * inv_v
                f_out = f_bleed + f_harvest
                # Cells leave only by the bleed; small molecules by both.
                viable -= viable * f_bleed
                dead -= dead * f_bleed
                glc_out = glucose * f_out
                glucose -= glc_out
                removed += glc_out
                glutamine -= glutamine * f_out
                lactate -= lactate * f_out
                open_fraction = 1.0 - fouling
                out_h = product * f_harvest * sieve_p * open_fraction
                out_b = product * f_bleed
                product -= out_h + out_b
                product_harvested += out_h
                product_bled += out_b
                out_h = hcp * f_harvest * sieve_h * open_fraction
                out_b = hcp * f_bleed
                hcp -= out_h + out_b
                hcp_harvested += out_h
                hcp_bled += out_b
                keep = 1.0 - f_out
                lot_now *= keep
                older_scale *= keep
                volume = v_set if harvest_v > 0.0 else volume - bleed_v
                harvest_total += harvest_v
                bleed_total += bleed_v

        self._noise_at = at
        if perfusing:
            # The pumps over the last step, in L/day (the bleed runs at its rate or not at all).
            self._bleed_now = self._bleed_rate if bleed_v > 0.0 else 0.0
            self._harvest_now = harvest_v / dt * 24.0
        self._fouling = fouling
        self._qp_factor = qp
        self._hcp = hcp
        self._product_made = product_made
        self._hcp_made = hcp_made
        self._hcp_harvested = hcp_harvested
        self._hcp_bled = hcp_bled
        self._glucose_fed = glucose_fed
        self._glucose_removed = removed
        self._harvest_total = harvest_total
        self._bleed_total = bleed_total
        self._product_harvested = product_harvested
        self._product_bled = product_bled
        self._lot_now = lot_now
        self._older_scale = older_scale
        self._volume = volume
        self._viable = viable
        self._dead = dead
        self._glucose = glucose
        self._lactate = lactate
        self._glutamine = glutamine
        self._product = product
        self._glucose_consumed = consumed
        self._base_mL = base_total
        self._temperature = temp
        self._temperature_i = temp_i
        self._ph = ph
        self._ph_i = ph_i
        self._ph_offset = ph_offset
        self._do = do
        self._do_i = do_i
        self._heater = heater
        self._kla = kla
        self._ph_out = ph_out
