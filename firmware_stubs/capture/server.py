"""OPC UA face of the emulated capture skid: an asyncua 2.1.0 server showing a :class:`CaptureSkid`.

Address space: namespace ``urn:pat-gateway:emulator:capture-skid`` (clients look its index up by
URI), object ``Objects/CaptureSkid`` with the variables of :data:`VARIABLES`, grouped in objects
(``Harvest``, ``SurgeTank``, ``Feed``, ``Column1``..``Column3``, ``Eluate``, ``Skid``,
``Emulation``). Every node id is a string id in that namespace equal to its dotted path, e.g.
``CaptureSkid.Column2.UV280``. Measurements are Double ``AnalogUnitType`` variables with the
standard ``EngineeringUnits`` property (UNECE codes: mS/cm H61, mL MLT, mL/min 41, bar BAR,
h HUR, g GRM, g/L GL, pH Q30; mAU has no code: UnitId -1, DisplayName "mAU"); states, cycle
counts and fraction numbers are Int32. Everything is read-only. Unless a fault says otherwise,
every value carries StatusCode Good and SourceTimestamp = ServerTimestamp = when it was computed.

The ``Emulation`` group is the emulator's truth (where the product is), which no real skid has:
for validation only; nothing in the gateway may use it to detect, estimate or control.

Security, asyncua's chatter and the session bookkeeping are those of the bioreactor controller
(:mod:`firmware_stubs.bioreactor.controller`, whose helpers this module reuses): None security,
anonymous ordinary users, on loopback. Faults (:class:`~firmware_stubs.bioreactor.faults.Fault`):
``server_restart`` (sessions closed, listener down, then up again on the same port),
``bad_values`` (every value BadSensorFailure), ``frozen`` (values stop updating). The skid's
process goes on whatever is injected. Tasks are named ``capture.<name>.opcua.*``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Self

import structlog
from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from ..bioreactor.controller import (
    _numeric_id,
    _quiet_asyncua,
    _SessionTrackingServer,
    _string_id,
)
from ..bioreactor.dcu import (
    GRAM_PER_LITRE,
    HOUR,
    MILLILITRE,
    PH,
    UNITS_NAMESPACE_URI,
    EngineeringUnit,
)
from ..bioreactor.faults import Fault

__all__ = ["NAMESPACE_URI", "ROOT", "VARIABLES", "CaptureSkidServer", "SkidVariable"]

_log = structlog.get_logger(__name__)

NAMESPACE_URI = "urn:pat-gateway:emulator:capture-skid"
ROOT = "CaptureSkid"

MILLISIEMENS_PER_CM = EngineeringUnit("H61", 4732465, "mS/cm", "millisiemens per centimetre")
MILLILITRE_PER_MINUTE = EngineeringUnit("41", 13361, "ml/min", "millilitre per minute")
BAR = EngineeringUnit("BAR", 4342098, "bar", "bar [unit of pressure]")
GRAM = EngineeringUnit("GRM", 4674125, "g", "gram")
#: Absorbance has no UNECE code: UnitId -1 and a display name a person reads.
MILLI_AU = EngineeringUnit("", -1, "mAU", "milli absorbance units (no UNECE Rec. 20 code)")

_STOP_TIMEOUT_S = 5.0
_RELISTEN_RETRY_S = 0.5
_BAD = ua.StatusCode(ua.UInt32(StatusCodes.BadSensorFailure))
_GOOD = ua.StatusCode(ua.UInt32(StatusCodes.Good))


@dataclass(frozen=True, slots=True)
class SkidVariable:
    """One variable below ``CaptureSkid``: an Int32 when ``unit`` is None, else a Double."""

    path: str
    unit: EngineeringUnit | None
    description: str


def _column(n: int) -> tuple[SkidVariable, ...]:
    return (
        SkidVariable(f"Column{n}.UV280", MILLI_AU, f"UV280 at column {n}'s outlet"),
        SkidVariable(f"Column{n}.Pressure", BAR, f"Pressure drop over column {n}"),
        SkidVariable(
            f"Column{n}.State",
            None,
            "0 idle/equilibrate, 1 load primary, 2 load secondary (interconnected), 3 wash,"
            " 4 elute, 5 regenerate",
        ),
        SkidVariable(f"Column{n}.Cycle", None, f"Completed cycles of column {n}"),
    )


#: Every variable, in publishing order (interface C of issue 15, plus ``Skid`` and the truth).
VARIABLES: tuple[SkidVariable, ...] = (
    SkidVariable("Harvest.Conductivity", MILLISIEMENS_PER_CM, "Surge-tank inlet (harvest)"),
    SkidVariable("SurgeTank.Volume", MILLILITRE, "Liquid in the surge tank (level-controlled)"),
    SkidVariable("Feed.Flow", MILLILITRE_PER_MINUTE, "Surge tank to the columns, process time"),
    SkidVariable("Feed.Conductivity", MILLISIEMENS_PER_CM, "Surge-tank outlet = column inlet"),
    SkidVariable("Feed.UV280", MILLI_AU, "UV280 at the column inlet"),
    *_column(1),
    *_column(2),
    *_column(3),
    SkidVariable("Eluate.Fraction", None, "Current or last eluate fraction (one per elution)"),
    SkidVariable("Eluate.Column", None, "Column (1-3) of that fraction; 0 before the first"),
    SkidVariable("Eluate.Collecting", None, "1 while the fraction is being collected"),
    SkidVariable("Eluate.UV280", MILLI_AU, "UV280 of the eluate"),
    SkidVariable("Eluate.pH", PH, "pH of the eluate"),
    SkidVariable("Eluate.Conductivity", MILLISIEMENS_PER_CM, "Conductivity of the eluate"),
    SkidVariable(
        "Skid.Waiting",
        None,
        "1 while the primary is past its switching point but no column is ready to take over"
        " (the schedule does not fit the load step): loading goes on, interconnected",
    ),
    SkidVariable("Skid.PrimaryColumn", None, "Column (1-3) now loading as primary"),
    SkidVariable("Skid.LastLoadStep", HOUR, "Duration of the last load step, process hours"),
    SkidVariable("Emulation.ProductHarvested", GRAM, "Truth: product that entered the tank"),
    SkidVariable("Emulation.ProductInTank", GRAM, "Truth: product in the surge tank"),
    SkidVariable("Emulation.ProductBound", GRAM, "Truth: product bound on the columns"),
    SkidVariable("Emulation.ProductEluted", GRAM, "Truth: product eluted into fractions"),
    SkidVariable("Emulation.ProductLost", GRAM, "Truth: product lost to waste (breakthrough)"),
    SkidVariable("Emulation.FeedTiter", GRAM_PER_LITRE, "Truth: product at the column inlet"),
    *(
        SkidVariable(f"Emulation.Column{n}.Capacity", GRAM, f"Truth: capacity of column {n}")
        for n in (1, 2, 3)
    ),
    SkidVariable("Emulation.Fraction.Mass", GRAM, "Truth: product in the current/last fraction"),
    SkidVariable(
        "Emulation.Fraction.DeviationMass", GRAM, "Truth: of it, harvested during a deviation"
    ),
    SkidVariable(
        "Emulation.Fraction.MeanHarvestTime",
        HOUR,
        "Truth: its mass-weighted mean harvest time (process hours when it left the reactor)",
    ),
)

_GROUP_DESCRIPTIONS = {
    "Emulation": "Emulator only: the true whereabouts of the product, which no real skid"
    " knows. For validating estimates; never for detection, estimation or control."
}


class CaptureSkidServer:
    """The skid on the network: an OPC UA server publishing ``read()`` every ``update_s``.

    ``read`` returns every path of :data:`VARIABLES` with its value now (the emulator brings the
    skid up to date in it). Use as an async context manager or :meth:`start` / :meth:`stop`;
    ``port=0`` binds a free port at the first start and keeps it for restarts.
    """

    def __init__(
        self,
        read: Callable[[], Mapping[str, float]],
        *,
        name: str = "capture",
        host: str = "127.0.0.1",
        port: int = 0,
        update_s: float = 0.2,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} outside 0..65535")
        self._read = read
        self.name = name
        self.update_s = update_s
        self._host = host
        self._port = port
        self._faults: set[Fault] = set()
        self._server: Server | None = None
        self._iserver: _SessionTrackingServer | None = None
        self._node_ids: dict[str, ua.NodeId] = {}
        self._listening = False
        self._listener_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"opc.tcp://{host}:{self._port}"

    @property
    def is_listening(self) -> bool:
        return self._listening

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"capture skid {self.name!r} already started")
        if self._port:
            # Fail fast on a taken port, before asyncua spends seconds building its server.
            loop = asyncio.get_running_loop()
            try:
                probe = await loop.create_server(asyncio.Protocol, self._host, self._port)
            except OSError as exc:
                raise OSError(
                    f"capture skid cannot listen on {self._host}:{self._port}: {exc}"
                ) from exc
            probe.close()
            await probe.wait_closed()
        _quiet_asyncua()
        iserver = _SessionTrackingServer()
        server = Server(iserver=iserver)
        self._server, self._iserver = server, iserver
        try:
            await self._build(server)
            await self.publish()
            try:
                await server.start()
            except OSError as exc:
                raise OSError(
                    f"capture skid cannot listen on {self._host}:{self._port}: {exc}"
                ) from exc
            if server.bserver is None or server.bserver.port == 0:
                raise OSError(f"capture skid: no single port bound on {self._host!r}")
            self._port = server.bserver.port
            self._listening = True
            self._tasks = [
                asyncio.create_task(
                    self._update_forever(), name=f"capture.{self.name}.opcua.update"
                ),
                asyncio.create_task(
                    self._keep_listener(), name=f"capture.{self.name}.opcua.listener"
                ),
            ]
        except BaseException:
            await self.stop()
            raise
        _log.info("capture.server_started", skid=self.name, endpoint=self.endpoint)

    async def stop(self) -> None:
        server, self._server = self._server, None
        iserver, self._iserver = self._iserver, None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._listening = False
        if server is None or iserver is None:
            return
        try:
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await iserver.close_client_sessions()
                await server.stop()
        except TimeoutError:
            _log.warning("capture.server_stop_timeout", skid=self.name)
        _log.info("capture.server_stopped", skid=self.name, endpoint=self.endpoint)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def inject(self, fault: Fault) -> None:
        self._faults.add(fault)
        self._listener_wanted.set()
        _log.info("capture.fault_injected", skid=self.name, fault=fault.value)

    def clear(self, fault: Fault) -> None:
        self._faults.discard(fault)
        self._listener_wanted.set()
        _log.info("capture.fault_cleared", skid=self.name, fault=fault.value)

    async def _build(self, server: Server) -> None:
        server.name = "PAT Gateway emulated capture skid"
        server.manufacturer_name = "PAT Gateway emulator"
        server.product_uri = NAMESPACE_URI
        await server.init()
        await server.set_application_uri(f"{NAMESPACE_URI}:{self.name}")
        server.set_endpoint(self.endpoint)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        server.allow_remote_admin(False)
        server.disable_clock()
        ns = await server.register_namespace(NAMESPACE_URI)
        root = await server.nodes.objects.add_object(
            _string_id(ROOT, ns), ua.QualifiedName(ROOT, ns)
        )
        groups: dict[str, ua.NodeId] = {}
        session = server.iserver.isession
        for var in VARIABLES:
            group, _, leaf = var.path.rpartition(".")
            if group not in groups:
                parent = root
                for depth, part in enumerate(group.split(".")):
                    path = ".".join(group.split(".")[: depth + 1])
                    if path not in groups:
                        obj = await parent.add_object(
                            _string_id(f"{ROOT}.{path}", ns), ua.QualifiedName(part, ns)
                        )
                        described = _GROUP_DESCRIPTIONS.get(path)
                        if described is not None:
                            await obj.write_attribute(
                                AttributeIds.Description,
                                ua.DataValue(ua.Variant(ua.LocalizedText(described))),
                            )
                        groups[path] = obj.nodeid
                    parent = server.get_node(groups[path])
            nid = _string_id(f"{ROOT}.{var.path}", ns)
            (result,) = await session.add_nodes(
                [_item(var, nid, groups[group], ua.QualifiedName(leaf, ns), self.update_s)]
            )
            result.StatusCode.check()
            if var.unit is not None:
                await server.get_node(nid).add_property(
                    _string_id(f"{ROOT}.{var.path}.EngineeringUnits", ns),
                    ua.QualifiedName("EngineeringUnits", 0),
                    ua.EUInformation(
                        NamespaceUri=UNITS_NAMESPACE_URI,
                        UnitId=var.unit.unit_id,
                        DisplayName=ua.LocalizedText(var.unit.display_name),
                        Description=ua.LocalizedText(var.unit.description),
                    ),
                    datatype=_numeric_id(ObjectIds.EUInformation),
                )
            self._node_ids[var.path] = nid

    async def _update_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.update_s)
            try:
                await self.publish()
            except Exception:
                if not failing:
                    _log.exception("capture.update_failed", skid=self.name)
                failing = True
            else:
                failing = False

    async def publish(self) -> None:
        """Write every value from ``read()`` now, with one timestamp (not under ``frozen``)."""
        server = self._server
        if server is None or Fault.FROZEN in self._faults:
            return
        values = self._read()
        now = ua.DateTime.now(UTC)
        bad = Fault.BAD_VALUES in self._faults
        for var in VARIABLES:
            if bad:
                variant = ua.Variant()
            elif var.unit is None:
                variant = ua.Variant(int(values[var.path]), ua.VariantType.Int32)
            else:
                variant = ua.Variant(float(values[var.path]), ua.VariantType.Double)
            await server.write_attribute_value(
                self._node_ids[var.path],
                ua.DataValue(
                    variant,
                    StatusCode=_BAD if bad else _GOOD,
                    SourceTimestamp=now,
                    ServerTimestamp=now,
                ),
            )

    async def _keep_listener(self) -> None:
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
                    _log.warning("capture.server_stop_timeout", skid=self.name)
                _log.info("capture.server_down", skid=self.name, endpoint=self.endpoint)
            elif not down and not self._listening:
                try:
                    await server.bserver.start()
                except OSError as exc:
                    _log.warning("capture.relisten_failed", skid=self.name, error=str(exc))
                    await asyncio.sleep(_RELISTEN_RETRY_S)
                    self._listener_wanted.set()
                    continue
                self._listening = True
                _log.info("capture.server_up", skid=self.name, endpoint=self.endpoint)


def _item(
    var: SkidVariable, nid: ua.NodeId, parent: ua.NodeId, name: ua.QualifiedName, update_s: float
) -> ua.AddNodesItem:
    if var.unit is not None:
        type_id, data_type = ObjectIds.AnalogUnitType, ObjectIds.Double
        initial = ua.Variant(0.0, ua.VariantType.Double)
    else:
        type_id, data_type = ObjectIds.BaseDataVariableType, ObjectIds.Int32
        initial = ua.Variant(0, ua.VariantType.Int32)
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name.Name)
    attrs.Description = ua.LocalizedText(var.description)
    attrs.DataType = _numeric_id(data_type)
    attrs.Value = initial
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.AccessLevel = attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
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
