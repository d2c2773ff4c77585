"""Emulated in-line capacitance (viable biomass) probe behind a real Modbus TCP server.

For gateway integration tests, demos (``patgw emulate capacitance_probe``) and the docs'
register map. ``ProbeModel`` is the pure physics (permittivity of the viable biovolume,
conductivity, the probe's own VCD from its cell factor), ``CapacitanceProbeEmulator`` serves it
over Modbus TCP with fault injection (``Fault``), and ``REGISTER_MAP_DOC`` is the register map
as markdown.
"""

from .faults import Fault
from .model import Culture, ProbeModel, ProbeParams, Reading
from .registers import REGISTER_MAP_DOC
from .server import CapacitanceProbeEmulator, MeasuredCulture

__all__ = [
    "REGISTER_MAP_DOC",
    "CapacitanceProbeEmulator",
    "Culture",
    "Fault",
    "MeasuredCulture",
    "ProbeModel",
    "ProbeParams",
    "Reading",
]
