"""Resolve ``writes:`` against the configuration: each target's instrument, channel and unit."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from ..api import WritableDriver
from ..units import Conversion
from .config import WriteTargetConfig
from .path import WriteTarget

if TYPE_CHECKING:
    from ..loader import InstrumentPlan

__all__ = ["resolve_targets"]


def resolve_targets(
    writes: Sequence[WriteTargetConfig],
    instruments: Sequence[InstrumentPlan],
    known_roles: Sequence[str],
    problems: list[str],
    unloaded: Collection[str] = (),
) -> dict[str, WriteTarget]:
    """Each declared target, resolved; a ``"writes[i].field: message"`` line in ``problems``
    for each that cannot be (unknown signal, channel not writable, unit without inverse, an
    unknown role, a duplicate). Targets of ``unloaded`` instruments (enabled, but with a
    problem of their own) are left out without another problem."""
    by_signal = {sp.signal.id: (inst, sp) for inst in instruments for sp in inst.signals}
    targets: dict[str, WriteTarget] = {}
    channels_taken: dict[tuple[str, str], str] = {}
    for i, config in enumerate(writes):
        where = f"writes[{i}]"
        if config.target in targets:
            problems.append(f"{where}.target: {config.target!r} is declared twice")
            continue
        if config.role not in known_roles:
            problems.append(
                f"{where}.role: unknown role {config.role!r} (roles: {', '.join(known_roles)})"
            )
            continue
        found = by_signal.get(config.target)
        if found is None:
            parts = config.target.split("/")
            if len(parts) == 3 and parts[1] in unloaded:
                continue  # its instrument has a problem of its own, already reported
            problems.append(
                f"{where}.target: no enabled instrument publishes a signal {config.target!r}"
            )
            continue
        inst, signal_plan = found
        channel_key = (inst.config.id, signal_plan.channel)
        other = channels_taken.get(channel_key)
        if other is not None:
            problems.append(
                f"{where}.target: {config.target!r} writes channel {signal_plan.channel!r} of"
                f" instrument {inst.config.id!r}, which {other!r} already writes: one target per"
                " channel (its limits, rate and serialisation would not hold otherwise)"
            )
            continue
        channels_taken[channel_key] = config.target
        channels = {c.name: c for c in inst.driver.channels()}
        channel = channels.get(signal_plan.channel)
        if channel is None or not channel.writable:
            problems.append(
                f"{where}.target: channel {signal_plan.channel!r} of instrument"
                f" {inst.config.id!r} is not writable (driver {inst.config.driver!r}; e.g. a"
                " Modbus register needs access: rw, an OPC UA node writable: true)"
            )
            continue
        if not isinstance(inst.driver, WritableDriver):
            problems.append(
                f"{where}.target: driver {inst.config.driver!r} cannot write and read back"
                " (it does not implement gateway.WritableDriver)"
            )
            continue
        # The signal's conversion from the device's unit, inverted (exactly: it is linear).
        from_device = signal_plan.conversion
        if from_device.scale == 0:
            problems.append(f"{where}.target: the unit conversion cannot be inverted")
            continue
        to_device = Conversion(1.0 / from_device.scale, -from_device.offset / from_device.scale)
        targets[config.target] = WriteTarget(
            config,
            signal_plan.signal.unit,
            inst.config.id,
            signal_plan.channel,
            to_device,
            from_device,
        )
    return targets
