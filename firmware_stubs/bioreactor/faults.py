"""Faults a test or demo can inject into the emulated bioreactor controller's OPC UA server."""

from __future__ import annotations

import enum

__all__ = ["Fault"]


class Fault(enum.Enum):
    """What :meth:`BioreactorController.inject` can break; each stays active until cleared.

    The process run behind the controller goes on whatever is injected: a fault breaks what the
    controller serves, not the culture.
    """

    #: The server is down: every session is closed (its subscriptions with it) and the listening
    #: socket too, so connections are refused. Clearing it starts the server again on the same
    #: port, with the same address space and values that have moved on; old sessions are gone,
    #: as after a real restart.
    SERVER_RESTART = "server_restart"
    #: Every value (PV, SP, gas flow, pump total, alarm, true value) is published with StatusCode
    #: BadSensorFailure; OPC UA (and asyncua) then carry no value with it.
    BAD_VALUES = "bad_values"
    #: Values and their timestamps stop updating (the controller's data acquisition hangs);
    #: the server still answers and still takes setpoints.
    FROZEN = "frozen"
