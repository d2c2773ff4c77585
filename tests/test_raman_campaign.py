"""The emulated calibration campaign: reproducible, varied, decorrelated, and the device's physics.

A calibration set for a glucose/lactate soft sensor is only as good as its design: it must span
the concentrations, and glucose and lactate must not move together or with the batch (time,
cells, titer), or a PLS model learns the correlation instead of the spectra. These tests check
that on a default-size campaign (8 runs, about 1000 spectra, a second or two), and that every
spectrum is exactly what the emulated spectrometer would have returned; and the same for the
perfusion campaign (10-60e6 cells/mL, which a fed-batch campaign never shows a soft sensor).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

import numpy as np
import pytest

from firmware_stubs.bioreactor import PerfusionParams, ProcessParams
from firmware_stubs.bioreactor.model import perfusion_process_params
from firmware_stubs.raman import RamanDevice
from firmware_stubs.raman.campaign import (
    CAMPAIGN_STEP_H,
    GLUCOSE_MAX_G_L,
    Acquisition,
    CampaignRun,
    acquire,
    design_perfusion_runs,
    design_runs,
)
from firmware_stubs.raman.obp import Frame, MessageType
from firmware_stubs.raman.spectrum import (
    DARK_PIXELS,
    SpectrumSynthesizer,
    wavelength_coefficients,
)

#: Largest |correlation| allowed between glucose and lactate, and between either and process
#: time, viable cell density or titer, over a default campaign. Below 0.2 either explains less
#: than 4 % of the other's variance (r²), too little for a PLS model to lean on. Designed
#: campaigns of 8 runs stay near 0.1: over seeds 0-29 the largest of any of these pairs was 0.17,
#: so 0.2 holds for any seed without hiding a broken design (fixed glucose levels and lactate
#: left to growth, as in a plain fed-batch, give 0.4-0.8).
MAX_ABS_CORRELATION = 0.2


@pytest.fixture(scope="module")
def runs() -> list[CampaignRun]:
    return design_runs(8, 1)


@pytest.fixture(scope="module")
def campaign(runs: list[CampaignRun]) -> list[Acquisition]:
    return [acquire(run) for run in runs]


def pooled(campaign: list[Acquisition], field: str) -> np.ndarray:
    if field == "time_h":
        return np.concatenate([a.time_h for a in campaign])
    return np.concatenate([getattr(a, field) for a in campaign])


def correlations(campaign: list[Acquisition], bound: float) -> np.ndarray:
    """The correlation matrix of glucose, lactate, time, VCD and titer over the campaign,
    having checked that neither analyte's |r| with another reaches ``bound``."""
    fields = ("glucose_g_L", "lactate_g_L", "time_h", "vcd_e6_per_mL", "titer_g_L")
    r = np.corrcoef(np.vstack([pooled(campaign, f) for f in fields]))
    for analyte, other in itertools.product(range(2), range(5)):
        if other > analyte:
            assert abs(r[analyte, other]) < bound, (fields[analyte], fields[other])
    return r


def test_the_same_seeds_give_the_same_campaign_and_others_another() -> None:
    first, again, other = design_runs(2, 5), design_runs(2, 5), design_runs(2, 6)
    assert first == again
    assert [r.name for r in first] == ["run-5-01", "run-5-02"]
    assert all(a.params != b.params for a, b in zip(first, other, strict=True))

    run = first[0]
    one, two = acquire(run, noise_seed=3), acquire(run, noise_seed=3)
    assert np.array_equal(one.counts, two.counts) and one.composition == two.composition
    assert np.array_equal(acquire(run).counts, acquire(run).counts)
    noisy = acquire(run, noise_seed=4)
    assert noisy.composition == one.composition  # the process is the run's, only noise differs
    assert not np.array_equal(noisy.counts, one.counts)


