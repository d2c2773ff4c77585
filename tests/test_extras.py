"""Extras per capability: a plugin whose modules are missing is listed and documented, and a
configuration that uses it fails ``patgw check`` naming the plugin, the modules and the extra.

The built-in plugins are checked as a core-only install sees them: a ``patgw`` subprocess in
which the optional libraries cannot be imported (a ``sitecustomize`` on its path puts a finder
first that says "no such module" for them, as an environment without them would). The CI script
(scripts/ci_envs) does the same in a real venv built from the wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, fake_distribution, patgw, write_config
from pydantic import BaseModel, ConfigDict

from gateway import (
    ConfigError,
    MissingDependencyError,
    PluginContext,
    PluginKind,
    Registry,
    build_registry,
    hookimpl,
    load_plan,
)

PAT_GATEWAY_API = "1.0"

#: What a core-only install lacks (the top-level modules of the extras' distributions).
OPTIONAL = ("asyncua", "pymodbus", "serial", "mqtt5", "paho", "google.protobuf", "scipy", "sklearn")

ABSENT = "pat_gateway_test_absent_module"

BLOCKER = """
import importlib.abc
import sys

BLOCKED = {blocked!r}


class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _Absent())
"""


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Thermo:
    def __init__(self, options: Options, context: PluginContext) -> None:
        pass

    def channels(self) -> list[Any]:
        return []

    async def run(self, io: Any) -> None:
        pass


#: The entry points of pat-gateway-emulators, which a core-only install does not have.
EMULATORS = ("feed_pump", "bioreactor", "raman", "capacitance_probe", "capture_skid")


def without_optional(tmp_path: Path) -> dict[str, str]:
    """The environment of a ``patgw`` subprocess that cannot import the optional libraries and
    does not load the emulators' distribution (installed in this venv, editable)."""
    folder = tmp_path / "blocker"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(BLOCKER.format(blocked=OPTIONAL))
    path = os.pathsep.join([str(folder), str(REPO)])
    return {**os.environ, "PYTHONPATH": path, "PATGW_DISABLE_PLUGINS": ",".join(EMULATORS)}


def thermo_config(tmp_path: Path, driver: str = "thermo") -> Path:
    return write_config(
        tmp_path / "gateway.yaml",
        {
            "area": "lab",
            "store": {"path": str(tmp_path / "store.sqlite")},
            "instruments": [{"id": "t1", "driver": driver, "signals": []}],
        },
    )


def test_a_driver_whose_modules_are_missing_names_its_extra(tmp_path: Path) -> None:
    class Plugin:
        @hookimpl
        def pat_gateway_register_drivers(self, registry: Registry) -> None:
            registry.add_driver("thermo", Thermo, Options, requires=(ABSENT,), extra="thermo")

    registry = build_registry([Plugin()], entry_points=False)
    registration = registry.get(PluginKind.DRIVER, "thermo")
    assert registration is not None
    assert registration.missing() == (ABSENT,)
    with pytest.raises(ConfigError) as caught:
        load_plan(thermo_config(tmp_path), registry)
    assert caught.value.problems == (
        f"instruments[0].driver: driver 'thermo' of instrument 't1' needs the extra [thermo]"
        f" ({ABSENT} is not installed)",
    )


def test_a_vendor_distribution_is_named_in_the_pip_command(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "c18_needy.py").write_text(
        textwrap.dedent(f"""
        from pydantic import BaseModel
        from gateway import hookimpl

        PAT_GATEWAY_API = "1.0"


        class Options(BaseModel):
            pass


        def build(options, context):
            import {ABSENT}


        @hookimpl
        def pat_gateway_register_drivers(registry):
            registry.add_driver("thermo", build, Options, requires=("{ABSENT}",), extra="probe")
        """)
    )
    env = fake_distribution(site, "acme-thermo", "2.0", {"needy": "c18_needy"})
    listed = patgw("plugins", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout) if r["name"] == "thermo")
    assert (row["requires"], row["extra"], row["missing"]) == ([ABSENT], "probe", [ABSENT])
    assert row["needs"] == f"[probe] missing: {ABSENT}"
    checked = patgw("check", str(thermo_config(tmp_path)), env=env)
    assert checked.returncode == 2
    assert checked.stderr.strip() == (
        "instruments[0].driver: driver 'thermo' of instrument 't1' needs the extra [probe]"
        f" ({ABSENT} is not installed): pip install 'acme-thermo[probe]'"
    )


