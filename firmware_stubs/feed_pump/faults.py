"""Faults a test or demo can inject into the feed pump emulator."""

from __future__ import annotations

import enum


class Fault(enum.Enum):
    """What :meth:`FeedPumpEmulator.inject` can break.

    ``DROP_CONNECTIONS`` and ``PUMP_FAULT`` act once; ``EXCEPTION_RESPONSES``,
    ``STALL`` and ``TUBING_WEAR`` stay active until cleared.
    """

    #: Close every open client connection now; new connections are still accepted.
    DROP_CONNECTIONS = "drop_connections"
    #: Answer every request with Modbus exception 4 (slave device failure).
    EXCEPTION_RESPONSES = "exception_responses"
    #: Accept requests but never answer them (nor act on them).
    STALL = "stall"
    #: Latch pump fault code 1 (tube/occlusion), which stops the pump.
    PUMP_FAULT = "pump_fault"
    #: Gradual: the tubing delivers less per revolution as it wears (``rate_per_h``: fraction
    #: of the delivery lost per hour of the time base, up to ``max_loss``). Speed, flow and
    #: total_volume, what the pump *reports*, stay perfect; only the volume handed to the
    #: process (and counted in :attr:`FeedPumpEmulator.delivered_ml`) shrinks. Clearing it
    #: is new tubing.
    TUBING_WEAR = "tubing_wear"
