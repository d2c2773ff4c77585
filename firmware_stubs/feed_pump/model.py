"""Physics of an emulated peristaltic feed pump.

Pure state and arithmetic, no I/O and no clock: the caller decides how much
time passes (``step``), so tests can drive the pump deterministically and the
Modbus server can drive it in real time. Used by the register codec
(``registers.py``) and the emulator server (``server.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Highest speed setpoint the pump accepts, in rpm.
MAX_RPM = 400.0
#: Default speed setpoint, in rpm; a fresh pump is already pumping at it.
DEFAULT_SETPOINT_RPM = 50.0
#: Default acceleration/deceleration of the roller head, in rpm per second.
DEFAULT_RAMP_RPM_PER_S = 100.0
#: Default tubing calibration, in mL per revolution of the roller head.
DEFAULT_ML_PER_REV = 0.8
#: Accepted tubing calibration range, in mL per revolution (exclusive lower bound).
MAX_ML_PER_REV = 100.0

#: ``fault_code`` value meaning "no fault".
FAULT_NONE = 0
#: ``fault_code`` value for a tube rupture / occlusion; it stops the pump.
FAULT_TUBE = 1
#: Longest communication watchdog timeout, s (the ``watchdog_s`` register is a uint16).
MAX_WATCHDOG_S = 0xFFFF


class PumpStateError(ValueError):
    """A command was refused because of a bad value or the pump's state."""