def test_a_factory_raising_missing_dependency_is_told_the_same_way(tmp_path: Path) -> None:
    def build(options: Options, context: PluginContext) -> Thermo:
        raise MissingDependencyError(("usb",), "usb")

    def importing(options: Options, context: PluginContext) -> Thermo:
        import pat_gateway_test_absent_module  # type: ignore[import-not-found]  # noqa: F401

        return Thermo(options, context)

    def broken(options: Options, context: PluginContext) -> Thermo:
        import tests_own_package_typo  # type: ignore[import-not-found]  # noqa: F401

        return Thermo(options, context)

    broken.__module__ = "tests_own_package_typo.plugin"  # its own package, misspelt

    class Plugin:
        @hookimpl
        def pat_gateway_register_drivers(self, registry: Registry) -> None:
            registry.add_driver("thermo", build, Options)
            registry.add_driver("importing", importing, Options, extra="fast")
            registry.add_driver("broken", broken, Options, extra="fast")

    registry = build_registry([Plugin()], entry_points=False)
    with pytest.raises(ConfigError) as caught:
        load_plan(thermo_config(tmp_path), registry)
    assert caught.value.problems == (
        "instruments[0].options: driver 'thermo' of instrument 't1' needs the extra [usb]"
        " (usb is not installed)",
    )
    with pytest.raises(ConfigError) as caught:
        load_plan(thermo_config(tmp_path, "importing"), registry)
    assert caught.value.problems == (
        "instruments[0].options: driver 'importing' of instrument 't1' needs the extra [fast]"
        f" ({ABSENT} is not installed)",
    )
    # A module of the plugin's own package that fails to import is its bug, not an extra.
    with pytest.raises(ConfigError) as caught:
        load_plan(thermo_config(tmp_path, "broken"), registry)
    (problem,) = caught.value.problems
    assert problem.startswith("instruments[0].options: plugin failed to build it:")
    assert "ModuleNotFoundError" in problem and "needs the extra" not in problem


@pytest.mark.parametrize("requires", ["asyncua", ("not a module",), (3,)])
def test_requires_must_be_module_names(requires: object) -> None:
    class Plugin:
        @hookimpl
        def pat_gateway_register_drivers(self, registry: Registry) -> None:
            registry.add_driver("thermo", Thermo, Options, requires=requires)  # type: ignore[arg-type]

    registry = build_registry([Plugin()], entry_points=False)
    assert registry.get(PluginKind.DRIVER, "thermo") is None
    (refusal,) = registry.refused
    assert "driver 'thermo': requires must be a sequence of module names" in str(refusal)


def test_core_only_lists_every_built_in_plugin_with_what_it_needs(tmp_path: Path) -> None:
    env = without_optional(tmp_path)
    listed = patgw("plugins", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(listed.stdout)}
    assert not [r for r in rows.values() if r["refused"]]
    needs = {key: row["needs"] for key, row in rows.items() if row["distribution"] == "pat-gateway"}
    assert needs == {
        ("command", "genealogy"): "-",
        ("driver", "modbus"): "[modbus] missing: pymodbus",
        ("driver", "ocean_obp"): "[serial] missing: serial",
        ("driver", "opcua"): "[opcua] missing: asyncua",
        ("model", "pca"): "-",
        ("model", "pls"): "[fit] missing: scipy, sklearn",
        ("model", "rtd"): "[fit] missing: scipy",
        ("model", "twin"): "[fit] missing: scipy",
        ("processor", "anomaly"): "-",
        ("processor", "pi_control"): "-",
        ("processor", "pls"): "[softsensor] missing: scipy",
        ("processor", "rtd_trace"): "-",
        ("processor", "twin"): "-",
        ("sink", "jsonl_file"): "-",
        ("sink", "mqtt"): "[mqtt] missing: mqtt5, paho.mqtt",
        ("sink", "opcua_server"): "[opcua] missing: asyncua",
        ("sink", "sparkplug"): "[mqtt] missing: mqtt5, paho.mqtt, google.protobuf",
    }
    # Their options models are there without the libraries: the schema names every plugin.
    schema = patgw("schema", env=env)
    assert schema.returncode == 0, schema.stderr
    for name in ("modbus", "opcua", "ocean_obp", "mqtt", "sparkplug", "opcua_server", "pls"):
        assert f'"{name}"' in schema.stdout


def test_core_only_check_of_the_demo_names_each_extra_and_the_emulators(tmp_path: Path) -> None:
    checked = patgw("check", str(REPO / "configs" / "demo.yaml"), env=without_optional(tmp_path))
    assert checked.returncode == 2
    lines = checked.stderr.splitlines()
    assert (
        "instruments[1].driver: driver 'opcua' of instrument 'controller' needs the extra"
        " [opcua] (asyncua is not installed): pip install 'pat-gateway[opcua]'"
    ) in lines
    assert (
        "instruments[0].driver: driver 'modbus' of instrument 'feed_pump' needs the extra"
        " [modbus] (pymodbus is not installed): pip install 'pat-gateway[modbus]'"
    ) in lines
    assert (
        "processors[0].type: processor 'pls' of processor 'softsensor' needs the extra"
        " [softsensor] (scipy is not installed): pip install 'pat-gateway[softsensor]'"
    ) in lines


