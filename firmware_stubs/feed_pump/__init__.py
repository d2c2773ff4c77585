"""Emulated peristaltic feed pump behind a real Modbus TCP server.

For gateway integration tests, demos (``patgw emulate feed_pump``) and the
docs' register map. ``PumpModel`` is the pure physics, ``FeedPumpEmulator``
serves it over Modbus TCP with fault injection (``Fault``), and
``REGISTER_MAP_DOC`` is the register map as markdown.
"""

from .faults import Fault
from .model import PumpModel
from .registers import REGISTER_MAP_DOC
from .server import FeedPumpEmulator

__all__ = ["REGISTER_MAP_DOC", "Fault", "FeedPumpEmulator", "PumpModel"]
