"""How a sink holds its MQTT session: one at a time, a new one after any failure.

For the ``mqtt`` and ``sparkplug`` sinks, which differ in what they publish and in what a
connect sends first, not in how a session is held: calls that find no usable session queue for
a connect (first come, first served) and publish in that order; a delivery not acknowledged
within ``publish_timeout_s``, or failed, or abandoned (a cancelled ``forward``) ends the session
(the next call connects anew); ended sessions are closed (bounded) before the next connect and
at the sink's stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from .messages import Message
from .options import BrokerAddress, BrokerOptions, parse_broker_url
from .paho_session import PahoSession
from .session import Delivery, MqttError, ReasonCode, Session, SessionSettings

__all__ = [
    "CLOSE_TIMEOUT_S",
    "AnySession",
    "SessionHolder",
    "broker_reachable",
    "broker_reason",
    "broker_settings",
]

CLOSE_TIMEOUT_S = 2.0  # per step of a clean stop: the last message, then the disconnect

AnySession = Session | PahoSession
"""A session of either protocol: the same public surface (decision 0028)."""


def new_session(
    settings: SessionSettings, number: int, loop: asyncio.AbstractEventLoop
) -> AnySession:
    """The one place a session's class is chosen: MQTT 5 through our :class:`Session` (packets
    by the ``mqtt5`` codec), MQTT 3.1.1 through paho-mqtt (:class:`PahoSession`)."""
    if settings.protocol == "3.1.1":
        return PahoSession(settings, number, loop)
    return Session(settings, number, loop)


def broker_settings(options: BrokerOptions, client_id: str, qos: int) -> SessionSettings:
    """A session's settings from a sink's broker options (URL, credentials, TLS, protocol,
    timing); what else a sink needs (Last Will, subscriptions...) it adds with
    :func:`dataclasses.replace`."""
    return SessionSettings(
        url=options.url,
        address=parse_broker_url(options.url),
        client_id=client_id,
        protocol=options.protocol,
        qos=qos,
        keepalive_s=options.keepalive_s,
        connect_timeout_s=options.connect_timeout_s,
        username=options.username,
        password=options.password,
        tls=options.tls,
    )


async def broker_reachable(address: BrokerAddress, timeout_s: float) -> bool:
    """Whether the broker's port accepts a TCP connection now (no MQTT, no TLS handshake;
    closed at once), within ``timeout_s``: a sink's ``reachable`` check, the runtime's cue,
    while the sink is down, to connect at once rather than at the end of its backoff."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(address.host, address.port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def broker_reason(reason_code: ReasonCode) -> str:
    """A refusal's reason as the sinks report it (the code's name and number)."""
    return f"the broker answered {reason_code} (MQTT 5 reason code 0x{reason_code.value:02X})"


class SessionHolder:
    """A sink's current session (:attr:`current`), the ended ones whose connection may still be
    closing, and the calls waiting for a connect.

    ``on_discard`` is called when the current session is discarded (the sink's own state that
    goes with a session, e.g. Sparkplug's births, is then due again).
    """

    def __init__(
        self,
        publish_timeout_s: float,
        on_discard: Callable[[], None] | None = None,
    ) -> None:
        self.publish_timeout_s = publish_timeout_s
        self.current: AnySession | None = None
        # Held while a call connects (or publishes what must follow a connect): calls that wait
        # for a session queue on it, and while any wait, later calls queue behind them.
        self.lock = asyncio.Lock()
        self._in_line = 0
        self._retired: list[AnySession] = []  # ended sessions whose connection may still close
        self._on_discard = on_discard

    def ready(self) -> AnySession | None:
        """The current session if a call may publish on it at once: usable, and no call
        waiting for a connect (those go first)."""
        session = self.current
        if session is not None and session.usable and not self._in_line:
            return session
        return None

    async def queue(self, connect: Callable[[], Awaitable[AnySession]]) -> AnySession:
        """Wait for this call's turn, then ``connect()`` (which returns the current session if
        it is usable, else connects). Nothing awaits between the return and the caller's next
        step: a caller that publishes at once publishes in its turn."""
        self._in_line += 1
        try:
            async with self.lock:
                return await connect()
        finally:
            self._in_line -= 1

    async def renew(self, settings: Callable[[], SessionSettings], number: int) -> AnySession:
        """Close the ended sessions, discard the current one, and make (not open) a new
        session, now current, with ``settings()`` (computed after the old ones are gone)."""
        await self.reap()
        if self.current is not None:
            self.discard(self.current, "connection to broker lost")
        session = new_session(settings(), number, asyncio.get_running_loop())
        self.current = session
        return session

    def publish(
        self, session: AnySession, messages: Sequence[Message], retain: bool = False
    ) -> Delivery:
        """:meth:`Session.publish`; a session that cannot send is discarded."""
        try:
            return session.publish(messages, retain)
        except MqttError:
            self.discard(session, "publish failed")
            raise

    async def acknowledged(self, session: AnySession, delivery: Delivery) -> None:
        """Wait for ``delivery`` (at most ``publish_timeout_s``); on any failure, including
        this call's cancellation, discard ``session`` and raise."""
        timeout = self.publish_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await delivery.wait()
        except TimeoutError:
            reason = (
                f"{delivery.remaining} of {delivery.count} messages not acknowledged within"
                f" {timeout:g} s"
            )
            self.discard(session, reason)
            raise session.error(reason) from None
        except BaseException:
            # Lost connection, refused message, or a cancelled forward (whose messages' fate is
            # unknown): the next call starts from a clean session.
            self.discard(session, "delivery failed")
            raise

    def discard(self, session: AnySession, reason: str) -> None:
        """End ``session`` now (idempotent); it is closed by the next :meth:`reap`."""
        session.abort(reason)
        if self.current is session:
            self.current = None
            if self._on_discard is not None:
                self._on_discard()
        if session not in self._retired:
            self._retired.append(session)

    async def reap(self) -> None:
        """Wait (bounded) for the connections of ended sessions to close."""
        retired, self._retired = self._retired, []
        for session in retired:
            await session.close(CLOSE_TIMEOUT_S)  # cuts the connection if it takes longer

    async def close(self, farewell: Callable[[], Message] | None, retain: bool) -> None:
        """The sink's stop: publish the message ``farewell()`` makes on a usable session (best
        effort, bounded), end it cleanly (DISCONNECT: no Last Will), and close the ended ones.
        """
        session, self.current = self.current, None
        if session is not None:
            if session.usable and farewell is not None:
                try:
                    async with asyncio.timeout(min(CLOSE_TIMEOUT_S, self.publish_timeout_s)):
                        await session.publish([farewell()], retain=retain).wait()
                except (MqttError, TimeoutError):
                    pass  # best effort: the broker sends the Last Will if the connection breaks
            await session.close(CLOSE_TIMEOUT_S)
        await self.reap()
