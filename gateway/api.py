"""What a plugin implements and what it is handed: the driver, sink and emulator contracts.

A driver is built by its registered factory as ``factory(options, context)``, with no I/O in
the constructor (``patgw check`` builds drivers to learn their channels). The runtime then calls
``await driver.run(io)``, which connects, publishes readings through ``io`` until cancelled, and
raises :class:`~gateway.errors.InstrumentError` when the instrument becomes unreachable; the
runtime marks the instrument's signals ``bad`` and calls ``run`` again after a jittered,
exponential backoff. Most drivers poll: derive from :class:`PollingDriver` and write
``connect``, ``poll`` and ``close``. A driver that can set values on its instrument (setpoints)
also implements :class:`WritableDriver`; one that offers actions (tare, zero, start, stop)
implements :class:`CommandDriver`.
"""

from __future__ import annotations

import abc
import asyncio
import os
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, runtime_checkable

from pydantic import (
    AfterValidator,
    BeforeValidator,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
)

from .model import Quality, Sample, Signal, SignalKind

if TYPE_CHECKING:
    from .control import Access, WriteOutcome

__all__ = [
    "BindingSink",
    "Channel",
    "CommandArgument",
    "CommandCall",
    "CommandDriver",
    "ConfigPath",
    "DeviceCommand",
    "DeviceIdentity",
    "Driver",
    "DriverFactory",
    "Emulator",
    "EmulatorFactory",
    "EmulatorWithEndpoint",
    "ForwardingSink",
    "InstrumentIO",
    "Output",
    "PluginContext",
    "PollingDriver",
    "Processor",
    "ProcessorCommand",
    "ProcessorFactory",
    "ProcessorIO",
    "Secret",
    "SecretRef",
    "SerialPort",
    "Sink",
    "SinkFactory",
    "TargetLimits",
    "WritableDriver",
    "resolve_config_path",
    "validation_context",
]


