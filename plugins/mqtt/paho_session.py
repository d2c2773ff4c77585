"""One MQTT 3.1.1 connection through paho-mqtt: its network thread bridged to asyncio.

For ``protocol: "3.1.1"`` of the ``mqtt`` and ``sparkplug`` sinks (MQTT 5 is
:class:`~.session.Session`, whose packets the ``mqtt5`` codec encodes): decision 0028 wants a
client library or a maintained codec, not packets of our own, and paho-mqtt is the maintained
MQTT 3.1.1 client. Same public surface as :class:`~.session.Session` (:func:`.holder.new_session`
picks one), same :class:`~.session.Delivery`, :class:`~.session.MqttError` and
:class:`~.session.SessionSettings`.

paho-mqtt (2.x) runs a connection on its own thread (``loop_start``); its callbacks only hand
events to the event loop with ``call_soon_threadsafe``, and everything else happens on the
loop's thread: a message's acknowledgement is registered there right after ``publish`` returns,
in the same step, so a PUBACK can never overtake the registration of its message id.
Acknowledgements arriving together are handed over in one call. Flow control (at most
``max_inflight`` unacknowledged messages) is done here too, in order, rather than by paho (a
limit in paho makes it scan its in-flight messages on every acknowledgement).

MQTT 3.1.1 has no reason codes: a broker that refuses a message (an ACL) either acknowledges it
and drops it (Mosquitto) or closes the connection; :attr:`Delivery.refused` stays empty.

Inbound (Sparkplug's commands and STATE): :meth:`PahoSession.open` subscribes to the settings'
``subscriptions`` and returns only once the broker granted each (a refusal fails it, naming the
filter); every message received is handed to ``on_message`` on the event loop, in arrival order
(paho acknowledges QoS 1 and 2 ones).

Single-use, from connect to loss: paho's automatic reconnect is off, and the sink makes a new
session after any failure. A lost connection fails every message still waiting for its
acknowledgement at once. Sessions start clean (clean session). What paho does differently from
:class:`~.session.Session` (decision 0028): its keepalive counts only a PINGRESP as an answer,
it buffers whatever it is given (no bound on a broker that stops reading: the sink's
``publish_timeout_s`` ends such a session), and it reads any PUBLISH whole, whatever its size.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from .messages import Message
from .session import (
    MAX_IN_FLIGHT,
    Delivery,
    MqttError,
    SessionBase,
    SessionSettings,
    _retrieve,
    _tls_context,
)

__all__ = ["PahoSession"]

log = structlog.get_logger("plugins.mqtt")


class _TlsContext(ssl.SSLContext):
    """An ``SSLContext`` that remembers the sockets it wraps: when the TLS handshake fails,
    paho drops its socket without closing it, so :meth:`PahoSession._start` closes it."""

    def __init__(self, protocol: int) -> None:
        super().__init__()
        self.wrapped: list[ssl.SSLSocket] = []

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        self.wrapped.append(sock)
        return sock


def _cut(sock: object) -> None:
    """Close a connection abruptly, without DISCONNECT (so the broker sends the Last Will).

    ``shutdown`` is safe while paho's thread waits on the socket (closing is not): its next
    read sees the end of the connection and the thread ends. On a TLS socket this shuts the
    underlying TCP socket, bypassing the TLS layer that paho's thread is using.
    """
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class PahoSession(SessionBase):
    """One connection to the broker, usable until it fails or is closed.

    :meth:`open` connects; :meth:`publish` hands messages to paho in order and returns their
    :class:`Delivery`; :meth:`abort` ends the session at once (fails what is pending, cuts the
    connection); :meth:`close` ends it cleanly. Only :meth:`join` blocks (run it on a worker
    thread). Everything but paho's callbacks runs on the event loop's thread.
    """

    def __init__(
        self, settings: SessionSettings, number: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(settings, number, loop)
        # By message id until acknowledged: the delivery and the message's position in it.
        self._pending: dict[int, tuple[Delivery, int]] = {}
        # Flow control is ours, not paho's: a limit in paho makes it scan its in-flight
        # messages on every acknowledgement (measured: 10,600 msg/s without a limit, 4,700
        # with 1000, 900 with 65535).
        # Never more in flight than message ids (paho numbers 1..65535 and wraps without
        # checking): a PUBACK must never be credited to another message with the same id.
        self._window = min(settings.max_inflight or MAX_IN_FLIGHT, MAX_IN_FLIGHT)
        self._in_flight = 0
        self._waiting: deque[tuple[str, str | bytes, bool, Delivery, int]] = deque()
        self._connack: asyncio.Future[None] = loop.create_future()
        self._connack.add_done_callback(_retrieve)
        # The SUBACK of open()'s subscriptions, by the message id of the SUBSCRIBE.
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._acks: list[int] = []
        self._acks_lock = threading.Lock()
        self._thread_lock = threading.Lock()  # orders abort against the network thread's start
        self._aborted = False
        self._started = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
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

    # --- on the event loop ------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and wait for the broker to accept (CONNACK) and to grant every subscription
        of the settings (SUBACK), within ``connect_timeout_s``.

        Raises :class:`MqttError` (the session is then aborted), naming the topic filter if the
        broker refused a subscription.
        """
        connected = False
        accepted = False

        def step() -> str:
            return "suback" if accepted else "connack" if connected else "connect"

        async with self._opening(step):
            await asyncio.to_thread(self._start)
            connected = True
            await self._connack
            accepted = True
            if self.settings.subscriptions:
                await self._subscribe(self.settings.subscriptions)

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

    def _connack_received(self, reason_code: ReasonCode) -> None:
        if self._connack.done():
            return
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
        for mid in acks:  # (an MQTT 3.1.1 PUBACK or PUBCOMP has no reason code)
            entry = pending.pop(mid, None)
            if entry is None:
                continue  # failed or abandoned already
            self._in_flight -= 1
            entry[0].acknowledge()
        if self._waiting:
            with contextlib.suppress(MqttError):  # the session is aborted: deliveries failed
                self._release()

    def _disconnected(self, reason_code: ReasonCode) -> None:
        if self._lost is not None:
            return  # we ended it, or it never connected and the refusal already says why
        detail = str(reason_code)  # (MQTT 3.1.1: no DISCONNECT from the broker)
        if detail == "Keep alive timeout":  # paho's: no PINGRESP one keepalive after a PINGREQ
            reason = f"no answer to PINGREQ within {self.settings.keepalive_s} s (keepalive_s)"
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
        self._call(self._connack_received, reason_code)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self._call(self._disconnected, reason_code)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        with self._acks_lock:
            self._acks.append(mid)
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
        tls: _TlsContext | None = None
        if settings.address.tls:
            context = _tls_context(settings.tls, _TlsContext)
            assert isinstance(context, _TlsContext)
            tls = context
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
