"""An emulated calibration campaign: fed-batch (or perfusion) runs under varied conditions, and
the raw spectra the emulated Raman spectrometer would have returned along them, with the true
composition.

For building and testing chemometric soft sensors (a PLS model predicting glucose and lactate
from Raman spectra) without a bioreactor or a day of wall time. :func:`design_runs` plans the
fed-batch runs, :func:`design_perfusion_runs` perfusion runs (the model's perfusion mode, decision
0024), :func:`acquire` plays one and returns its spectra. Pure and deterministic: no I/O, no
clock; a run depends only on its :class:`CampaignRun` (the process seed among it), and its
spectra on the acquisition settings and the noise seed.

The physics are the emulators' own, called, not copied: the process is
:class:`~firmware_stubs.bioreactor.model.FedBatchModel`, and a spectrum is what
:class:`~firmware_stubs.raman.device.RamanDevice` returns for a raw-spectrum request — counts of
:class:`~firmware_stubs.raman.spectrum.SpectrumSynthesizer` on the device's pixel axis (its
float32 wavelength coefficients, :data:`~firmware_stubs.raman.spectrum.DARK_PIXELS` masked
pixels) for the broth's composition, the integration time and the detector temperature, which
the device's TEC holds at -10 °C once settled.

Why the design looks the way it does. A calibration set must span the concentrations the model
will meet, and the analytes must vary *independently* of each other and of everything else that
changes the spectrum or moves with the batch (time, cell density, titer): otherwise a PLS model
learns the correlation — "late in the run, lots of cells, so little glucose" — and fails on a run
that does not follow it. A plain fed-batch is the worst case: glucose is fed up to a fixed level,
lactate rises with growth. So every run here differs in its initial conditions and kinetics
(ranges in :func:`design_runs`), and an emulated operator feeds glucose in boluses towards a
*random* level that changes every 12-48 h, checking every 1-3 h and feeding when glucose is
more than a random 0.1-0.5 g/L short (adding the consumption it expects until the next check, so
that a dense late culture is not always low). The levels lie between 0.05 and 8 g/L, drawn more
often low (``0.05 + 7.95 u^1.5`` for a uniform ``u``): glucose falls only as fast as the cells
take it up, so uniform levels would leave the low end, where a soft sensor matters most, thinly
sampled. Glucose thus spans 0-8 g/L about evenly at any time or cell density and never exceeds
8 g/L (it rises only with a feed, and a feed stops at 8). Lactate cannot be dosed in the model;
it varies with the inoculum's carry-over (0-3 g/L), each run's overflow yield and uptake, and
the glucose levels (low glucose makes cells consume it). With a handful of runs the
correlations across a campaign still depend on which runs it has, so :func:`design_runs` plans
three candidate runs per run wanted and keeps the subset whose glucose and lactate are least
correlated with each other and with time, cell density and titer — the way a design of
experiments picks runs, here by simulation.

A perfusion culture needs its own campaign: at 10-60e6 cells/mL the cells' protein band and
fluorescence are up to ten times a fed-batch's (and the shot noise about three times), a region
of spectra a fed-batch model never saw. There the perfusion rate, not a bolus, sets glucose, and
it starts near the medium's glucose while the cells are few; :func:`design_perfusion_runs` has
an operator hold random glucose levels by the perfusion rate while another moves the density by
the bleed, and keeps the least correlated runs in the same way.

The process is integrated with a step of :data:`CAMPAIGN_STEP_H` (1/60 h) rather than the
live emulator's 1/360 h: the concentrations agree to about 1e-4 relative over a 14-day run (the
step matters for the DO loop, which no spectrum sees) and a campaign runs 4-5 times faster.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..bioreactor.model import (
    FedBatchModel,
    PerfusionParams,
    ProcessParams,
    ProcessState,
    max_net_growth_per_d,
    perfusion_process_params,
)
from .spectrum import (
    DARK_PIXELS,
    Composition,
    SpectrumSynthesizer,
    raman_shift_cm1,
    wavelength_coefficients,
    wavelengths_nm,
)

__all__ = [
    "CAMPAIGN_STEP_H",
    "GLUCOSE_MAX_G_L",
    "Acquisition",
    "CampaignRun",
    "acquire",
    "design_perfusion_runs",
    "design_runs",
]

#: Integration step of the campaign's process runs, h (see the module docstring).
CAMPAIGN_STEP_H = 1 / 60
#: The operator never feeds glucose above this, g/L; it is also the top of the initial glucose.
GLUCOSE_MAX_G_L = 8.0

#: Candidate runs planned per run kept by design_runs.
_CANDIDATES_PER_RUN = 3
#: Random subsets of the candidates scored before the local search refines the best one.
_SUBSETS = 2000
#: A campaign whose glucose does not reach down to this and up to the next, g/L, is penalised.
_GLUCOSE_COVER = (0.25, 7.5)
#: The same for a perfusion campaign: its glucose is held by the perfusion rate and rarely runs
#: out, and it starts near the medium's (up to 12 g/L while the cells are few).
_PERFUSION_GLUCOSE_COVER = (0.75, 11.0)
#: Highest glucose level the perfusion operator aims at, g/L: a perfusion medium's glucose.
_PERFUSION_GLUCOSE_MAX_G_L = 12.0
#: Second entropy word of the spectral noise stream when acquire gets no noise seed: a stream
#: apart from the run's process noise (PCG64 seeded with the run's seed alone).
_SPECTRUM_STREAM = 1

# Columns of a planned run's trace, and the pairs whose correlation the selection minimises.
_GLUCOSE, _LACTATE, _TIME, _VCD, _TITER = range(5)
_PAIRS = (
    (_GLUCOSE, _LACTATE),
    (_GLUCOSE, _TIME),
    (_GLUCOSE, _VCD),
    (_GLUCOSE, _TITER),
    (_LACTATE, _TIME),
    (_LACTATE, _VCD),
    (_LACTATE, _TITER),
)


@dataclass(frozen=True, slots=True)
class CampaignRun:
    """One planned run: the process, its feeds (and pump rates) and when it is sampled.

    A spectrum is taken at process hours 0, ``sample_every_h``, 2 ``sample_every_h`` … up to
    ``duration_h``; a feed or a rate change at the same hour as a sample comes after it (sample,
    then act, as operators do; a feed before a rate change). A run with :attr:`perfusion` is a
    perfusion run (the model's perfusion mode), else a fed-batch.
    """

    name: str
    """Name of the run (the batch), e.g. ``"run-1-03"``."""
    seed: int
    """Seed of the process noise (:class:`FedBatchModel`), ≥ 0."""
    params: ProcessParams
    """Initial conditions, kinetics and feed medium of the run."""
    feeds: tuple[tuple[float, float], ...]
    """Bolus feeds as (process hour, volume in L), in time order."""
    duration_h: float
    """Length of the run, h."""
    sample_every_h: float
    """Time between two spectra, h."""
    perfusion: PerfusionParams | None = None
    """Medium, filter and initial pump rates of a perfusion run; ``None`` for a fed-batch."""
    rates: tuple[tuple[float, float, float], ...] = ()
    """Pump rate changes of a perfusion run as (process hour, perfusion L/day, bleed L/day), in
    time order: the setpoints an operator writes to the controller."""

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"run {self.name!r}: seed must be ≥ 0, not {self.seed}")
        if not (math.isfinite(self.duration_h) and self.duration_h >= 0.0):
            raise ValueError(f"run {self.name!r}: duration_h must be finite and ≥ 0")
        if not (math.isfinite(self.sample_every_h) and self.sample_every_h > 0.0):
            raise ValueError(f"run {self.name!r}: sample_every_h must be finite and > 0")
        last = 0.0
        for hour, volume in self.feeds:
            if not (last <= hour <= self.duration_h and volume >= 0.0 and math.isfinite(volume)):
                raise ValueError(
                    f"run {self.name!r}: feed ({hour!r} h, {volume!r} L) must be in time order"
                    f" within 0..{self.duration_h:g} h, with a finite volume ≥ 0"
                )
            last = hour
        if self.rates and self.perfusion is None:
            raise ValueError(f"run {self.name!r}: pump rates need a perfusion run")
        last = 0.0
        for hour, perfusion, bleed in self.rates:
            if not (
                last <= hour <= self.duration_h
                and math.isfinite(perfusion)
                and 0.0 <= bleed < perfusion
            ):
                raise ValueError(
                    f"run {self.name!r}: rates ({hour!r} h, {perfusion!r} L/d, {bleed!r} L/d)"
                    f" must be in time order within 0..{self.duration_h:g} h, with a finite"
                    " perfusion above a bleed ≥ 0"
                )
            last = hour

    def sample_times_h(self) -> NDArray[np.float64]:
        """The process hours at which spectra are taken."""
        count = math.floor(self.duration_h / self.sample_every_h + 1e-9) + 1
        return np.arange(count, dtype=np.float64) * self.sample_every_h


@dataclass(frozen=True, eq=False, slots=True)
class Acquisition:
    """The spectra of one run, as the emulated spectrometer returns them, and the truth.

    Row ``i`` of :attr:`counts` is the raw spectrum taken at process hour ``time_h[i]`` of a
    broth of ``composition[i]``. The arrays are read-only.
    """

    run: str
    """Name of the run."""
    time_h: NDArray[np.float64]
    """Process hour of each spectrum, shape (m,)."""
    composition: tuple[Composition, ...]
    """The true composition at each spectrum."""
    counts: NDArray[np.uint16]
    """Raw detector counts, shape (m, pixels), dark pixels first."""
    integration_s: float
    """Integration time of every spectrum, s."""
    detector_c: float
    """Detector temperature of every spectrum, °C."""
    coefficients: tuple[float, ...]
    """The device's wavelength coefficients (float32 values), lowest order first."""
    laser_nm: float
    """Excitation wavelength, nm."""
    pixels: int
    """Pixels per spectrum."""
    dark_pixels: int
    """Optically masked pixels at the start of each spectrum."""

    @property
    def glucose_g_L(self) -> NDArray[np.float64]:
        """True glucose at each spectrum, g/L."""
        return np.array([c.glucose_g_L for c in self.composition])

    @property
    def lactate_g_L(self) -> NDArray[np.float64]:
        """True lactate at each spectrum, g/L."""
        return np.array([c.lactate_g_L for c in self.composition])

    @property
    def glutamine_mM(self) -> NDArray[np.float64]:
        """True glutamine at each spectrum, mM."""
        return np.array([c.glutamine_mM for c in self.composition])

    @property
    def vcd_e6_per_mL(self) -> NDArray[np.float64]:
        """True viable cell density at each spectrum, 1e6 cells/mL."""
        return np.array([c.vcd_e6_per_mL for c in self.composition])

    @property
    def titer_g_L(self) -> NDArray[np.float64]:
        """True product titer at each spectrum, g/L."""
        return np.array([c.titer_g_L for c in self.composition])


def design_runs(n: int, seed: int) -> list[CampaignRun]:
    """``n`` runs of varied conditions for a calibration campaign, the same for the same seed.

    Each run draws, uniformly: inoculum of 0.3-1.0e6 cells/mL; glucose 0.5-8 g/L, lactate 0-3
    g/L and glutamine 2-8 mM in the starting medium; feed medium of 250-500 g/L glucose and, in
    half the runs, 5-40 mM glutamine (else none, so growth stops when glutamine runs out);
    maximum growth rate 0.03-0.045 /h, overflow lactate yield 0.05-0.5 g/g, lactate uptake 1-6
    pg/cell/h half-inhibited at 0.5-5 g/L glucose, productivity 15-35 pg/cell/day; a length of 7
    to 14 days in whole hours; a spectrum every 1 to 3 h in quarter hours; and the glucose feeds
    of the module docstring. ``3 n`` such runs are simulated and the ``n`` whose campaign has
    the smallest largest |correlation| of glucose or lactate with each other, process time, cell
    density or titer are kept, preferring campaigns whose glucose reaches below 0.25 and above
    7.5 g/L. The runs are named ``run-<seed>-01`` … in that order.
    """
    return _campaign(n, seed, _plan, _GLUCOSE_COVER, "run")


def design_perfusion_runs(n: int, seed: int) -> list[CampaignRun]:
    """``n`` perfusion runs of varied conditions for a calibration campaign (the model's
    perfusion mode), the same for the same seed.

    What a fed-batch campaign cannot show a soft sensor: 10-60e6 cells/mL for days (cell
    protein and fluorescence many times a fed-batch's, and the shot noise with them), glucose
    held anywhere in 0.5-12 g/L by the perfusion rate at any density, lactate washed out to
    levels set by each run's metabolism and rates. Each run draws, uniformly: an inoculum of
    0.3-40e6 cells/mL (log-uniform: a usual seed, or an intensified N-1 one); glucose 1-8 g/L,
    lactate 0-4 g/L and glutamine 2-8 mM at the start; perfusion medium of 8-16 g/L glucose and
    4-12 mM glutamine; growth halved by density at 25-50e6 cells/mL (exponent 3-4), so runs
    settle at different densities; product sieving 0.6-1; the fed-batch kinetics of
    :func:`design_runs` with overflow lactate up to 0.8 g/g; a glucose bolus feed of 250-500
    g/L; a length of 7 to 14 days; a spectrum every 1 to 3 h. Two emulated operators act on
    it. The bleed is set to a random 10-50 % of the fastest net growth the medium allows,
    changed every 24-96 h (the density follows within days). Every 1-3 h the perfusion rate
    is set to bring glucose to a level drawn every 12-48 h (``0.5 + 11.5 u^1.6``, more often
    low) within about 6 h: the rate that balances the cells' uptake, ±20 % at random, at
    least 0.3 vessel volumes a day above the bleed and at most 4; and a glucose bolus lifts
    glucose to the level when it is more than 0.1-0.5 g/L short of a level within 1 g/L of the
    medium's (which the medium alone would not reach). Selection as :func:`design_runs`, glucose
    to cover below 0.75 and above 11 g/L; the runs are named ``perfusion-<seed>-01`` ….
    """
    return _campaign(n, seed, _plan_perfusion, _PERFUSION_GLUCOSE_COVER, "perfusion")


def _campaign(
    n: int,
    seed: int,
    plan: Callable[[np.random.SeedSequence], tuple[CampaignRun, NDArray[np.float64]]],
    cover: tuple[float, float],
    prefix: str,
) -> list[CampaignRun]:
    """Plan ``3 n`` candidates with ``plan``, keep the best ``n`` (:func:`_select`), name them."""
    if n < 1:
        raise ValueError(f"need at least one run, not {n}")
    if seed < 0:
        raise ValueError(f"seed must be ≥ 0, not {seed}")
    children = np.random.SeedSequence(seed).spawn(n * _CANDIDATES_PER_RUN)
    planned = [plan(child) for child in children]
    keep = _select([trace for _, trace in planned], n, np.random.default_rng([seed, n]), cover)
    return [
        dataclasses.replace(planned[index][0], name=f"{prefix}-{seed}-{number:02d}")
        for number, index in enumerate(keep, start=1)
    ]


def acquire(
    run: CampaignRun,
    *,
    integration_s: float = 0.5,
    pixels: int = 2048,
    laser_nm: float = 785.0,
    detector_c: float = -10.0,
    noise_seed: int | None = None,
) -> Acquisition:
    """Play ``run`` and take a spectrum at each of its sample times, as the emulated device would.

    Row ``i`` of the counts is ``SpectrumSynthesizer.counts(composition[i], integration_s,
    detector_c, rng)`` with one ``rng = numpy.random.default_rng(noise_seed)`` drawn in order,
    on the device's axis for ``pixels`` and ``laser_nm``. Without a ``noise_seed`` the noise
    comes from a stream derived from the run's seed, apart from its process noise.
    """
    if not (math.isfinite(integration_s) and integration_s > 0.0):
        raise ValueError(f"integration_s must be finite and > 0, not {integration_s!r}")
    coefficients = wavelength_coefficients(pixels)
    wavelengths = wavelengths_nm(coefficients, pixels)
    if not (math.isfinite(laser_nm) and 0.0 < laser_nm < wavelengths[0]):
        raise ValueError(f"laser_nm {laser_nm!r} must be below the first pixel's wavelength")
    synthesizer = SpectrumSynthesizer(raman_shift_cm1(wavelengths, laser_nm), DARK_PIXELS)
    stream = [run.seed, _SPECTRUM_STREAM]
    rng = np.random.default_rng(noise_seed if noise_seed is not None else stream)

    times: list[float] = []
    composition: list[Composition] = []
    spectra: list[NDArray[np.uint16]] = []

    def sample(state: ProcessState) -> None:
        broth = _composition(state)
        times.append(state.time_h)
        composition.append(broth)
        spectra.append(synthesizer.counts(broth, integration_s, detector_c, rng))

    model = FedBatchModel(run.params, run.seed, perfusion=run.perfusion)
    actions = _actions(model, run)
    _play(
        model,
        run.sample_times_h(),
        [hour for hour, _ in actions],
        on_sample=sample,
        on_action=lambda index: actions[index][1](),
    )
    time_h = np.array(times, dtype=np.float64)
    counts = np.stack(spectra) if spectra else np.zeros((0, pixels), dtype="<u2")
    time_h.flags.writeable = False
    counts.flags.writeable = False
    return Acquisition(
        run=run.name,
        time_h=time_h,
        composition=tuple(composition),
        counts=counts,
        integration_s=integration_s,
        detector_c=detector_c,
        coefficients=tuple(coefficients),
        laser_nm=laser_nm,
        pixels=pixels,
        dark_pixels=DARK_PIXELS,
    )


# --------------------------------------------------------------------------- playing a run


def _play(
    model: FedBatchModel,
    samples: NDArray[np.float64],
    actions: Sequence[float],
    *,
    on_sample: Callable[[ProcessState], None],
    on_action: Callable[[int], None],
) -> None:
    """Advance ``model`` through the sample times and action times (each in time order),
    calling ``on_sample(state)`` at each sample and ``on_action(index)`` at each action; at the
    same hour the sample comes first. Planning and acquiring share this, so a plan's trace is
    exactly what the acquisition sees."""
    events = sorted(
        [(float(hour), 0, i) for i, hour in enumerate(samples)]
        + [(float(hour), 1, i) for i, hour in enumerate(actions)]
    )
    now = 0.0
    for hour, kind, index in events:
        if hour > now:
            model.advance(hour - now)
            now = hour
        if kind == 0:
            on_sample(model.state)
        else:
            on_action(index)


def _actions(model: FedBatchModel, run: CampaignRun) -> list[tuple[float, Callable[[], None]]]:
    """The run's feeds and rate changes on ``model`` as (hour, act), in time order, a feed
    before a rate change at the same hour."""

    def feed(volume: float) -> Callable[[], None]:
        return lambda: model.add_feed(volume)

    def rates(perfusion: float, bleed: float) -> Callable[[], None]:
        return lambda: model.set_setpoints(perfusion_L_per_d=perfusion, bleed_L_per_d=bleed)

    actions = [(hour, feed(volume)) for hour, volume in run.feeds]
    actions += [(hour, rates(perfusion, bleed)) for hour, perfusion, bleed in run.rates]
    # sorted() is stable: at one hour the feeds (listed first) stay first.
    return sorted(actions, key=lambda action: action[0])


def _composition(state: ProcessState) -> Composition:
    """What the Raman probe sees of the broth (as the emulator's process source builds it)."""
    return Composition(
        glucose_g_L=state.glucose_g_L,
        lactate_g_L=state.lactate_g_L,
        glutamine_mM=state.glutamine_mM,
        vcd_e6_per_mL=state.vcd_e6_per_mL,
        titer_g_L=state.titer_g_L,
    )


# --------------------------------------------------------------------------- planning


def _plan(seed: np.random.SeedSequence) -> tuple[CampaignRun, NDArray[np.float64]]:
    """One candidate run (unnamed) and its trace at the sample times: columns glucose, lactate,
    time, VCD, titer. Every random choice is drawn up front, so the run's conditions never
    depend on its state; the feed volumes do, as an operator's would."""
    rng = np.random.default_rng(seed)

    def uniform(low: float, high: float) -> float:
        # Plain floats: numpy scalars in the model's hot loop would make it several times slower.
        return float(rng.uniform(low, high))

    params = ProcessParams(
        vcd_e6_per_mL=uniform(0.3, 1.0),
        glucose_g_L=uniform(0.5, GLUCOSE_MAX_G_L),
        lactate_g_L=uniform(0.0, 3.0),
        glutamine_mM=uniform(2.0, 8.0),
        feed_glucose_g_L=uniform(250.0, 500.0),
        feed_glutamine_mM=uniform(5.0, 40.0) if rng.random() < 0.5 else 0.0,
        mu_max_per_h=uniform(0.03, 0.045),
        lactate_yield_g_per_g=uniform(0.05, 0.5),
        q_lactate_uptake_pg_per_cell_h=uniform(1.0, 6.0),
        lactate_shift_glucose_g_L=uniform(0.5, 5.0),
        q_product_pg_per_cell_day=uniform(15.0, 35.0),
        step_h=CAMPAIGN_STEP_H,
    )
    duration_h = float(rng.integers(7 * 24, 14 * 24 + 1))
    sample_every_h = float(rng.integers(4, 13)) / 4.0
    process_seed = int(rng.integers(2**31))
    # The operator: checks every 1-3 h; the glucose level aimed at changes every 12-48 h, more
    # often to a low one (module docstring).
    checks = _cumulative(rng, 1, 3, duration_h)
    changes = _cumulative(rng, 12, 48, duration_h)
    levels: list[float] = (0.05 + 7.95 * rng.random(len(changes)) ** 1.5).tolist()
    slack: list[float] = rng.uniform(0.1, 0.5, len(checks)).tolist()

    model = FedBatchModel(params, process_seed)
    feeds: list[tuple[float, float]] = []
    rows: list[tuple[float, float, float, float, float]] = []
    last = [0.0, params.glucose_g_L]  # hour and glucose after the previous check

    def check(index: int) -> None:
        hour = checks[index]
        state = model.state
        glucose = state.glucose_g_L
        level = _in_force(changes, levels, hour, params.glucose_g_L)
        # Feed for what the cells will take until the next check, as seen since the last one.
        rate = max(0.0, (last[1] - glucose) / (hour - last[0]))
        gap = checks[index + 1] - hour if index + 1 < len(checks) else 2.0
        target = min(GLUCOSE_MAX_G_L, level + rate * gap / 2.0)
        if target > glucose + slack[index]:
            volume = (target - glucose) * state.volume_L / (params.feed_glucose_g_L - target)
            model.add_feed(volume)
            feeds.append((hour, volume))
            glucose = model.state.glucose_g_L
        last[:] = [hour, glucose]

    run = CampaignRun("", process_seed, params, (), duration_h, sample_every_h)
    _play(model, run.sample_times_h(), checks, on_sample=_tracer(rows), on_action=check)
    planned = CampaignRun("", process_seed, params, tuple(feeds), duration_h, sample_every_h)
    return planned, np.array(rows, dtype=np.float64)


#: Perfusion operator: glucose is brought to its level within about this many hours.
_PERFUSION_APPROACH_H = 6.0
#: The perfusion rate stays this many vessel volumes a day above the bleed, and at most the next.
_PERFUSION_MIN_ABOVE_BLEED_VVD = 0.3
_PERFUSION_MAX_VVD = 4.0


def _plan_perfusion(seed: np.random.SeedSequence) -> tuple[CampaignRun, NDArray[np.float64]]:
    """One candidate perfusion run (unnamed) and its trace, as :func:`_plan` for a fed-batch
    (the design in :func:`design_perfusion_runs`)."""
    rng = np.random.default_rng(seed)

    def uniform(low: float, high: float) -> float:
        return float(rng.uniform(low, high))

    params = perfusion_process_params(
        vcd_e6_per_mL=float(np.exp(rng.uniform(np.log(0.3), np.log(40.0)))),
        glucose_g_L=uniform(1.0, GLUCOSE_MAX_G_L),
        lactate_g_L=uniform(0.0, 4.0),
        glutamine_mM=uniform(2.0, 8.0),
        feed_glucose_g_L=uniform(250.0, 500.0),
        mu_max_per_h=uniform(0.03, 0.045),
        lactate_yield_g_per_g=uniform(0.05, 0.8),
        q_lactate_uptake_pg_per_cell_h=uniform(1.0, 6.0),
        lactate_shift_glucose_g_L=uniform(0.5, 5.0),
        q_product_pg_per_cell_day=uniform(15.0, 35.0),
        step_h=CAMPAIGN_STEP_H,
    )
    volume = params.volume_L
    medium = PerfusionParams(
        perfusion_L_per_d=1.0 * volume,
        bleed_L_per_d=0.0,
        medium_glucose_g_L=uniform(8.0, 16.0),
        medium_glutamine_mM=uniform(4.0, 12.0),
        density_inhibition_e6_per_mL=uniform(25.0, 50.0),
        density_inhibition_exponent=uniform(3.0, 4.0),
        product_sieving=uniform(0.6, 1.0),
    )
    duration_h = float(rng.integers(7 * 24, 14 * 24 + 1))
    sample_every_h = float(rng.integers(4, 13)) / 4.0
    process_seed = int(rng.integers(2**31))
    checks = _cumulative(rng, 1, 3, duration_h)
    changes = _cumulative(rng, 12, 48, duration_h)
    levels: list[float] = (
        0.5 + (_PERFUSION_GLUCOSE_MAX_G_L - 0.5) * rng.random(len(changes)) ** 1.6
    ).tolist()
    slack: list[float] = rng.uniform(0.1, 0.5, len(checks)).tolist()
    jitter: list[float] = rng.uniform(0.8, 1.2, len(checks)).tolist()
    bleed_changes = _cumulative(rng, 24, 96, duration_h)
    growth_L_per_d = max(0.0, max_net_growth_per_d(params, medium)) * volume
    bleeds: list[float] = (rng.uniform(0.1, 0.5, len(bleed_changes)) * growth_L_per_d).tolist()

    model = FedBatchModel(params, process_seed, perfusion=medium)
    feeds: list[tuple[float, float]] = []
    rates: list[tuple[float, float, float]] = []
    rows: list[tuple[float, float, float, float, float]] = []
    s_in = medium.medium_glucose_g_L
    glucose_step = params.q_glucose_pg_per_cell_h * 1e-3  # g/L/h per 1e6 cells/mL

    def check(index: int) -> None:
        hour = checks[index]
        state = model.state
        glucose = state.glucose_g_L
        level = _in_force(changes, levels, hour, params.glucose_g_L)
        bleed = _in_force(bleed_changes, bleeds, hour, 0.0)
        if level > glucose + slack[index] and level > s_in - 1.0:
            # The medium alone cannot get there: a bolus of the concentrated feed.
            added = (level - glucose) * state.volume_L / (params.feed_glucose_g_L - level)
            model.add_feed(added)
            feeds.append((hour, added))
            glucose = model.state.glucose_g_L
        # Perfusion (1/h) that takes glucose to the level in about _PERFUSION_APPROACH_H while
        # the cells take up what they do now: D (S_in - S) = uptake + (level - S) / approach.
        uptake = glucose_step * state.vcd_e6_per_mL * glucose / (params.ks_glucose_g_L + glucose)
        wanted = uptake + (level - glucose) / _PERFUSION_APPROACH_H
        dilution = wanted / max(s_in - glucose, 0.5) * jitter[index]
        low = bleed + _PERFUSION_MIN_ABOVE_BLEED_VVD * volume
        perfusion = min(max(dilution * 24.0 * volume, low), _PERFUSION_MAX_VVD * volume)
        model.set_setpoints(perfusion_L_per_d=perfusion, bleed_L_per_d=bleed)
        rates.append((hour, perfusion, bleed))

    run = CampaignRun("", process_seed, params, (), duration_h, sample_every_h, medium)
    _play(model, run.sample_times_h(), checks, on_sample=_tracer(rows), on_action=check)
    planned = dataclasses.replace(run, feeds=tuple(feeds), rates=tuple(rates))
    return planned, np.array(rows, dtype=np.float64)


def _tracer(
    rows: list[tuple[float, float, float, float, float]],
) -> Callable[[ProcessState], None]:
    """A sampler appending a trace row (the columns of :data:`_PAIRS`) to ``rows``."""

    def sample(state: ProcessState) -> None:
        rows.append(
            (
                state.glucose_g_L,
                state.lactate_g_L,
                state.time_h,
                state.vcd_e6_per_mL,
                state.titer_g_L,
            )
        )

    return sample


def _in_force(hours: Sequence[float], values: Sequence[float], hour: float, before: float) -> float:
    """The value set at the last of ``hours`` (ascending) at or before ``hour``; ``before`` if
    none."""
    index = bisect.bisect_right(hours, hour)
    return values[index - 1] if index else before


def _cumulative(rng: np.random.Generator, low: int, high: int, end: float) -> list[float]:
    """Hours low..high (whole, inclusive) apart, from the first gap up to ``end``."""
    hours: list[float] = []
    hour = 0.0
    while True:
        hour += float(rng.integers(low, high + 1))
        if hour > end:
            return hours
        hours.append(hour)


def _select(
    traces: Sequence[NDArray[np.float64]],
    n: int,
    rng: np.random.Generator,
    cover: tuple[float, float] = _GLUCOSE_COVER,
) -> list[int]:
    """Indices (ascending) of the ``n`` traces whose union scores best (:meth:`_Stats.scores`,
    glucose to ``cover``): the best of random subsets, then improved by single swaps until none
    helps."""
    m = len(traces)
    if n >= m:
        return list(range(m))
    stats = _Stats(traces, cover)
    subsets = np.argsort(rng.random((_SUBSETS, m)), axis=1)[:, :n]
    scores = stats.scores(subsets)
    best = subsets[int(np.argmin(scores))]
    score = float(scores.min())
    while True:
        outside = np.setdiff1d(np.arange(m), best)
        trials = np.repeat(best[None, :], n * outside.size, axis=0)
        positions = np.repeat(np.arange(n), outside.size)
        trials[np.arange(trials.shape[0]), positions] = np.tile(outside, n)
        trial_scores = stats.scores(trials)
        pick = int(np.argmin(trial_scores))
        if trial_scores[pick] >= score - 1e-12:
            return sorted(int(i) for i in best)
        best, score = trials[pick], float(trial_scores[pick])


class _Stats:
    """Sufficient statistics of each trace, so a subset's correlations cost a few sums."""

    def __init__(self, traces: Sequence[NDArray[np.float64]], cover: tuple[float, float]) -> None:
        self.cover = cover
        self.count = np.array([len(t) for t in traces], dtype=np.float64)
        self.sums = np.stack([t.sum(axis=0) for t in traces])
        self.cross = np.stack([t.T @ t for t in traces])
        self.glucose_min = np.array([t[:, _GLUCOSE].min() for t in traces])
        self.glucose_max = np.array([t[:, _GLUCOSE].max() for t in traces])

    def scores(self, subsets: NDArray[np.intp]) -> NDArray[np.float64]:
        """Per subset (row of indices): the largest |correlation| of the pairs in ``_PAIRS``
        over all its samples, plus 1 if its glucose does not cover ``self.cover``."""
        count = self.count[subsets].sum(axis=1)
        mean = self.sums[subsets].sum(axis=1) / count[:, None]
        cov = self.cross[subsets].sum(axis=1) / count[:, None, None]
        cov -= mean[:, :, None] * mean[:, None, :]
        sd = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 1e-300))
        worst = np.zeros(subsets.shape[0])
        for a, b in _PAIRS:
            worst = np.maximum(worst, np.abs(cov[:, a, b] / (sd[:, a] * sd[:, b])))
        low, high = self.cover
        uncovered = (self.glucose_min[subsets].min(axis=1) > low) | (
            self.glucose_max[subsets].max(axis=1) < high
        )
        return np.asarray(worst + uncovered, dtype=np.float64)
