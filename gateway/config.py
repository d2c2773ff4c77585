"""The configuration file's schema: closed, frozen pydantic models, documented field by field.

Plugin options (``options:`` of an instrument, emulator or sink) are validated afterwards by the
model the plugin registered, so this module knows no instrument. ``patgw schema`` prints the JSON
Schema of :class:`GatewayConfig` for editor completion.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from .api import ConfigPath
from .audit.config import AuditConfig
from .control.commands import CommandTargetConfig
from .control.config import WriteTargetConfig
from .errors import UnitError
from .security.config import SecurityConfig
from .units import validate_ucum

__all__ = [
    "BackoffConfig",
    "EmulatorConfig",
    "GatewayConfig",
    "HttpConfig",
    "IdentityConfig",
    "InstrumentConfig",
    "LoggingConfig",
    "ProcessorConfig",
    "RetentionConfig",
    "SignalConfig",
    "SinkConfig",
    "StoreArchiveConfig",
    "StoreBudgetConfig",
    "StoreConfig",
    "TlsConfig",
    "ViewConfig",
    "is_loopback",
]

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Identifier = Annotated[str, Field(pattern=_ID_PATTERN, max_length=64)]


def _ucum(code: str) -> str:
    try:
        return validate_ucum(code)
    except UnitError as exc:
        raise PydanticCustomError("ucum", "{problem}", {"problem": str(exc)}) from None


UcumCode = Annotated[str, AfterValidator(_ucum)]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SignalConfig(_Closed):
    """One published signal of an instrument: a driver channel, optionally in another unit."""

    id: Identifier = Field(description="Signal name within its instrument, e.g. 'flow'.")
    channel: str | None = Field(
        default=None, description="The driver channel to publish; defaults to the signal id."
    )
    unit: UcumCode | None = Field(
        default=None,
        description="UCUM unit to publish in (e.g. 'L/h'); defaults to the instrument's unit.",
    )
    source_unit: UcumCode | None = Field(
        default=None,
        description="UCUM unit the instrument reports in; defaults to the channel's declared unit.",
    )
    description: str | None = Field(default=None, description="Overrides the channel's text.")


class BackoffConfig(_Closed):
    """Reconnect timing: delays grow from ``initial_s`` by ``factor`` up to ``max_s``."""

    initial_s: float = Field(default=0.5, gt=0, description="First delay after a failure.")
    max_s: float = Field(default=30.0, gt=0, description="Longest delay between attempts.")
    factor: float = Field(default=2.0, ge=1, description="Growth per consecutive failure.")
    jitter: float = Field(
        default=0.5, ge=0, le=1, description="Random fraction taken off each delay (0 = none)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> BackoffConfig:
        if self.max_s < self.initial_s:
            raise ValueError("max_s must be at least initial_s")
        return self


class IdentityConfig(_Closed):
    """A device's identity as the configuration states it: for a device that cannot report
    its own (a 4-20 mA transmitter behind a Modbus converter), or to add what a driver does not
    read (its serial number). The driver's report wins field by field."""

    manufacturer: str | None = Field(default=None, min_length=1, description="Manufacturer.")
    model: str | None = Field(default=None, min_length=1, description="Model or product code.")
    serial_number: str | None = Field(default=None, min_length=1, description="Serial number.")
    firmware_revision: str | None = Field(
        default=None, min_length=1, description="Firmware (software) revision."
    )
    hardware_revision: str | None = Field(
        default=None, min_length=1, description="Hardware revision."
    )


class InstrumentConfig(_Closed):
    """An instrument the gateway reads, through a driver plugin."""

    id: Identifier = Field(description="Instrument id; the middle part of its signal ids.")
    driver: str = Field(description="Driver plugin name, see 'patgw plugins'.")
    enabled: bool = Field(default=True, description="Set false to keep it configured but idle.")
    poll_interval_s: float = Field(
        default=1.0, gt=0, le=3600, description="Period of polling drivers, in seconds."
    )
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)
    options: dict[str, Any] = Field(
        default_factory=dict, description="Driver options, validated by the driver's own model."
    )
    signals: list[SignalConfig] | None = Field(
        default=None,
        description="Signals to publish; omitted = every channel of the driver, in its own unit.",
    )
    identity: IdentityConfig | None = Field(
        default=None,
        description="The device's identity where its driver reports none (or not all of it):"
        " see docs/device-identity.md.",
    )
    description: str = ""


class TimeBaseConfig(_Closed):
    """How a processor turns gateway time into process time (hours since the batch started):
    controllers, the digital twin and batch-evolution monitoring reason in process time."""

    time_scale: float = Field(
        default=1.0,
        gt=0,
        le=1_000_000,
        description="Process seconds per wall-clock second: 1 on a real plant; the emulated"
        " bioreactor's time_scale when it runs time-scaled (60: one process hour per minute).",
    )
    age: str | None = Field(
        default=None,
        min_length=1,
        description="A signal giving the batch age in hours (e.g. the bioreactor controller's"
        " culture time, 'controller/batch_age'): process time is its last value plus the time"
        " since, scaled. None: process time counts from the gateway's start.",
    )