@dataclass
class PumpModel:
    """State of one peristaltic pump, advanced explicitly with :meth:`step`.

    The roller head speed ``actual_rpm`` ramps linearly at ``ramp_rpm_per_s``
    towards ``setpoint_rpm`` while running, and towards 0 when stopped or
    faulted. Delivered volume is the exact integral of the flow, so the result
    does not depend on how time is sliced into steps.

    The default instance is running at steady state (``actual_rpm`` equals the
    setpoint) so a freshly started emulator already shows flow.

    ``max_setpoint_rpm`` is the drive's configured speed limit: like a real pump's
    "maximum speed" setting, a setpoint above it (but within the hardware's
    0..MAX_RPM) is accepted and clamped, so it reads back as the limit.

    Communication watchdog, as dosing pumps have: while ``watchdog_s`` > 0, a
    heartbeat (:meth:`beat`) must come at least every ``watchdog_s`` seconds of
    pump time. When one is late the pump *trips*: at that exact moment the
    setpoint is limited to ``safe_rpm`` (a lower setpoint is kept) and
    ``watchdog_tripped`` is set. While tripped, a setpoint written is limited to
    ``safe_rpm`` too. A beat clears the flag and restarts the timer, but the
    setpoint stays at the safe value until it is written again: the pump never
    returns to an aggressive rate by itself. Setting ``watchdog_s`` restarts the
    timer; 0 disarms the watchdog (a set flag stays until a beat).
    """

    setpoint_rpm: float = DEFAULT_SETPOINT_RPM
    actual_rpm: float = DEFAULT_SETPOINT_RPM
    ramp_rpm_per_s: float = DEFAULT_RAMP_RPM_PER_S
    ml_per_rev: float = DEFAULT_ML_PER_REV
    max_setpoint_rpm: float = MAX_RPM
    running: bool = True
    fault_code: int = FAULT_NONE
    total_ml: float = 0.0
    elapsed_s: float = 0.0
    watchdog_s: int = 0
    safe_rpm: float = 0.0
    heartbeat: int = 0
    watchdog_tripped: bool = False
    last_beat_s: float = 0.0

    @property
    def flow_ml_per_min(self) -> float:
        """Instantaneous volumetric flow in mL/min."""
        return self.actual_rpm * self.ml_per_rev

    @property
    def target_rpm(self) -> float:
        """Speed the roller head is currently ramping towards."""
        if self.running and self.fault_code == FAULT_NONE:
            return self.setpoint_rpm
        return 0.0

    @property
    def watchdog_deadline_s(self) -> float | None:
        """Pump time at which the watchdog trips unless a beat comes; ``None`` when disarmed
        or already tripped."""
        if self.watchdog_s <= 0 or self.watchdog_tripped:
            return None
        return self.last_beat_s + self.watchdog_s

    def step(self, dt_s: float) -> None:
        """Advance the pump by ``dt_s`` seconds.

        The ramp is integrated in closed form (trapezoid up to the moment the
        target is reached, then constant speed), which is exact for a linear
        ramp, so one big step and many small steps deliver the same volume. A
        watchdog trip inside the step splits it at the moment of the trip.
        """
        if not (dt_s > 0.0 and math.isfinite(dt_s)):
            return
        deadline = self.watchdog_deadline_s
        if deadline is not None and self.elapsed_s + dt_s >= deadline:
            before = max(0.0, deadline - self.elapsed_s)
            self._ramp(before)
            self._trip_watchdog()
            self._ramp(dt_s - before)
        else:
            self._ramp(dt_s)

    def _ramp(self, dt_s: float) -> None:
        if dt_s <= 0.0:
            return
        start = self.actual_rpm
        target = self.target_rpm
        rate = self.ramp_rpm_per_s
        # A non-positive ramp rate means "no ramp": the speed jumps to the target.
        ramp_s = abs(target - start) / rate if rate > 0.0 else 0.0
        if dt_s < ramp_s:
            end = start + math.copysign(rate * dt_s, target - start)
            rpm_seconds = (start + end) / 2.0 * dt_s
        else:
            end = target
            rpm_seconds = (start + target) / 2.0 * ramp_s + target * (dt_s - ramp_s)
        self.total_ml += rpm_seconds / 60.0 * self.ml_per_rev
        self.actual_rpm = end
        self.elapsed_s += dt_s

    def set_setpoint(self, rpm: float) -> None:
        """Change the speed setpoint; refuses NaN/inf and values outside 0..MAX_RPM, and
        clamps an accepted one to ``max_setpoint_rpm``."""
        if not math.isfinite(rpm) or not 0.0 <= rpm <= MAX_RPM:
            raise PumpStateError(f"setpoint {rpm!r} rpm outside 0..{MAX_RPM:g}")
        self.setpoint_rpm = min(float(rpm), self.max_setpoint_rpm)
        if self.watchdog_tripped:
            self.setpoint_rpm = min(self.setpoint_rpm, self.safe_rpm)

    def beat(self, value: int = 0) -> None:
        """A heartbeat (any value): restarts the watchdog timer and clears a trip; the
        setpoint stays where the trip left it until written again."""
        self.heartbeat = value & 0xFFFF
        self.last_beat_s = self.elapsed_s
        self.watchdog_tripped = False

    def set_watchdog(self, seconds: int) -> None:
        """Arm the watchdog with a timeout of ``seconds`` (0 = off), timed from now."""
        if not 0 <= seconds <= MAX_WATCHDOG_S:
            raise PumpStateError(f"watchdog {seconds!r} s outside 0..{MAX_WATCHDOG_S}")
        self.watchdog_s = int(seconds)
        self.last_beat_s = self.elapsed_s

    def set_safe_rpm(self, rpm: float) -> None:
        """The speed the watchdog falls back to; same range as a setpoint."""
        if not math.isfinite(rpm) or not 0.0 <= rpm <= MAX_RPM:
            raise PumpStateError(f"safe speed {rpm!r} rpm outside 0..{MAX_RPM:g}")
        self.safe_rpm = float(rpm)
        if self.watchdog_tripped:
            self.setpoint_rpm = min(self.setpoint_rpm, self.safe_rpm)

    def _trip_watchdog(self) -> None:
        self.watchdog_tripped = True
        self.setpoint_rpm = min(self.setpoint_rpm, self.safe_rpm)

    def set_ml_per_rev(self, ml_per_rev: float) -> None:
        """Change the tubing calibration; must be finite and in (0, MAX_ML_PER_REV]."""
        if not math.isfinite(ml_per_rev) or not 0.0 < ml_per_rev <= MAX_ML_PER_REV:
            raise PumpStateError(
                f"tubing calibration {ml_per_rev!r} mL/rev outside (0, {MAX_ML_PER_REV:g}]"
            )
        self.ml_per_rev = float(ml_per_rev)

    def start(self) -> None:
        """Start pumping; refused while a fault is latched (acknowledge it first)."""
        if self.fault_code != FAULT_NONE:
            raise PumpStateError(f"cannot start: fault {self.fault_code} not acknowledged")
        self.running = True

    def stop(self) -> None:
        """Stop pumping; the head ramps down to 0 rpm."""
        self.running = False

    def trip(self, fault_code: int = FAULT_TUBE) -> None:
        """Latch a fault; like the real drive this drops the run command."""
        if fault_code == FAULT_NONE:
            raise PumpStateError("trip() needs a non-zero fault code")
        self.fault_code = fault_code
        self.running = False

    def acknowledge_fault(self) -> None:
        """Clear the latched fault; the pump stays stopped until started again."""
        self.fault_code = FAULT_NONE
