"""Docs that match behaviour, and layers that stay apart.

* every hook is documented in the plugin guide (docs/plugins/); its first example really works;
* the README's test command is what CI runs; every shipped config validates (test_config.py);
* ``gateway/`` never imports ``plugins/`` or ``firmware_stubs/``; an emulator shares no code
  with the driver it emulates.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fake_distribution

from gateway import hookspecs

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
PLUGIN_GUIDE = (REPO / "docs" / "plugins" / "README.md").read_text(encoding="utf-8")
PLUGIN_DOCS = "\n".join(
    page.read_text(encoding="utf-8") for page in sorted((REPO / "docs" / "plugins").glob("*.md"))
)


def imported_modules(folder: Path) -> dict[Path, set[str]]:
    found: dict[Path, set[str]] = {}
    for path in folder.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
        found[path] = names
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("gateway", ("plugins", "firmware_stubs")),
        ("firmware_stubs", ("plugins",)),
        ("plugins", ("firmware_stubs",)),
    ],
)
def test_layers(folder: str, forbidden: tuple[str, ...]) -> None:
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for path, names in imported_modules(REPO / folder).items()
        for name in names
        if name.split(".")[0] in forbidden
    ]
    assert not offenders
    # The check itself sees imports (guard against a walker that finds nothing).
    assert any(imported_modules(REPO / folder).values())


def test_every_hook_is_specified_and_documented_in_the_plugin_guide() -> None:
    hooks = [name for name in dir(hookspecs) if name.startswith("pat_gateway_")]
    assert len(hooks) == 6  # drivers, sinks, processors, commands, emulators, model kinds
    for name in hooks:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"
        assert f"`{name}(registry)`" in PLUGIN_GUIDE, f"{name} missing from docs/plugins/README.md"
        assert PLUGIN_DOCS.count(name) >= 2, f"{name} has no page of its own in docs/plugins/"


def test_readme_test_command_is_what_ci_runs() -> None:
    assert "scripts/test" in README and "scripts/demo" in README
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^exec scripts/test$", ci, re.MULTILINE)
    assert "configs/demo.yaml" in (REPO / "scripts" / "demo").read_text(encoding="utf-8")


def guide_block(language: str, first_line: str) -> str:
    for block in re.findall(rf"```{language}\n(.*?)```", PLUGIN_GUIDE, re.DOTALL):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no {language} block starting with {first_line!r} in the plugin guide")


def test_plugin_guide_first_example_works(tmp_path: Path) -> None:
    site = tmp_path / "site"
    package = site / "acme_thermo"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text(guide_block("python", "# acme_thermo/plugin.py"))
    entry_points = guide_block("toml", "# pyproject.toml of the plugin")
    assert 'acme_thermo = "acme_thermo.plugin"' in entry_points
    env = fake_distribution(site, "acme-thermo", "0.1", {"acme_thermo": "acme_thermo.plugin"})
    instruments = guide_block("yaml", "instruments:\n  - id: probe")
    config = tmp_path / "acme.yaml"
    config.write_text(
        f"area: lab\nstore: {{path: {tmp_path / 'a.sqlite'}, commit_interval_ms: 20}}\n"
        + instruments.replace("poll_interval_s: 1", "poll_interval_s: 0.05")
    )

    def patgw(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert patgw("check", str(config)).returncode == 0
    assert patgw("run", str(config), "--for", "0.6").returncode == 0
    exported = patgw("export", str(config))
    samples = [json.loads(line) for line in exported.stdout.splitlines()]
    assert samples
    assert {s["unit"] for s in samples} == {"[degF]"}
    assert samples[0]["value"] == pytest.approx(68.0)  # 20 °C
    assert samples[1]["value"] == pytest.approx(68.9)  # 20.5 °C


def test_readme_is_a_quick_start_that_links_the_guides() -> None:
    assert len(README.splitlines()) <= 200
    for guide in (
        "docs/configuration.md",
        "docs/config-reference.md",
        "docs/operations.md",
        "docs/plugins/README.md",
        "docs/architecture.md",
    ):
        assert f"({guide})" in README, f"the README does not link {guide}"


def _backticked_names(text: str) -> set[str]:
    return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", text)) - {"gateway", "__all__"}


def test_the_plugin_guides_public_api_is_the_facades() -> None:
    import gateway
    import gateway.testing
    import gateway.testing.plugin

    policy = PLUGIN_GUIDE.split("**What is public API.**", 1)[1].split("Not public", 1)[0]
    core = policy.split("- `gateway`:", 1)[1].split("- `gateway.testing`:", 1)[0]
    kit = policy.split("- `gateway.testing`:", 1)[1].split("- The hooks", 1)[0]
    assert _backticked_names(core) == set(gateway.__all__)
    assert _backticked_names(kit) == set(gateway.testing.__all__) | set(
        gateway.testing.plugin.__all__
    )
