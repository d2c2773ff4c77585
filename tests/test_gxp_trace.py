"""docs/validation/gxp-trace.md cannot rot: every test node id it names exists (the file, and a
test function of that name in it), every requirement it must cover has a row, and every row
that says "addressed" or "partly" names at least one test."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from conftest import REPO

TRACE = REPO / "docs" / "validation" / "gxp-trace.md"
_NODE_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[[^\]`]*\])?`")

#: What the trace must have a row for (issue 18, scope 4).
REQUIRED_ROWS = [
    *(f"§11.10({letter})" for letter in "abcdefghijk"),
    "§11.50",
    "§11.70",
    "§11.100",
    "§11.200",
    "§11.300",
    "| 4.8 ",
    "| 7.1 ",
    "| 7.2 ",
    "| 9 ",
    "| 12.1 ",
    "| 12.3 ",
    "| 12.4 ",
    "| 14 ",
    *(
        f"| {attribute} |"
        for attribute in (
            "Attributable",
            "Legible",
            "Contemporaneous",
            "Original",
            "Accurate",
            "Complete",
            "Consistent",
            "Enduring",
            "Available",
        )
    ),
]


@cache
def defined_tests(path: Path) -> frozenset[str]:
    """The names of the test functions defined at the top level of a test file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    )


def test_every_test_the_trace_names_exists() -> None:
    named = _NODE_ID.findall(TRACE.read_text(encoding="utf-8"))
    assert len(named) > 50, "the trace names too few tests: is the node id form still matched?"
    missing = [
        f"{file}::{name}"
        for file, name in named
        if not (REPO / file).is_file() or name not in defined_tests(REPO / file)
    ]
    assert not missing, "named in the GxP trace but not found:\n" + "\n".join(missing)


def test_every_requirement_has_a_row_and_every_claim_a_test() -> None:
    text = TRACE.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    for required in REQUIRED_ROWS:
        assert any(row.startswith(required) or required in row[:20] for row in rows), required
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if len(cells) != 4 or cells[2] == "status":
            continue
        status, tests = cells[2], cells[3]
        assert status in ("addressed", "partly", "not addressed"), row[:80]
        if status != "not addressed":
            assert _NODE_ID.search(tests), f"{row[:60]}...: {status} but names no test"
