"""Write a CycloneDX 1.6 SBOM (JSON) of a hashed requirements lock: ``python scripts/sbom.py
requirements/app.lock requirements/sbom.cdx.json`` (scripts/lock runs it).

Our own small generator rather than cyclonedx-bom's ``cyclonedx-py requirements``: it reads the
lock alone (no network, no installed environment), and its output is a pure function of the
lock and pyproject.toml (no time stamp, a serial number derived from the lock's content), so the
committed SBOM changes exactly when the lock does and a test can regenerate and compare it.
Each component: name, version, package URL, the SHA-256 of every artifact the lock admits, the
environment marker when the lock has one; the dependency graph from the lock's ``# via`` lines.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


@dataclass
class Pin:
    """One ``name==version`` of the lock."""

    name: str
    version: str
    marker: str | None
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)

    @property
    def purl(self) -> str:
        return f"pkg:pypi/{self.name}@{self.version}"


def normalize(name: str) -> str:
    """A distribution name as PyPI compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(text: str) -> list[Pin]:
    """The pins of a ``uv pip compile --generate-hashes`` (or pip-compile) output."""
    pins: list[Pin] = []
    in_via = False
    for raw in text.splitlines():
        line = raw.strip()
        match = _PIN.match(line)
        if match is not None:
            pins.append(Pin(normalize(match[1]), match[2], match[3]))
            in_via = False
        elif pins and (found := _HASH.search(line)):
            pins[-1].hashes.append(found[1])
        elif pins and line.startswith("# via"):
            rest = line.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                pins[-1].via.append(rest)
        elif pins and in_via and line.startswith("#   "):
            pins[-1].via.append(line.removeprefix("#").strip())
        else:
            in_via = False
    return pins


def sbom(lock_text: str, lock_name: str) -> dict[str, Any]:
    """The CycloneDX document of ``lock_text``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    app = normalize(project["name"])
    root_ref = f"pkg:pypi/{app}@{project['version']}"
    pins = read_lock(lock_text)
    refs: dict[str, list[str]] = {}
    for pin in pins:
        refs.setdefault(pin.name, []).append(pin.purl)
    depends: dict[str, set[str]] = {root_ref: set()}
    for pin in pins:
        for who in pin.via:
            name = normalize(who.split()[0])
            parents = [root_ref] if name == app else refs.get(name, [])
            for parent in parents:
                depends.setdefault(parent, set()).add(pin.purl)
    components = []
    for pin in pins:
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": pin.purl,
            "name": pin.name,
            "version": pin.version,
            "purl": pin.purl,
            "hashes": [{"alg": "SHA-256", "content": h} for h in pin.hashes],
        }
        if pin.marker:
            component["properties"] = [{"name": "python:environment-marker", "value": pin.marker}]
        components.append(component)
    digest = hashlib.sha256(lock_text.encode()).hexdigest()
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{lock_name}#{digest}')}",
        "version": 1,
        "metadata": {
            "tools": {"components": [{"type": "application", "name": "scripts/sbom.py"}]},
            "component": {
                "type": "application",
                "bom-ref": root_ref,
                "name": app,
                "version": project["version"],
                "description": project["description"],
                "licenses": [{"license": {"id": project["license"]}}],
                "purl": root_ref,
            },
            "properties": [
                {"name": "source-lock", "value": lock_name},
                {"name": "source-lock-sha256", "value": digest},
            ],
        },
        "components": components,
        "dependencies": [
            {"ref": ref, "dependsOn": sorted(depends.get(ref, ()))}
            for ref in [root_ref, *(pin.purl for pin in pins)]
        ],
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python scripts/sbom.py LOCK OUT", file=sys.stderr)
        return 2
    lock, out = Path(argv[0]), Path(argv[1])
    document = sbom(lock.read_text(encoding="utf-8"), lock.as_posix())
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
