"""What the gateway tells about itself: Prometheus metrics and the ``/health`` document.

Both are read from the gateway's own counters at the moment they are asked for (a scrape, a
probe) — the instrument runners, the signal outputs' sequence numbers, the store writer's
:class:`~gateway.store.writer.WriterStats`, the sink feeders and forwarders. Nothing is counted
on the per-sample hot path for them. Everything here runs in the gateway's event loop, the only
thread that changes those counters, so a scrape sees one consistent moment.

For the HTTP endpoint that serves them, see :mod:`gateway.http`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from .store.writer import LATENCY_BUCKETS_S
from .timefmt import now_ns

if TYPE_CHECKING:
    from .runtime.instrument import InstrumentRunner
    from .runtime.supervisor import Gateway

__all__ = [
    "GatewayCollector",
    "ProducerCounts",
    "gateway_version",
    "health_report",
    "is_ready",
    "new_registry",
    "producer_counts",
    "store_size_bytes",
]

_LIVE, _HISTORICAL = "live", "historical"
_INSTRUMENT, _PROCESSOR = "instrument", "processor"
# State values (InstrumentState, SinkState) compared as strings: importing gateway.runtime here
# would make gateway.runtime and this module (which the supervisor uses) import each other.
_CONNECTED, _CONNECTING, _DOWN, _UP = "connected", "connecting", "down", "up"


def gateway_version() -> str:
    """The installed ``pat-gateway`` distribution's version (``unknown`` when not installed)."""
    try:
        return version("pat-gateway")
    except PackageNotFoundError:
        return "unknown"


