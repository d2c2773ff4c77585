"""One MQTT connection: paho-mqtt's network thread bridged to asyncio.

For the ``mqtt`` sink. paho-mqtt (2.x) runs a connection on its own thread (``loop_start``);
its callbacks only hand events to the event loop with ``call_soon_threadsafe``, and everything
else happens on the loop's thread: a message's acknowledgement is registered there right after
``publish`` returns, in the same step, so a PUBACK can never overtake the registration of its
message id. Acknowledgements arriving together are handed over in one call. Flow control
(at most ``max_inflight`` unacknowledged messages, or an MQTT 5 broker's Receive Maximum) is
done here too, in order, rather than by paho.

An MQTT 5 broker may refuse one message for good (a PUBACK reason code in
:data:`PUBACK_REFUSALS`, e.g. "Not authorized" from an ACL) and keep the connection: such a
message counts as done, and its :class:`Delivery` lists it in :attr:`Delivery.refused` with the
broker's reason, so the caller can give it up without stalling the rest. Any other failure code
(0x97 "Quota exceeded": the broker throttles; 0x91 "Packet identifier in use") fails the
delivery like a lost connection: the message is sent again later, nothing is given up. A broker
that answers a denied publish with DISCONNECT instead (AWS IoT Core; EMQX with
``deny_action = disconnect``), with a reason code in :data:`DISCONNECT_REFUSALS`, refuses the
oldest unacknowledged message (brokers answer in order); the session is then lost. (At QoS 2
paho-mqtt ignores the reason code of a PUBREC, and MQTT 3.1.1 has none: a refusal is then
invisible.)

Inbound (for the ``sparkplug`` sink's commands and STATE): :meth:`Session.open` subscribes to
the settings' ``subscriptions`` and returns only once the broker granted each (a refusal fails
it, naming the filter); every message received is handed to ``on_message`` on the event loop,
in arrival order (paho acknowledges QoS 1 ones).

A :class:`Session` is single-use, from connect to loss: paho's automatic reconnect is off,
and the sink makes a new session after any failure. A lost connection fails every message
still waiting for its acknowledgement at once, rather than at a timeout. Sessions start clean
(MQTT 3.1.1 clean session, MQTT 5 clean start): the gateway's store, not the broker's session
state, knows what was delivered.

::

    GatewayError
     └── MqttError   the broker cannot be reached, refused the connection or a message, did
                     not acknowledge in time, or the connection was lost; the message names the
                     broker's URL and the reason
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway import GatewayError, SecretRef

from .messages import Message
from .options import BrokerAddress, TlsOptions

__all__ = [
    "DISCONNECT_REFUSALS",
    "MAX_IN_FLIGHT",
    "PUBACK_REFUSALS",
    "Delivery",
    "MqttError",
    "Session",
    "SessionSettings",
]

log = structlog.get_logger("plugins.mqtt")

# Most messages awaiting acknowledgement in one session: below paho's 65,535 message ids, with
# room for the metadata and status messages of a connect.
MAX_IN_FLIGHT = 60_000

PUBACK_REFUSALS = frozenset({0x80, 0x83, 0x87, 0x90, 0x99})
"""PUBACK reason codes (MQTT 5.0, 3.4.2.1) that refuse this message for good: sent again, it
would be refused again. 0x87 Not authorized, 0x90 Topic Name invalid and 0x99 Payload format
invalid are about this message or topic. 0x83 Implementation specific error is too: Mosquitto
answers it to a payload beyond its ``message_size_limit`` (and to a ``$CONTROL/`` topic), which
no retry cures. 0x80 Unspecified error is by definition "does not accept the publish but does
not want to reveal the reason" (brokers that hide an ACL's verdict): transient conditions have
codes of their own (0x97), and retrying it would be the poison message again, while a wrong
refusal costs a recorded loss and a quarantine that a probe lifts. The other failure codes a
PUBACK may carry, 0x91 Packet identifier in use and 0x97 Quota exceeded, and any code a PUBACK
may not carry (0x89 Server busy, 0x93 Receive Maximum exceeded, 0x96 Message rate too high are
DISCONNECT codes) are transient: the delivery fails and is retried, nothing is given up."""

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
    will_retain: bool = True  # the Last Will is retained (Sparkplug's NDEATH is not)
    subscriptions: tuple[tuple[str, int], ...] = ()  # (topic filter, QoS), subscribed in open()
    on_message: Callable[[str, bytes], None] | None = None
    """Called on the event loop's thread, in arrival order, with every message received (topic,
    payload); must not block. An exception it raises is logged and does not end the session."""


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
        if self.remaining == 0 and not self._future.done():
            self._future.set_result(None)

    def refuse(self, position: int, reason_code: ReasonCode) -> None:
        """The broker refused the message at ``position``: it is answered, not delivered."""
        self.refused[position] = reason_code
        self.acknowledge()

    def fail(self, error: MqttError) -> None:
        """Fail the delivery (if it is not done)."""
        if not self._future.done():
            self._future.set_exception(error)


class _TlsContext(ssl.SSLContext):
    """An ``SSLContext`` that remembers the sockets it wraps: when the TLS handshake fails,
    paho drops its socket without closing it, so :meth:`Session._start` closes it."""

    def __init__(self, protocol: int) -> None:
        super().__init__()
        self.wrapped: list[ssl.SSLSocket] = []

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        self.wrapped.append(sock)
        return sock


@contextlib.contextmanager
def _reading(fields: str, *paths: Path | None) -> Iterator[None]:
    """Name the option and file in an error reading it (ssl's own errors name neither)."""
    try:
        yield
    except OSError as exc:
        names = ", ".join(str(p) for p in paths if p is not None)
        raise OSError(f"{fields} ({names}): {exc.strerror or exc}") from exc


def _tls_context(tls: TlsOptions | None) -> _TlsContext:
    # Reads files: called on the connecting worker thread.
    context = _TlsContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificate and host name
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


def _cut(sock: object) -> None:
    """Close a connection abruptly, without DISCONNECT (so the broker sends the Last Will).

    ``shutdown`` is safe while paho's thread waits on the socket (closing is not): its next
    read sees the end of the connection and the thread ends. On a TLS socket this shuts the
    underlying TCP socket, bypassing the TLS layer that paho's thread is using.
    """
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])  # a missing secret: "environment variable X is not set"
    return str(exc) or type(exc).__name__


