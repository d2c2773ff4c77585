"""PAT Gateway core: the public API for configurations, plugins and embedders.

Everything a driver, sink or emulator plugin needs is importable from here; the modules behind
it are private and may change.
"""

from .api import (
    Channel,
    CommandCall,
    ConfigPath,
    Driver,
    Emulator,
    ForwardingSink,
    InstrumentIO,
    Output,
    PluginContext,
    PollingDriver,
    Processor,
    ProcessorCommand,
    ProcessorIO,
    Secret,
    SecretRef,
    SerialPort,
    Sink,
    TargetLimits,
    WritableDriver,
    resolve_config_path,
    validation_context,
)
from .control import WriteOutcome
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
    float32_decimal,
    historical_json,
    sample_to_json,
    sample_to_json_dict,
)
from .passwords import hash_password, is_password_hash, verify_password
from .pluginmanager import ENTRY_POINT_GROUP, PLUGIN_API_VERSION, build_registry
from .registry import PluginKind, PluginRefusal, Registry
from .spectra import SpectralAxis, Spectrum
from .timefmt import duration_argument, format_ns, now_ns, parse_iso_ns
from .units import Conversion, compile_conversion, validate_ucum
from .yamltext import load_yaml

__all__ = [
    "ENTRY_POINT_GROUP",
    "PLUGIN_API_VERSION",
    "Channel",
    "CommandCall",
    "ConfigError",
    "ConfigPath",
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
    "PluginRefusal",
    "PollingDriver",
    "Processor",
    "ProcessorCommand",
    "ProcessorIO",
    "Quality",
    "Refusal",
    "Registry",
    "Sample",
    "SamplesRefusedError",
    "Secret",
    "SecretRef",
    "SerialPort",
    "Signal",
    "SignalKind",
    "Sink",
    "SpectralAxis",
    "Spectrum",
    "StoreError",
    "StoreFullError",
    "TargetLimits",
    "UnitError",
    "WritableDriver",
    "WriteOutcome",
    "WriteRefusedError",
    "build_registry",
    "compile_conversion",
    "duration_argument",
    "float32_decimal",
    "format_ns",
    "hash_password",
    "historical_json",
    "hookimpl",
    "is_password_hash",
    "load_plan",
    "load_yaml",
    "now_ns",
    "parse_iso_ns",
    "resolve_config_path",
    "sample_to_json",
    "sample_to_json_dict",
    "validate_ucum",
    "validation_context",
    "verify_password",
]
