"""One MQTT 5 connection, as an asyncio protocol on the event loop's thread (no thread).

For the ``mqtt`` sink (and the ``sparkplug`` sink) with ``protocol: "5"`` (MQTT 3.1.1 goes
through paho-mqtt: :mod:`.paho_session`, chosen by :func:`.holder.new_session`). The packets
are encoded and decoded by the maintained ``mqtt5`` codec, framed by :mod:`.packets` (bounded
buffers); this module keeps the session's state. :meth:`Session.publish` encodes a whole
group of messages and hands them to the transport in one write; the acknowledgements that
arrive in one read are applied in one pass. A message id is never reused while its message
is in flight, and a PUBACK for an id that is not in flight is ignored. Flow control (at most
``max_inflight`` unacknowledged messages, or an MQTT 5 broker's Receive Maximum) is done here,
in order. (Decision 0028: paho-mqtt, which this replaced, cost 45 µs of CPU per QoS 1 message
on its own; this costs a few.)

An MQTT 5 broker may refuse one message for good (a PUBACK or PUBREC reason code in
:data:`PUBACK_REFUSALS`, e.g. "Not authorized" from an ACL) and keep the connection: such a
message counts as done, and its :class:`Delivery` lists it in :attr:`Delivery.refused` with the
broker's reason, so the caller can give it up without stalling the rest. Any other failure code
(0x97 "Quota exceeded": the broker throttles; 0x91 "Packet identifier in use") fails the
delivery like a lost connection: the message is sent again later, nothing is given up. A broker
that answers a denied publish with DISCONNECT instead (AWS IoT Core; EMQX with
``deny_action = disconnect``), with a reason code in :data:`DISCONNECT_REFUSALS`, refuses the
oldest unacknowledged message (brokers answer in order); the session is then lost.

A :class:`Session` is single-use, from connect to loss: the sink makes a new session after any
failure. A lost connection fails every message still waiting for its acknowledgement at once,
rather than at a timeout; so does a broker that does not answer a PINGREQ within the keepalive.
Sessions start clean (MQTT 5 clean start): the gateway's store, not
the broker's session state, knows what was delivered.

Subscriptions (``SessionSettings.subscriptions``) are made by :meth:`Session.open`, which
returns only once the broker granted every one; ``on_message(topic, payload)`` is then called
on the event loop's thread for each PUBLISH received, in order (QoS 1 and 2 acknowledged by
the session; a QoS 2 message is passed on once even if the broker sends it again before its
PUBREL).

::

    GatewayError
     └── MqttError   the broker cannot be reached, refused the connection or a message, did
                     not acknowledge in time, or the connection was lost; the message names the
                     broker's URL and the reason
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mqtt5
import structlog

from gateway import GatewayError, SecretRef

from . import packets
from .messages import Message
from .options import BrokerAddress, TlsOptions
from .packets import ProtocolError, ReasonCode

__all__ = [
    "DISCONNECT_REFUSALS",
    "MAX_IN_FLIGHT",
    "PUBACK_REFUSALS",
    "Delivery",
    "MqttError",
    "ReasonCode",
    "Session",
    "SessionSettings",
]

log = structlog.get_logger("plugins.mqtt")

# Most messages awaiting acknowledgement in one session: below the 65,535 message ids, with
# room for the metadata and status messages of a connect and for subscriptions.
MAX_IN_FLIGHT = 60_000
TOPIC_CACHE = 100_000  # encoded topic names kept per session (one per signal, in practice)

_PACKET_TOO_LARGE = ReasonCode(0x95)

PUBACK_REFUSALS = frozenset({0x80, 0x83, 0x87, 0x90, 0x99})
"""PUBACK (and PUBREC) reason codes (MQTT 5.0, 3.4.2.1) that refuse this message for good: sent
again, it would be refused again. 0x87 Not authorized, 0x90 Topic Name invalid and 0x99 Payload
format invalid are about this message or topic. 0x83 Implementation specific error is too:
Mosquitto answers it to a payload beyond its ``message_size_limit`` (and to a ``$CONTROL/``
topic), which no retry cures. 0x80 Unspecified error is by definition "does not accept the
publish but does not want to reveal the reason" (brokers that hide an ACL's verdict): transient
conditions have codes of their own (0x97), and retrying it would be the poison message again,
while a wrong refusal costs a recorded loss and a quarantine that a probe lifts. The other
failure codes a PUBACK may carry, 0x91 Packet identifier in use and 0x97 Quota exceeded, and any
code a PUBACK may not carry (0x89 Server busy, 0x93 Receive Maximum exceeded, 0x96 Message rate
too high are DISCONNECT codes) are transient: the delivery fails and is retried, nothing is
given up."""

DISCONNECT_REFUSALS = frozenset({0x87, 0x90, 0x95, 0x99})
"""DISCONNECT reason codes (MQTT 5.0, 3.14.2.1) by which a broker refuses a message rather than
the session: 0x87 Not authorized, 0x90 Topic Name invalid, 0x95 Packet too large, 0x99 Payload
format invalid. The refused message is taken to be the oldest unacknowledged one: a broker
processes a connection's packets in order and sends PUBACKs in order (MQTT-4.6.0-2), so every
earlier one was acknowledged before the DISCONNECT. Codes about the session or the server
(0x8B Server shutting down, 0x8E Session taken over, 0x9C Use another server, 0x97 Quota
exceeded, 0x89 Server busy, 0x80 Unspecified error...) are a lost connection: nothing is
given up."""


class MqttError(GatewayError):
    """A delivery to the MQTT broker failed; ``str()`` names the broker and the reason."""


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """How to connect, from the sink's options (computed once)."""

    url: str
    address: BrokerAddress
    client_id: str
    protocol: Literal["3.1.1", "5"]
    qos: int
    keepalive_s: int
    connect_timeout_s: float
    max_inflight: int = 0  # most unacknowledged messages at once; 0: MAX_IN_FLIGHT
    username: str | None = None
    password: SecretRef | None = None
    tls: TlsOptions | None = None
    will: Message | None = None  # sent at ``qos`` by the broker if the connection breaks
    will_retain: bool = True  # the Last Will is retained (the gateway status); Sparkplug: no
    subscriptions: tuple[tuple[str, int], ...] = ()  # (topic filter, QoS), made by open()
    on_message: Callable[[str, bytes], None] | None = None  # each PUBLISH received, on the loop


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A delivery failed by a lost connection after its forward gave up waiting (cancelled)
    # must not be reported as "exception never retrieved".
    if not future.cancelled():
        future.exception()


