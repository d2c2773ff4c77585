"""The plugin contract's bad input: each a clear error naming the plugin and its distribution,
and the other plugins keep working. Real plugin objects, registered through the plugin manager:
inline ones, and distributions installed in ``tmp_path`` (a ``.dist-info`` folder on the path,
as pip leaves one) found through the ``pat_gateway`` entry-point group."""

from __future__ import annotations

import functools
import json
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import fake_distribution, patgw
from pydantic import BaseModel, ConfigDict

import gateway
from gateway import (
    PLUGIN_API_VERSION,
    ConfigError,
    PluginContext,
    PluginKind,
    Registry,
    Sample,
    build_registry,
    hookimpl,
    load_plan,
)

# The plugin API the inline plugins of this module are written for (on the module of a plugin
# object's class: see test_an_api_version_on_the_module_of_a_plugin_objects_class_counts).
PAT_GATEWAY_API = "1.0"


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


GOOD = """
from pydantic import BaseModel
from gateway import hookimpl

PAT_GATEWAY_API = "1.0"


class Options(BaseModel):
    pass


class Thermo:
    def __init__(self, options, context):
        pass

    def channels(self):
        return []

    async def run(self, io):
        pass


@hookimpl
def pat_gateway_register_drivers(registry):
    registry.add_driver("{name}", Thermo, Options, "a good driver")
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on ``sys.path`` that distributions are installed into; the modules imported
    from it are forgotten afterwards."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith("c18_"):
            del sys.modules[name]


def install(site: Path, dist: str, version: str, modules: dict[str, str]) -> None:
    """Install distribution ``dist`` into ``site``: one module and one entry point (of the same
    name) per item of ``modules``."""
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))
    fake_distribution(site, dist, version, {name: name for name in modules})


def reasons(registry: Registry) -> dict[str, str]:
    """Each refused plugin's name → the whole line an operator reads."""
    return {r.plugin: str(r) for r in registry.refused}


# --- misspelt hooks -------------------------------------------------------------------------


def test_a_misspelt_hook_refuses_that_plugin_by_name_and_distribution(site: Path) -> None:
    install(
        site,
        "acme-thermo",
        "2.1",
        {
            "c18_misspelt": GOOD.format(name="misspelt").replace(
                "def pat_gateway_register_drivers", "def pat_gateway_register_driver"
            ),
            "c18_good": GOOD.format(name="good_thermo"),
        },
    )
    with structlog.testing.capture_logs() as logs:
        registry = build_registry()
    assert reasons(registry) == {
        "c18_misspelt": "plugin 'c18_misspelt' (acme-thermo 2.1): unknown hook"
        " pat_gateway_register_driver (misspelt? the hooks are pat_gateway_register_drivers,"
        " pat_gateway_register_sinks, pat_gateway_register_processors,"
        " pat_gateway_register_emulators, pat_gateway_register_commands,"
        " pat_gateway_register_model_kinds)"
    }
    assert {
        "event": "plugin.refused",
        "log_level": "error",
        "refusal": reasons(registry)["c18_misspelt"],
    } in logs
    # The others keep working: the same distribution's other plugin, and the built-in ones.
    good = registry.get(PluginKind.DRIVER, "good_thermo")
    assert good is not None
    assert (good.plugin, good.distribution, good.version) == ("c18_good", "acme-thermo", "2.1")
    assert registry.get(PluginKind.DRIVER, "modbus") is not None


def test_a_hook_function_not_marked_as_one_is_refused() -> None:
    class Forgetful:
        PAT_GATEWAY_API = "1.0"

        def pat_gateway_register_drivers(self, registry: Registry) -> None:
            raise AssertionError("never called")

    registry = build_registry([Forgetful()], entry_points=False)
    assert reasons(registry) == {
        "Forgetful": "plugin 'Forgetful' (not from an installed distribution):"
        " pat_gateway_register_drivers is not marked @gateway.hookimpl (it would never be called)"
    }


def test_a_hook_with_arguments_the_contract_does_not_give_is_refused() -> None:
    class Greedy:
        PAT_GATEWAY_API = "1.0"

        @hookimpl
        def pat_gateway_register_drivers(self, registry: Registry, site: str) -> None:
            raise AssertionError("never called")

    registry = build_registry([Greedy(), GoodInline()], entry_points=False)
    [refusal] = registry.refused
    assert refusal.plugin == "Greedy"
    assert "its hooks do not match the contract" in refusal.reason and "site" in refusal.reason
    assert registry.names(PluginKind.DRIVER) == ["inline"]


