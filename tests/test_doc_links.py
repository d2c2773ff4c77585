"""Every relative link in the project's Markdown files resolves: the file exists and, when the
link names an anchor, the target file has a heading that GitHub gives that anchor. Moving a
section to another file then breaks this test, not a reader's click."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from conftest import REPO

_SKIPPED = {".venv", ".git", "node_modules", "build", "dist", ".pytest_cache"}
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\((?P<target><[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$", re.MULTILINE)


def markdown_files() -> list[Path]:
    return sorted(
        path
        for path in REPO.rglob("*.md")
        if not _SKIPPED.intersection(path.relative_to(REPO).parts)
        and not any(part.endswith(".egg-info") for part in path.parts)
    )


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped (``-`` and
    ``_`` kept), spaces turned into ``-``."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link keeps its text
    kept = "".join(c for c in title.lower() if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for match in _HEADING.finditer(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = anchor(match["title"])
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    found.update(re.findall(r'<a (?:name|id)="([^"]+)"', path.read_text(encoding="utf-8")))
    return found


def broken_links(path: Path) -> list[str]:
    broken = []
    for match in _LINK.finditer(_prose(path.read_text(encoding="utf-8"))):
        target = match["target"].strip("<>")
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(REPO)}: {target}"
        if not linked.exists():
            broken.append(f"{where} (no such file)")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{where} (no heading with that anchor)")
    return broken


def test_github_anchors_are_computed_as_github_does() -> None:
    assert anchor("Soft sensor (`type: pls`) and `patgw model`") == (
        "soft-sensor-type-pls-and-patgw-model"
    )
    assert anchor("Residence-time traceability (`type: rtd_trace`)") == (
        "residence-time-traceability-type-rtd_trace"
    )
    assert anchor("Set-up: two commands") == "set-up-two-commands"


def test_every_relative_link_and_anchor_in_the_markdown_files_resolves() -> None:
    files = markdown_files()
    assert REPO / "README.md" in files and len(files) > 10
    broken = [line for path in files for line in broken_links(path)]
    assert not broken, "\n".join(broken)
