"""YAML as the gateway reads it: safe, and a key given twice in one mapping is an error.

PyYAML keeps the last of two equal keys silently, so a pasted second ``store:`` or ``users:``
block would replace the first without a word. Every configuration, profile and command-line
YAML value goes through :func:`load_yaml` instead of ``yaml.safe_load``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

__all__ = ["load_yaml"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing a mapping that names a key twice.

    Keys are compared as constructed values, so ``1`` and ``0x1``, or ``yes`` and ``true``,
    are the same key, as they would be in the resulting dict. Keys a merge (``<<: *base``)
    brings in may be overridden by keys written beside it: that is what a merge is for.
    """

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        if isinstance(node, MappingNode):
            first: dict[Hashable, Node] = {}
            for key_node, _value in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if earlier is not key_node:
                    raise ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r}: first given on line {earlier.start_mark.line + 1},"
                        f" again on line {key_node.start_mark.line + 1}",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """The Python value of the YAML document ``text`` (safe tags only).

    Raises ``yaml.YAMLError`` for invalid YAML, including a mapping with a duplicate key
    (its ``problem_mark`` is the second occurrence; the message names both lines).
    """
    return yaml.load(text, Loader=_UniqueKeyLoader)