# --- hooks through pluggy, provenance -------------------------------------------------------


class Driverish:
    def __init__(self, options: Options, context: PluginContext) -> None:
        pass

    def channels(self) -> Sequence[gateway.Channel]:
        return []

    async def run(self, io: gateway.InstrumentIO) -> None:
        pass


class GoodInline:
    PAT_GATEWAY_API = "1.0"

    @hookimpl
    def pat_gateway_register_drivers(self, registry: Registry) -> None:
        registry.add_driver("inline", Driverish, Options)


def test_hooks_run_through_pluggys_hook_callers() -> None:
    """A new-style hook wrapper is a generator: called as a plain function (as the manager did
    to learn each plugin's provenance), its body never runs; pluggy's hook caller runs it."""

    class Wrapping:
        PAT_GATEWAY_API = "1.0"

        @hookimpl(wrapper=True)
        def pat_gateway_register_drivers(self, registry: Registry) -> Any:
            result = yield
            registry.add_driver("wrapped", Driverish, Options, "registered after the others")
            return result

    registry = build_registry([Wrapping(), GoodInline()], entry_points=False)
    wrapped = registry.get(PluginKind.DRIVER, "wrapped")
    assert wrapped is not None and wrapped.plugin == "Wrapping"
    inline = registry.get(PluginKind.DRIVER, "inline")
    assert inline is not None and inline.plugin == "GoodInline"
    assert registry.refused == []


def test_a_hook_that_raises_refuses_its_plugin_only() -> None:
    class Failing:
        PAT_GATEWAY_API = "1.0"

        @hookimpl
        def pat_gateway_register_sinks(self, registry: Registry) -> None:
            raise RuntimeError("vendor SDK licence not found")

        @hookimpl
        def pat_gateway_register_drivers(self, registry: Registry) -> None:
            registry.add_driver("half", Driverish, Options)

    registry = build_registry([Failing(), GoodInline()], entry_points=False)
    assert reasons(registry) == {
        "Failing": "plugin 'Failing' (not from an installed distribution): its hook"
        " pat_gateway_register_sinks raised RuntimeError('vendor SDK licence not found')"
    }
    # Nothing of a refused plugin is used, not even what it registered before failing.
    assert registry.names(PluginKind.DRIVER) == ["inline"]


# --- the plugin-API version -----------------------------------------------------------------


def test_the_gateway_states_its_plugin_api_version() -> None:
    major, minor = PLUGIN_API_VERSION.split(".")
    assert major.isdigit() and minor.isdigit()


@pytest.mark.parametrize(
    ("declared", "why"),
    [
        (
            '"2.0"',
            f"written for plugin API 2.0, this gateway supports {PLUGIN_API_VERSION} (major 1):"
            " use a version of the plugin made for it",
        ),
        (
            '"0.3"',
            f"written for plugin API 0.3, this gateway supports {PLUGIN_API_VERSION} (major 1):"
            " use a version of the plugin made for it",
        ),
        (
            '"1.99"',
            f"written for plugin API 1.99, newer than this gateway's {PLUGIN_API_VERSION}:"
            " upgrade pat-gateway",
        ),
        ("1", f"PAT_GATEWAY_API = 1 is not a version such as '{PLUGIN_API_VERSION}'"),
        ('"one"', f"PAT_GATEWAY_API = 'one' is not a version such as '{PLUGIN_API_VERSION}'"),
    ],
)
def test_an_incompatible_api_version_is_refused_by_name(
    site: Path, declared: str, why: str
) -> None:
    module = GOOD.format(name="future").replace(
        'PAT_GATEWAY_API = "1.0"', f"PAT_GATEWAY_API = {declared}"
    )
    install(
        site, "acme-future", "3.0", {"c18_future": module, "c18_fine": GOOD.format(name="fine")}
    )
    registry = build_registry()
    assert reasons(registry) == {"c18_future": f"plugin 'c18_future' (acme-future 3.0): {why}"}
    assert registry.get(PluginKind.DRIVER, "future") is None
    assert registry.get(PluginKind.DRIVER, "fine") is not None
    assert registry.get(PluginKind.SINK, "mqtt") is not None