def new_registry(gateway: Gateway) -> CollectorRegistry:
    """A registry of its own (never the process-wide one) holding ``gateway``'s collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway))
    return registry


class GatewayCollector:
    """A ``prometheus_client`` collector of one gateway's ``patgw_*`` metrics."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._version = gateway_version()

    def collect(self) -> Iterator[Metric]:
        """Every metric, read now."""
        up = GaugeMetricFamily("patgw_up", "1 while the gateway process serves metrics.")
        up.add_metric([], 1)
        yield up
        yield InfoMetricFamily(
            "patgw", "PAT Gateway build information.", value={"version": self._version}
        )
        counts = producer_counts(self._gateway)
        yield from self._producers(counts)
        yield from self._instruments(counts)
        yield from self._processors()
        yield from self._store()
        yield from self._sinks()

    def _instruments(self, counts: Mapping[str, ProducerCounts]) -> Iterator[Metric]:
        gateway = self._gateway
        labels = ["instrument"]
        samples_read = CounterMetricFamily(
            "patgw_instrument_samples_read_total",
            "Samples published by the instrument's driver during this run.",
            labels=labels,
        )
        samples_committed = CounterMetricFamily(
            "patgw_instrument_samples_committed_total",
            "Samples of the instrument committed to the local store during this run.",
            labels=labels,
        )
        connected = GaugeMetricFamily(
            "patgw_instrument_connected",
            "1 while the instrument's driver has a session, else 0.",
            labels=labels,
        )
        failures = CounterMetricFamily(
            "patgw_instrument_failures_total",
            "Times the instrument went down (driver failure) during this run.",
            labels=labels,
        )
        sessions = CounterMetricFamily(
            "patgw_instrument_sessions_total",
            "Sessions the instrument's driver established during this run.",
            labels=labels,
        )
        for runner in gateway.runners:
            key = [runner.instrument_id]
            own = counts[runner.instrument_id]
            samples_read.add_metric(key, own.published)
            samples_committed.add_metric(key, own.committed)
            connected.add_metric(key, runner.state == _CONNECTED)
            failures.add_metric(key, runner.failures)
            sessions.add_metric(key, runner.sessions)
        yield from (samples_read, samples_committed, connected, failures, sessions)

    def _producers(self, counts: Mapping[str, ProducerCounts]) -> Iterator[Metric]:
        labels = ["producer", "kind"]
        published = CounterMetricFamily(
            "patgw_producer_samples_published_total",
            "Samples the producer (an instrument's driver, a processor) published during this run.",
            labels=labels,
        )
        committed = CounterMetricFamily(
            "patgw_producer_samples_committed_total",
            "Samples of the producer committed to the local store during this run (summed over"
            " producers: patgw_store_samples_committed_total).",
            labels=labels,
        )
        dropped = CounterMetricFamily(
            "patgw_producer_samples_dropped_total",
            "Samples of the producer the store could not keep during this run (summed over"
            " producers: patgw_store_samples_dropped_total).",
            labels=labels,
        )
        for producer, own in counts.items():
            key = [producer, own.kind]
            published.add_metric(key, own.published)
            committed.add_metric(key, own.committed)
            dropped.add_metric(key, own.dropped)
        yield from (published, committed, dropped)

    def _processors(self) -> Iterator[Metric]:
        labels = ["processor"]
        processed = CounterMetricFamily(
            "patgw_processor_inputs_processed_total",
            "Input samples the processor was given during this run.",
            labels=labels,
        )
        failures = CounterMetricFamily(
            "patgw_processor_failures_total",
            "Input samples on which the processor raised (its outputs were published bad).",
            labels=labels,
        )
        skipped = CounterMetricFamily(
            "patgw_processor_inputs_skipped_total",
            "Input samples skipped because the processor's queue was full.",
            labels=labels,
        )
        queued = GaugeMetricFamily(
            "patgw_processor_inputs_queued",
            "Input samples waiting for the processor.",
            labels=labels,
        )
        for p in self._gateway.processors:
            key = [p.processor_id]
            processed.add_metric(key, p.processed)
            failures.add_metric(key, p.failures)
            skipped.add_metric(key, p.skipped)
            queued.add_metric(key, p.queued)
        yield from (processed, failures, skipped, queued)

    def _store(self) -> Iterator[Metric]:
        gateway = self._gateway
        writer = gateway.writer
        stats = writer.stats if writer is not None else None

        def counter(name: str, text: str, value: int) -> CounterMetricFamily:
            return CounterMetricFamily(name, text, value=value)

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, value=value)

        yield counter(
            "patgw_store_samples_committed_total",
            "Samples committed to the local store during this run.",
            stats.committed if stats else 0,
        )
        yield counter(
            "patgw_store_samples_dropped_total",
            "Samples the store could not keep (full-store policy, late or at shutdown).",
            stats.dropped if stats else 0,
        )
        yield counter(
            "patgw_store_commits_failed_total",
            "Store commits that failed (and were retried) during this run.",
            stats.failed_commits if stats else 0,
        )
        yield gauge(
            "patgw_store_pending_samples",
            "Samples published and not yet committed (waiting, or kept for a retry).",
            writer.waiting if writer is not None else 0,
        )
        yield gauge(
            "patgw_store_size_bytes",
            "Size of the store file and its write-ahead log.",
            store_size_bytes(gateway.plan.config.store.path),
        )
        budget = gateway.budget.stats if gateway.budget is not None else None
        if budget is not None:
            yield counter(
                "patgw_store_pruned_samples_total",
                "Samples the store budget pruned (archived first, if configured) during this run.",
                budget.pruned,
            )
            yield gauge(
                "patgw_store_prune_paused",
                "1 while pruning is paused (archive not writable or full, store error), else 0.",
                int(budget.paused is not None),
            )
        counts = stats.latency_buckets if stats else [0] * (len(LATENCY_BUCKETS_S) + 1)
        bounds = [*map(floatToGoString, LATENCY_BUCKETS_S), "+Inf"]
        yield HistogramMetricFamily(
            "patgw_store_commit_latency_seconds",
            "Time from a batch's oldest sample being published to its commit.",
            buckets=list(zip(bounds, itertools.accumulate(counts), strict=True)),
            sum_value=stats.latency_sum_s if stats else 0.0,
        )

    def _sinks(self) -> Iterator[Metric]:
        gateway = self._gateway
        sink = ["sink"]
        delivered = CounterMetricFamily(
            "patgw_sink_samples_delivered_total",
            "Samples the sink took (lane: live, or historical from the backlog).",
            labels=["sink", "lane"],
        )
        backlog = GaugeMetricFamily(
            "patgw_sink_backlog_samples",
            "Committed samples not yet delivered to the sink.",
            labels=sink,
        )
        oldest = GaugeMetricFamily(
            "patgw_sink_oldest_undelivered_age_seconds",
            "Age of the oldest sample not yet delivered to the sink (0: none).",
            labels=sink,
        )
        dropped = CounterMetricFamily(
            "patgw_sink_samples_dropped_total",
            "Samples given up for the sink (retention policy, or lost by an at-most-once sink).",
            labels=sink,
        )
        refused = CounterMetricFamily(
            "patgw_sink_samples_refused_total",
            "Samples given up for the sink because its destination refused them (quarantine).",
            labels=sink,
        )
        quarantined = GaugeMetricFamily(
            "patgw_sink_quarantined_signals",
            "Signals whose samples the sink's destination refuses (given up, probed on a backoff).",
            labels=sink,
        )
        resent = CounterMetricFamily(
            "patgw_sink_samples_resent_total",
            "Samples handed to the sink again after a failure (possible duplicates upstream).",
            labels=sink,
        )
        failures = CounterMetricFamily(
            "patgw_sink_failures_total",
            "Failed forwards to the sink during this run.",
            labels=sink,
        )
        reconnects = CounterMetricFamily(
            "patgw_sink_reconnects_total",
            "Times the sink came up again after a failure during this run.",
            labels=sink,
        )
        up = GaugeMetricFamily(
            "patgw_sink_up",
            "1 while the sink accepts samples, else 0.",
            labels=sink,
        )
        now = now_ns()
        for forwarder in gateway.forwarders:
            key = [forwarder.sink_id]
            stats = forwarder.stats
            delivered.add_metric([*key, _LIVE], stats.delivered - stats.delivered_historical)
            delivered.add_metric([*key, _HISTORICAL], stats.delivered_historical)
            backlog.add_metric(key, stats.backlog)
            oldest.add_metric(key, _age_s(stats.oldest_undelivered_ns, now) or 0.0)
            dropped.add_metric(key, stats.dropped)
            refused.add_metric(key, stats.refused)
            quarantined.add_metric(key, len(stats.quarantined))
            resent.add_metric(key, stats.resent)
            failures.add_metric(key, stats.failures)
            reconnects.add_metric(key, max(stats.sessions - 1, 0))
            up.add_metric(key, stats.state == _UP)
        for feeder in gateway.feeders:
            # At most once: no backlog in the store, no retries; what fails is lost.
            key = [feeder.sink_id]
            delivered.add_metric([*key, _LIVE], feeder.delivered)
            delivered.add_metric([*key, _HISTORICAL], 0)
            backlog.add_metric(key, feeder.queued)
            dropped.add_metric(key, feeder.lost)
            resent.add_metric(key, 0)
            up.add_metric(key, 1)
        yield from (delivered, backlog, oldest, dropped, refused, quarantined, resent)
        yield from (failures, reconnects, up)