class Session:
    """One connection to the broker, usable until it fails or is closed.

    :meth:`open` connects; :meth:`publish` hands messages to paho in order and returns their
    :class:`Delivery`; :meth:`abort` ends the session at once (fails what is pending, cuts the
    connection); :meth:`close` ends it cleanly. Only :meth:`join` blocks (run it on a worker
    thread). Everything but paho's callbacks runs on the event loop's thread.
    """

    def __init__(
        self, settings: SessionSettings, number: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.settings = settings
        self.number = number
        self.ready = False  # set by the owner once the session is fully established
        self._loop = loop
        self._lost: str | None = None
        self._connected = False
        # By message id until acknowledged: the delivery and the message's position in it.
        self._pending: dict[int, tuple[Delivery, int]] = {}
        # Flow control is ours, not paho's: a limit in paho makes it scan its in-flight
        # messages on every acknowledgement (measured: 10,600 msg/s without a limit, 4,700
        # with 1000, 900 with 65535), and paho ignores an MQTT 5 broker's Receive Maximum.
        # Never more in flight than message ids (paho numbers 1..65535 and wraps without
        # checking): a PUBACK must never be credited to another message with the same id.
        self._window = min(settings.max_inflight or MAX_IN_FLIGHT, MAX_IN_FLIGHT)
        self._in_flight = 0
        self._waiting: deque[tuple[str, str | bytes, bool, Delivery, int]] = deque()
        self._connack: asyncio.Future[None] = loop.create_future()
        self._connack.add_done_callback(_retrieve)
        # The SUBACK of open()'s subscriptions, by the message id of the SUBSCRIBE.
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._acks: list[tuple[int, ReasonCode]] = []
        self._acks_lock = threading.Lock()
        self._thread_lock = threading.Lock()  # orders abort against the network thread's start
        self._aborted = False
        self._started = False
        v5 = settings.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=None if v5 else True,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        if settings.on_message is not None:
            client.on_message = self._on_message
        self._client = client

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

    # --- on the event loop ------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and wait for the broker to accept (CONNACK) and to grant every subscription
        of the settings (SUBACK), within ``connect_timeout_s``.

        Raises :class:`MqttError` (the session is then aborted), naming the topic filter if the
        broker refused a subscription.
        """
        timeout = self.settings.connect_timeout_s
        connected = False
        accepted = False
        try:
            async with asyncio.timeout(timeout):
                await asyncio.to_thread(self._start)
                connected = True
                await self._connack
                accepted = True
                if self.settings.subscriptions:
                    await self._subscribe(self.settings.subscriptions)
        except TimeoutError:
            # Also paho's own socket timeout (TimeoutError is an OSError): name the step.
            if accepted:
                reason = f"no SUBACK within {timeout:g} s (connect_timeout_s)"
            elif connected:
                reason = (
                    f"no CONNACK within {timeout:g} s (connect_timeout_s): the broker accepted"
                    " the connection but did not answer the MQTT CONNECT"
                )
            else:
                steps = (
                    "TCP connection and TLS handshake"
                    if self.settings.address.tls
                    else "TCP connection"
                )
                reason = f"{steps} not completed within {timeout:g} s (connect_timeout_s)"
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

    async def _subscribe(self, subscriptions: Sequence[tuple[str, int]]) -> None:
        future: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        future.add_done_callback(_retrieve)
        # The SUBACK is handed to this thread with call_soon_threadsafe: it is looked up only
        # after this registration, even if it arrives before subscribe() returns.
        rc, mid = self._client.subscribe(list(subscriptions))
        if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
            self._subacks[mid] = future
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise self.error(f"cannot subscribe: {mqtt.error_string(rc)}")
        codes = await future
        for (topic_filter, _), code in zip(subscriptions, codes, strict=False):
            if code.is_failure:
                raise self.error(
                    f"the broker refused the subscription to {topic_filter!r}: {code}"
                    f" (reason code 0x{code.value:02X})"
                )
        if len(codes) != len(subscriptions):
            raise self.error(f"{len(codes)} SUBACK codes for {len(subscriptions)} subscriptions")

    def _suback_received(self, mid: int, codes: list[ReasonCode]) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(codes)

    def _deliver(self, topic: str, payload: bytes) -> None:
        handler = self.settings.on_message
        if handler is None or self._lost is not None:
            return
        try:
            handler(topic, payload)
        except Exception as exc:  # the handler's bug must not end the session
            log.error(
                "mqtt.on_message_failed",
                url=self.settings.url,
                topic=topic[:200],
                error=repr(exc)[:500],
            )

    def publish(self, messages: Sequence[Message], retain: bool = False) -> Delivery:
        """Hand ``messages`` to paho, in order, and return their :class:`Delivery`.

        Beyond the in-flight window (``max_inflight``, an MQTT 5 Receive Maximum), messages
        wait here, in order, for acknowledgements to make room. Does not block. Raises
        :class:`MqttError` (and aborts) if paho refuses one.
        """
        if self._lost is not None:
            raise self.error(self._lost)
        delivery = Delivery(self._loop.create_future(), len(messages))
        if not self._waiting and self._in_flight + len(messages) <= self._window:
            hand = self._hand
            for position, (topic, payload) in enumerate(messages):
                if not hand(topic, payload, retain, delivery, position):
                    self._waiting.extend(
                        (topic, payload, retain, delivery, later)
                        for later, (topic, payload) in enumerate(messages)
                        if later >= position
                    )
                    break
        else:
            self._waiting.extend(
                (topic, payload, retain, delivery, position)
                for position, (topic, payload) in enumerate(messages)
            )
            self._release()
        return delivery

    def _hand(
        self, topic: str, payload: str | bytes, retain: bool, delivery: Delivery, position: int
    ) -> bool:
        """Publish one message; False if paho's thread closed the connection meanwhile."""
        try:
            info = self._client.publish(topic, payload, self.settings.qos, retain)
        except ValueError as exc:  # a payload beyond MQTT's 256 MB limit
            self.abort(f"message refused: {exc}")
            raise self.error(f"message refused: {exc}") from exc
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            # paho's thread reports why next (_disconnected): not failing the session here
            # keeps a broker's DISCONNECT refusal attributable; the message waits to fail.
            return False
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            reason = f"message refused: {mqtt.error_string(info.rc)}"
            self.abort(reason)
            raise self.error(reason)
        if info.mid in self._pending:  # cannot happen within the window: never guess
            self.abort(f"message id {info.mid} reused while in flight")
            raise self.error(f"message id {info.mid} reused while in flight")
        self._pending[info.mid] = (delivery, position)
        self._in_flight += 1
        return True

    def _release(self) -> None:
        waiting = self._waiting
        while waiting and self._in_flight < self._window:
            if not self._hand(*waiting[0]):
                return  # the connection is gone: the rest waits to fail with it
            waiting.popleft()

    def abort(self, reason: str, *, graceful: bool = False) -> None:
        """End the session now: fail everything pending with ``reason`` and drop the connection
        (with a DISCONNECT if ``graceful``, else cut, so the broker sends the Last Will).
        Does not block; idempotent."""
        first = self._lost is None
        self._fail(reason)
        with self._thread_lock:
            self._aborted = True
            started = self._started
        if not first or not started:
            return
        if graceful:
            self._client.disconnect()  # queued for paho's thread, which then ends
            log.info(
                "mqtt.disconnected",
                url=self.settings.url,
                client_id=self.settings.client_id,
                session=self.number,
            )
        else:
            _cut(self._client.socket())
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
        seconds, for paho's thread to end; cut the connection if it takes longer."""
        self.abort("session closed", graceful=True)
        try:
            async with asyncio.timeout(grace_s):
                await asyncio.to_thread(self.join)
        except TimeoutError:
            _cut(self._client.socket())

    def _fail(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
        if not self._connack.done():
            self._connack.set_exception(self.error(reason))
        subacks, self._subacks = self._subacks, {}
        for future in subacks.values():
            if not future.done():
                future.set_exception(self.error(reason))
        deliveries = dict.fromkeys(
            [*(p[0] for p in self._pending.values()), *(w[3] for w in self._waiting)]
        )
        self._pending.clear()
        self._waiting.clear()
        for delivery in deliveries:
            delivery.fail(self.error(reason))

    def _connack_received(self, reason_code: ReasonCode, receive_maximum: int | None) -> None:
        if self._connack.done():
            return
        if receive_maximum and not 0 < self._window <= receive_maximum:
            self._window = receive_maximum
        if reason_code.is_failure:
            self._connack.set_exception(
                self.error(f"the broker refused the connection: {reason_code}")
            )
        else:
            self._connack.set_result(None)

    def _take_acks(self) -> None:
        with self._acks_lock:
            acks, self._acks = self._acks, []
        pending = self._pending
        for mid, reason_code in acks:
            entry = pending.pop(mid, None)
            if entry is None:
                continue  # failed or abandoned already
            self._in_flight -= 1
            if not reason_code.is_failure:
                entry[0].acknowledge()
            elif reason_code.value in PUBACK_REFUSALS:  # MQTT 5 only: e.g. an ACL's verdict
                entry[0].refuse(entry[1], reason_code)
            else:  # e.g. a throttling broker's "Quota exceeded": send it again later
                entry[0].fail(
                    self.error(
                        f"the broker answered {reason_code} (MQTT 5 reason code"
                        f" 0x{reason_code.value:02X}) to a message: not a refusal, sent again"
                        " later"
                    )
                )
        if self._waiting:
            with contextlib.suppress(MqttError):  # the session is aborted: deliveries failed
                self._release()

    def _disconnected(self, from_broker: bool, reason_code: ReasonCode) -> None:
        if self._lost is not None:
            return  # we ended it, or it never connected and the refusal already says why
        detail = str(reason_code)
        if from_broker:
            reason = f"the broker closed the connection: {detail}"
            if (
                reason_code.value in DISCONNECT_REFUSALS
                and self.settings.qos == 1  # at QoS 2, the oldest not PUBCOMPed may be PUBRECed
                and self._pending
            ):
                # The broker refused the oldest unacknowledged message by disconnecting (AWS IoT
                # Core, EMQX with deny_action = disconnect): answered, not delivered.
                mid, (delivery, position) = next(iter(self._pending.items()))
                del self._pending[mid]
                self._in_flight -= 1
                delivery.refuse(position, reason_code)
                reason = f"{reason} (MQTT 5 reason code 0x{reason_code.value:02X})"
        elif detail in ("Unspecified error", "Success"):
            reason = "connection to broker lost"
        else:
            reason = f"connection to broker lost: {detail}"
        self.abort(reason)

    # --- on paho's network thread -----------------------------------------------------------

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(callback, *args)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        # An MQTT 5 broker says how many unacknowledged messages it takes (Receive Maximum);
        # it may disconnect a client that sends more.
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        if not isinstance(receive_maximum, int):
            receive_maximum = None
        self._call(self._connack_received, reason_code, receive_maximum)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self._call(self._disconnected, flags.is_disconnect_packet_from_server, reason_code)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        with self._acks_lock:
            self._acks.append((mid, reason_code))
            if len(self._acks) > 1:
                return  # a hand-over is already scheduled and will take this one too
        self._call(self._take_acks)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        self._call(self._suback_received, mid, list(reason_codes))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # paho acknowledges a QoS 1 message itself once this returns.
        self._call(self._deliver, message.topic, bytes(message.payload))

    # --- on a worker thread -----------------------------------------------------------------

    def _start(self) -> None:
        """Connect (blocking) and start paho's network thread, unless aborted meanwhile."""
        settings = self.settings
        client = self._client
        if settings.username is not None:
            password = settings.password.get() if settings.password is not None else None
            client.username_pw_set(settings.username, password)
        tls = None
        if settings.address.tls:
            tls = _tls_context(settings.tls)
            client.tls_set_context(tls)
        if settings.will is not None:
            topic, payload = settings.will
            client.will_set(topic, payload, settings.qos, retain=settings.will_retain)
        client.connect_timeout = settings.connect_timeout_s  # TCP connect and TLS handshake
        address = settings.address
        with self._thread_lock:
            if self._aborted:
                return
        try:
            if settings.protocol == "5":
                client.connect(address.host, address.port, settings.keepalive_s, clean_start=True)
            else:
                client.connect(address.host, address.port, settings.keepalive_s)
        except BaseException:
            for sock in tls.wrapped if tls is not None else ():
                sock.close()
            raise
        with self._thread_lock:
            if not self._aborted:
                client.loop_start()
                self._started = True
                return
        sock = client.socket()  # aborted while connecting: nobody will use this connection
        if isinstance(sock, socket.socket):
            sock.close()

    def join(self) -> None:
        """Wait for paho's network thread to end (blocking); call after :meth:`abort`."""
        with contextlib.suppress(AttributeError):
            # paho's loop_stop checks its thread, then joins it: if the thread ends in between
            # (it does so by itself once the connection is gone), the join fails on None.
            self._client.loop_stop()