@pytest.mark.parametrize("declared", ['"1"', '"1.0"'])
def test_a_compatible_api_version_loads(site: Path, declared: str) -> None:
    module = GOOD.format(name="same").replace('"1.0"', declared)
    install(site, "acme-same", "1.0", {"c18_same": module})
    registration = build_registry().get(PluginKind.DRIVER, "same")
    assert registration is not None and registration.api == declared.strip('"')


def test_a_plugin_declaring_no_api_version_loads_with_a_warning_saying_why(site: Path) -> None:
    module = GOOD.format(name="old").replace('PAT_GATEWAY_API = "1.0"', "")
    install(site, "acme-old", "0.9", {"c18_old": module})
    with structlog.testing.capture_logs() as logs:
        registry = build_registry()
    registration = registry.get(PluginKind.DRIVER, "old")
    assert registration is not None and registration.api is None
    [warning] = [e for e in logs if e["event"] == "plugin.api_undeclared"]
    assert warning["log_level"] == "warning"
    assert (warning["plugin"], warning["distribution"]) == ("c18_old", "acme-old")
    assert "built before the plugin API was versioned" in warning["why"]


def test_an_api_version_on_the_module_of_a_plugin_objects_class_counts() -> None:
    class Plain:  # declares nothing itself: this test module does
        @hookimpl
        def pat_gateway_register_drivers(self, registry: Registry) -> None:
            registry.add_driver("plain", Driverish, Options)

    registration = build_registry([Plain()], entry_points=False).get(PluginKind.DRIVER, "plain")
    assert registration is not None and registration.api == "1.0"


def test_every_built_in_plugin_declares_this_api_version() -> None:
    registry = build_registry()
    assert registry.refused == []
    built_in = [r for r in registry if r.distribution in ("pat-gateway", "pat-gateway-emulators")]
    assert len({r.plugin for r in built_in}) >= 15
    assert {r.api for r in built_in} == {PLUGIN_API_VERSION}


# --- two distributions, one name ------------------------------------------------------------


def test_a_name_two_distributions_register_is_refused_for_both(site: Path, tmp_path: Path) -> None:
    two_drivers = GOOD.format(name="balance") + textwrap.dedent("""
        @hookimpl
        def pat_gateway_register_sinks(registry):
            registry.add_sink("c18_nowhere", Nowhere, Options)


        class Nowhere:
            def __init__(self, options, context):
                pass

            async def __aenter__(self):
                return self

            async def __aexit__(self, *exc_info):
                pass

            async def send(self, samples):
                pass
    """)
    install(site, "mettler-sics", "1.4", {"c18_mettler": two_drivers})
    install(site, "acme-scales", "0.2", {"c18_acme": GOOD.format(name="balance")})
    registry = build_registry()
    clash = (
        "driver 'balance' is registered by plugin 'c18_acme' (acme-scales 0.2) and plugin"
        " 'c18_mettler' (mettler-sics 1.4); neither is used (uninstall one, or block one with"
        " PATGW_DISABLE_PLUGINS)"
    )
    clash_reversed = clash.replace(
        "'c18_acme' (acme-scales 0.2) and plugin 'c18_mettler' (mettler-sics 1.4)",
        "'c18_mettler' (mettler-sics 1.4) and plugin 'c18_acme' (acme-scales 0.2)",
    )
    assert registry.unavailable(PluginKind.DRIVER, "balance") in (clash, clash_reversed)
    assert {(r.plugin, r.kind, r.name) for r in registry.refused} == {
        ("c18_mettler", PluginKind.DRIVER, "balance"),
        ("c18_acme", PluginKind.DRIVER, "balance"),
    }
    # The rest of both plugins, and every other plugin, keep working.
    assert registry.get(PluginKind.SINK, "c18_nowhere") is not None
    assert registry.get(PluginKind.DRIVER, "modbus") is not None

    config = tmp_path / "scale.yaml"
    config.write_text(
        textwrap.dedent(f"""
        area: lab
        store: {{path: {tmp_path / "s.sqlite"}}}
        instruments:
          - {{id: scale, driver: balance}}
        """)
    )
    with pytest.raises(ConfigError) as caught:
        load_plan(config, registry)
    [problem] = caught.value.problems
    assert problem.startswith("instruments[0].driver: unknown driver 'balance' (known: ")
    assert problem.endswith(registry.unavailable(PluginKind.DRIVER, "balance") or "?")


