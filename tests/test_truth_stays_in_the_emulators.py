"""The emulators' true process values exist to validate, never to detect, estimate or control
(issue 14): no code outside firmware_stubs/ names them, and no configured processor reads a
signal served from them (the controller's ``Emulation.*`` nodes and its ``Pumps.FeedTotal``,
the volume the culture truly received). Issue 15: nor does anything outside the emulators name
or read the capture skid's ``truth_file`` (where each eluate fraction's product truly came
from)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from gateway import build_registry, load_plan

REPO = Path(__file__).resolve().parents[1]
#: What names an emulator truth in code: its OPC UA node names, the hub that hands out the
#: process model, and the demo's *_true signals.
TRUTH = re.compile(
    r"Emulation\.|FeedTotal|delivered_ml|truth_file|(?<![A-Za-z])hub\.lookup"
    r"|\b(?!store_true)\w+_true\b"
)


def truth_references(folder: Path) -> list[str]:
    """Every string constant (docstrings aside) and identifier in ``folder``'s Python files
    that names an emulator truth, as ``path:line: text``."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            text = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in docstrings:
                    text = node.value
            elif isinstance(node, ast.Name):
                text = node.id
            elif isinstance(node, ast.Attribute):
                text = f"x.{node.attr}"
            if text is not None and TRUTH.search(text):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {text[:80]!r}")
    return found


@pytest.mark.parametrize("folder", ["gateway", "plugins"])
def test_no_code_outside_the_emulators_names_their_truth(folder: str) -> None:
    assert truth_references(REPO / folder) == []


def test_the_scan_finds_the_truth_where_it_lives() -> None:
    # Guard against a scan that can find nothing: the emulator serves these nodes.
    found = truth_references(REPO / "firmware_stubs")
    assert any("Emulation" in line for line in found)
    assert any("truth_file" in line for line in found)


def truth_signals(config: Path) -> tuple[set[str], list[tuple[str, str]]]:
    """The signals a configuration reads from emulator truth, and each processor's inputs."""
    plan = load_plan(config, build_registry())
    truth: set[str] = set()
    for instrument in plan.instruments:
        nodes = instrument.config.options.get("nodes", [])
        by_name = {node["name"]: str(node.get("node", "")) for node in nodes}
        for signal_plan in instrument.signals:
            if TRUTH.search(by_name.get(signal_plan.channel, "")):
                truth.add(signal_plan.signal.id)
    reads = [
        (pp.config.id, signal.id)
        for pp in plan.processors
        for signal in [*pp.inputs.values(), *([pp.age] if pp.age is not None else [])]
    ]
    return truth, reads


CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_no_configured_processor_reads_an_emulator_truth(config: Path) -> None:
    truth, reads = truth_signals(config)
    assert [(p, s) for p, s in reads if s in truth] == []


def test_the_demo_serves_truth_to_compare_with() -> None:
    # Guard: the check above sees the truth signals of the demo (its glucose_true).
    truth, reads = truth_signals(REPO / "configs" / "demo.yaml")
    assert "reactor1/controller/glucose_true" in truth
    assert reads  # and the soft sensor's input


def truth_file_readers(config: Path) -> list[str]:
    """Where a configuration hands an emulator's truth file to anything else: every option
    string of an instrument, processor or sink that names the file a ``capture_skid``
    emulator writes (relative paths resolved as the loader does, against the file's folder)."""
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    folder = config.parent

    def resolved(text: str) -> Path:
        path = Path(text).expanduser()
        return (path if path.is_absolute() else folder / path).resolve()

    truth = {
        resolved(str(e["options"]["truth_file"]))
        for e in raw.get("emulators") or []
        if e.get("type") == "capture_skid" and (e.get("options") or {}).get("truth_file")
    }

    def strings(value: object, where: str) -> list[tuple[str, str]]:
        if isinstance(value, str):
            return [(where, value)]
        if isinstance(value, dict):
            return [s for k, v in value.items() for s in strings(v, f"{where}.{k}")]
        if isinstance(value, list):
            return [s for i, v in enumerate(value) for s in strings(v, f"{where}[{i}]")]
        return []

    found = []
    for section in ("instruments", "processors", "sinks"):
        for i, block in enumerate(raw.get(section) or []):
            for where, text in strings(block.get("options"), f"{section}[{i}].options"):
                if truth and resolved(text) in truth:
                    found.append(where)
    return found


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_no_configured_plugin_reads_a_truth_file(config: Path) -> None:
    assert truth_file_readers(config) == []


def test_the_truth_file_check_finds_a_reader(tmp_path: Path) -> None:
    # Guard against a check that can find nothing: a sink handed the skid's truth file.
    skid = {"process": "reactor", "truth_file": "data/truth.jsonl"}
    raw = {
        "emulators": [{"id": "capture", "type": "capture_skid", "options": skid}],
        "sinks": [{"id": "replay", "type": "x", "options": {"path": "./data/truth.jsonl"}}],
    }
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert truth_file_readers(config) == ["sinks[0].options.path"]