class Delivery:
    """The acknowledgements of a group of messages, awaited together with :meth:`wait`."""

    __slots__ = ("_future", "count", "refused", "remaining")

    def __init__(self, future: asyncio.Future[None], count: int) -> None:
        self._future = future
        self.count = count
        self.remaining = count
        self.refused: dict[int, ReasonCode] = {}
        """Messages the broker refused (by position in the group) and its reason code."""
        future.add_done_callback(_retrieve)
        if count == 0:
            future.set_result(None)

    async def wait(self) -> None:
        """Return once the broker answered every message (acknowledged it, or refused it: see
        :attr:`refused`); raise :class:`MqttError` if the session fails first."""
        await self._future

    def acknowledge(self) -> None:
        """One more message acknowledged."""
        self.remaining -= 1
        if self.remaining == 0:
            self.complete()

    def complete(self) -> None:
        """Every message is answered (``remaining`` is 0)."""
        if not self._future.done():
            self._future.set_result(None)

    def refuse(self, position: int, reason_code: ReasonCode) -> None:
        """The broker refused the message at ``position``: it is answered, not delivered."""
        self.refused[position] = reason_code
        self.acknowledge()

    def fail(self, error: MqttError) -> None:
        """Fail the delivery (if it is not done)."""
        if not self._future.done():
            self._future.set_exception(error)


@contextlib.contextmanager
def _reading(fields: str, *paths: Path | None) -> Iterator[None]:
    """Name the option and file in an error reading it (ssl's own errors name neither)."""
    try:
        yield
    except OSError as exc:
        names = ", ".join(str(p) for p in paths if p is not None)
        raise OSError(f"{fields} ({names}): {exc.strerror or exc}") from exc


