"""The ``mqtt`` sink: committed samples published to an MQTT broker, store-and-forward.

For integrators who feed a historian, a data lake or a dashboard through a broker. The runtime
feeds the sink from the store through a durable cursor (:class:`gateway.ForwardingSink`):
:meth:`MqttSink.forward` returns only once the broker acknowledged every message (PUBACK at
QoS 1, PUBCOMP at QoS 2) and raises :class:`~.session.MqttError` on any failure; the runtime
then retries from its cursor with backoff, so consumers may see a message twice and
de-duplicate on ``(signal, seq)``. A message an MQTT 5 broker refuses for good (an ACL's "Not
authorized" in the PUBACK, or in a DISCONNECT: see :data:`~.session.PUBACK_REFUSALS`) fails
nothing else: ``forward`` raises :class:`gateway.SamplesRefusedError` naming its topic, its
samples and the reason code (with ``failure`` if the connection was lost with it), and the
runtime quarantines those signals while everything else flows. A transient failure code
(0x97 "Quota exceeded") is a failed forward, retried with backoff.

The connection is made lazily, by the first ``forward`` (the gateway starts, and stores
locally, while the broker is down), and again by the first one after a failure. Each connect
publishes every bound signal's metadata and the gateway's ``online`` status, retained, and
counts as established only once the broker acknowledged them. The Last Will (retained
``offline``) covers a broken connection; a clean stop publishes ``offline`` itself.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

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

from .holder import (
    AnySession,
    SessionHolder,
    broker_reachable,
    broker_reason,
    broker_settings,
)
from .messages import Message, TopicMap, batch_messages, sample_messages, status_payload
from .options import MqttOptions, check_topic
from .session import Delivery, MqttError, ReasonCode

#: The plugin API this plugin is written for (see gateway.PLUGIN_API_VERSION).
PAT_GATEWAY_API = "1.1"

__all__ = ["MqttError", "MqttOptions", "MqttSink"]

log = structlog.get_logger("plugins.mqtt")

QOS2_INFLIGHT = 20  # Mosquitto's default max_inflight_messages, enforced on incoming QoS 2


class MqttSink:
    """Publishes committed samples to one broker, one connection (session) at a time."""

    max_concurrent_forwards = 4
    """How many ``forward`` calls the runtime may have running at once."""

    def __init__(self, options: MqttOptions, context: PluginContext) -> None:
        self.options = options
        self.context = context
        self.url = options.url
        self.client_id = options.client_id or f"patgw-{context.site}-{context.id}"
        self.status_topic: str | None = None
        will: Message | None = None
        if options.status_topic is not None:
            self.status_topic = check_topic(
                options.status_topic.format_map({"site": context.site, "client_id": self.client_id})
            )
            will = (self.status_topic, status_payload("offline", self.client_id))
        self.audit_topic: str | None = None
        if options.audit_topic is not None:
            self.audit_topic = check_topic(
                options.audit_topic.format_map({"site": context.site, "client_id": self.client_id})
            )
        self._anchor: Message | None = None  # the latest audit anchor, sent again at connect
        self._closed = False
        self.topics = TopicMap(options.topic, options.meta_topic, context.site, context.area)
        self.sessions = 0
        """Sessions established so far (each connect that the broker accepted)."""
        self._settings = dataclasses.replace(
            broker_settings(options, self.client_id, options.qos),
            max_inflight=options.max_inflight or (0 if options.qos == 1 else QOS2_INFLIGHT),
            will=will,
        )
        self._batch = options.payload == "batch"
        self._refused_topics: set[str] = set()  # metadata or status topics refused, logged once
        self._dropped_topics: set[str] = set()  # retained topics refused by a DISCONNECT
        self._sessions = SessionHolder(options.publish_timeout_s)
        self._attempts = 0
        self._failure: str | None = None  # why the last connect attempt failed

    def bind(self, signals: Sequence[Signal]) -> None:
        """Compute every signal's topic; ``ValueError`` if two signals share one."""
        reserved = tuple(t for t in (self.status_topic, self.audit_topic) if t is not None)
        self.topics.bind(signals, reserved=reserved)

    async def __aenter__(self) -> MqttSink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closed = True
        status_topic = self.status_topic
        await self._sessions.close(
            None
            if status_topic is None
            else lambda: (status_topic, status_payload("offline", self.client_id)),
            retain=True,
        )

    async def publish_anchor(self, anchor: Mapping[str, Any]) -> None:
        """Publish the audit trail's signed head, retained on ``audit_topic``, and keep it to
        publish again after each connect (the broker may have lost it)."""
        if self.audit_topic is None or self._closed:
            return
        message = (self.audit_topic, json.dumps(dict(anchor), separators=(",", ":")).encode())
        self._anchor = message
        async with self._sessions.lock:  # in lock order, but not counted as waiting in line
            session = await self._ready_session(self._attempts)
            delivery = session.publish([message], retain=True)
        await self._sessions.acknowledged(session, delivery)
        if delivery.refused:
            raise MqttError(f"the broker refused the audit anchor on {self.audit_topic}")

    async def send(self, samples: Sequence[Sample]) -> None:
        """Deliver live samples: :meth:`forward` with ``historical`` false."""
        await self.forward(samples, False)

    async def forward(self, samples: Sequence[Sample], historical: bool) -> None:
        """Publish ``samples`` and return once the broker acknowledged every message.

        Raises :class:`MqttError` naming the broker and the reason on any failure (the session
        is then closed: the next call connects anew). Messages reach the client in call order.
        Raises :class:`gateway.SamplesRefusedError` once every message is answered if the
        broker refused some (MQTT 5): the others are delivered, the session stays.
        """
        if not samples:
            return
        owners: list[list[int]] | None = None
        if self._batch:
            owners = []
            messages = batch_messages(
                samples, historical, self.topics, self.options.max_payload_bytes, owners
            )
        else:
            messages = sample_messages(samples, historical, self.topics)
        sessions = self._sessions
        session = sessions.ready()
        if session is None:
            attempt = self._attempts
            session = await sessions.queue(lambda: self._ready_session(attempt))
        delivery = sessions.publish(session, messages)  # in this call's turn: nothing awaited
        try:
            await sessions.acknowledged(session, delivery)
        except MqttError as exc:
            if delivery.refused:
                # Refused, then the connection was lost (a broker that disconnects on a denied
                # publish): the refused are given up, the rest is sent again.
                refusals = _refusals(messages, owners, delivery.refused)
                raise SamplesRefusedError(refusals, failure=str(exc)) from exc
            raise
        if delivery.refused:
            raise SamplesRefusedError(_refusals(messages, owners, delivery.refused))

    async def reachable(self) -> bool:
        """Whether the broker's port accepts a TCP connection now (see
        :func:`~.holder.broker_reachable`)."""
        return await broker_reachable(self._settings.address, self.options.connect_timeout_s)

    # --- sessions ---------------------------------------------------------------------------

    async def _ready_session(self, attempt: int) -> AnySession:
        session = self._sessions.current
        if session is not None and session.usable:
            return session
        if self._attempts != attempt and self._failure is not None:
            # A connect attempt made while this call waited failed: fail with it rather than
            # hammer the broker; the runtime retries with backoff.
            raise MqttError(self._failure)
        self._attempts += 1
        try:
            session = await self._connect()
        except MqttError as exc:
            self._failure = str(exc)
            raise
        self._failure = None
        return session

    async def _connect(self) -> AnySession:
        sessions = self._sessions
        session = await sessions.renew(lambda: self._settings, self.sessions + 1)
        greeting = [m for m in self.topics.meta if m[0] not in self._dropped_topics]
        if self.status_topic is not None and self.status_topic not in self._dropped_topics:
            greeting.append((self.status_topic, status_payload("online", self.client_id)))
        if self._anchor is not None and self._anchor[0] not in self._dropped_topics:
            greeting.append(self._anchor)
        delivery: Delivery | None = None
        try:
            await session.open()
            delivery = session.publish(greeting, retain=True)
            await sessions.acknowledged(session, delivery)
            if session.lost is not None:  # the last message refused by a DISCONNECT
                raise session.error(session.lost)
        except BaseException:
            sessions.discard(session, "connect failed")
            if delivery is not None:
                self._drop(greeting, delivery.refused)
            raise
        self._greeted(greeting, delivery.refused)
        session.ready = True
        self.sessions = session.number
        log.info(
            "mqtt.connected",
            url=self.url,
            client_id=self.client_id,
            session=session.number,
            protocol=self.options.protocol,
            signals=len(self.topics.meta),
        )
        return session

    def _greeted(self, greeting: Sequence[Message], refused: dict[int, ReasonCode]) -> None:
        """A refused metadata or status message does not stop the sink (the samples may still
        be allowed): log each refused topic once, until it is accepted again."""
        for position, (topic, _) in enumerate(greeting):
            reason_code = refused.get(position)
            if reason_code is None:
                self._refused_topics.discard(topic)
            elif topic not in self._refused_topics:
                self._refused_topics.add(topic)
                log.warning(
                    "mqtt.retained_refused",
                    url=self.url,
                    topic=topic,
                    reason=broker_reason(reason_code),
                )

    def _drop(self, greeting: Sequence[Message], refused: dict[int, ReasonCode]) -> None:
        """A broker that refuses a metadata or status message by disconnecting (AWS IoT Core,
        EMQX with deny_action = disconnect) would refuse every connect: leave those messages
        out of this sink's next greetings (they are published again at the next start)."""
        for position, reason_code in refused.items():
            topic = greeting[position][0]
            self._dropped_topics.add(topic)
            log.warning(
                "mqtt.retained_dropped",
                url=self.url,
                topic=topic,
                reason=broker_reason(reason_code),
                until="the gateway restarts",
            )


def _refusals(
    messages: Sequence[Message], owners: list[list[int]] | None, refused: dict[int, ReasonCode]
) -> list[Refusal]:
    """The samples of the refused messages, per topic and reason (``owners``: each message's
    sample positions; None: one sample per message)."""
    grouped: dict[tuple[str, str], list[int]] = {}
    for position in sorted(refused):
        topic = messages[position][0]
        indices = grouped.setdefault((f"topic {topic}", broker_reason(refused[position])), [])
        indices.extend(owners[position] if owners is not None else (position,))
    return [Refusal(tuple(i), target, reason) for (target, reason), i in grouped.items()]


@hookimpl
def pat_gateway_register_sinks(registry: Registry) -> None:
    registry.add_sink(
        "mqtt",
        MqttSink,
        MqttOptions,
        "Publish committed samples to an MQTT broker (QoS 1, store-and-forward)",
    )