@dataclass(frozen=True, slots=True)
class ProducerCounts:
    """One producer's samples during this run. What it published is committed, dropped or still
    pending (waiting for a commit, or kept for a retry)."""

    kind: str
    """``instrument`` or ``processor``."""
    published: int
    committed: int
    dropped: int

    @property
    def pending(self) -> int:
        """Published and neither committed nor dropped (yet)."""
        return self.published - self.committed - self.dropped


def producer_counts(gateway: Gateway) -> dict[str, ProducerCounts]:
    """Samples per producer (instrument or processor, by id) during this run.

    Every row the store commits or drops was published by exactly one producer's output, so
    the producers' committed and dropped counts sum to the store's totals.
    """
    published: Counter[str] = Counter()
    producer_of: dict[int, str] = {}  # def_id → producer
    first_seq = gateway.first_seq
    for output in gateway.outputs:
        signal = output.signal
        published[signal.instrument] += output.seq - first_seq[signal.id]
        producer_of[output.def_id] = signal.instrument
    committed: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    writer = gateway.writer
    if writer is not None:
        for counter, by_def in (
            (committed, writer.stats.committed_by_def),
            (dropped, writer.stats.dropped_by_def),
        ):
            for def_id, count in by_def.items():
                producer = producer_of.get(def_id)  # every committed def has an output
                if producer is not None:
                    counter[producer] += count
    kinds = {r.instrument_id: _INSTRUMENT for r in gateway.runners}
    kinds |= {p.processor_id: _PROCESSOR for p in gateway.processors}
    return {
        producer: ProducerCounts(kind, published[producer], committed[producer], dropped[producer])
        for producer, kind in kinds.items()
    }


def store_size_bytes(path: Path) -> int:
    """Bytes on disk of the SQLite store at ``path`` and its write-ahead log (0 if missing)."""
    size = 0
    for name in (str(path), f"{path}-wal"):
        with contextlib.suppress(OSError):  # no WAL file (yet), or no store at all
            size += os.stat(name).st_size
    return size


def is_ready(gateway: Gateway) -> bool:
    """Started, not stopping, and the store's last commit did not fail."""
    writer = gateway.writer
    return (
        gateway.started.is_set()
        and not gateway.stopping
        and writer is not None
        and writer.stats.last_error is None
    )