def test_a_plugin_name_two_distributions_announce_loads_neither(site: Path) -> None:
    install(site, "acme-one", "1.0", {"c18_same_name": GOOD.format(name="one")})
    other = site / "other"
    other.mkdir()
    (other / "c18_same_name_b.py").write_text(GOOD.format(name="two"))
    fake_distribution(other, "acme-two", "2.0", {"c18_same_name": "c18_same_name_b"})
    sys.path.insert(0, str(other))
    try:
        registry = build_registry()
    finally:
        sys.path.remove(str(other))
    lines = {str(r) for r in registry.refused}
    both = "the plugin name 'c18_same_name' is announced by acme-two 2.0 and acme-one 1.0"
    assert lines == {
        f"plugin 'c18_same_name' (acme-two 2.0): {both}; neither is loaded (uninstall one of them)",
        f"plugin 'c18_same_name' (acme-one 1.0): {both}; neither is loaded (uninstall one of them)",
    }
    assert registry.get(PluginKind.DRIVER, "one") is None
    assert registry.get(PluginKind.DRIVER, "two") is None
    assert registry.get(PluginKind.DRIVER, "modbus") is not None


# --- broken options models ------------------------------------------------------------------


class NotAModel:
    """Looks like options, but is no pydantic model."""

    speed: float = 1.0