@dataclass(frozen=True, slots=True)
class Channel:
    """A value an instrument offers, in the instrument's own unit (UCUM).

    The configuration maps channels to published signals and may convert the unit.
    """

    name: str
    unit: str
    kind: SignalKind = SignalKind.SCALAR
    description: str = ""
    writable: bool = False


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What a factory is told about the thing it builds: its id, a folder for its files, timing,
    and where it runs (the configuration's ``site`` and ``area``, e.g. for topic names)."""

    id: str
    data_dir: Path
    poll_interval_s: float = 1.0
    site: str = "site"
    area: str = ""
    access: Access | None = None
    """The user base and the controlled write path, for a plugin that takes logins or writes
    (the northbound OPC UA server); ``None`` in contexts that have none (e.g. ``patgw check``
    of a single plugin)."""


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who an instrument is, as it says itself (or as its configuration states it): what a
    plant's records need to tie data to a physical device. Every field is optional: report
    what the device tells, ``None`` for the rest.

    The names follow the OPC UA Devices companion specification (OPC 10000-100), whose
    ``DeviceIdentification`` properties the northbound OPC UA server shows them as:
    ``Manufacturer``, ``Model``, ``SerialNumber``, ``SoftwareRevision`` (``firmware_revision``)
    and ``HardwareRevision``."""

    manufacturer: str | None = None
    model: str | None = None
    serial_number: str | None = None
    firmware_revision: str | None = None
    hardware_revision: str | None = None

    def __post_init__(self) -> None:
        for name in _IDENTITY_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"DeviceIdentity.{name} must be a str or None, not {value!r}")

    def fields(self) -> dict[str, str | None]:
        """Every field by name, ``None`` included (for JSON, the store, the audit trail)."""
        return {name: getattr(self, name) for name in _IDENTITY_FIELDS}

    def is_empty(self) -> bool:
        """True when no field is known."""
        return all(getattr(self, name) is None for name in _IDENTITY_FIELDS)

    def filled_from(self, other: DeviceIdentity | None) -> DeviceIdentity:
        """This identity with the fields it lacks taken from ``other`` (e.g. a configuration
        stating the serial number of a device that reports only its model)."""
        if other is None:
            return self
        mine, theirs = self.fields(), other.fields()
        return DeviceIdentity(**{k: v if v is not None else theirs[k] for k, v in mine.items()})

    def label(self) -> str:
        """One line for people: ``Ocean Optics QE Pro S/N QEP01234 fw 1.2.3`` (empty if none)."""
        parts = [p for p in (self.manufacturer, self.model) if p]
        if self.serial_number:
            parts.append(f"S/N {self.serial_number}")
        if self.firmware_revision:
            parts.append(f"fw {self.firmware_revision}")
        if self.hardware_revision:
            parts.append(f"hw {self.hardware_revision}")
        return " ".join(parts)


_IDENTITY_FIELDS = (
    "manufacturer",
    "model",
    "serial_number",
    "firmware_revision",
    "hardware_revision",
)


class Output(Protocol):
    """Where a driver publishes one channel's readings. Cheap to call: do it per reading."""

    def publish(
        self,
        value: Any,
        source_ts: int | None = None,
        quality: Quality = Quality.GOOD,
        reason: str | None = None,
    ) -> None:
        """Publish one reading in the channel's unit.

        ``source_ts`` is UTC nanoseconds from the instrument when it gives one; the gateway's
        receive time is used otherwise. ``value`` may be ``None`` with a non-good quality.
        """


class InstrumentIO(Protocol):
    """The runtime's side of a running driver."""

    instrument_id: str

    def output(self, channel: str) -> Output:
        """The output for ``channel`` (a do-nothing output if the config publishes nothing)."""

    def connected(self) -> None:
        """Tell the runtime the instrument answers (state ``connected``, backoff reset)."""

    def identify(self, identity: DeviceIdentity) -> None:
        """Tell the runtime which device answers (plugin API 1.1; optional for a driver).

        Call it once per session, after reading the identity from the device and before
        :meth:`connected` (a :class:`PollingDriver`: in ``connect``), and again after every
        reconnect: a swapped instrument shows another serial number. Cheap and synchronous; the
        runtime stores the identity with the signal definitions, records a change of device in
        the audit trail (``device.identity_changed``), and shows it on ``/health``, the console
        and the northbound OPC UA server. Fields the configuration's ``identity:`` states fill
        those the driver leaves ``None``. Never call it per reading."""


@runtime_checkable
class Driver(Protocol):
    """An instrument connection."""

    def channels(self) -> Sequence[Channel]:
        """Every channel this instrument offers, known without I/O."""

    async def run(self, io: InstrumentIO) -> None:
        """Connect and publish until cancelled; raise ``InstrumentError`` when unreachable."""


@runtime_checkable
class WritableDriver(Driver, Protocol):
    """A driver that can set values on its instrument: setpoints, run commands.

    The runtime writes only channels whose :class:`Channel` has ``writable=True``, only while
    :meth:`~Driver.run` is active (between the runtime starting it and its end), and possibly
    while a poll or a notification is being handled: a driver whose transport cannot carry two
    requests at once serializes them itself. Values are in the *channel's* unit (the runtime
    converts from a signal's unit first). The gateway's write path (limits, roles, audit) is the
    runtime's; a driver still logs each write it sends or refuses.

    Typical use, after the runtime's checks::

        await driver.write("speed_setpoint", 5.0)
        if not math.isclose(await driver.read_back("speed_setpoint"), 5.0, rel_tol=1e-6): ...

    Exceptions:

    - :class:`~gateway.errors.WriteRefusedError`: nothing was changed. The channel is unknown or
      not writable, the value cannot be represented on the device (out of the register type's
      range, not a whole number for an integer node...), or the device refused the request
      (the message names the device's exception or status, e.g. ``exception 3 (illegal data
      value)``, ``BadOutOfRange``).
    - :class:`~gateway.errors.InstrumentError`: the instrument is not connected, or the
      transport failed (no answer, connection lost). When it failed after the request went out,
      the device *may* have taken the value: :meth:`read_back` tells.
    """

    async def write(self, channel: str, value: float) -> None:
        """Set ``channel`` to ``value`` (channel unit); return once the device acknowledged."""

    async def read_back(self, channel: str) -> float:
        """A fresh read of ``channel`` from the device (not the last published value), in the
        channel's unit. A device may hold another value than the one written: it clamps to its
        own limits, or stores it with less precision (a float32, a scaled integer register).
        Raises ``WriteRefusedError`` for a channel the driver does not offer, and
        ``InstrumentError`` when the instrument does not answer or answers with an error."""


ARGUMENT_KINDS = ("number", "integer", "text", "boolean")
"""The kinds a :class:`CommandArgument` may be."""


@dataclass(frozen=True, slots=True)
class CommandArgument:
    """One argument of a :class:`DeviceCommand`: its ``kind`` (one of ``ARGUMENT_KINDS``:
    ``number`` a float, ``integer``, ``text``, ``boolean``), in ``unit`` for numbers, between
    ``min`` and ``max`` where given. The gateway checks a call's arguments against these before
    the driver sees them."""

    name: str
    kind: str = "number"
    unit: str = ""
    description: str = ""
    required: bool = True
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class DeviceCommand:
    """An action an instrument offers, without a value to set: tare, zero, start, stop.

    ``changes_process``: whether it acts on the process (a pump's start) rather than only on
    the instrument's reading (a balance's tare); shown to the people who may run it."""

    name: str
    description: str = ""
    arguments: tuple[CommandArgument, ...] = ()
    changes_process: bool = True


@runtime_checkable
class CommandDriver(Driver, Protocol):
    """A driver whose instrument takes commands (:class:`DeviceCommand`): plugin API 1.1.

    The runtime runs only commands declared under ``commands:`` of the configuration, through
    the controlled write path (roles, reason, signature, audit), only while :meth:`~Driver.run`
    is active, never two at once on one instrument nor during a write to it; as with
    :class:`WritableDriver`, a poll may be under way.

    Exceptions of :meth:`command`:

    - :class:`~gateway.errors.WriteRefusedError`: nothing was done (an unknown command, an
      argument the device cannot take, the device refused it: the message says why).
    - :class:`~gateway.errors.InstrumentError`: not connected, or the transport failed; the
      device *may* have acted.
    """

    def commands(self) -> Sequence[DeviceCommand]:
        """Every command the instrument offers, known without I/O (``patgw check`` asks)."""

    async def command(self, name: str, arguments: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run command ``name`` with ``arguments`` (checked against its
        :class:`CommandArgument` list); return once the device acknowledged, with what it
        reported (JSON-able, e.g. ``{"tare": 12.5, "unit": "g"}``; empty if nothing): the
        audit trail keeps it."""


class PollingDriver(abc.ABC):
    """Base for drivers that read their instrument on a fixed period.

    ``run`` connects, then calls :meth:`poll` at once and every ``poll_interval_s`` seconds
    after a phase of its own (missed ticks are skipped, not bunched), and always calls
    :meth:`close` — also after a failed :meth:`connect`, so ``close`` must cope with a
    half-open or never-opened transport. The instrument counts as connected after the first
    poll that did not raise.

    A driver that reads its device's identity in :meth:`connect` stores it in
    :attr:`device_identity`; ``run`` then reports it (``io.identify``) before the first poll.

    The phase (a fraction of the period fixed by the instrument's id) spreads the polls of
    instruments that started together: without it, 50 Modbus devices started by one gateway
    would all be read in the same instant of every period and their readings reach the store
    and the sinks as one burst, whose last reading waits for all the others.
    """

    device_identity: DeviceIdentity | None = None
    """The identity :meth:`connect` read from the device (set it at each connect)."""

    def __init__(self, context: PluginContext) -> None:
        self.context = context
        self.poll_interval_s = context.poll_interval_s

    @abc.abstractmethod
    def channels(self) -> Sequence[Channel]:
        """Every channel this instrument offers, known without I/O."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the transport; raise ``InstrumentError`` on failure."""

    @abc.abstractmethod
    async def poll(self, io: InstrumentIO) -> None:
        """Read once and publish; raise ``InstrumentError`` when the instrument fails."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to close by default
        """Close the transport. Must not raise."""

    async def run(self, io: InstrumentIO) -> None:
        try:
            # Inside the try: a connect that fails half-way (port open, handshake failed) is
            # closed like any session, so drivers need not clean up in connect themselves.
            await self.connect()
            identity = self.device_identity
            # (An InstrumentIO written for plugin API 1.0, e.g. a test's fake, has no identify.)
            identify = getattr(io, "identify", None)
            if identity is not None and identify is not None:
                identify(identity)
            loop = asyncio.get_running_loop()
            deadline = loop.time()
            await self.poll(io)
            # Connected means answering: a TCP connect alone (a serial device server in front
            # of a dead device) must not reset the reconnect backoff.
            io.connected()
            # (A driver that did not call our __init__ has no context: no phase.)
            context: PluginContext | None = getattr(self, "context", None)
            if context is not None:
                deadline += poll_phase(context.id) * self.poll_interval_s
            task = asyncio.current_task()
            while True:
                if task is not None and task.cancelling():
                    # A library swallowed our cancellation (Python 3.11's asyncio.wait_for does
                    # when its inner future completes at the moment it is cancelled, and
                    # pymodbus awaits every request with it): stop anyway, do not poll on.
                    raise asyncio.CancelledError
                deadline += self.poll_interval_s
                delay = deadline - loop.time()
                if delay < 0:
                    deadline, delay = loop.time(), 0.0
                await asyncio.sleep(delay)
                await self.poll(io)
        finally:
            await self.close()


def poll_phase(instrument_id: str) -> float:
    """Where in its period an instrument is polled, as a fraction in [0, 1): fixed by its id
    (the same at every start), spread evenly over many ids."""
    return zlib.crc32(instrument_id.encode()) / 2**32


@runtime_checkable
class Sink(Protocol):
    """An upstream destination. Entered beside the instruments as they start (what is committed
    meanwhile waits for it), exited after they stop."""

    async def __aenter__(self) -> Sink: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def send(self, samples: Sequence[Sample]) -> None:
        """Deliver samples that the durable store has committed, in commit order.

        A sink may also define ``bind(signals: Sequence[Signal]) -> None``: the runtime calls it
        with every configured signal before entering the sink (e.g. to build an OPC UA address
        space up front).

        **Store-and-forward.** A sink that also defines
        ``async def forward(samples: Sequence[Sample], historical: bool) -> None`` is fed from
        the store through a durable cursor instead (see :class:`ForwardingSink`): nothing
        committed is lost to it by an outage or a restart. ``send`` is then not called.

        **Device identity** (plugin API 1.1, optional). A sink that defines
        ``device_identified(instrument: str, identity: DeviceIdentity) -> None`` (plain, not
        async; cheap: it runs on the event loop) is told each instrument's identity when it is
        first known and whenever it changes, possibly before the sink is entered (the northbound
        OPC UA server shows it as the instrument's DI identification properties).
        """


@runtime_checkable
class ForwardingSink(Sink, Protocol):
    """A sink fed at least once, from the store, through a durable per-sink cursor.

    ``forward`` returns only once the destination has *acknowledged* every sample (an MQTT
    PUBACK, an fsync...) and raises on any failure — the runtime then retries from the cursor
    with backoff, so ``forward`` should not retry by itself, and should re-establish a lost
    connection on its next call. ``historical`` is true for samples delivered late (the backlog
    after an outage or a restart), false for live ones.

    The runtime may call ``forward`` again before an earlier call returned, up to
    ``max_concurrent_forwards`` calls (a class attribute; 1 if absent). The sink must hand the
    samples to its transport in call order (before its first ``await``, for instance), so that
    per-signal order is kept within each lane. After a failure some samples may be delivered
    twice; consumers de-duplicate on ``(signal, seq)``.

    **Refusals.** When the destination takes the batch but refuses some samples on purpose (an
    MQTT 5 broker's "Not authorized" for one topic), ``forward`` waits for the answers to the
    others, then raises :class:`~gateway.errors.SamplesRefusedError` listing the refused ones
    (:class:`~gateway.errors.Refusal`: positions, what was refused, the destination's reason)
    and keeps its connection. The runtime then counts the others as delivered, records the
    refused ones as lost to this sink, and quarantines their signals (probing on a backoff)
    instead of retrying the batch: one refused topic never stalls the rest.

    **Reachability** (optional). A sink may also define ``async def reachable(self) -> bool``:
    a cheap check, without a session, whether its destination answers at all now (the MQTT
    sink: a TCP connection to the broker's port). While the sink is down, the runtime calls it
    every few hundred milliseconds between retries; when it answers true after having answered
    false, the runtime retries at once instead of waiting out the backoff, so a backlog starts
    draining as soon as a broker is back. It is never used to retry a destination that answers
    but refuses (that one is retried on the backoff).
    """

    async def forward(self, samples: Sequence[Sample], historical: bool) -> None: ...


class ProcessorIO(Protocol):
    """The runtime's side of a running processor.

    Beyond :meth:`output`, a processor that acts (a controller) or raises alarms uses the
    process time base, the audit trail and the controlled write path through it. Each write,
    claim and heartbeat is checked against the targets the processor declared in
    ``controls()`` and made as the processor's own system identity (its id, with the
    processor's configured ``role``)."""

    processor_id: str

    def output(self, channel: str) -> Output:
        """The output for ``channel`` (a do-nothing output if the config publishes nothing)."""

    def process_time_h(self, ts_ns: int) -> float:
        """Process time, in hours since the batch started, of the UTC nanosecond time ``ts_ns``
        (a sample's ``source_ts`` or :func:`time.time_ns`), from the processor's ``time_base``:
        the last batch age seen on the ``age`` signal plus the time since it, scaled; without
        one, the time since the gateway started, times ``time_scale``."""

    def note(
        self,
        action: str,
        *,
        outcome: str = "ok",
        target: str = "",
        old: Any = None,
        new: Any = None,
        reason: str = "",
        why: str = "",
        details: Mapping[str, Any] | None = None,
        user: str | None = None,
    ) -> None:
        """Queue one audit record (an alarm raised or cleared); returns at once and is durable
        within about a second. ``user`` defaults to the processor's identity; values must be
        JSON-able. Thread-safe."""

    async def record(
        self,
        action: str,
        *,
        outcome: str = "ok",
        target: str = "",
        old: Any = None,
        new: Any = None,
        reason: str = "",
        why: str = "",
        details: Mapping[str, Any] | None = None,
        user: str | None = None,
    ) -> int:
        """Append one audit record durably and return its number (a mode change: record, then
        act). Raises :class:`~gateway.errors.GatewayError` when the trail cannot be written."""

    async def write(self, target: str, value: float, reason: str) -> WriteOutcome:
        """Write ``value`` (the target's unit) through the controlled write path: every rule
        (limits, step, rate, instrument up, audit) applies, as to a person's write. Never
        raises for a refusal or a device failure: the outcome says (``.ok``, ``.outcome``,
        ``.rule``, ``.message``)."""

    def claim(self, target: str) -> None:
        """Own ``target``: until :meth:`release`, the write path refuses writes to it by
        anyone else (rule ``owner``), so one controller in auto is its only writer."""

    def release(self, target: str) -> None:
        """Give up owning ``target`` (a no-op if not owned)."""

    async def heartbeat(self, target: str, value: float) -> None:
        """Write a heartbeat target (``heartbeat: true`` under ``writes:``) without a record
        per beat: the first beat, failures and the recovery are audited. Raises
        :class:`~gateway.errors.InstrumentError` or :class:`~gateway.errors.WriteRefusedError`
        when the beat does not reach the device."""


@dataclass(frozen=True, slots=True)
class TargetLimits:
    """A declared write target as a processor that controls it sees it (``bind_controls``)."""

    target: str
    unit: str
    min: float
    max: float
    max_step: float | None = None
    max_rate_per_s: float | None = None
    heartbeat: bool = False


@dataclass(frozen=True, slots=True)
class CommandCall:
    """One use of a processor's command by a logged-in user (through the local API)."""

    user: str
    full_name: str
    roles: frozenset[str]
    body: Mapping[str, Any]
    reason: str


@dataclass(frozen=True, slots=True)
class ProcessorCommand:
    """An action users take on a processor (switch a loop to manual, acknowledge an alarm):
    ``POST /api/v1/processors/<id>/<command>`` with a JSON body that has a ``reason``.

    ``permission`` is what the user needs (a :class:`~gateway.security.Permission` value:
    ``"read"``, ``"write"``, ``"configure"``...). ``handler`` raises ``ValueError`` for bad
    input (HTTP 400 with its message) and :class:`~gateway.errors.GatewayError` when the
    action cannot be taken now (HTTP 409); it returns a JSON-able answer."""

    permission: str
    handler: Callable[[CommandCall], Awaitable[Mapping[str, Any]]]
    description: str = ""


@runtime_checkable
class Processor(Protocol):
    """Derives signals from other signals, e.g. concentrations from a spectrum (a soft sensor).

    Built by its registered factory as ``factory(options, context)``; reading a model file there
    is fine (``patgw check`` then reports a bad one), opening connections is not. The loader
    resolves :meth:`inputs` against the configuration's signals and calls :meth:`bind` with them
    before the run; then the runtime calls :meth:`process` once per sample of an input, in
    publication order, on the event loop — keep it well under a millisecond, as it delays every
    other instrument meanwhile. Outputs publish through ``io`` exactly as a driver does; pass the
    input's ``source_ts`` on so that a derived value keeps the time of what it was derived from.

    If ``process`` raises, the runtime publishes ``bad`` samples (the error as the reason, the
    input's source time) on every output of the processor, logs it, and carries on with the next
    sample. At shutdown, samples already taken from the instruments are still processed before
    the final commit.

    Optional members (looked up with ``getattr``), for processors that act or take commands:

    - ``controls() -> Sequence[str]``: the write targets (full ids, declared under
      ``writes:``) it writes, claims or beats through ``io``; the loader refuses an undeclared
      one, or one its role does not qualify for.
    - ``bind_controls(targets: Mapping[str, TargetLimits]) -> None``: raise ``ValueError`` for
      a target that does not suit (limits wider than the target's, a heartbeat target where a
      setpoint is needed...): an error at ``patgw check``.
    - ``async run(io) -> None``: a task of its own (``processor.<id>.run``) for timers
      (staleness, fallbacks, heartbeats), started once writes are possible and cancelled at the
      stop before the writes under way drain; if it raises, it is logged and started again
      after a backoff.
    - ``commands() -> Mapping[str, ProcessorCommand]`` and ``status() -> Mapping[str, Any]``:
      actions and state for the local API (``/api/v1/processors``). The web console reads the
      same status and shows, where given: ``limits`` (output channel → limit, e.g. a T²'s),
      ``alarms`` (name → ``state``, ``severity``, ``reason``, ``pending``: an Acknowledge
      button calls the ``acknowledge`` command) and, with ``input`` naming a spectrum signal,
      ``bands`` (``use``, ``low``, ``high``, ``unit``: axis ranges shaded on its spectra). An
      output ``<name>_sd`` is shown as the ± of output ``<name>``.
    """

    def inputs(self) -> Sequence[str]:
        """The signals it reads: ``instrument/signal`` within the configuration's area, or a full
        signal id. Known without I/O; a processor may read the signals of processors listed
        before it."""

    def channels(self) -> Sequence[Channel]:
        """Every channel it publishes, in its own unit, known without I/O."""

    def bind(self, inputs: Mapping[str, Signal]) -> None:
        """The configured signal of each name :meth:`inputs` gave; raise ``ValueError`` if one
        does not suit (a scalar where a spectrum is needed, a wrong unit...)."""

    def process(self, sample: Sample, io: ProcessorIO) -> None:
        """Derive and publish from one input sample (any quality: a bad input should usually
        give bad outputs saying why)."""


@runtime_checkable
class Emulator(Protocol):
    """An emulated instrument: started before the instruments, stopped after them.

    An emulator that runs a process may also define ``process_time_h() -> float``: the hours
    of process time since its run began (the batch age), which the live view shows. It is
    called on the event loop while the emulator runs, several times a second, so it must be
    cheap; raising (e.g. before ``__aenter__``) just leaves it out.
    """

    async def __aenter__(self) -> Emulator: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


@runtime_checkable
class EmulatorWithEndpoint(Emulator, Protocol):
    """An emulator that says where to connect once entered: ``endpoint`` (``host:port``, a
    serial device's path...), which ``patgw emulate`` prints. Without it, ``patgw emulate``
    prints ``host:port`` from the emulator's ``port`` attribute or its ``--port``."""

    @property
    def endpoint(self) -> str: ...


@runtime_checkable
class BindingSink(Sink, Protocol):
    """A sink told every configured signal before it is entered (e.g. to build an OPC UA
    address space up front): the runtime calls ``bind`` once, synchronously."""

    def bind(self, signals: Sequence[Signal]) -> None: ...


# The factories a plugin registers, one protocol per kind. ``options`` is an instance of the
# options model registered with the factory (typed ``Any`` here so that a factory may take its
# own model's type); positional-only, so any parameter names do. A class whose ``__init__``
# takes ``(options, context)`` is such a factory.


class DriverFactory(Protocol):
    """Builds a :class:`Driver` from its validated options, with no I/O."""

    def __call__(self, options: Any, context: PluginContext, /) -> Driver: ...


class SinkFactory(Protocol):
    """Builds a :class:`Sink` (or a :class:`ForwardingSink`) from its validated options."""

    def __call__(self, options: Any, context: PluginContext, /) -> Sink: ...


class ProcessorFactory(Protocol):
    """Builds a :class:`Processor` from its validated options; reading a model file is fine."""

    def __call__(self, options: Any, context: PluginContext, /) -> Processor: ...


class EmulatorFactory(Protocol):
    """Builds an :class:`Emulator` from its validated options, with no I/O."""

    def __call__(self, options: Any, context: PluginContext, /) -> Emulator: ...


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A secret named by an environment variable; the value never appears in a config file."""

    env: str

    def problem(self) -> str | None:
        """Why :meth:`get` would fail (the variable is unset or empty), or ``None``."""
        value = os.environ.get(self.env)
        if value is None:
            return f"environment variable {self.env} is not set"
        if not value:
            return f"environment variable {self.env} is empty"
        return None

    def get(self) -> str:
        """The secret's value; ``KeyError`` naming the variable when it is unset or empty."""
        problem = self.problem()
        if problem is not None:
            raise KeyError(problem)
        return os.environ[self.env]

    def __repr__(self) -> str:
        return f"SecretRef(env={self.env!r})"


def _parse_secret(value: object) -> SecretRef:
    if isinstance(value, SecretRef):
        return value
    if isinstance(value, dict) and set(value) == {"env"} and isinstance(value["env"], str):
        name = value["env"]
    elif isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
    else:
        raise ValueError(
            "secrets come from the environment: write 'env:VARIABLE' or {env: VARIABLE},"
            " never the secret itself"
        )
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"invalid environment variable name {name!r}")
    return SecretRef(name)


Secret = Annotated[
    SecretRef,
    BeforeValidator(_parse_secret),
    PlainSerializer(lambda ref: f"env:{ref.env}", return_type=str),
    # Both accepted spellings, so `patgw schema` validates what the loader accepts.
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": "^env:[A-Za-z0-9_]+$"},
                {
                    "type": "object",
                    "properties": {"env": {"type": "string", "pattern": "^[A-Za-z0-9_]+$"}},
                    "required": ["env"],
                    "additionalProperties": False,
                },
            ],
            "description": "A secret from the environment: env:VARIABLE or {env: VARIABLE}.",
        }
    ),
]
"""Type for a config field holding a secret: ``password: Secret`` accepts ``env:PUMP_PASSWORD``."""


# The key of pydantic's validation context under which the loader gives the configuration
# file's folder; private: plugins use ConfigPath or resolve_config_path, never the key.
_CONFIG_DIR = "pat_gateway.config_dir"


def validation_context(config_dir: Path) -> dict[str, Any]:
    """The pydantic validation ``context`` the loader validates a configuration file with:
    relative :data:`ConfigPath` values resolve against ``config_dir`` (the file's folder).

    For tests and embedders validating plugin options themselves, e.g.
    ``Options.model_validate(raw, context=validation_context(folder))``."""
    return {_CONFIG_DIR: Path(config_dir).expanduser().absolute()}


def resolve_config_path(path: Path | str, info: ValidationInfo) -> Path:
    """``path`` as a configuration means it: ``~`` expanded, and a relative path joined to the
    folder of the configuration file being validated (a service starts in another working
    directory than a shell). Outside a configuration file (no context: options given on the
    command line, or built in code) a relative path stays relative, to the working directory.

    For a validator of a field that is not a plain path (e.g. a serial port that may also be a
    URL); a plain path field simply has the type :data:`ConfigPath`."""
    try:
        resolved = Path(path).expanduser()
    except RuntimeError as exc:  # no home folder known for `~` (or for `~user`)
        raise ValueError(f"cannot expand {str(path)!r}: {exc}") from None
    context = info.context
    if resolved.is_absolute() or not isinstance(context, Mapping):
        return resolved
    base = context.get(_CONFIG_DIR)
    return base / resolved if isinstance(base, Path) else resolved


ConfigPath = Annotated[Path, AfterValidator(resolve_config_path)]
"""Type for a config field holding a file or folder path: relative to the configuration file's
folder (see :func:`resolve_config_path`), so ``model: models/pls.json`` means the same file
whatever the working directory. The built-in plugins use it for every path they take."""


def _serial_port(port: str, info: ValidationInfo) -> str:
    # A pyserial URL (socket://, rfc2217://) or a bare port name (COM3, ttyS0 is no path
    # anyone means relative) is kept; a path with a folder part resolves like a ConfigPath.
    if "://" in port or "/" not in port:
        return port
    return str(resolve_config_path(port, info))


SerialPort = Annotated[str, AfterValidator(_serial_port)]
"""Type for a config field naming a serial port: a device path (``/dev/ttyUSB0``; a relative
one such as ``data/raman.tty`` resolves like a :data:`ConfigPath`), a bare port name (``COM3``)
or a pyserial URL (``socket://host:port``), kept as written."""
