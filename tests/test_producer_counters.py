"""Per-producer sample counters: every producer (an instrument's driver, a processor) has its
published, committed and dropped samples in /metrics and /health, and the producers' counts sum
to the store's totals — processor outputs included, while the store drops samples it cannot
keep, and after the final commit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import running, wait_for, write_config
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_processors import Plugin

from gateway import build_registry, load_plan
from gateway.metrics import health_report, new_registry
from gateway.runtime import Gateway


def metric_values(gateway: Gateway) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = generate_latest(new_registry(gateway)).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def check_sums(gateway: Gateway) -> dict[str, Any]:
    """The producers' counts against the store's, in /health and /metrics at one moment."""
    health = health_report(gateway, 1.0)
    metrics = metric_values(gateway)
    producers = {**health["instruments"], **health["processors"]}
    assert set(producers) == {"c", "p"}
    store = health["store"]
    assert sum(p["committed"] for p in producers.values()) == store["committed"]
    assert sum(p["dropped"] for p in producers.values()) == store["dropped"]
    for own in producers.values():
        assert own["published"] == own["committed"] + own["dropped"] + own["pending"]
        assert own["pending"] >= 0
    # Waiting in the store, or in a commit that has not returned yet.
    assert sum(p["pending"] for p in producers.values()) >= store["pending"]

    def total(name: str) -> float:
        return sum(value for _, value in metrics[name])

    assert total("patgw_producer_samples_committed_total") == total(
        "patgw_store_samples_committed_total"
    )
    assert total("patgw_producer_samples_dropped_total") == total(
        "patgw_store_samples_dropped_total"
    )
    published = {
        (labels["producer"], labels["kind"]): value
        for labels, value in metrics["patgw_producer_samples_published_total"]
    }
    assert published == {
        ("c", "instrument"): producers["c"]["published"],
        ("p", "processor"): producers["p"]["published"],
    }
    return producers


@pytest.mark.asyncio
async def test_producer_counts_sum_to_the_stores_totals_with_a_processor(tmp_path: Path) -> None:
    config = {
        "area": "t",
        "store": {
            "path": str(tmp_path / "s.sqlite"),
            "commit_interval_ms": 300,
            "max_pending_samples": 1000,
        },
        # 40 readings every 5 ms: more than a store bounded to 1,000 waiting samples and
        # committing every 300 ms keeps, so it drops some.
        "instruments": [{"id": "c", "driver": "counter", "options": {"per_tick": 40}}],
        "processors": [{"id": "p", "type": "scale", "options": {"input": "t/c/count"}}],
    }
    registry = build_registry([Plugin()], entry_points=False)
    plan = load_plan(write_config(tmp_path / "g.yaml", config), registry)

    def processor_committed_and_store_dropped(gateway: Gateway) -> bool:
        health = health_report(gateway, 1.0)
        return health["store"]["dropped"] > 0 and health["processors"]["p"]["committed"] > 0

    async with running(plan) as (gateway, _):
        await wait_for(
            lambda: processor_committed_and_store_dropped(gateway),
            20,
            what="committed processor outputs and dropped samples",
        )
        live = check_sums(gateway)
    assert live["p"]["committed"] > 0 and live["c"]["dropped"] > 0
    final = check_sums(gateway)  # after the final commit: nothing left pending
    assert all(own["pending"] == 0 for own in final.values())
    assert final["p"]["published"] > 0
