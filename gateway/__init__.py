"""PAT Gateway core: the public API for configurations, plugins and embedders.

Everything a driver, sink or emulator plugin needs is importable from here; the modules behind
it are private and may change.
"""

from .api import (
    Channel,
    Driver,
    Emulator,
    ForwardingSink,
    InstrumentIO,
    Output,
    PluginContext,
    PollingDriver,
    Processor,
    ProcessorIO,
    Secret,
    SecretRef,
    Sink,
)
from .errors import (
    ConfigError,
    GatewayError,
    InstrumentError,
    PluginError,
    Refusal,
    SamplesRefusedError,
    StoreError,
    StoreFullError,
    UnitError,
    WriteRefusedError,
)
from .hookspecs import hookimpl
from .loader import Plan, load_plan
from .model import (
    Quality,
    Sample,
    Signal,
    SignalKind,
    historical_json,
    sample_to_json,
    sample_to_json_dict,
)
from .passwords import hash_password, is_password_hash, verify_password
from .pluginmanager import ENTRY_POINT_GROUP, build_registry
from .registry import PluginKind, Registry
from .spectra import SpectralAxis, Spectrum
from .timefmt import format_ns, now_ns, parse_iso_ns
from .units import Conversion, compile_conversion, validate_ucum

__all__ = [
    "ENTRY_POINT_GROUP",
    "Channel",
    "ConfigError",
    "Conversion",
    "Driver",
    "Emulator",
    "ForwardingSink",
    "GatewayError",
    "InstrumentError",
    "InstrumentIO",
    "Output",
    "Plan",
    "PluginContext",
    "PluginError",
    "PluginKind",
    "PollingDriver",
    "Processor",
    "ProcessorIO",
    "Quality",
    "Refusal",
    "Registry",
    "Sample",
    "SamplesRefusedError",
    "Secret",
    "SecretRef",
    "Signal",
    "SignalKind",
    "Sink",
    "SpectralAxis",
    "Spectrum",
    "StoreError",
    "StoreFullError",
    "UnitError",
    "WriteRefusedError",
    "build_registry",
    "compile_conversion",
    "format_ns",
    "hash_password",
    "historical_json",
    "hookimpl",
    "is_password_hash",
    "load_plan",
    "now_ns",
    "parse_iso_ns",
    "sample_to_json",
    "sample_to_json_dict",
    "validate_ucum",
    "verify_password",
]