class ProcessorConfig(_Closed):
    """A processor: derives signals from other signals (e.g. a soft sensor turning a spectrum
    into concentrations). Its signals are named ``area/processor-id/channel``, like an
    instrument's."""

    id: Identifier = Field(
        description="Processor id; the middle part of its signal ids (unique among instruments"
        " and processors)."
    )
    type: str = Field(description="Processor plugin name, see 'patgw plugins'.")
    enabled: bool = Field(default=True, description="Set false to keep it configured but idle.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Processor options, validated by the plugin's model."
    )
    signals: list[SignalConfig] | None = Field(
        default=None,
        description="Signals to publish; omitted = every channel of the processor, in its unit.",
    )
    queue_max_samples: int = Field(
        default=10_000,
        ge=1,
        description=(
            "Input samples waiting to be processed; beyond it the oldest are skipped (counted"
            " and logged: their derived samples are never made)."
        ),
    )
    time_base: TimeBaseConfig = Field(
        default_factory=TimeBaseConfig,
        description="Process time for processors that need it (controllers, twins, batch"
        " monitoring).",
    )
    role: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$", max_length=64)] = Field(
        default="controller",
        description="Role of the processor's own identity (named after its id) for the"
        " writes it makes through the write path; the built-in 'controller' may read and"
        " write.",
    )
    description: str = ""


class EmulatorConfig(_Closed):
    """An emulated instrument started by the gateway itself (demos and tests)."""

    id: Identifier
    type: str = Field(description="Emulator plugin name, see 'patgw plugins'.")
    options: dict[str, Any] = Field(default_factory=dict)


class RetentionConfig(_Closed):
    """How much undelivered data a store-and-forward sink keeps forwarding after an outage.

    The bound counts samples committed but not yet acknowledged by this sink. When it is
    exceeded, ``policy`` applies: ``drop_oldest`` gives up the oldest undelivered samples *for
    this sink* (they stay in the local store; each one is counted, logged and recorded in the
    store's loss table), ``stop`` makes the gateway stop committing new samples until the sink
    has caught up (the store's ``on_full`` policy then drops them, counted and recorded).
    """

    max_samples: int | None = Field(
        default=10_000_000, ge=1, description="Most undelivered samples (null: no bound)."
    )
    max_age_s: float | None = Field(
        default=None, gt=0, description="Oldest undelivered sample, in seconds (null: no bound)."
    )
    policy: Literal["drop_oldest", "stop"] = Field(
        default="drop_oldest", description="What happens when a bound is exceeded."
    )


class SinkConfig(_Closed):
    """An upstream destination fed with every committed sample.

    A sink that supports store-and-forward (MQTT, JSON lines) is fed from the store through a
    durable cursor: nothing committed is lost to it by an outage or a restart. Other sinks (the
    OPC UA server, which shows current values) get live batches at most once.
    """

    id: Identifier
    type: str = Field(description="Sink plugin name, see 'patgw plugins'.")
    options: dict[str, Any] = Field(default_factory=dict)
    queue_max_samples: int = Field(
        default=200_000,
        ge=1,
        description=(
            "Committed samples held in memory for a slow sink. Beyond it a store-and-forward"
            " sink reads them back from the store later; any other sink loses its oldest."
        ),
    )
    send_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A send not acknowledged within this time counts as failed.",
    )
    start_from: Literal["latest", "earliest"] = Field(
        default="latest",
        description=(
            "Where a store-and-forward sink seen for the first time starts: samples committed"
            " from now on ('latest') or everything already in the store ('earliest')."
        ),
    )
    batch_max_samples: int = Field(
        default=2000, ge=1, le=1_000_000, description="Most samples handed to the sink at once."
    )
    backlog_max_rate: float | None = Field(
        default=None,
        gt=0,
        description="Cap on backlog samples/s after an outage (null: as fast as the sink acks).",
    )
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    retry: BackoffConfig = Field(
        # A broker back after an outage should see the gateway within seconds: the backlog's
        # drain starts then.
        default_factory=lambda: BackoffConfig(initial_s=0.5, max_s=5.0),
        description="Delays between attempts after a failure.",
    )


class StoreArchiveConfig(_Closed):
    """Where samples go before the store budget prunes them: JSON lines files (the format of
    ``patgw export --format jsonl``), one or more per pruning run, each one's SHA-256 recorded in
    the store. ``patgw export --include-archive`` reads them back."""

    path: ConfigPath = Field(
        description="Archive folder; a relative path is relative to the config file's folder."
    )
    max_file_samples: int = Field(
        default=1_000_000,
        ge=1000,
        le=100_000_000,
        description="Most samples in one archive file (a pruning run writes several if needed).",
    )


