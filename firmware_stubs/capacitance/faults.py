"""Faults a test or demo can inject into the capacitance probe emulator."""

from __future__ import annotations

import enum


class Fault(enum.Enum):
    """What :meth:`CapacitanceProbeEmulator.inject` can break.

    ``DROP_CONNECTIONS`` acts once; the others stay active until cleared.
    """

    #: Close every open client connection now; new connections are still accepted.
    DROP_CONNECTIONS = "drop_connections"
    #: Answer every request with Modbus exception 4 (slave device failure).
    EXCEPTION_RESPONSES = "exception_responses"
    #: Accept requests but never answer them (nor act on them).
    STALL = "stall"
    #: Gas bubbles on the electrodes: a share of the measurements (``probability``) has a
    #: conductivity dip and a permittivity spike; the firmware flags the ones it recognises
    #: (a conductivity jump) with the status bit "unstable".
    BUBBLES = "bubbles"
    #: Gradual: a layer grows on the electrodes and adds a permittivity offset, ``rate_per_h``
    #: pF/cm per hour of the time base up to ``max_offset``. The probe does not know: its status
    #: stays clean, and its VCD (permittivity x cell factor) drifts up with it. Clearing it is a
    #: cleaned probe.
    FOULING = "fouling"
    #: Probe failure (electrode or cable): permittivity, conductivity and VCD read 0, status
    #: bit 0x10.
    PROBE_ERROR = "probe_error"
