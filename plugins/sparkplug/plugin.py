"""The ``sparkplug`` sink: committed samples published as Sparkplug B 3.0, store-and-forward.

For plants whose MQTT infrastructure speaks Sparkplug B (Ignition, HiveMQ, EMQX, a "unified
namespace"). The gateway is one edge node (``spBv1.0/<group_id>/NBIRTH/<edge_node_id>``), each
instrument a device (``.../DBIRTH|DDATA/<edge_node_id>/<device_id>``); what the payloads hold
is in :mod:`.payloads`. The connection is the ``mqtt`` sink's :class:`~plugins.mqtt.session.
Session`, held the same way (:class:`~plugins.mqtt.holder.SessionHolder`): QoS 1, a sample is
released only after the broker's PUBACK, and a failed ``forward`` is retried by the runtime
from the store (possibly twice: consumers de-duplicate on the ``seq`` property of each metric,
the sample's per-signal seq).

Each connect takes the next ``bdSeq`` (0-255) and sets NDEATH with it as the Last Will (not
retained), subscribes to its NCMD topic (and to the primary host's STATE), then publishes the
NBIRTH (seq 0) and every DBIRTH. Each ``forward`` publishes one DDATA per device and batch
(backlog samples flagged ``is_historical``). A clean stop publishes the NDEATH itself.

**Rebirth.** An NCMD ``Node Control/Rebirth`` = true republishes the NBIRTH (same bdSeq) and
every DBIRTH. Births other than a connect's (a rebirth, the primary host's return) come at
most once per :data:`REBIRTH_MIN_INTERVAL_S`: requests in between are coalesced into one, and
data that needs them waits for them. Any other NCMD content (unknown metric, wrong datatype,
malformed protobuf) is ignored and logged, rate-limited.

**Primary host.** With ``primary_host_id``, births and data are held until the host's STATE
(``{"online": true, "timestamp": ms}``, retained by the host) says it is online, and held again
while it says offline: ``forward`` then fails with :class:`~plugins.mqtt.session.MqttError`, the
runtime keeps the samples in the store and retries with backoff, and they go as backlog
(``is_historical``) once the host is back, after fresh births. A STATE older than the last one
seen, or not JSON, is ignored (logged, rate-limited). With a single broker there is no other
server to move to, so the node stays connected while the host is offline (see
docs/decisions/0029-sparkplug-b.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog

from gateway import (
    PluginContext,
    Refusal,
    Registry,
    Sample,
    SamplesRefusedError,
    Signal,
    hookimpl,
)
from plugins.mqtt.holder import (
    AnySession,
    SessionHolder,
    broker_reachable,
    broker_reason,
    broker_settings,
)
from plugins.mqtt.messages import Message
from plugins.mqtt.options import check_topic
from plugins.mqtt.session import MqttError, SessionSettings

from .names import NAMESPACE, check_id, sanitize
from .options import SparkplugOptions

if TYPE_CHECKING:
    from .payloads import Catalog

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"

__all__ = ["SparkplugOptions", "SparkplugSink"]

log = structlog.get_logger("plugins.sparkplug")

REBIRTH_MIN_INTERVAL_S = 2.0  # births at most this often on request (NCMD, primary host back)
STATE_WAIT_S = 1.0  # after connecting, how long to wait for the primary host's retained STATE
LOG_EVERY_S = 10.0  # one line per kind of bad input at most this often (with a count)


class _Throttle:
    """Rate-limited log lines: per event, one line per :data:`LOG_EVERY_S`, then a count of
    those left out."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, event: str, **fields: Any) -> None:
        self.log(log.warning, event, **fields)

    def log(self, method: Any, event: str, **fields: Any) -> None:
        now = time.monotonic()
        last = self._last.get(event)
        if last is not None and now - last < LOG_EVERY_S:
            self._skipped[event] = self._skipped.get(event, 0) + 1
            return
        self._last[event] = now
        skipped = self._skipped.pop(event, 0)
        method(event, **fields, **({"not_logged_since": skipped} if skipped else {}))