def _tls_context(
    tls: TlsOptions | None, make: Callable[[int], ssl.SSLContext] = ssl.SSLContext
) -> ssl.SSLContext:
    # Reads files: called on a worker thread.
    context = make(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificate and host name
    if tls is not None and tls.ca_file is not None:
        with _reading("tls.ca_file", tls.ca_file):
            context.load_verify_locations(tls.ca_file)  # only these CAs
    else:
        context.load_default_certs()
    if tls is not None:
        if tls.cert_file is not None:
            with _reading("tls.cert_file/key_file", tls.cert_file, tls.key_file):
                context.load_cert_chain(tls.cert_file, tls.key_file)
        context.check_hostname = tls.verify_hostname
    return context


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])  # a missing secret: "environment variable X is not set"
    if isinstance(exc, OSError) and exc.errno and not isinstance(exc, ssl.SSLError):
        # asyncio's "[Errno 111] Connect call failed (...)" does not say what errno 111 is.
        text, name = str(exc), os.strerror(exc.errno)
        return text if name in text else f"{name}: {text}"
    return str(exc) or type(exc).__name__


def timeout_reason(timeout: float, step: str, tls: bool) -> str:
    """Why a session's ``open`` timed out, by the step it had reached ("connect", "connack" or
    "suback"; either protocol)."""
    if step == "suback":
        return f"no SUBACK within {timeout:g} s (connect_timeout_s)"
    if step == "connack":
        return (
            f"no CONNACK within {timeout:g} s (connect_timeout_s): the broker accepted the"
            " connection but did not answer the MQTT CONNECT"
        )
    steps = "TCP connection and TLS handshake" if tls else "TCP connection"
    return f"{steps} not completed within {timeout:g} s (connect_timeout_s)"