class Unfinished(BaseModel):
    """A field of a type that is never defined: pydantic cannot build its schema."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    calibration: Calibration  # type: ignore[name-defined]  # noqa: F821


def registering(options_model: Any) -> object:
    class Broken:
        PAT_GATEWAY_API = "1.0"

        @hookimpl
        def pat_gateway_register_drivers(self, registry: Registry) -> None:
            registry.add_driver("broken", Driverish, options_model)

    return Broken()


def test_an_options_model_that_is_no_pydantic_model_is_refused_naming_the_plugin() -> None:
    registry = build_registry([registering(NotAModel), GoodInline()], entry_points=False)
    assert reasons(registry) == {
        "Broken": "plugin 'Broken' (not from an installed distribution): driver 'broken': the"
        f" options model must be a pydantic model class, not {NotAModel!r}"
    }
    assert registry.names(PluginKind.DRIVER) == ["inline"]


def test_an_options_model_whose_schema_fails_is_refused_naming_the_plugin(site: Path) -> None:
    module = GOOD.format(name="unfinished").replace(
        "class Options(BaseModel):\n    pass", "class Options(BaseModel):\n    tare: 'Missing'"
    )
    install(site, "acme-unfinished", "0.1", {"c18_unfinished": module})
    registry = build_registry([registering(Unfinished)])
    lines = reasons(registry)
    assert set(lines) == {"c18_unfinished", "Broken"}
    assert lines["c18_unfinished"].startswith(
        "plugin 'c18_unfinished' (acme-unfinished 0.1): driver 'unfinished': the options model"
        " Options is broken: "
    )
    assert "Missing" in lines["c18_unfinished"]
    assert "options model Unfinished is broken" in lines["Broken"]
    assert "Calibration" in lines["Broken"]
    assert registry.get(PluginKind.DRIVER, "modbus") is not None


# --- capabilities ---------------------------------------------------------------------------


class SyncForward:
    """Declares store-and-forward, but ``forward`` is not a coroutine function."""

    def __init__(self, options: Options, context: PluginContext) -> None:
        pass

    async def __aenter__(self) -> SyncForward:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass

    def forward(self, samples: Sequence[Sample], historical: bool) -> None:
        pass


class TooManyLanes(SyncForward):
    max_concurrent_forwards = 0

    async def forward(self, samples: Sequence[Sample], historical: bool) -> None:  # type: ignore[override]
        pass


class AsyncBind(TooManyLanes):
    """A binding sink whose ``bind`` the runtime would call without awaiting it."""

    max_concurrent_forwards = 2

    async def bind(self, signals: Sequence[gateway.Signal]) -> None:
        pass


class HalfWritable(Driverish):
    async def write(self, channel: str, value: float) -> None:
        pass


class AsyncProcess:
    def __init__(self, options: Options, context: PluginContext) -> None:
        pass

    def inputs(self) -> Sequence[str]:
        return []

    def channels(self) -> Sequence[gateway.Channel]:
        return []

    def bind(self, inputs: object) -> None:
        pass

    async def process(self, sample: Sample, io: object) -> None:
        pass


class NoRun:
    def __init__(self, options: Options, context: PluginContext) -> None:
        pass

    def channels(self) -> Sequence[gateway.Channel]:
        return []


@pytest.mark.parametrize(
    ("kind", "factory", "why"),
    [
        (
            "sink",
            SyncForward,
            "sink 'bad' (SyncForward) forward must be a coroutine function (async def)",
        ),
        (
            "sink",
            TooManyLanes,
            "sink 'bad' (TooManyLanes) max_concurrent_forwards must be a whole number >= 1, not 0",
        ),
        ("sink", AsyncBind, "sink 'bad' (AsyncBind) bind must be a plain function, not async def"),
        (
            "driver",
            HalfWritable,
            "driver 'bad' (HalfWritable) defines write() without read_back() (a writable driver"
            " has both)",
        ),
        ("driver", NoRun, "driver 'bad' (NoRun) has no run()"),
        (
            "processor",
            AsyncProcess,
            "processor 'bad' (AsyncProcess) process must be a plain function, not async def",
        ),
    ],
)
def test_a_malformed_capability_is_refused_at_registration(
    kind: str, factory: type, why: str
) -> None:
    class Vendor:
        PAT_GATEWAY_API = "1.0"

        @hookimpl
        def pat_gateway_register_drivers(self, registry: Registry) -> None:
            if kind == "driver":
                registry.add_driver("bad", factory, Options)

        @hookimpl
        def pat_gateway_register_sinks(self, registry: Registry) -> None:
            if kind == "sink":
                registry.add_sink("bad", factory, Options)

        @hookimpl
        def pat_gateway_register_processors(self, registry: Registry) -> None:
            if kind == "processor":
                registry.add_processor("bad", factory, Options)

    registry = build_registry([Vendor(), GoodInline()], entry_points=False)
    assert reasons(registry) == {
        "Vendor": f"plugin 'Vendor' (not from an installed distribution): {why}"
    }
    assert registry.names(PluginKind.DRIVER) == ["inline"]


def _logged(
    forward: Callable[..., Awaitable[None]],
) -> Callable[..., Awaitable[None]]:
    @functools.wraps(forward)
    def wrapper(*args: Any, **kwargs: Any) -> Awaitable[None]:
        return forward(*args, **kwargs)

    return wrapper


class DecoratedForward(SyncForward):
    """A decorator that keeps ``__wrapped__`` around an async ``forward``: still a forward."""

    @_logged
    async def forward(self, samples: Sequence[Sample], historical: bool) -> None:  # type: ignore[override]
        pass


def test_capabilities_found_by_name_keep_working(tmp_path: Path) -> None:
    class Vendor:
        PAT_GATEWAY_API = "1.0"

        @hookimpl
        def pat_gateway_register_sinks(self, registry: Registry) -> None:
            registry.add_sink("decorated", DecoratedForward, Options)

    registry = build_registry([Vendor()], entry_points=False)
    assert registry.refused == []
    config = tmp_path / "c.yaml"
    config.write_text(
        f"area: a\nstore: {{path: {tmp_path / 's.sqlite'}}}\nsinks: [{{id: up, type: decorated}}]\n"
    )
    [sink] = load_plan(config, registry).sinks  # no contract problem
    assert type(sink.instance) is DecoratedForward


class Lost:
    """An emulator that says where it listens, as a number instead of ``host:port``."""

    endpoint = 5020

    def __init__(self, options: Options, context: PluginContext) -> None:
        pass

    async def __aenter__(self) -> Lost:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass


def build_sync_forward(options: Options, context: PluginContext) -> SyncForward:
    return SyncForward(options, context)


def build_lost(options: Options, context: PluginContext) -> Lost:
    return Lost(options, context)


@pytest.mark.parametrize(
    ("section", "kind", "factory", "why"),
    [
        ("sinks", "sink", build_sync_forward, "forward must be a coroutine function (async def)"),
        ("emulators", "emulator", build_lost, "endpoint is not a str (int)"),
    ],
)
def test_a_factory_function_is_checked_on_what_it_builds(
    tmp_path: Path, section: str, kind: str, factory: Callable[..., object], why: str
) -> None:
    class Vendor:
        @hookimpl
        def pat_gateway_register_sinks(self, registry: Registry) -> None:
            if kind == "sink":  # a function: nothing to see until it has built something
                registry.add_sink("late", factory, Options)  # type: ignore[arg-type]

        @hookimpl
        def pat_gateway_register_emulators(self, registry: Registry) -> None:
            if kind == "emulator":
                registry.add_emulator("late", factory, Options)  # type: ignore[arg-type]

    registry = build_registry([Vendor()], entry_points=False)  # accepted: a function
    config = tmp_path / "c.yaml"
    config.write_text(
        f"area: a\nstore: {{path: {tmp_path / 's.sqlite'}}}\n{section}: [{{id: x, type: late}}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_plan(config, registry)
    assert caught.value.problems == (
        f"{section}[0].type: {kind} 'late' of plugin 'Vendor' (not from an installed"
        f" distribution) breaks the plugin contract: {why}",
    )


# --- what an operator sees ------------------------------------------------------------------


def test_patgw_plugins_shows_the_api_version_and_the_refused_plugins_with_why(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "c18_cli_future.py").write_text(GOOD.format(name="future").replace('"1.0"', '"2.0"'))
    (site / "c18_cli_good.py").write_text(GOOD.format(name="cli_good"))
    env = fake_distribution(
        site,
        "acme-cli",
        "5.0",
        {"c18_cli_future": "c18_cli_future", "c18_cli_good": "c18_cli_good"},
    )
    listing = patgw("plugins", "--json", env=env)
    assert listing.returncode == 1  # something is refused: a script notices
    rows = {(r["kind"], r["name"]): r for r in json.loads(listing.stdout)}
    why = f"written for plugin API 2.0, this gateway supports {PLUGIN_API_VERSION} (major 1):"
    assert rows[("plugin", "c18_cli_future")]["refused"].startswith(why)
    assert rows[("plugin", "c18_cli_future")]["distribution"] == "acme-cli"
    assert rows[("driver", "cli_good")]["api"] == "1.0"
    assert rows[("driver", "cli_good")]["refused"] is None
    assert rows[("driver", "modbus")]["api"] == PLUGIN_API_VERSION

    text = patgw("plugins", env=env)
    assert text.returncode == 1
    header, columns = text.stdout.splitlines()[:2]
    assert header == f"plugin API of this gateway: {PLUGIN_API_VERSION}"
    assert columns.split()[:3] == ["NAME", "KIND", "API"]
    assert "future" not in text.stdout
    assert f"patgw: refused plugin 'c18_cli_future' (acme-cli 5.0): {why}" in text.stderr


def test_patgw_check_names_the_refused_plugin_a_config_needed(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "c18_chk.py").write_text(
        GOOD.format(name="chk").replace(
            "pat_gateway_register_drivers", "pat_gateway_register_drivrs"
        )
    )
    env = fake_distribution(site, "acme-chk", "1.1", {"c18_chk": "c18_chk"})
    config = tmp_path / "c.yaml"
    config.write_text(
        f"area: a\nstore: {{path: {tmp_path / 's.sqlite'}}}\n"
        "instruments: [{id: scale, driver: chk}]\n"
    )
    result = patgw("check", str(config), env=env)
    assert result.returncode == 2
    assert "instruments[0].driver: unknown driver 'chk'" in result.stderr
    assert (
        "refused plugins (see 'patgw plugins'): plugin 'c18_chk' (acme-chk 1.1): unknown hook"
        " pat_gateway_register_drivrs" in result.stderr
    )


OLD_COMMAND = """
import json
from gateway import hookimpl


def configure(parser):
    return lambda args: print(json.dumps({"answer": 42})) or 0


@hookimpl
def pat_gateway_register_commands(registry):
    registry.add_command("c18-answer", configure, "Prints JSON")
"""


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_what_loading_plugins_logs_never_mixes_into_a_commands_output(
    tmp_path: Path, log_format: str
) -> None:
    """A plugin command's output is data (JSON for a script): the warning about a plugin without
    an API version, logged while plugins load, goes to standard error in the asked format."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "c18_old_command.py").write_text(OLD_COMMAND)
    env = fake_distribution(site, "acme-old", "0.5", {"c18_old_command": "c18_old_command"})
    result = patgw("c18-answer", "--log-format", log_format, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"answer": 42}
    [warning] = [line for line in result.stderr.splitlines() if "plugin.api_undeclared" in line]
    if log_format == "json":
        assert json.loads(warning)["plugin"] == "c18_old_command"