def _ms() -> int:
    return time.time_ns() // 1_000_000


class SparkplugSink:
    """Publishes committed samples as a Sparkplug B edge node, one connection at a time."""

    max_concurrent_forwards = 4
    """How many ``forward`` calls the runtime may have running at once."""

    def __init__(self, options: SparkplugOptions, context: PluginContext) -> None:
        self.options = options
        self.url = options.url
        self.client_id = options.client_id or f"patgw-{context.site}-{context.id}"
        self.group_id = options.group_id
        self.edge_node_id = check_id(
            options.edge_node_id or sanitize(context.site), "edge_node_id (the site)"
        )
        node = f"{NAMESPACE}/{self.group_id}"
        self.nbirth_topic = check_topic(f"{node}/NBIRTH/{self.edge_node_id}")
        self.ndeath_topic = f"{node}/NDEATH/{self.edge_node_id}"
        self.ncmd_topic = f"{node}/NCMD/{self.edge_node_id}"
        self._device_topics = f"{node}/{{}}/{self.edge_node_id}/{{}}"
        self.primary_host_id = options.primary_host_id
        self.state_topic = (
            None if self.primary_host_id is None else f"{NAMESPACE}/STATE/{self.primary_host_id}"
        )
        # The protobuf runtime is imported only by a gateway that uses this sink.
        from . import payloads

        self._payloads = payloads
        self.catalog: Catalog = payloads.Catalog()
        self.bd_seq = -1  # the current connection's; the first connect makes it 0
        self.births = 0
        """NBIRTHs published (each with every DBIRTH), at connects and rebirths."""
        self.rebirth_requests = 0
        """Rebirth commands received (logged at most once per ``LOG_EVERY_S``, with a count)."""
        self.sessions = 0
        """Sessions established so far (each connect that the broker accepted)."""
        self.host_online = self.state_topic is None
        self._host_ts = -1  # timestamp of the last STATE taken
        self._state_seen = asyncio.Event()
        self._births_due = True
        self._last_births = float("-inf")  # loop time of the last births
        self._rebirth_timer: asyncio.TimerHandle | None = None
        self._gate: asyncio.Event | None = None  # births wait on it for the interval to pass
        self._gate_timer: asyncio.TimerHandle | None = None
        self._throttle = _Throttle()
        self._broker = broker_settings(options, self.client_id, 1)
        self._sessions = SessionHolder(options.publish_timeout_s, self._session_discarded)
        self._closed = False

    def bind(self, signals: Sequence[Signal]) -> None:
        """Declare every signal as a metric of its device (aliases in this order)."""
        self.catalog.bind(signals)
        for device_id in self.catalog.devices:
            check_topic(self._device_topics.format("DDATA", device_id))

    async def __aenter__(self) -> SparkplugSink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closed = True
        for timer in (self._rebirth_timer, self._gate_timer):
            if timer is not None:
                timer.cancel()
        if self._gate is not None:
            self._gate.set()  # nothing may wait on a timer that no longer runs
        await self._sessions.close(self._death, retain=False)

    async def reachable(self) -> bool:
        """Whether the broker's port accepts a TCP connection now: after an outage the backlog
        starts as soon as the broker is back (a primary host that is offline is not an outage:
        the broker answers all along, so it does not cut the wait)."""
        return await broker_reachable(self._broker.address, self.options.connect_timeout_s)

    async def send(self, samples: Sequence[Sample]) -> None:
        """Deliver live samples: :meth:`forward` with ``historical`` false."""
        await self.forward(samples, False)

    async def forward(self, samples: Sequence[Sample], historical: bool) -> None:
        """Publish ``samples`` (one DDATA per device) and return once the broker acknowledged
        them. Raises :class:`MqttError` on any failure, and while the primary host is offline;
        :class:`gateway.SamplesRefusedError` if an MQTT 5 broker refused some DDATA."""
        if not samples:
            return
        sessions = self._sessions
        session = sessions.ready() or await sessions.queue(self._ready_session)
        if not self.host_online:
            raise self._held()
        if self.catalog.declare(samples) or self._births_due:
            # At most one set of births per interval, however often the host comes back.
            await self._birth_gate()
            if not session.usable:
                raise session.error(session.lost or "session ended")
            if not self.host_online:
                raise self._held()
        # From here to publish nothing awaits: payload seq numbers follow publication order.
        messages: list[Message] = []
        if self._births_due or self.catalog.changed:
            messages = self._births()
        first = len(messages)
        owners: list[list[int]] = []
        topic = self._device_topics.format
        for device_id, payload in self.catalog.ddata(samples, historical, _ms(), owners):
            messages.append((topic("DDATA", device_id), payload))
        delivery = sessions.publish(session, messages)
        await sessions.acknowledged(session, delivery)
        if delivery.refused:
            refusals: list[Refusal] = []
            for position, reason_code in sorted(delivery.refused.items()):
                target = f"topic {messages[position][0]}"
                reason = broker_reason(reason_code)
                if position < first:
                    self._throttle.warning("sparkplug.birth_refused", topic=target, reason=reason)
                else:
                    refusals.append(Refusal(tuple(owners[position - first]), target, reason))
            if refusals:
                raise SamplesRefusedError(refusals)

    def _death(self) -> Message:
        """The NDEATH of a clean stop, which sends no Last Will (same bdSeq)."""
        return (self.ndeath_topic, self._payloads.Catalog.ndeath(self.bd_seq, _ms()))

    def _held(self) -> MqttError:
        return MqttError(
            f"MQTT broker {self.url}: Sparkplug primary host {self.primary_host_id!r} is"
            " offline (STATE): publishing held, the samples wait in the store"
        )

    # --- births ------------------------------------------------------------------------------

    async def _birth_gate(self) -> None:
        """Return once :data:`REBIRTH_MIN_INTERVAL_S` has passed since the last births; the
        calls waiting meanwhile resume together, in the order they came."""
        loop = asyncio.get_running_loop()
        wait = self._last_births + REBIRTH_MIN_INTERVAL_S - loop.time()
        if wait <= 0:
            return
        gate = self._gate
        if gate is None or gate.is_set():
            gate = self._gate = asyncio.Event()
            self._gate_timer = loop.call_later(wait, gate.set)
        await gate.wait()

    def _births(self) -> list[Message]:
        """NBIRTH and every DBIRTH, in that order (NBIRTH resets the payload seq to 0)."""
        now = _ms()
        messages: list[Message] = [(self.nbirth_topic, self.catalog.nbirth(self.bd_seq, now))]
        topic = self._device_topics.format
        messages.extend((topic("DBIRTH", d), p) for d, p in self.catalog.dbirths(now))
        self._births_due = False
        self._last_births = asyncio.get_running_loop().time()
        self.births += 1
        if self._rebirth_timer is not None:
            self._rebirth_timer.cancel()
            self._rebirth_timer = None
        return messages

    def _rebirth(self) -> None:
        """Publish the births now, or once :data:`REBIRTH_MIN_INTERVAL_S` has passed since the
        last (requests meanwhile coalesce); if the session or the host is down, the next
        connect or ``forward`` publishes them."""
        self._births_due = True
        session = self._sessions.current
        if self._closed or session is None or not session.usable or not self.host_online:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_births + REBIRTH_MIN_INTERVAL_S - loop.time()
        if wait > 0:
            if self._rebirth_timer is None:
                self._rebirth_timer = loop.call_later(wait, self._rebirth_timer_fired)
            return
        with contextlib.suppress(MqttError):  # the session is discarded: the next forward births
            self._sessions.publish(session, self._births())

    def _rebirth_timer_fired(self) -> None:
        self._rebirth_timer = None
        if self._births_due:
            self._rebirth()

    # --- inbound: NCMD and STATE, on the event loop ------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.ncmd_topic:
            command = self._payloads.decode_command(payload)
            for problem in command.problems:
                self._throttle.warning("sparkplug.ncmd_ignored", topic=topic, problem=problem)
            if command.rebirth:
                self.rebirth_requests += 1
                self._throttle.log(log.info, "sparkplug.rebirth_requested", topic=topic)
                self._rebirth()
        elif topic == self.state_topic:
            self._on_state(payload)

    def _on_state(self, payload: bytes) -> None:
        try:
            state = json.loads(payload)
            online = state["online"]
            timestamp = state["timestamp"]
            if type(online) is not bool or type(timestamp) is not int:
                raise TypeError("online must be a boolean and timestamp an integer")
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the parser goes ("[" * 100000).
            self._throttle.warning(
                "sparkplug.state_invalid",
                topic=self.state_topic,
                error=f"{type(exc).__name__}: {str(exc)[:200]}",
                payload=payload[:100].decode("utf-8", "replace"),
            )
            return
        if timestamp < self._host_ts:
            self._throttle.warning(
                "sparkplug.state_stale",
                topic=self.state_topic,
                timestamp=timestamp,
                latest=self._host_ts,
            )
            return
        self._host_ts = timestamp
        self._state_seen.set()
        if online == self.host_online:
            return
        self.host_online = online
        self._throttle.log(
            log.info if online else log.warning,
            "sparkplug.primary_host_online" if online else "sparkplug.primary_host_offline",
            host=self.primary_host_id,
            timestamp=timestamp,
        )
        if online:
            self._rebirth()  # the host missed (or forgot) the births
        else:
            self._births_due = True

    # --- sessions ------------------------------------------------------------------------------

    async def _ready_session(self) -> AnySession:
        session = self._sessions.current
        if session is not None and session.usable:
            return session
        return await self._connect()

    async def _connect(self) -> AnySession:
        sessions = self._sessions
        session = await sessions.renew(self._settings, self.sessions + 1)
        self._births_due = True
        try:
            await session.open()
            if self.state_topic is not None:
                # The host's STATE is retained: it follows the SUBACK at once, if there is one.
                try:
                    async with asyncio.timeout(STATE_WAIT_S):
                        await self._state_seen.wait()
                except TimeoutError:
                    pass
            session.ready = True
            if self.host_online:
                delivery = sessions.publish(session, self._births())
                await sessions.acknowledged(session, delivery)
        except BaseException:
            sessions.discard(session, "connect failed")
            raise
        self.sessions = session.number
        log.info(
            "sparkplug.connected",
            url=self.url,
            client_id=self.client_id,
            session=session.number,
            bd_seq=self.bd_seq,
            node=f"{self.group_id}/{self.edge_node_id}",
            devices=len(self.catalog.devices),
            primary_host=self.primary_host_id,
            host_online=self.host_online,
        )
        return session

    def _settings(self) -> SessionSettings:
        """A new connection's settings, and the state that starts with it: the next bdSeq
        (its NDEATH is the Last Will), the primary host offline until its STATE says otherwise.
        """
        self.bd_seq = (self.bd_seq + 1) & 0xFF  # per connect attempt
        subscriptions: tuple[tuple[str, int], ...] = ((self.ncmd_topic, 1),)
        if self.state_topic is not None:
            subscriptions += ((self.state_topic, 1),)
            self.host_online = False  # until its STATE says otherwise
            self._state_seen.clear()
        return dataclasses.replace(
            self._broker,
            will=(self.ndeath_topic, self._payloads.Catalog.ndeath(self.bd_seq, _ms())),
            will_retain=False,
            subscriptions=subscriptions,
            on_message=self._on_message,
        )

    def _session_discarded(self) -> None:
        self._births_due = True


@hookimpl
def pat_gateway_register_sinks(registry: Registry) -> None:
    registry.add_sink(
        "sparkplug",
        SparkplugSink,
        SparkplugOptions,
        "Publish committed samples as a Sparkplug B 3.0 edge node (QoS 1, store-and-forward)",
    )
