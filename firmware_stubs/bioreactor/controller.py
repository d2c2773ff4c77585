"""OPC UA face of the emulated bioreactor: a controller unit (DCU) serving a shared process run.

For gateway integration tests, demos and ``patgw emulate bioreactor --port 4840``: an asyncua
2.1.0 server whose values come from a :class:`~firmware_stubs.bioreactor.clock.ProcessClock`
(the same run the feed pump feeds and the Raman spectrometer looks into), refreshed every
``update_s`` seconds, plus fault injection so tests can exercise the gateway's OPC UA driver.

Address space: namespace ``urn:pat-gateway:emulator:bioreactor-controller`` (registered, so its
index is usually 2; clients look it up by URI), object ``Objects/BioreactorController`` with an
``Identification`` object (properties ``Manufacturer``, ``Model``, ``SerialNumber``,
``SoftwareRevision``, ``HardwareRevision``: the OPC UA DI names, in this namespace) and the
variables listed in :mod:`~firmware_stubs.bioreactor.dcu`, grouped in objects ``Temperature``,
``pH``, ``DissolvedOxygen``, ``Agitation`` (each ``PV`` and ``SP``), ``GasFlows``, ``Pumps``,
``Alarms`` and ``Emulation`` (the process model's true concentrations, which no real controller has,
for comparing soft sensors with the truth; the object's Description says so); a perfusion run adds
``Perfusion/Rate`` and ``Bleed/Rate`` (each ``PV`` and ``SP``), ``Harvest``, ``Retention``,
``Media`` and ``Volume`` (decision 0024). Every node id is a string id in that namespace equal to
its dotted path, e.g. ``BioreactorController.Temperature.PV`` or
``BioreactorController.Perfusion.Rate.SP`` (each dotted prefix an object). Analog variables (Double)
are of ``AnalogItemType`` with the standard properties ``EngineeringUnits`` and ``EURange`` (browse
names in namespace 0; node ids ``<variable>.EngineeringUnits`` and ``<variable>.EURange``); the pump
totals and the true values, which have no natural range, are ``AnalogUnitType`` with
``EngineeringUnits`` only. Unless a fault says otherwise, every value carries StatusCode Good and
SourceTimestamp = ServerTimestamp = when it was computed (UTC); ``ServerStatus.CurrentTime`` moves
with them.

Writes: only the ``SP`` variables (four; six in perfusion) are writable (AccessLevel and
UserAccessLevel), and a written setpoint goes into the process model at once. A loop given operating
limits (``setpoint_limits``, like a DCU's SP limits) accepts a setpoint within its EURange but
outside those limits clamped to them: the write succeeds and the node reads back the limit. A
setpoint Double outside its EURange (or NaN) is refused with BadOutOfRange, a setpoint written with
a bad status (no value) with BadWriteNotSupported, each for the whole request (a ServiceFault); a
value of another type gets BadTypeMismatch and any other node BadUserAccessDenied, per node.

Security: this is a device on an isolated controller LAN, emulated on loopback for tests and
demos, so it serves the None security policy to anonymous clients only, every one an ordinary
user (no admin, no user names, no certificates). Never put it on a network a stranger reaches.

asyncua's own chatter (a log line per request) is lowered to warnings on ``asyncua.server``
unless something configured that logger already. What this module relies on in asyncua 2.1.0,
all public: ``Server(iserver=...)``, ``Server.iserver.isession.add_nodes`` (to give variables
their type definition), ``InternalServer.register_external_session`` /
``unregister_external_session`` (overridden to know every session, so a restart or a stop
closes them: asyncua keeps a session that has subscriptions alive after its connection drops,
for reconnects, with a timeout task of its own), ``Server.bserver.stop()/start()`` (the
listener, restarted for the ``server_restart`` fault), ``write_attribute_value`` and
``subscribe_server_callback(PreWrite / PostWrite)`` (a PreWrite listener that raises
``ServiceError`` refuses the request). asyncua's own tasks (one per connection, a cleanup loop)
are unnamed and stopped by asyncua; this module's own are named ``bioreactor.<name>.opcua.*``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
from collections.abc import Mapping
from datetime import UTC
from typing import Any, NoReturn, Self

import structlog
from asyncua import ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from . import dcu
from .clock import ProcessClock
from .faults import Fault

__all__ = [
    "MANUFACTURER",
    "MODEL",
    "NAMESPACE_URI",
    "PERFUSION_MODEL",
    "ROOT",
    "SETPOINT_LOOPS",
    "BioreactorController",
]

_log = structlog.get_logger(__name__)

#: The controller's own namespace; clients find its index with this URI.
NAMESPACE_URI = "urn:pat-gateway:emulator:bioreactor-controller"
#: Browse name and node id of the controller object below ``Objects``.
ROOT = "BioreactorController"
MANUFACTURER = "PAT Gateway emulator"
MODEL = "Fed-batch controller"
#: The model a perfusion run's controller reports.
PERFUSION_MODEL = "Perfusion controller"
SOFTWARE_REVISION = "3.2.0"
HARDWARE_REVISION = "B"

#: What stop() and a listener restart may take before they give up waiting.
_STOP_TIMEOUT_S = 5.0
#: Wait between attempts to listen again when the port is taken during a restart.
_RELISTEN_RETRY_S = 0.5
_BAD = ua.StatusCode(ua.UInt32(StatusCodes.BadSensorFailure))
_GOOD = ua.StatusCode(ua.UInt32(StatusCodes.Good))
_READ = ua.AccessLevel.CurrentRead.mask
_READ_WRITE = ua.AccessLevel.CurrentRead.mask | ua.AccessLevel.CurrentWrite.mask


class _OrdinaryUsers(UserManager):
    """Every client is an ordinary user: it reads and writes what AccessLevel allows, nothing
    more (asyncua would make a client logging in as "admin" an administrator)."""

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        return User(role=UserRole.User)


class _SessionTrackingServer(InternalServer):
    """asyncua's internal server, also keeping track of every open client session, so that a
    restart or a stop can close them all."""

    def __init__(self) -> None:
        super().__init__(user_manager=_OrdinaryUsers())
        self.client_sessions: set[InternalSession] = set()

    def register_external_session(self, session: InternalSession) -> None:
        super().register_external_session(session)
        self.client_sessions.add(session)

    def unregister_external_session(self, session: InternalSession) -> None:
        super().unregister_external_session(session)
        self.client_sessions.discard(session)

    async def close_client_sessions(self) -> None:
        """Close every client session and delete its subscriptions, as a restart would."""
        for session in list(self.client_sessions):
            await session.close_session(True)
        self.client_sessions.clear()


class BioreactorController:
    """A bioreactor controller on the network: an OPC UA server showing a running process.

    Use as ``async with BioreactorController(clock) as controller:`` or call :meth:`start` /
    :meth:`stop` (it can be started again after a stop, on a fresh address space). With
    ``port=0`` a free port is bound at the first start and kept for restarts and later starts.
    ``name`` (the process id) names its tasks and log lines and makes the serial number.

    Starting takes a few seconds: asyncua builds the standard address space (in a worker
    thread) for every new server. A taken port is detected before that and raises
    :class:`OSError`. :meth:`stop` never hangs: whatever asyncua takes longer than
    ``_STOP_TIMEOUT_S`` for is abandoned with a warning.
    """

    def __init__(
        self,
        clock: ProcessClock,
        *,
        name: str = "bioreactor",
        host: str = "127.0.0.1",
        port: int = 0,
        update_s: float = 0.2,
        seed: int = 0,
        setpoint_limits: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        if not (math.isfinite(update_s) and update_s > 0.0):
            raise ValueError(f"update_s must be a finite number > 0, not {update_s!r}")
        self._variables = dcu.variables(clock.model.params, clock.model.perfusion)
        loops = tuple(
            loop
            for loop in SETPOINT_LOOPS
            if any(v.writable and _loop_of(v.path) == loop for v in self._variables)
        )
        limits = dict(setpoint_limits or {})
        for loop, (low, high) in limits.items():
            if loop not in loops:
                raise ValueError(f"setpoint_limits: no loop {loop!r} (loops: {loops})")
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"setpoint_limits of {loop}: need finite low <= high")
        self.setpoint_limits = limits
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} outside 0..65535")
        self.clock = clock
        self.name = name
        #: Shown in ``Identification.SerialNumber`` from the next start (a restart is a swap).
        self.serial_number = f"EMU-{name}"
        self.update_s = update_s
        self.agitation = dcu.AgitationDrive(seed=seed)
        self._host = host
        self._port = port
        self._faults: set[Fault] = set()
        self._server: Server | None = None
        self._iserver: _SessionTrackingServer | None = None
        self._node_ids: dict[str, ua.NodeId] = {}
        self._setpoints: dict[ua.NodeId, dcu.Variable] = {}
        self._listening = False
        self._listener_wanted = asyncio.Event()
        self._update_task: asyncio.Task[None] | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._last_step: float | None = None

    # ------------------------------------------------------------------ where it is

    @property
    def host(self) -> str:
        """Address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """Bound TCP port once started (the requested port before the first start)."""
        return self._port

    @property
    def endpoint(self) -> str:
        """The URL a client connects to, ``opc.tcp://host:port``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"opc.tcp://{host}:{self._port}"

    @property
    def is_serving(self) -> bool:
        """True between :meth:`start` and :meth:`stop` (also while a restart fault is on)."""
        return self._server is not None

    @property
    def is_listening(self) -> bool:
        """True while clients can connect (false during an injected restart)."""
        return self._listening

    @property
    def active_faults(self) -> frozenset[Fault]:
        """Injected faults that stay active until cleared."""
        return frozenset(self._faults)

    # ------------------------------------------------------------------ start and stop

    async def start(self) -> None:
        """Check the port, build the server and its address space, listen, start updating."""
        if self._server is not None:
            raise RuntimeError(f"bioreactor controller {self.name!r} already started")
        await self._check_port_free()
        _quiet_asyncua()
        iserver = _SessionTrackingServer()
        server = Server(iserver=iserver)
        self._server, self._iserver = server, iserver
        self._last_step = None
        self._node_ids.clear()
        self._setpoints.clear()
        try:
            await self._build(server)
            await self._publish()
            try:
                await server.start()
            except OSError as exc:
                raise OSError(
                    f"bioreactor controller cannot listen on {self._host}:{self._port}: {exc}"
                ) from exc
            if server.bserver is None or server.bserver.port == 0:
                raise OSError(f"bioreactor controller: no single port bound on {self._host!r}")
            self._port = server.bserver.port
            self._listening = True
            self._update_task = asyncio.create_task(
                self._update_forever(), name=f"bioreactor.{self.name}.opcua.update"
            )
            self._listener_task = asyncio.create_task(
                self._keep_listener(), name=f"bioreactor.{self.name}.opcua.listener"
            )
        except BaseException:
            await self.stop()
            raise
        _log.info("bioreactor.controller_started", process=self.name, endpoint=self.endpoint)

    async def stop(self) -> None:
        """Stop updating, close every session and the listener, and the server."""
        server, self._server = self._server, None
        iserver, self._iserver = self._iserver, None
        for task in (self._update_task, self._listener_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._update_task = self._listener_task = None
        self._listening = False
        if server is None or iserver is None:
            return
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await iserver.close_client_sessions()
                await server.stop()
        except TimeoutError:
            _log.warning("bioreactor.controller_stop_timeout", process=self.name)
        _log.info("bioreactor.controller_stopped", process=self.name, endpoint=self.endpoint)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ faults

    def inject(self, fault: Fault) -> None:
        """Inject ``fault`` now; see :class:`Fault` for what each one does."""
        self._faults.add(fault)
        if fault is Fault.SERVER_RESTART:
            self._listener_wanted.set()
        _log.info("bioreactor.fault_injected", process=self.name, fault=fault.value)

    def clear(self, fault: Fault) -> None:
        """Clear one fault, leaving any other injected fault active."""
        self._faults.discard(fault)
        if fault is Fault.SERVER_RESTART:
            self._listener_wanted.set()
        _log.info("bioreactor.fault_cleared", process=self.name, fault=fault.value)

    def clear_faults(self) -> None:
        """Clear every injected fault (a server that is down starts again)."""
        self._faults.clear()
        self._listener_wanted.set()
        _log.info("bioreactor.faults_cleared", process=self.name)

    # ------------------------------------------------------------------ building

    async def _check_port_free(self) -> None:
        """Fail fast on a taken port, before asyncua spends seconds building its server (and
        logs a traceback of its own); the real bind can still fail in a race and says so."""
        if self._port == 0:
            return
        loop = asyncio.get_running_loop()
        try:
            probe = await loop.create_server(asyncio.Protocol, self._host, self._port)
        except OSError as exc:
            raise OSError(
                f"bioreactor controller cannot listen on {self._host}:{self._port}: {exc}"
            ) from exc
        probe.close()
        await probe.wait_closed()

    async def _build(self, server: Server) -> None:
        server.name = "PAT Gateway emulated bioreactor controller"
        server.manufacturer_name = MANUFACTURER
        server.product_uri = NAMESPACE_URI
        await server.init()
        await server.set_application_uri(f"{NAMESPACE_URI}:{self.name}")
        server.set_endpoint(self.endpoint)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        server.allow_remote_admin(False)
        # Our update task keeps ServerStatus.CurrentTime; asyncua's own clock task would make
        # every stop wait up to a second for it.
        server.disable_clock()
        ns = await server.register_namespace(NAMESPACE_URI)

        def node_id(path: str) -> ua.NodeId:
            return _string_id(f"{ROOT}.{path}" if path else ROOT, ns)

        root = await server.nodes.objects.add_object(node_id(""), ua.QualifiedName(ROOT, ns))
        ident = await root.add_object(
            node_id("Identification"), ua.QualifiedName("Identification", ns)
        )
        for prop, text in (
            ("Manufacturer", MANUFACTURER),
            ("Model", MODEL if self.clock.model.perfusion is None else PERFUSION_MODEL),
            ("SerialNumber", self.serial_number),
            ("SoftwareRevision", SOFTWARE_REVISION),
            ("HardwareRevision", HARDWARE_REVISION),
        ):
            await ident.add_property(
                node_id(f"Identification.{prop}"),
                ua.QualifiedName(prop, ns),
                text,
                ua.VariantType.String,
            )

        # Group objects by dotted path ("" = the controller itself), made on first use.
        parents: dict[str, ua.NodeId] = {"": root.nodeid}

        async def parent_of(group: str) -> ua.NodeId:
            if group not in parents:
                above, _, name = group.rpartition(".")
                holder = server.get_node(await parent_of(above))
                obj = await holder.add_object(node_id(group), ua.QualifiedName(name, ns))
                described = dcu.GROUP_DESCRIPTIONS.get(group)
                if described is not None:
                    await obj.write_attribute(
                        AttributeIds.Description,
                        ua.DataValue(ua.Variant(ua.LocalizedText(described))),
                    )
                parents[group] = obj.nodeid
            return parents[group]

        session = server.iserver.isession
        for var in self._variables:
            group, _, leaf = var.path.rpartition(".")
            parent = await parent_of(group)
            nid = node_id(var.path)
            item = _variable_item(var, nid, parent, ua.QualifiedName(leaf, ns), self.update_s)
            (result,) = await session.add_nodes([item])
            result.StatusCode.check()
            node = server.get_node(nid)
            if var.unit is not None:
                await node.add_property(
                    _string_id(f"{ROOT}.{var.path}.EngineeringUnits", ns),
                    ua.QualifiedName("EngineeringUnits", 0),
                    ua.EUInformation(
                        NamespaceUri=dcu.UNITS_NAMESPACE_URI,
                        UnitId=var.unit.unit_id,
                        DisplayName=ua.LocalizedText(var.unit.display_name),
                        Description=ua.LocalizedText(var.unit.description),
                    ),
                    datatype=_numeric_id(ObjectIds.EUInformation),
                )
            if var.eu_range is not None:
                await node.add_property(
                    _string_id(f"{ROOT}.{var.path}.EURange", ns),
                    ua.QualifiedName("EURange", 0),
                    ua.Range(Low=var.eu_range[0], High=var.eu_range[1]),
                    datatype=_numeric_id(ObjectIds.Range),
                )
            self._node_ids[var.path] = nid
            if var.writable:
                self._setpoints[nid] = var
        server.subscribe_server_callback(CallbackType.PreWrite, self._check_setpoint_writes)
        server.subscribe_server_callback(CallbackType.PostWrite, self._apply_setpoint_writes)

    # ------------------------------------------------------------------ setpoint writes

    def _check_setpoint_writes(self, event: ServerItemCallback, _dispatcher: object) -> None:
        """PreWrite: refuse the whole request if a setpoint in it is out of its range (or comes
        without a good value); a value of another type asyncua refuses as BadTypeMismatch."""
        for item in event.request_params.NodesToWrite:
            var = self._setpoints.get(item.NodeId)
            if var is None or item.AttributeId != AttributeIds.Value:
                continue
            written = item.Value
            if written is None or written.Value is None or not _good(written.StatusCode):
                self._refuse(var, written, StatusCodes.BadWriteNotSupported)
            if written.Value.VariantType is not ua.VariantType.Double:
                continue
            value = written.Value.Value
            low, high = var.eu_range or (-math.inf, math.inf)
            if not (isinstance(value, float) and low <= value <= high):  # NaN included
                self._refuse(var, written, StatusCodes.BadOutOfRange)
            limits = self.setpoint_limits.get(_loop_of(var.path))
            if limits is not None and not limits[0] <= value <= limits[1]:
                # Accepted, clamped: the server stores (and the process gets) the limit.
                clamped = copy.copy(written)
                clamped.Value = ua.Variant(
                    min(max(value, limits[0]), limits[1]), ua.VariantType.Double
                )
                item.Value = clamped
                _log.info(
                    "bioreactor.setpoint_clamped",
                    process=self.name,
                    node=var.path,
                    value=value,
                    to=clamped.Value.Value,
                )

    def _refuse(self, var: dcu.Variable, written: ua.DataValue | None, code: int) -> NoReturn:
        _log.info(
            "bioreactor.setpoint_refused",
            process=self.name,
            node=var.path,
            value=repr(written.Value.Value if written and written.Value else None),
            status=ua.StatusCode(ua.UInt32(code)).name,
        )
        # asyncua answers the whole request with a ServiceFault carrying this code.
        raise ServiceError(code)

    def _apply_setpoint_writes(self, event: ServerItemCallback, _dispatcher: object) -> None:
        """PostWrite: every setpoint written with success goes into the process now."""
        for item, status in zip(
            event.request_params.NodesToWrite, event.response_params, strict=True
        ):
            var = self._setpoints.get(item.NodeId)
            value = _written_float(item.Value)
            if (
                var is None
                or item.AttributeId != AttributeIds.Value
                or not status.is_good()
                or value is None
            ):
                continue
            if var.path == "Agitation.SP":
                self.agitation.setpoint_rpm = value
            else:
                # The time up to now ran on the old setpoint.
                self.clock.advance()
                self.clock.model.set_setpoints(**{_SETPOINT_ARGS[_loop_of(var.path)]: value})
            _log.info("bioreactor.setpoint_written", process=self.name, node=var.path, value=value)

    # ------------------------------------------------------------------ updating

    async def _update_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.update_s)
            try:
                await self._publish()
            except Exception:
                # A bug here must show, once, without taking the server down with it.
                if not failing:
                    _log.exception("bioreactor.controller_update_failed", process=self.name)
                failing = True
            else:
                failing = False

    async def _publish(self) -> None:
        """Write every value, computed from the process now, with one timestamp."""
        server = self._server
        if server is None or Fault.FROZEN in self._faults:
            return
        now_loop = asyncio.get_running_loop().time()
        if self._last_step is not None:
            self.agitation.step(now_loop - self._last_step)
        self._last_step = now_loop
        values = dcu.readings(self.clock.snapshot(), self.clock.model.params, self.agitation)
        now = ua.DateTime.now(UTC)
        bad = Fault.BAD_VALUES in self._faults
        for var in self._variables:
            if bad:
                variant = ua.Variant()
            elif var.is_analog:
                variant = ua.Variant(float(values[var.path]), ua.VariantType.Double)
            elif var.integer:
                variant = ua.Variant(int(values[var.path]), ua.VariantType.Int32)
            else:
                variant = ua.Variant(bool(values[var.path]), ua.VariantType.Boolean)
            await server.write_attribute_value(
                self._node_ids[var.path],
                ua.DataValue(
                    variant,
                    StatusCode=_BAD if bad else _GOOD,
                    SourceTimestamp=now,
                    ServerTimestamp=now,
                ),
            )
        await self._tick_server_clock(server, now)

    async def _tick_server_clock(self, server: Server, now: ua.DateTime) -> None:
        current = ua.DataValue(
            ua.Variant(now, ua.VariantType.DateTime), SourceTimestamp=now, ServerTimestamp=now
        )
        await server.write_attribute_value(
            _numeric_id(ObjectIds.Server_ServerStatus_CurrentTime), current
        )
        status_id = _numeric_id(ObjectIds.Server_ServerStatus)
        status = server.read_attribute_value(status_id).Value
        if status is not None and isinstance(status.Value, ua.ServerStatusDataType):
            fresh = copy.copy(status.Value)
            fresh.CurrentTime = now
            await server.write_attribute_value(
                status_id, ua.DataValue(ua.Variant(fresh), SourceTimestamp=now, ServerTimestamp=now)
            )

    # ------------------------------------------------------------------ the listener

    async def _keep_listener(self) -> None:
        """Close or open the listener whenever the restart fault is injected or cleared."""
        while True:
            await self._listener_wanted.wait()
            self._listener_wanted.clear()
            server, iserver = self._server, self._iserver
            if server is None or iserver is None or server.bserver is None:
                return
            down = Fault.SERVER_RESTART in self._faults
            if down and self._listening:
                self._listening = False
                try:
                    async with asyncio.timeout(_STOP_TIMEOUT_S):
                        await iserver.close_client_sessions()
                        await server.bserver.stop()
                except TimeoutError:
                    _log.warning("bioreactor.controller_stop_timeout", process=self.name)
                _log.info("bioreactor.controller_down", process=self.name, endpoint=self.endpoint)
            elif not down and not self._listening:
                try:
                    await server.bserver.start()
                except OSError as exc:
                    _log.warning(
                        "bioreactor.controller_relisten_failed", process=self.name, error=str(exc)
                    )
                    await asyncio.sleep(_RELISTEN_RETRY_S)
                    self._listener_wanted.set()
                    continue
                self._listening = True
                _log.info("bioreactor.controller_up", process=self.name, endpoint=self.endpoint)


#: The loops with a writable SP (keys of ``setpoint_limits``); the last two in perfusion only.
SETPOINT_LOOPS = ("Temperature", "pH", "DissolvedOxygen", "Agitation", "Perfusion", "Bleed")
#: Keyword of FedBatchModel.set_setpoints for each loop's SP.
_SETPOINT_ARGS = {
    "Temperature": "temperature_C",
    "pH": "ph",
    "DissolvedOxygen": "do_pct",
    "Perfusion": "perfusion_L_per_d",
    "Bleed": "bleed_L_per_d",
}


def _loop_of(path: str) -> str:
    """The loop a variable belongs to: the first part of its path (``Perfusion.Rate.SP`` is
    the ``Perfusion`` loop's)."""
    return path.partition(".")[0]


def _variable_item(
    var: dcu.Variable,
    nid: ua.NodeId,
    parent: ua.NodeId,
    name: ua.QualifiedName,
    update_s: float,
) -> ua.AddNodesItem:
    """The AddNodes request for one variable: analog ones as AnalogItemType (with a range) or
    AnalogUnitType (without), alarms as plain Boolean data variables, counts (the media lot) as
    Int32 ones; sampling faster than the controller updates would only repeat values, so the
    minimum sampling interval says so."""
    if var.is_analog:
        type_id = ObjectIds.AnalogItemType if var.eu_range else ObjectIds.AnalogUnitType
        data_type, initial = ObjectIds.Double, ua.Variant(0.0, ua.VariantType.Double)
    elif var.integer:
        type_id = ObjectIds.BaseDataVariableType
        data_type, initial = ObjectIds.Int32, ua.Variant(0, ua.VariantType.Int32)
    else:
        type_id = ObjectIds.BaseDataVariableType
        data_type, initial = ObjectIds.Boolean, ua.Variant(False, ua.VariantType.Boolean)
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name.Name)
    attrs.Description = ua.LocalizedText(var.description)
    attrs.DataType = _numeric_id(data_type)
    attrs.Value = initial
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.AccessLevel = attrs.UserAccessLevel = _READ_WRITE if var.writable else _READ
    attrs.Historizing = False
    attrs.MinimumSamplingInterval = update_s * 1000.0
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nid
    item.BrowseName = name
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = _numeric_id(ObjectIds.HasComponent)
    item.TypeDefinition = _numeric_id(type_id)
    item.NodeAttributes = attrs
    return item


def _string_id(identifier: str, namespace: int) -> ua.NodeId:
    return ua.NodeId(ua.String(identifier), ua.Int16(namespace))


def _numeric_id(identifier: int) -> ua.NodeId:
    """A node id of the OPC UA namespace (0)."""
    return ua.NodeId(ua.Int32(identifier))


def _written_float(value: ua.DataValue | None) -> float | None:
    """The finite Double a client wrote with a good status, or ``None`` for anything else."""
    if value is None or value.Value is None or not _good(value.StatusCode):
        return None
    if value.Value.VariantType is not ua.VariantType.Double:
        return None
    number = value.Value.Value
    if not isinstance(number, float) or not math.isfinite(number):
        return None
    return number


def _good(status: ua.StatusCode | None) -> bool:
    """A status a client may write a setpoint with (none means Good)."""
    return status is None or status.is_good()


def _quiet_asyncua() -> None:
    """asyncua logs every request at info; keep its server side to warnings unless someone
    set that logger's level on purpose."""
    server_log = logging.getLogger("asyncua.server")
    if server_log.level == logging.NOTSET:
        server_log.setLevel(logging.WARNING)