class SessionBase:
    """What both protocols' sessions share: who they are, whether they are usable, why they
    ended (:class:`Session` for MQTT 5, :class:`~.paho_session.PahoSession` for 3.1.1)."""

    def __init__(
        self, settings: SessionSettings, number: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.settings = settings
        self.number = number
        self.ready = False  # set by the owner once the session is fully established
        self._loop = loop
        self._lost: str | None = None
        self._connected = False

    @property
    def lost(self) -> str | None:
        """Why the session ended (None while it lasts)."""
        return self._lost

    @property
    def usable(self) -> bool:
        """Established and not lost: messages may be published."""
        return self.ready and self._lost is None

    def error(self, reason: str) -> MqttError:
        """An :class:`MqttError` naming the broker and ``reason``."""
        return MqttError(f"MQTT broker {self.settings.url}: {reason}")

    def abort(self, reason: str, *, graceful: bool = False) -> None:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def _opening(self, step: Callable[[], str]) -> AsyncIterator[None]:
        """The body of ``open``, within ``connect_timeout_s``; any failure aborts the session
        and is raised as :class:`MqttError` naming the step (``step()``: connect, connack or
        suback) or the cause."""
        timeout = self.settings.connect_timeout_s
        try:
            async with asyncio.timeout(timeout):
                yield
        except TimeoutError:
            # Also a socket's own timeout (TimeoutError is an OSError): name the step.
            reason = timeout_reason(timeout, step(), self.settings.address.tls)
            self.abort(reason)
            raise self.error(reason) from None
        except MqttError:
            self.abort("connect failed")
            raise
        except (OSError, ValueError, KeyError) as exc:
            # OSError covers refused and unreachable hosts, names that do not resolve, TLS
            # failures (ssl.SSLError) and unreadable certificate files.
            reason = f"cannot connect: {_describe(exc)}"
            self.abort(reason)
            raise self.error(reason) from exc
        except BaseException:
            self.abort("connect cancelled")
            raise
        self._connected = True


class _Waiting:
    """Messages of one ``publish`` call waiting for room in the window, from ``start`` on."""

    __slots__ = ("delivery", "messages", "retain", "start")

    def __init__(self, messages: Sequence[Message], retain: bool, delivery: Delivery) -> None:
        self.messages = messages
        self.retain = retain
        self.delivery = delivery
        self.start = 0


class Session(SessionBase, asyncio.Protocol):
    """One connection to the broker, usable until it fails or is closed.

    :meth:`open` connects (and subscribes); :meth:`publish` sends messages in order and
    returns their :class:`Delivery`; :meth:`abort` ends the session at once (fails what is
    pending, cuts the connection); :meth:`close` ends it cleanly. Everything runs on the event
    loop's thread.
    """

    def __init__(
        self, settings: SessionSettings, number: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(settings, number, loop)
        if settings.protocol != "5":  # (MQTT 3.1.1: PahoSession, chosen by holder.new_session)
            raise ValueError(f"Session speaks MQTT 5, not {settings.protocol}")
        self._qos = settings.qos
        # By message id until acknowledged: the delivery and the message's position in it, in
        # the order sent (the oldest first: a DISCONNECT refusal is about it).
        self._pending: dict[int, tuple[Delivery, int]] = {}
        self._window = min(settings.max_inflight or MAX_IN_FLIGHT, MAX_IN_FLIGHT)
        self._waiting: deque[_Waiting] = deque()
        self._mid = 0  # the last message id used
        self._topics: set[str] = set()  # topic names checked
        self._transport: asyncio.Transport | None = None
        self._decoder = packets.Decoder()  # whole packets for mqtt5, bounded
        self._connack: asyncio.Future[None] = loop.create_future()
        self._connack.add_done_callback(_retrieve)
        self._suback: asyncio.Future[list[int]] = loop.create_future()
        self._suback.add_done_callback(_retrieve)
        self._subscribe_mid = 0
        self._closed: asyncio.Future[None] = loop.create_future()
        self._received_qos2: set[int] = set()  # incoming QoS 2 ids passed on, not yet PUBRELed
        self._recorded: set[int] = set()  # outgoing QoS 2 ids the broker PUBRECed (has them)
        self._keepalive: asyncio.TimerHandle | None = None
        self._ping_unanswered = False
        self._keepalive_s = settings.keepalive_s  # or an MQTT 5 broker's Server Keep Alive
        self._max_packet = 0  # an MQTT 5 broker's Maximum Packet Size (0: not set)

    async def open(self) -> None:
        """Connect, wait for the broker to accept (CONNACK) and to grant every subscription
        (SUBACK), within ``connect_timeout_s``.

        Raises :class:`MqttError` (the session is then aborted).
        """

        def step() -> str:
            if self._connack.done():
                return "suback"
            return "connack" if self._transport is not None else "connect"

        async with self._opening(step):
            await self._start()
            await asyncio.shield(self._connack)  # its state names the step
            if self.settings.subscriptions:
                await self._subscribe()

    async def _start(self) -> None:
        settings = self.settings
        address = settings.address
        password = settings.password.get() if settings.password is not None else None
        context = await asyncio.to_thread(_tls_context, settings.tls) if address.tls else None
        will = None
        if settings.will is not None:
            topic, payload = settings.will
            raw = payload.encode() if isinstance(payload, str) else payload
            will = (topic, raw, settings.qos, settings.will_retain)
        connect = mqtt5.ConnectPacket(
            settings.client_id,
            username=settings.username,
            password=password.encode() if password is not None else None,
            clean_start=True,
            will=None
            if will is None
            else mqtt5.Will(will[0], payload=will[1], qos=mqtt5.QoS(will[2]), retain=will[3]),
            keep_alive=settings.keepalive_s,
            max_packet_size=packets.MAX_PACKET,
            request_problem_info=True,
        ).write()
        await self._loop.create_connection(
            lambda: self,
            address.host,
            address.port,
            ssl=context,
            server_hostname=address.host if context is not None else None,
        )
        transport = self._transport
        if transport is None or self._lost is not None:
            raise self.error(self._lost or "connection to broker lost")
        transport.write(connect)
        if self._keepalive_s:
            self._keepalive = self._loop.call_later(self._keepalive_s, self._ping)

    async def _subscribe(self) -> None:
        subscriptions = self.settings.subscriptions
        self._subscribe_mid = self._next_mid()
        filters = [
            mqtt5.TopicFilter(topic_filter, max_qos=mqtt5.QoS(qos), retain_as_published=False)
            for topic_filter, qos in subscriptions
        ]
        self._write(mqtt5.SubscribePacket(self._subscribe_mid, filters).write())
        codes = await asyncio.shield(self._suback)
        if len(codes) != len(subscriptions):
            raise self.error(
                f"the broker answered {len(codes)} codes to {len(subscriptions)} subscriptions"
            )
        for (topic_filter, _), code in zip(subscriptions, codes, strict=True):
            if code >= 0x80:
                raise self.error(
                    f"the broker refused the subscription to {topic_filter!r}:"
                    f" {ReasonCode(code)} (reason code 0x{code:02X})"
                )

    def publish(self, messages: Sequence[Message], retain: bool = False) -> Delivery:
        """Send ``messages``, in order, and return their :class:`Delivery`.

        Beyond the in-flight window (``max_inflight``, an MQTT 5 Receive Maximum), messages
        wait here, in order, for acknowledgements to make room. Does not block. Raises
        :class:`MqttError` (and aborts) if a message cannot be sent (a payload beyond MQTT's
        256 MB, a topic that is not a topic name).
        """
        if self._lost is not None:
            raise self.error(self._lost)
        delivery = Delivery(self._loop.create_future(), len(messages))
        if not self._waiting and len(self._pending) + len(messages) <= self._window:
            self._send(messages, retain, delivery, 0)
        elif messages:
            self._waiting.append(_Waiting(messages, retain, delivery))
            self._release()
        return delivery

    def _send(
        self, messages: Sequence[Message], retain: bool, delivery: Delivery, start: int
    ) -> None:
        """Encode ``messages`` (positions ``start``... of ``delivery``), each PUBLISH by
        ``mqtt5``, and hand them to the transport in one write."""
        pending = self._pending
        topics = self._topics
        qos = mqtt5.QoS(self._qos)
        publish = mqtt5.PublishPacket
        parts: list[bytes] = []
        append = parts.append
        mid = self._mid
        limit = self._max_packet
        try:
            for position, (topic, payload) in enumerate(messages, start):
                if topic not in topics:
                    self._topic(topic)  # checked once (mqtt5 lets a NUL through)
                if isinstance(payload, str):
                    payload = payload.encode()
                mid = mid + 1 if mid < 65535 else 1
                while mid in pending:  # never reuse an id in flight
                    mid = mid + 1 if mid < 65535 else 1
                packet = (
                    publish(topic, payload, qos=qos, retain=True, packet_id=mid).write()
                    if retain
                    else publish(topic, payload, qos=qos, packet_id=mid).write()  # (-0.14 µs)
                )
                if limit and len(packet) > limit:
                    # The broker would disconnect (0x95): refused here, not sent (MQTT-3.1.2-24).
                    delivery.refuse(position, _PACKET_TOO_LARGE)
                    continue
                append(packet)
                pending[mid] = (delivery, position)
        except ValueError as exc:
            self.abort(f"message refused: {exc}")
            raise self.error(f"message refused: {exc}") from exc
        finally:
            self._mid = mid
        self._write(b"".join(parts))

    def _topic(self, topic: str) -> None:
        if len(self._topics) >= TOPIC_CACHE:
            self._topics.clear()
        packets.check_topic_name(topic)
        self._topics.add(topic)

    def _next_mid(self) -> int:
        mid = self._mid
        mid = mid + 1 if mid < 65535 else 1
        while mid in self._pending or mid == self._subscribe_mid:
            mid = mid + 1 if mid < 65535 else 1
        self._mid = mid
        return mid

    def _release(self) -> None:
        """Send what waits, as far as the window allows (one write per waiting group)."""
        waiting = self._waiting
        while waiting and self._lost is None:
            room = self._window - len(self._pending)
            if room <= 0:
                return
            group = waiting[0]
            start = group.start
            end = min(start + room, len(group.messages))
            if end == len(group.messages):
                waiting.popleft()
            group.start = end
            self._send(group.messages[start:end], group.retain, group.delivery, start)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and self._lost is None:
            self._transport.write(data)

    def abort(self, reason: str, *, graceful: bool = False) -> None:
        """End the session now: fail everything pending with ``reason`` and drop the connection
        (with a DISCONNECT if ``graceful``, else cut, so the broker sends the Last Will).
        Does not block; idempotent."""
        first = self._lost is None
        self._fail(reason)
        transport = self._transport
        if not first or transport is None:
            return
        if graceful:
            transport.write(mqtt5.DisconnectPacket().write())
            transport.close()  # after what is buffered
            log.info(
                "mqtt.disconnected",
                url=self.settings.url,
                client_id=self.settings.client_id,
                session=self.number,
            )
        else:
            transport.abort()
            if self._connected:
                log.warning(
                    "mqtt.connection_lost",
                    url=self.settings.url,
                    client_id=self.settings.client_id,
                    session=self.number,
                    reason=reason,
                )

    async def close(self, grace_s: float) -> None:
        """End the session cleanly (DISCONNECT, so no Last Will) and wait, at most ``grace_s``
        seconds, for the connection to close; cut it if it takes longer."""
        self.abort("session closed", graceful=True)
        if self._transport is None:
            return
        try:
            async with asyncio.timeout(grace_s):
                await asyncio.shield(self._closed)
        except TimeoutError:
            self._transport.abort()

    def join(self) -> None:
        """Nothing to wait for: the session has no thread (kept for its callers)."""

    def _fail(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        for future in (self._connack, self._suback):
            if not future.done():
                future.set_exception(self.error(reason))
        deliveries = dict.fromkeys(
            [*(p[0] for p in self._pending.values()), *(w.delivery for w in self._waiting)]
        )
        self._pending.clear()
        self._waiting.clear()
        for delivery in deliveries:
            delivery.fail(self.error(reason))

    def _ping(self) -> None:
        """Every ``keepalive_s``: a PINGREQ; the session is lost if the broker answered nothing
        we sent since the last one (a broker that hangs would otherwise hold everything until a
        timeout). Any answer counts, not only its PINGRESP: on a slow link a PINGREQ waits
        behind every byte written before it, while the broker's PUBACKs keep coming. Its own
        PUBLISHes do not: they say nothing about whether it still reads."""
        if self._lost is not None:
            return
        if self._ping_unanswered:
            self.abort(f"no answer to PINGREQ within {self._keepalive_s} s (keepalive_s)")
            return
        self._ping_unanswered = True
        self._write(mqtt5.PingReqPacket().write())
        self._keepalive = self._loop.call_later(self._keepalive_s, self._ping)

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._lost is not None:  # aborted while connecting
            transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
        if self._lost is None:
            detail = _describe(exc) if exc is not None else ""
            self.abort(
                f"connection to broker lost: {detail}" if detail else "connection to broker lost"
            )

    def data_received(self, data: bytes) -> None:
        if self._lost is not None:
            return
        try:
            decoder = self._decoder
            if not decoder.partial:
                view = memoryview(data)
                at = self._read_direct(view)
                if self._lost is not None:
                    return
                data = b"" if at == len(data) else data[at:]
            for whole in decoder.feed(data):
                self._dispatch(_read5(whole))
                if self._lost is not None:
                    return
        except ProtocolError as exc:
            self.abort(f"protocol error: {exc}")
            return
        if self._waiting:
            with contextlib.suppress(MqttError):  # the session is aborted: deliveries failed
                self._release()

    def _read_direct(self, view: memoryview) -> int:
        """Decode the whole packets at the start of ``view``; where the first one that is not
        whole starts (or the end)."""
        read = mqtt5.read
        puback = mqtt5.PubAckPacket
        pending = self._pending
        at = 0
        end = len(view)
        acknowledged = False
        while at < end:
            try:
                packet, size = read(view[at:])
            except IndexError:  # not whole yet (or malformed: the decoder tells which)
                break
            except BaseException as exc:  # sorted out by _read5 (a panic is a BaseException)
                _read5(view[at:], exc)
                raise  # (not reached: _read5 raised)
            at += size
            if type(packet) is puback and packet.reason_code.value < 0x80:
                acknowledged = True  # the common case: Success, No matching subscribers
                entry = pending.pop(packet.packet_id, None)
                if entry is not None:
                    delivery = entry[0]
                    delivery.remaining -= 1
                    if not delivery.remaining:
                        delivery.complete()
                if self._recorded:
                    self._recorded.discard(packet.packet_id)
                continue
            self._dispatch(packet)
            if self._lost is not None:
                break
        if acknowledged:
            self._ping_unanswered = False  # the broker reads what we send (see _ping)
        return at

    def _dispatch(self, packet: mqtt5.Packet) -> None:
        if isinstance(packet, mqtt5.PubAckPacket):
            self._acknowledged(packet.packet_id, ReasonCode(packet.reason_code.value))
            self._ping_unanswered = False
        elif isinstance(packet, mqtt5.PublishPacket):
            self._received(packet)  # (proves nothing about our direction)
        else:
            self._control(packet)
            self._ping_unanswered = False

    def _control(self, packet: mqtt5.Packet) -> None:
        if isinstance(packet, mqtt5.PubRecPacket):
            self._recorded_by_broker(packet.packet_id, ReasonCode(packet.reason_code.value))
        elif isinstance(packet, mqtt5.PubCompPacket):
            self._acknowledged(packet.packet_id, ReasonCode(packet.reason_code.value))
        elif isinstance(packet, mqtt5.PubRelPacket):
            self._received_qos2.discard(packet.packet_id)
            self._write(mqtt5.PubCompPacket(packet.packet_id).write())
        elif isinstance(packet, mqtt5.PingRespPacket):
            self._ping_unanswered = False
        elif isinstance(packet, mqtt5.ConnAckPacket):
            self._connack_received(
                packets.Connack(
                    ReasonCode(packet.reason_code.value),
                    packet.receive_max,
                    packet.server_keep_alive,
                    None if packet.max_qos == mqtt5.QoS.EXACTLY_ONCE else packet.max_qos.value,
                    packet.max_packet_size,
                )
            )
        elif isinstance(packet, mqtt5.SubAckPacket):
            self._suback_received(packet.packet_id, [c.value for c in packet.reason_codes])
        elif isinstance(packet, mqtt5.DisconnectPacket):
            self._disconnected(ReasonCode(packet.reason_code.value))
        else:
            raise ProtocolError(f"an unexpected packet: {type(packet).__name__}")

    def _received(self, packet: mqtt5.PublishPacket) -> None:
        topic = packet.topic
        if "+" in topic or "#" in topic or "\x00" in topic:
            raise ProtocolError(f"a PUBLISH topic that is not a topic name: {topic[:100]!r}")
        if packet.topic_alias is not None:  # the CONNECT sets no Topic Alias Maximum: none
            raise ProtocolError("a PUBLISH with a topic alias (the gateway allows none)")
        self._deliver(topic, packet.payload, packet.qos.value, packet.packet_id or 0)

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost says the rest

    # --- packets from the broker -----------------------------------------------------------

    def _acknowledged(self, mid: int, reason_code: ReasonCode) -> None:
        """A PUBACK (QoS 1), a PUBCOMP or a failed PUBREC (QoS 2) for ``mid``."""
        entry = self._pending.pop(mid, None)
        if self._recorded:
            self._recorded.discard(mid)
        if entry is None:
            return  # not in flight (failed or abandoned already, or a broker's mistake)
        if not reason_code.is_failure:
            entry[0].acknowledge()
        elif reason_code.value in PUBACK_REFUSALS:  # MQTT 5 only: e.g. an ACL's verdict
            entry[0].refuse(entry[1], reason_code)
        else:  # e.g. a throttling broker's "Quota exceeded": send it again later
            entry[0].fail(
                self.error(
                    f"the broker answered {reason_code} (MQTT 5 reason code"
                    f" 0x{reason_code.value:02X}) to a message: not a refusal, sent again later"
                )
            )

    def _recorded_by_broker(self, mid: int, reason_code: ReasonCode) -> None:
        """A PUBREC (QoS 2) for ``mid``."""
        if reason_code.is_failure:
            self._acknowledged(mid, reason_code)  # the exchange ends here
            return
        if mid in self._pending:
            self._recorded.add(mid)
        # (an id not in flight any more: released all the same, or the broker waits)
        self._write(mqtt5.PubRelPacket(mid).write())

    def _suback_received(self, mid: int, codes: list[int]) -> None:
        # (0 before the SUBSCRIBE is sent: no SUBACK can be its answer yet.)
        if mid == self._subscribe_mid and mid and not self._suback.done():
            self._suback.set_result(codes)

    def _connack_received(self, connack: packets.Connack) -> None:
        if self._connack.done():
            raise ProtocolError("a second CONNACK")
        # An MQTT 5 broker says how many unacknowledged messages it takes (Receive Maximum);
        # it may disconnect a client that sends more.
        receive_maximum = connack.receive_maximum
        if receive_maximum and not 0 < self._window <= receive_maximum:
            self._window = receive_maximum
        if connack.maximum_packet_size is not None:
            self._max_packet = connack.maximum_packet_size
        if connack.server_keepalive is not None and connack.server_keepalive != self._keepalive_s:
            self._keepalive_s = connack.server_keepalive  # the broker's word is final
            if self._keepalive is not None:
                self._keepalive.cancel()
                self._keepalive = None
            if self._keepalive_s:
                self._keepalive = self._loop.call_later(self._keepalive_s, self._ping)
        if connack.reason_code.is_failure:
            self._connack.set_exception(
                self.error(f"the broker refused the connection: {connack.reason_code}")
            )
        elif connack.maximum_qos is not None and connack.maximum_qos < self._qos:
            self._connack.set_exception(
                self.error(
                    f"the broker takes QoS {connack.maximum_qos} at most (its Maximum QoS), not"
                    f" qos {self._qos}: set qos: 1"
                )
            )
        else:
            self._connack.set_result(None)

    def _deliver(self, topic: str, payload: bytes, qos: int, mid: int) -> None:
        """An incoming PUBLISH: acknowledged, then passed to ``on_message`` (once)."""
        if qos == 1:
            self._write(mqtt5.PubAckPacket(mid).write())
        elif qos == 2:
            self._write(mqtt5.PubRecPacket(mid).write())
            if mid in self._received_qos2:
                return  # sent again before our PUBREC arrived: passed on already
            self._received_qos2.add(mid)
        on_message = self.settings.on_message
        if on_message is None:
            return
        try:
            on_message(topic, payload)
        except Exception as exc:  # the owner's bug must not end the session
            log.error(
                "mqtt.on_message_failed",
                url=self.settings.url,
                topic=topic,
                error=_describe(exc)[:200],
                exc_info=exc,
            )

    def _disconnected(self, reason_code: ReasonCode) -> None:
        reason = f"the broker closed the connection: {reason_code}"
        # The broker refused the oldest unacknowledged message by disconnecting (AWS IoT Core,
        # EMQX with deny_action = disconnect): answered, not delivered. (At QoS 2, messages the
        # broker PUBRECed are its own already: not that one.)
        oldest = next((m for m in self._pending if m not in self._recorded), None)
        if reason_code.value in DISCONNECT_REFUSALS and oldest is not None:
            delivery, position = self._pending.pop(oldest)
            delivery.refuse(position, reason_code)
            reason = f"{reason} (MQTT 5 reason code 0x{reason_code.value:02X})"
        self.abort(reason)


def _read5(whole: memoryview, failed: BaseException | None = None) -> mqtt5.Packet:
    """One whole MQTT 5 packet decoded by ``mqtt5``; :class:`ProtocolError` if it is not valid
    (or if ``failed``, what ``mqtt5.read`` raised for it already).

    mqtt5 0.8.0 raises ValueError (a UnicodeDecodeError for a string that is not UTF-8, caught
    inside it) or IndexError for what it cannot read, and for some malformed strings a pyo3
    ``PanicException``, which derives from BaseException: all of them a protocol error here."""
    try:
        if failed is not None:
            raise failed
        packet, size = mqtt5.read(whole)
    except (ValueError, IndexError) as exc:
        raise ProtocolError(f"a malformed packet ({exc})") from exc
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        context = exc.__context__ or exc
        raise ProtocolError(f"a malformed packet ({context})") from exc
    if size != len(whole):
        raise ProtocolError("bytes after the end of a packet")
    return packet