class StoreBudgetConfig(_Closed):
    """How much the store keeps: samples beyond the budget are pruned in the background.

    Not to be confused with a sink's forwarding ``retention``: only samples that every
    store-and-forward sink has released (delivered, or given up by its retention and recorded
    as a loss) are ever pruned; a sink that is behind holds them (and says so on /health).
    The loss table and any other record are never pruned, only samples.
    """

    max_age_s: float | None = Field(
        default=None,
        gt=0,
        description="Prune samples whose gateway time is older than this (null: no bound).",
    )
    max_bytes: int | None = Field(
        default=None,
        ge=1 << 20,
        description="Prune the oldest samples while the store's data exceeds this (null: none).",
    )
    check_interval_s: float = Field(
        default=10.0, gt=0, le=3600, description="How often the budget is checked."
    )
    chunk_samples: int = Field(
        default=1000,
        ge=100,
        le=1_000_000,
        description="Samples deleted per transaction: small, so commits are never held up.",
    )
    archive: StoreArchiveConfig | None = Field(
        default=None, description="Write samples to archive files before pruning (null: no)."
    )

    @model_validator(mode="after")
    def _some_bound(self) -> StoreBudgetConfig:
        if self.max_age_s is None and self.max_bytes is None:
            raise ValueError("give max_age_s, max_bytes or both (or leave budget out)")
        return self


class StoreConfig(_Closed):
    """The durable local store (SQLite in WAL mode) every sample is committed to."""

    path: ConfigPath = Field(
        default=Path("data/patgw.sqlite"),
        validate_default=True,  # the default is relative to the config file's folder too
        description="Database file; a relative path is relative to the config file's folder.",
    )
    commit_interval_ms: int = Field(
        default=10,
        ge=1,
        le=10_000,
        description=(
            "Samples are committed in batches this often; it bounds the latency to the sinks."
        ),
    )
    synchronous: Literal["normal", "full"] = Field(
        default="normal",
        description="'normal' survives a process crash; 'full' also a power loss, but is slower.",
    )
    max_pending_samples: int = Field(
        default=1_000_000,
        ge=1000,
        description="Samples held in memory while the store cannot commit (e.g. disk full).",
    )
    on_full: Literal["drop_newest", "drop_oldest"] = Field(
        default="drop_newest",
        description=(
            "When max_pending_samples is exceeded: refuse new samples or discard the oldest."
            " Either way every dropped sample is counted, logged and recorded in the store."
        ),
    )
    budget: StoreBudgetConfig | None = Field(
        default=None,
        description="How much the store keeps before pruning released samples (null: all).",
    )
    trends: bool = Field(
        default=True,
        description=(
            "Keep trend rollups (1 s, 10 s, 60 s buckets per signal) in a file beside the store"
            " (<store>.trends), rolled up once a second on a thread of its own, for the"
            " console's trends page; false: no trends file."
        ),
    )

    @model_validator(mode="after")
    def _budget_above_commit_interval(self) -> StoreConfig:
        budget = self.budget
        age = budget.max_age_s if budget is not None else None
        if age is not None and age * 1000 < self.commit_interval_ms:
            raise PydanticCustomError(
                "budget",
                "budget.max_age_s ({age} s) is shorter than one commit interval"
                " ({interval} ms): every sample would be pruned as soon as it is committed",
                {"age": age, "interval": self.commit_interval_ms},
            )
        return self


class LoggingConfig(_Closed):
    """Structured logs on standard error."""

    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


class ViewConfig(_Closed):
    """The live view while ``patgw run`` runs."""

    refresh_s: float = Field(default=0.5, gt=0, description="Terminal table refresh period.")
    log_every_s: float = Field(
        default=10.0, gt=0, description="Summary log period when not attached to a terminal."
    )