def test_runs_vary_as_designed(runs: list[CampaignRun], campaign: list[Acquisition]) -> None:
    assert len({r.name for r in runs}) == 8 and len({r.seed for r in runs}) == 8
    for run, acquisition in zip(runs, campaign, strict=True):
        p = run.params
        assert p.step_h == CAMPAIGN_STEP_H
        assert 0.5 <= p.glucose_g_L <= 8.0 and 0.0 <= p.lactate_g_L <= 3.0
        assert 0.3 <= p.vcd_e6_per_mL <= 1.0 and 2.0 <= p.glutamine_mM <= 8.0
        assert 7 * 24 <= run.duration_h <= 14 * 24 and 1.0 <= run.sample_every_h <= 3.0
        hours = [hour for hour, _ in run.feeds]
        assert hours == sorted(hours) and hours[0] > 0 and hours[-1] <= run.duration_h
        assert all(volume > 0 for _, volume in run.feeds)
        # Spectra at every sample time, the first at inoculation.
        assert np.array_equal(acquisition.time_h, run.sample_times_h())
        assert acquisition.time_h[0] == 0.0
        assert acquisition.composition[0].glucose_g_L == p.glucose_g_L
        assert acquisition.run == run.name
    spread = [r.params.glucose_g_L for r in runs]
    assert max(spread) - min(spread) > 3.0
    assert len({r.params.feed_glucose_g_L for r in runs}) == 8
    # About 1000 spectra (800-1700 over seeds 0-29: lengths and sampling intervals vary).
    assert 700 <= sum(len(a.time_h) for a in campaign) <= 1800


def test_glucose_spans_0_to_8_and_never_exceeds_it(campaign: list[Acquisition]) -> None:
    glucose, lactate = pooled(campaign, "glucose_g_L"), pooled(campaign, "lactate_g_L")
    assert glucose.min() < 0.25 and glucose.max() > 7.5
    assert glucose.max() <= GLUCOSE_MAX_G_L + 1e-9  # 8 g/L, well below the 8.5 limit
    # Every part of the range is sampled, not only the ends.
    counts, _ = np.histogram(glucose, bins=8, range=(0.0, 8.0))
    assert counts.min() >= 0.03 * glucose.size
    # Lactate over the usual range of a CHO fed-batch.
    assert lactate.min() < 0.3 and 3.0 < lactate.max() < 7.0


def test_glucose_and_lactate_are_not_correlated_with_each_other_or_the_batch(
    campaign: list[Acquisition],
) -> None:
    r = correlations(campaign, MAX_ABS_CORRELATION)
    # The batch itself does move together, as it should: cells and titer grow with time.
    assert r[2, 4] > 0.5


def test_counts_are_the_synthesizers_on_the_device_axis(runs: list[CampaignRun]) -> None:
    acquisition = acquire(runs[0], integration_s=0.25, pixels=1500, noise_seed=11)
    device = RamanDevice(pixels=1500)
    assert acquisition.coefficients == device.coefficients == wavelength_coefficients(1500)
    assert (acquisition.pixels, acquisition.dark_pixels) == (1500, DARK_PIXELS)
    assert acquisition.counts.dtype == np.uint16
    assert acquisition.counts.shape == (len(acquisition.time_h), 1500)

    synthesizer = SpectrumSynthesizer(device.shift_cm1, DARK_PIXELS)
    rng = np.random.default_rng(11)
    for composition, counts in zip(acquisition.composition, acquisition.counts, strict=True):
        assert np.array_equal(counts, synthesizer.counts(composition, 0.25, -10.0, rng))
    # Noise averages out: the mean spectrum is the mean of the noise-free expectations.
    expected = np.mean(
        [synthesizer.mean_counts(c, 0.25, -10.0) for c in acquisition.composition], axis=0
    )
    residual = acquisition.counts.mean(axis=0) - expected
    assert np.abs(residual).max() < 5 * np.sqrt(expected.max() / len(acquisition.time_h))


