"""Emulated continuous capture: a surge tank and a 3-column periodic counter-current (3C-PCC)
Protein A skid taking a bioreactor's harvest.

``model.py`` is the pure physics (no I/O, no clock), ``server.py`` its OPC UA face (asyncua),
``plugin.py`` the ``capture_skid`` emulator: the link to the shared process run, the truth file
and the scheduled events (tracer step, server faults).
"""

from .model import BIN_H, CaptureSkid, Fraction, Harvest, Phase, SkidParams, load_step_h

__all__ = ["BIN_H", "CaptureSkid", "Fraction", "Harvest", "Phase", "SkidParams", "load_step_h"]
