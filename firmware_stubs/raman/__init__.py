"""Emulated Raman spectrometer speaking the Ocean Binary Protocol (OBP).

For gateway integration tests, demos (``patgw emulate raman``) and anyone who needs realistic
cell-culture spectra without an instrument. ``spectrum`` is the pure physics (pixel axis,
bands, noise), ``obp`` the emulator's own framing (deliberately not shared with the gateway's
driver), ``device`` the firmware's answers, and :class:`RamanEmulator` serves it on a
pseudo-terminal or over TCP with fault injection (:class:`Fault`).
"""

from .device import RamanDevice
from .faults import Fault
from .server import RamanEmulator
from .spectrum import DEFAULT_COMPOSITION, Composition, SpectrumSynthesizer

__all__ = [
    "DEFAULT_COMPOSITION",
    "Composition",
    "Fault",
    "RamanDevice",
    "RamanEmulator",
    "SpectrumSynthesizer",
]