def health_report(gateway: Gateway, uptime_s: float) -> dict[str, Any]:
    """The ``/health`` document: overall status, readiness and every part's state.

    ``status`` is ``starting`` before the gateway has started, ``stopping`` once it stops,
    ``degraded`` while an instrument or a forwarding sink is down, a sink's destination refuses
    a signal (quarantined), or the store cannot commit (then not ready either), else ``ok``.
    """
    writer = gateway.writer
    stats = writer.stats if writer is not None else None
    now = now_ns()
    counts = producer_counts(gateway)
    instruments = {
        r.instrument_id: {
            "state": r.state.value,
            "sessions": r.sessions,
            "failures": r.failures,
            "last_error": r.last_error,
            "identity": None
            if r.identity is None
            else r.identity.fields() | {"source": r.identity_source},
        }
        | _samples(counts[r.instrument_id])
        for r in gateway.runners
    }
    sinks: dict[str, dict[str, Any]] = {}
    budget = gateway.budget.stats if gateway.budget is not None else None
    holding = budget.holding if budget is not None else {}
    for forwarder in gateway.forwarders:
        fs = forwarder.stats
        held = holding.get(forwarder.sink_id, 0)
        sinks[forwarder.sink_id] = {
            "state": fs.state.value,
            "delivered": fs.delivered,
            "backlog": fs.backlog,
            "oldest_undelivered_age_s": _age_s(fs.oldest_undelivered_ns, now),
            "dropped": fs.dropped,
            "refused": fs.refused,
            "quarantined": {
                signal: {"target": q.target, "reason": q.reason, "refused": q.refused}
                for signal, q in fs.quarantined.items()
            },
            "failures": fs.failures,
            "last_error": fs.last_error,
        }
        if budget is not None:
            # Behind: samples over the store budget this sink has not released yet.
            sinks[forwarder.sink_id] |= {"holding_prune": held > 0, "holding_samples": held}
    for feeder in gateway.feeders:
        sinks[feeder.sink_id] = {
            "state": "live",
            "delivered": feeder.delivered,
            "backlog": feeder.queued,
            "lost": feeder.lost,
        }
    processors = {
        p.processor_id: {
            "processed": p.processed,
            "queued": p.queued,
            "failures": p.failures,
            "skipped": p.skipped,
            "last_error": p.last_error,
            "restarts": p.restarts,
            "owns": p.owned,
        }
        | _samples(counts[p.processor_id])
        for p in gateway.processors
    }
    store: dict[str, Any] = {
        "committed": stats.committed if stats else 0,
        "dropped": stats.dropped if stats else 0,
        "pending": writer.waiting if writer is not None else 0,
        "last_error": stats.last_error if stats else None,
        "size_bytes": store_size_bytes(gateway.plan.config.store.path),
    }
    if budget is not None:
        store["budget"] = {
            "pruned": budget.pruned,
            "archive_files": budget.archive_files,
            "paused": budget.paused,
            "held_by": dict(holding),
            "last_run_ms": budget.last_run_ms,
        }
    if gateway.trends is not None:
        trends = gateway.trends.stats
        store["trends"] = {
            "rolled_id": trends.rolled_id,
            "last_roll_ms": trends.last_roll_ms,
            "failing": trends.failing,
        }
    ready = is_ready(gateway)
    if gateway.stopping:
        status = "stopping"
    elif not gateway.started.is_set():
        status = "starting"
    elif (
        not ready
        or any(_is_down(r) for r in gateway.runners)
        or (gateway.audit is not None and gateway.audit.lost > 0)
        or any(f.stats.state == _DOWN or f.stats.quarantined for f in gateway.forwarders)
    ):
        status = "degraded"
    else:
        status = "ok"
    return {
        "status": status,
        "live": True,
        "ready": ready,
        "uptime_s": round(uptime_s, 3),
        "instruments": instruments,
        "processors": processors,
        "sinks": sinks,
        "store": store,
        "clock": gateway.clock.health(),
        "audit": gateway.audit.health() if gateway.audit is not None else None,
        "writes": {
            "targets": sorted(gateway.plan.access.targets),
            "outcomes": dict(gateway.write_path.counts) if gateway.write_path else {},
            # A count: /health needs no login, so it names nobody.
            "users_locked_out": len(gateway.plan.access.authority.locked_out()),
        },
    }


def _samples(own: ProducerCounts) -> dict[str, Any]:
    return {
        "published": own.published,
        "committed": own.committed,
        "dropped": own.dropped,
        "pending": own.pending,
    }


def _is_down(runner: InstrumentRunner) -> bool:
    # A dead instrument alternates between DOWN (backoff) and CONNECTING (next attempt);
    # CONNECTING after a failure is still down, or the status would flap with each attempt.
    state = runner.state
    return state == _DOWN or (state == _CONNECTING and runner.failures > 0)


def _age_s(oldest_ns: int | None, now: int) -> float | None:
    return None if oldest_ns is None else max(now - oldest_ns, 0) / 1e9
