"""Faults a test or demo can inject into the feed pump emulator."""

from __future__ import annotations

import enum


class Fault(enum.Enum):
    """What :meth:`FeedPumpEmulator.inject` can break.

    ``DROP_CONNECTIONS`` and ``PUMP_FAULT`` act once; ``EXCEPTION_RESPONSES``
    and ``STALL`` stay active until :meth:`FeedPumpEmulator.clear_faults`.
    """

    #: Close every open client connection now; new connections are still accepted.
    DROP_CONNECTIONS = "drop_connections"
    #: Answer every request with Modbus exception 4 (slave device failure).
    EXCEPTION_RESPONSES = "exception_responses"
    #: Accept requests but never answer them (nor act on them).
    STALL = "stall"
    #: Latch pump fault code 1 (tube/occlusion), which stops the pump.
    PUMP_FAULT = "pump_fault"