def test_the_emulated_device_returns_the_same_spectra() -> None:
    run = design_runs(1, 2)[0]
    acquisition = acquire(run, integration_s=0.001, pixels=1024, noise_seed=21)
    compositions = iter(acquisition.composition)
    # A device seeded alike, long switched on (its TEC settled at -10 °C), shown the same broth.
    now = [0.0]
    device = RamanDevice(
        pixels=1024, seed=21, composition=lambda: next(compositions), clock=lambda: now[0]
    )
    now[0] = 1000.0
    assert device.detector_c == -10.0
    device.integration_us = 1_000

    async def spectra(count: int) -> list[bytes]:
        replies = [
            await device.handle(Frame(message_type=MessageType.GET_RAW_SPECTRUM))
            for _ in range(count)
        ]
        return [reply.data for reply in replies if reply is not None]

    served = asyncio.run(spectra(20))
    assert served == [counts.tobytes() for counts in acquisition.counts[:20]]


def test_bad_runs_and_settings_are_refused() -> None:
    params = ProcessParams(step_h=CAMPAIGN_STEP_H)
    with pytest.raises(ValueError, match="time order"):
        CampaignRun("r", 1, params, ((5.0, 0.01), (2.0, 0.01)), 24.0, 1.0)
    with pytest.raises(ValueError, match="time order"):
        CampaignRun("r", 1, params, ((30.0, 0.01),), 24.0, 1.0)
    with pytest.raises(ValueError, match="sample_every_h"):
        CampaignRun("r", 1, params, (), 24.0, 0.0)
    with pytest.raises(ValueError, match="seed"):
        CampaignRun("r", -1, params, (), 24.0, 1.0)
    run = CampaignRun("r", 1, params, ((2.0, 0.01),), 6.0, 2.5)
    assert run.sample_times_h().tolist() == [0.0, 2.5, 5.0]
    with pytest.raises(ValueError, match="integration_s"):
        acquire(run, integration_s=0.0)
    with pytest.raises(ValueError, match="laser_nm"):
        acquire(run, laser_nm=800.0)
    with pytest.raises(ValueError, match="at least one run"):
        design_runs(0, 1)


def test_a_short_run_is_played_exactly_as_given() -> None:
    params = ProcessParams(step_h=CAMPAIGN_STEP_H, glucose_g_L=2.0)
    fed = CampaignRun("fed", 3, params, ((2.0, 0.01),), 4.0, 1.0)
    unfed = dataclasses.replace(fed, feeds=())
    with_feed, without = acquire(fed, noise_seed=0), acquire(unfed, noise_seed=0)
    # Up to and at the feed's hour (sample first, then feed) the runs are the same.
    assert with_feed.composition[:3] == without.composition[:3]
    # 10 mL of 400 g/L glucose into 2 L: about +2 g/L from then on.
    jump = with_feed.glucose_g_L[3:] - without.glucose_g_L[3:]
    assert jump == pytest.approx(2.0, abs=0.1)


# --------------------------------------------------------------------------- perfusion

#: As MAX_ABS_CORRELATION for the fed-batch campaign, looser: a perfusion run's
#: lactate follows its cells and time more (it washes out as they settle). The largest |r| of
#: these pairs over 8-run campaigns was 0.28 for this seed, 0.18-0.37 over seeds 0-9.
MAX_ABS_CORRELATION_PERFUSION = 0.3


@pytest.fixture(scope="module")
def perfusion_runs() -> list[CampaignRun]:
    return design_perfusion_runs(8, 1)


@pytest.fixture(scope="module")
def perfusion_campaign(perfusion_runs: list[CampaignRun]) -> list[Acquisition]:
    return [acquire(run) for run in perfusion_runs]


def test_the_same_seed_gives_the_same_perfusion_campaign(
    perfusion_runs: list[CampaignRun],
) -> None:
    runs = perfusion_runs
    assert design_perfusion_runs(8, 1) == runs
    assert [r.name for r in runs] == [f"perfusion-1-{k:02d}" for k in range(1, 9)]
    other = design_perfusion_runs(2, 2)
    assert all(a.params != b.params for a, b in zip(runs, other, strict=False))
    # A fed-batch campaign of the same seed is not touched by the perfusion one.
    assert all(r.perfusion is None and r.rates == () for r in design_runs(2, 1))


