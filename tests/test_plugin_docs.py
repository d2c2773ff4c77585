"""The plugin pages (docs/plugins/) show the example distributions' files as they are, and the
contract as the code has it: each code block marked ``<!-- example: PATH -->`` must equal that
file, every file of each example is shown on its pages, and driver.md's
``InstrumentIO``/``Output`` are the API's."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, Protocol

import pytest
from conftest import REPO

import gateway.api
from gateway import Quality

PAGES = REPO / "docs" / "plugins"
PAGE = PAGES / "driver.md"
#: Each example distribution and the pages that, together, show every one of its files.
EXAMPLES = {
    "mtsics_balance": ("driver.md",),
    "plant_extras": ("README.md", "sink.md", "processor.md", "command.md"),
}
_MARKED = re.compile(r"<!-- example: (?P<path>\S+) -->\n```\w*\n(?P<code>.*?)```\n", re.DOTALL)


def shown_on(page: Path) -> dict[str, str]:
    """The example files ``page`` shows: path → the code block."""
    return {m["path"]: m["code"] for m in _MARKED.finditer(page.read_text(encoding="utf-8"))}


@pytest.mark.parametrize("page", sorted(PAGES.glob("*.md")), ids=lambda p: p.name)
def test_the_pages_code_blocks_are_the_examples_files(page: Path) -> None:
    for path, code in shown_on(page).items():
        assert code == (REPO / path).read_text(encoding="utf-8"), f"{path} differs from the page"


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_every_file_of_an_example_is_on_its_pages(example: str) -> None:
    shown: dict[str, str] = {}
    for page in EXAMPLES[example]:
        shown.update(shown_on(PAGES / page))
    files = {
        str(p.relative_to(REPO))
        for p in (REPO / "examples" / example).rglob("*")
        if p.suffix in (".py", ".toml") and p.name != "__init__.py" and "egg-info" not in str(p)
    }
    assert files, "the example has no files"
    assert files <= set(shown), f"not on its pages: {sorted(files - set(shown))}"


def test_the_pages_publish_and_instrument_io_are_the_apis() -> None:
    text = PAGE.read_text(encoding="utf-8")
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if "class Output" in b
    )
    namespace: dict[str, Any] = {"Protocol": Protocol, "Any": Any, "Quality": Quality}
    exec(block, namespace)  # the page's own protocols
    for name, methods in (("Output", ["publish"]), ("InstrumentIO", ["output", "connected"])):
        for method in methods:
            page = inspect.signature(getattr(namespace[name], method))
            api = inspect.signature(getattr(getattr(gateway.api, name), method))
            assert str(page) == str(api), f"{name}.{method}: page {page}, API {api}"
    assert namespace["InstrumentIO"].__annotations__ == {"instrument_id": "str"}
