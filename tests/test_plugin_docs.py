"""docs/plugins/driver.md shows the example distribution's files as they are, and the contract
as the code has it: each code block marked ``<!-- example: PATH -->`` must equal that file, every
file of the example is shown, and the page's ``InstrumentIO``/``Output`` are the API's."""

from __future__ import annotations

import inspect
import re
from typing import Any, Protocol

from conftest import REPO

import gateway.api
from gateway import Quality

PAGE = REPO / "docs" / "plugins" / "driver.md"
EXAMPLE = REPO / "examples" / "mtsics_balance"
_MARKED = re.compile(r"<!-- example: (?P<path>\S+) -->\n```\w*\n(?P<code>.*?)```\n", re.DOTALL)


def test_the_pages_code_blocks_are_the_examples_files() -> None:
    shown = {m["path"]: m["code"] for m in _MARKED.finditer(PAGE.read_text(encoding="utf-8"))}
    for path, code in shown.items():
        assert code == (REPO / path).read_text(encoding="utf-8"), f"{path} differs from the page"
    files = {
        str(p.relative_to(REPO))
        for p in EXAMPLE.rglob("*")
        if p.suffix in (".py", ".toml") and p.name != "__init__.py" and "egg-info" not in str(p)
    }
    assert files, "the example has no files"
    assert files <= set(shown), f"not on the page: {sorted(files - set(shown))}"


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