def test_model_fit_without_the_fit_extra_says_what_to_install(tmp_path: Path) -> None:
    fitted = patgw("model", "fit", "twin", "--help", env=without_optional(tmp_path))
    assert fitted.returncode == 2
    assert fitted.stderr.strip() == (
        "patgw model fit: model kind 'twin' needs the extra [fit] (scipy is not installed):"
        " pip install 'pat-gateway[fit]'"
    )


def test_an_emulator_type_nobody_registers_points_at_the_emulators_distribution(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path / "gateway.yaml",
        {
            "area": "lab",
            "store": {"path": str(tmp_path / "store.sqlite")},
            "emulators": [{"id": "pump", "type": "feed_pump", "options": {}}],
        },
    )
    env = without_optional(tmp_path)
    checked = patgw("check", str(config), env=env)
    assert checked.returncode == 2
    assert "unknown emulator 'feed_pump'" in checked.stderr
    assert "pip install pat-gateway-emulators" in checked.stderr
    emulated = patgw("emulate", "feed_pump", env=env)
    assert emulated.returncode == 2
    assert "the distribution pat-gateway-emulators" in emulated.stderr


def test_every_module_of_the_core_imports_without_the_optional_libraries(tmp_path: Path) -> None:
    # gateway.testing.plugin is pytest's (the pytest11 entry point): pytest is there in a test
    # run, and it is not one of the extras' libraries.
    script = textwrap.dedent("""
        import importlib, pkgutil, gateway
        every = pkgutil.walk_packages(gateway.__path__, "gateway.")
        names = [m.name for m in every if m.name != "gateway.__main__"]  # it runs patgw
        for name in names:
            importlib.import_module(name)
        print(len(names))
    """)
    imported = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=without_optional(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    assert int(imported.stdout) > 50


def test_a_required_module_whose_package_raises_on_import_is_a_problem_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Installed but broken: its package raises at import (a vendor's bug, a bad native build).
    # Finding ``broken_vendor_lib.io`` imports ``broken_vendor_lib`` first.
    package = tmp_path / "lib" / "broken_vendor_lib"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('raise RuntimeError("libvendor.so: wrong ELF class")\n')
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))

    class Plugin:
        @hookimpl
        def pat_gateway_register_drivers(self, registry: Registry) -> None:
            registry.add_driver(
                "thermo", Thermo, Options, requires=("broken_vendor_lib.io",), extra="thermo"
            )
            registry.add_driver("cold", Thermo, Options)

    registry = build_registry([Plugin()], entry_points=False)
    registration = registry.get(PluginKind.DRIVER, "thermo")
    assert registration is not None
    assert registration.missing() == ("broken_vendor_lib.io",)
    with pytest.raises(ConfigError) as caught:
        load_plan(thermo_config(tmp_path), registry)
    [problem] = caught.value.problems
    assert problem.startswith("instruments[0].driver: driver 'thermo' of instrument 't1' needs")
    assert "broken_vendor_lib.io" in problem
    # The other plugins keep working.
    assert load_plan(thermo_config(tmp_path, "cold"), registry).instruments


def test_a_disabled_instrument_whose_extra_is_missing_is_a_warning(tmp_path: Path) -> None:
    # A plant keeps its Raman configured but disabled while it is away for service, on a PC
    # installed without [serial]: the gateway starts, and says what enabling it will need.
    class Plugin:
        @hookimpl
        def pat_gateway_register_drivers(self, registry: Registry) -> None:
            registry.add_driver("thermo", Thermo, Options, requires=(ABSENT,), extra="thermo")
            registry.add_driver("cold", Thermo, Options)

    config = write_config(
        tmp_path / "gateway.yaml",
        {
            "area": "lab",
            "store": {"path": str(tmp_path / "store.sqlite")},
            "instruments": [
                {"id": "away", "driver": "thermo", "enabled": False, "signals": []},
                {"id": "t2", "driver": "cold", "signals": []},
            ],
        },
    )
    plan = load_plan(config, build_registry([Plugin()], entry_points=False))
    assert [i.config.id for i in plan.instruments] == ["t2"]
    assert plan.warnings == (
        f"instruments[0].driver: driver 'thermo' of instrument 'away' needs the extra [thermo]"
        f" ({ABSENT} is not installed) (disabled: needed once enabled)",
    )