class TlsConfig(_Closed):
    """A server certificate and its private key (PEM files) for HTTPS."""

    certificate: ConfigPath = Field(description="PEM certificate (chain) the endpoint presents.")
    private_key: ConfigPath = Field(description="PEM private key of that certificate.")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpConfig(_Closed):
    """The local HTTP endpoint: ``/health`` (JSON), ``/metrics`` (Prometheus text), the web
    console at ``/`` and, with ``api: true``, the authenticated local API (``/api/v1``) that
    ``patgw write`` uses."""

    host: str = Field(
        default="127.0.0.1", description="Address to listen on; loopback unless you mean it."
    )
    port: int = Field(default=9180, ge=0, le=65535, description="TCP port (0: any free port).")
    tls: TlsConfig | None = Field(
        default=None, description="Serve HTTPS with this certificate; null: plain HTTP."
    )
    api: bool = Field(
        default=False,
        description="Serve the local API (/api/v1: writes, audit, who am I) with logins from"
        " security.users. Beyond loopback it needs tls (passwords cross the network).",
    )
    console: bool | None = Field(
        default=None,
        description="Serve the web console at / (login with security.users; overview, live"
        " signals). null (the default): served on loopback, or anywhere with tls; true: served,"
        " which beyond loopback needs tls (passwords cross the network); false: not served.",
    )
    console_idle_timeout_s: float = Field(
        default=900.0,
        gt=0,
        le=86400,
        description="A console session unused for this long is closed: the next page asks for"
        " the login again.",
    )

    @model_validator(mode="after")
    def _api_needs_tls_beyond_loopback(self) -> HttpConfig:
        for what, on in (("the local API", self.api), ("the web console", self.console)):
            if on and self.tls is None and not is_loopback(self.host):
                raise ValueError(
                    f"{what} takes passwords: on {self.host!r}, beyond loopback, it needs"
                    " http.tls (a certificate and key); or listen on 127.0.0.1"
                )
        return self

    @property
    def serves_console(self) -> bool:
        """Whether the web console is served (see ``console``)."""
        if self.console is None:
            return self.tls is not None or is_loopback(self.host)
        return self.console


class GatewayConfig(_Closed):
    """A PAT Gateway configuration file."""

    version: Literal[1] = Field(default=1, description="Configuration format version.")
    site: Identifier = Field(default="site", description="Plant or site name.")
    area: Identifier = Field(
        description="Process unit (e.g. bioreactor) name; the first part of every signal id."
    )
    data_dir: ConfigPath = Field(
        default=Path("data"),
        validate_default=True,
        description="Folder for the files plugins make themselves (e.g. the OPC UA server's"
        " certificates); a relative path is relative to the config file's folder.",
    )
    # A mapping, not a StoreConfig, as the default: it is validated like a written one, so
    # its relative path resolves against the config file's folder too.
    store: StoreConfig = Field(default_factory=dict, validate_default=True)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    view: ViewConfig = Field(default_factory=ViewConfig)
    http: HttpConfig | None = Field(
        default=None, description="Health and metrics endpoint; omitted: not served."
    )
    emulators: list[EmulatorConfig] = Field(default_factory=list)
    instruments: list[InstrumentConfig] = Field(default_factory=list)
    processors: list[ProcessorConfig] = Field(
        default_factory=list,
        description="Derived signals, computed in this order (a processor may read the signals"
        " of instruments and of processors listed before it).",
    )
    sinks: list[SinkConfig] = Field(default_factory=list)
    security: SecurityConfig = Field(
        default_factory=SecurityConfig,
        description="Users, roles and lock-out: the one user base of every interface that"
        " takes a login (the OPC UA server, the local API).",
    )
    writes: list[WriteTargetConfig] = Field(
        default_factory=list,
        description="The only targets the gateway may write (setpoints), each with its limits;"
        " none: nothing is writable.",
    )
    commands: list[CommandTargetConfig] = Field(
        default_factory=list,
        description="The only device commands (tare, zero, start, stop) the gateway may run,"
        " each with who may run it; none: no command can be run.",
    )
    audit: AuditConfig = Field(default_factory=AuditConfig, description="The audit trail.")

    def duplicate_ids(self) -> list[str]:
        """``"path: duplicate … id"`` lines for ids that must be unique but are not."""
        problems: list[str] = []
        sections: list[tuple[str, list[Any], str]] = [
            ("emulators", list(self.emulators), "emulator"),
            ("sinks", list(self.sinks), "sink"),
        ]
        signal_sources: tuple[tuple[str, list[InstrumentConfig | ProcessorConfig]], ...] = (
            ("instruments", list(self.instruments)),
            ("processors", list(self.processors)),
        )
        for section, sources in signal_sources:
            for i, source in enumerate(sources):
                if source.signals is not None:
                    sections.append((f"{section}[{i}].signals", list(source.signals), "signal"))
        # Instruments and processors share one namespace: both name the signals they publish.
        taken: dict[str, str] = {}
        for section, sources in signal_sources:
            what = section[:-1]
            for k, source in enumerate(sources):
                first = taken.get(source.id)
                if first is None:
                    taken[source.id] = f"{section}[{k}]"
                elif first.startswith(section):
                    problems.append(f"{section}[{k}].id: duplicate {what} id {source.id!r}")
                else:
                    problems.append(
                        f"{section}[{k}].id: duplicate id {source.id!r}: {first} has it"
                        " (instruments and processors name signals, so they share ids)"
                    )
        for path, items, what in sections:
            seen: set[str] = set()
            for k, item in enumerate(items):
                if item.id in seen:
                    problems.append(f"{path}[{k}].id: duplicate {what} id {item.id!r}")
                seen.add(item.id)
        return problems