def test_perfusion_runs_are_perfusion_runs_with_their_operators_actions(
    perfusion_runs: list[CampaignRun], perfusion_campaign: list[Acquisition]
) -> None:
    for run, acquisition in zip(perfusion_runs, perfusion_campaign, strict=True):
        assert isinstance(run.perfusion, PerfusionParams)
        assert run.params.step_h == CAMPAIGN_STEP_H
        assert 7 * 24 <= run.duration_h <= 14 * 24
        hours = [hour for hour, _, _ in run.rates]
        assert hours == sorted(hours) and len(hours) > 50  # a rate every 1-3 h
        volume = run.params.volume_L
        for _, perfusion, bleed in run.rates:
            assert 0.0 <= bleed < perfusion <= 4.0 * volume + 1e-9
        assert len({bleed for _, _, bleed in run.rates}) >= 2  # the bleed moves the density
        assert np.array_equal(acquisition.time_h, run.sample_times_h())


def test_the_perfusion_campaign_spans_perfusion_densities_and_glucose(
    perfusion_campaign: list[Acquisition],
) -> None:
    campaign = perfusion_campaign
    vcd = pooled(campaign, "vcd_e6_per_mL")
    glucose = pooled(campaign, "glucose_g_L")
    lactate = pooled(campaign, "lactate_g_L")
    # 10-60e6 cells/mL for days, the continuous demo's 45-50e6 among them.
    assert vcd.max() > 50.0 and vcd.max() < 80.0
    assert np.mean(vcd >= 10.0) > 0.7 and np.mean(vcd >= 45.0) > 0.05
    # Glucose from near exhaustion to a fresh medium's, every part sampled.
    assert glucose.min() < 1.0 and glucose.max() > 10.0
    counts, _ = np.histogram(glucose, bins=8, range=(0.0, 8.0))
    assert counts[1:].min() >= 0.02 * glucose.size
    assert lactate.min() < 0.3 and lactate.max() > 2.0


def test_perfusion_glucose_and_lactate_vary_apart_from_each_other_and_the_culture(
    perfusion_campaign: list[Acquisition],
) -> None:
    correlations(perfusion_campaign, MAX_ABS_CORRELATION_PERFUSION)


def test_a_perfusion_rate_change_is_played_at_its_hour() -> None:
    params = perfusion_process_params(step_h=CAMPAIGN_STEP_H, vcd_e6_per_mL=30.0)
    base = CampaignRun("p", 3, params, (), 6.0, 1.0, PerfusionParams())
    faster = dataclasses.replace(base, rates=((2.0, 8.0, 0.3),))
    one, two = acquire(base, noise_seed=0), acquire(faster, noise_seed=0)
    # Up to and at the change's hour (sample first, then act) the runs are the same; then
    # three times the fresh medium raises glucose towards the medium's 12 g/L.
    assert one.composition[:3] == two.composition[:3]
    assert np.all(two.glucose_g_L[3:] > one.glucose_g_L[3:] + 0.2)


def test_bad_rates_are_refused() -> None:
    params = perfusion_process_params(step_h=CAMPAIGN_STEP_H)
    medium = PerfusionParams()
    with pytest.raises(ValueError, match="need a perfusion run"):
        CampaignRun("r", 1, params, (), 24.0, 1.0, None, ((1.0, 2.0, 0.1),))
    with pytest.raises(ValueError, match="time order"):
        CampaignRun("r", 1, params, (), 24.0, 1.0, medium, ((5.0, 2.0, 0.1), (2.0, 2.0, 0.1)))
    with pytest.raises(ValueError, match="above a bleed"):
        CampaignRun("r", 1, params, (), 24.0, 1.0, medium, ((1.0, 0.3, 0.3),))
    with pytest.raises(ValueError, match="at least one run"):
        design_perfusion_runs(0, 1)
