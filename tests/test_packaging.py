"""The package a plant installs: the locks agree with pyproject.toml's ranges, the SBOM is the
application lock's, the emulators are a distribution of their own and the gateway's wheel
carries none of them (docs/install.md, decision 0042)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(REPO / "scripts"))
from sbom import Pin, read_lock  # scripts/ is no package: on the path above

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
EMULATORS = tomllib.loads((REPO / "firmware_stubs" / "pyproject.toml").read_text(encoding="utf-8"))
APP_LOCK = REPO / "requirements" / "app.lock"
TEST_LOCK = REPO / "requirements" / "test.lock"
SELF = canonicalize_name(PYPROJECT["project"]["name"])


def requirements(*extras: str) -> list[Requirement]:
    """The project's requirements with ``extras``, self-references (``pat-gateway[all]``)
    followed."""
    project = PYPROJECT["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == SELF:
                todo.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def pins(path: Path) -> dict[str, list[Pin]]:
    by_name: dict[str, list[Pin]] = {}
    for pin in read_lock(path.read_text(encoding="utf-8")):
        by_name.setdefault(pin.name, []).append(pin)
    return by_name


def applies_on_311(pin: Pin, platform: str) -> bool:
    """Whether the lock installs ``pin`` with CPython 3.11 on ``platform`` (sys_platform)."""
    if pin.marker is None:
        return True
    environment = {
        "python_version": "3.11",
        "python_full_version": "3.11.7",
        "sys_platform": platform,
        "platform_system": {"linux": "Linux", "win32": "Windows"}[platform],
        "os_name": {"linux": "posix", "win32": "nt"}[platform],
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_machine": "x86_64" if platform == "linux" else "AMD64",
    }
    return Marker(pin.marker).evaluate(environment)


@pytest.mark.parametrize(
    ("lock", "extras"), [(APP_LOCK, ("all",)), (TEST_LOCK, ("test",))], ids=["app", "test"]
)
@pytest.mark.parametrize("platform", ["linux", "win32"])
def test_the_lock_holds_every_requirement_in_its_range(
    lock: Path, extras: tuple[str, ...], platform: str
) -> None:
    locked = pins(lock)
    for requirement in requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{lock.name}: {requirement} is not locked (run scripts/lock)"
        chosen = [p for p in locked[name] if applies_on_311(p, platform)]
        assert len(chosen) == 1, f"{lock.name}: {name} on {platform}, 3.11: {chosen}"
        assert requirement.specifier.contains(chosen[0].version, prereleases=True), (
            f"{lock.name}: {name}=={chosen[0].version} is outside {requirement} (run scripts/lock)"
        )
    for name, entries in locked.items():
        assert all(len(p.hashes) >= 1 for p in entries), f"{lock.name}: {name} has no hash"


def test_the_test_lock_takes_every_shared_package_at_the_app_locks_version() -> None:
    app, test = pins(APP_LOCK), pins(TEST_LOCK)
    for name, entries in app.items():
        assert name in test, name
        assert {p.version for p in entries} <= {p.version for p in test[name]}, name


def test_no_exact_pins_in_the_package() -> None:
    for requirement in requirements("test"):
        assert not any(s.operator in ("==", "===") for s in requirement.specifier), requirement


def test_the_sbom_is_the_app_locks(tmp_path: Path) -> None:
    out = tmp_path / "sbom.json"
    made = subprocess.run(
        [sys.executable, "scripts/sbom.py", "requirements/app.lock", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    committed = REPO / "requirements" / "sbom.cdx.json"
    assert json.loads(committed.read_text()) == json.loads(out.read_text()), (
        "requirements/sbom.cdx.json is not the app lock's: run scripts/lock"
    )
    document: dict[str, Any] = json.loads(committed.read_text())
    assert (document["bomFormat"], document["specVersion"]) == ("CycloneDX", "1.6")
    components = {(c["name"], c["version"]): c for c in document["components"]}
    locked = {(p.name, p.version): p for entries in pins(APP_LOCK).values() for p in entries}
    assert components.keys() == locked.keys()
    for key, component in components.items():
        assert [h["content"] for h in component["hashes"]] == locked[key].hashes
        assert component["purl"] == f"pkg:pypi/{key[0]}@{key[1]}"
    root = document["metadata"]["component"]
    assert (root["name"], root["version"]) == (SELF, PYPROJECT["project"]["version"])
    direct = next(d for d in document["dependencies"] if d["ref"] == root["bom-ref"])["dependsOn"]
    assert "pkg:pypi/asyncua@" in " ".join(direct)


def test_the_emulators_are_a_distribution_of_their_own() -> None:
    project = EMULATORS["project"]
    assert project["name"] == "pat-gateway-emulators"
    assert project["version"] == PYPROJECT["project"]["version"]
    (gateway,) = [Requirement(r) for r in project["dependencies"]]
    assert canonicalize_name(gateway.name) == SELF
    assert gateway.specifier.contains(PYPROJECT["project"]["version"])
    # Every emulator entry point lives there, none in the gateway's distribution.
    ours = PYPROJECT["project"]["entry-points"]["pat_gateway"]
    theirs = project["entry-points"]["pat_gateway"]
    assert all(not v.startswith("firmware_stubs.") for v in ours.values())
    assert all(v.startswith("firmware_stubs.") for v in theirs.values())
    plugins = sorted(p.parent.name for p in (REPO / "firmware_stubs").glob("*/plugin.py"))
    assert sorted(v.split(".")[1] for v in theirs.values()) == plugins
    # Every package of the folder is in the wheel (the list is explicit: package-dir maps it).
    folders = sorted(
        "firmware_stubs"
        + "".join(f".{part}" for part in p.parent.relative_to(REPO / "firmware_stubs").parts)
        for p in (REPO / "firmware_stubs").rglob("__init__.py")
        if not {"__pycache__", "build"} & set(p.parts)
    )
    assert sorted(EMULATORS["tool"]["setuptools"]["packages"]) == folders
    assert (REPO / "firmware_stubs" / "LICENSE").read_bytes() == (REPO / "LICENSE").read_bytes()


def test_the_gateway_wheel_carries_no_emulators(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves build/ and *.egg-info in the tree it builds.
    source = tmp_path / "source"
    for name in ("gateway", "plugins", "firmware_stubs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    built = subprocess.run(
        [*pip, "--disable-pip-version-check", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("pat_gateway-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"gateway", "plugins"}
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    text = metadata.decode()
    assert "License-Expression: Apache-2.0" in text
    assert "Provides-Extra: opcua" in text and "Provides-Extra: console" in text
    assert 'Requires-Dist: asyncua<2.2,>=2.1; extra == "opcua"' in text
