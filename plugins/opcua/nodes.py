"""Node references as written in a configuration, pure: parsed at load time, resolved at connect.

Namespace *indexes* belong to a server's current run (a server may renumber its namespaces when
it restarts or loads a new model), so a configuration names namespaces by URI, directly
(``nsu=urn:…;s=…``) or through an alias declared in ``namespaces:``. Index 0, the OPC UA
namespace, is fixed by the specification and may be written as ``ns=0`` or left out. The
grammar::

    node         := "nsu=" URI ";" identifier        the namespace by URI
                  | "ns=0;" identifier | identifier  the OPC UA namespace (index 0)
                  | ALIAS ":" (identifier | TEXT)    an alias; bare TEXT is a string identifier
    identifier   := "i=" UINT32 | "s=" TEXT | "g=" GUID | "b=" BASE64
    path element := ALIAS ":" BROWSE_NAME | "0:" BROWSE_NAME

No I/O and no OPC UA library here; :mod:`.driver` turns a :class:`NodeRef` into the library's
node id once the server's namespace array is known.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "OPC_UA_NAMESPACE",
    "BrowseStep",
    "IdentifierKind",
    "NodeRef",
    "namespace_index",
    "parse_browse_step",
    "parse_node_ref",
]

OPC_UA_NAMESPACE = "http://opcfoundation.org/UA/"
"""The URI of namespace 0."""

IdentifierKind = Literal["i", "s", "g", "b"]

ALIAS_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
_ALIAS = re.compile(ALIAS_PATTERN)
_IDENTIFIER = re.compile(r"^(?P<kind>[isgb])=(?P<value>.*)$", re.DOTALL)
_NSU = re.compile(r"^nsu=(?P<uri>[^;]+);(?P<rest>.*)$", re.DOTALL)
_NS = re.compile(r"^ns=(?P<index>[0-9]+);(?P<rest>.*)$", re.DOTALL)
_UINT32_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A node named without a namespace index: by alias, by URI, or in namespace 0.

    At most one of ``alias`` and ``uri`` is set; neither means the OPC UA namespace (index 0).
    ``identifier`` is the node's identifier as text (decimal for ``i``, canonical for ``g``,
    base64 for ``b``); ``text`` is what the configuration said.
    """

    kind: IdentifierKind
    identifier: str
    alias: str | None = None
    uri: str | None = None
    text: str = ""

    def __str__(self) -> str:
        return self.text or f"{self.kind}={self.identifier}"


@dataclass(frozen=True, slots=True)
class BrowseStep:
    """One element of a browse path: a browse name in a namespace (alias, or ``None`` for 0)."""

    alias: str | None
    name: str


def parse_node_ref(text: str, aliases: Collection[str]) -> NodeRef:
    """Parse a node reference; ``ValueError`` says what is wrong (and how to write it)."""
    if not text or text != text.strip():
        raise ValueError(f"node {text!r}: empty, or surrounded by spaces")
    if m := _NSU.match(text):
        kind, identifier = _identifier(m["rest"], text)
        return NodeRef(kind, identifier, uri=m["uri"], text=text)
    if m := _NS.match(text):
        if int(m["index"]) != 0:
            raise ValueError(
                f"node {text!r}: namespace indexes can change when the server restarts; name the"
                " namespace by URI (nsu=<uri>;…) or by an alias declared in namespaces"
                " (alias:identifier)"
            )
        kind, identifier = _identifier(m["rest"], text)
        return NodeRef(kind, identifier, text=text)
    if _IDENTIFIER.match(text):
        kind, identifier = _identifier(text, text)
        return NodeRef(kind, identifier, text=text)
    alias, sep, rest = text.partition(":")
    if not sep or not _ALIAS.match(alias):
        raise ValueError(
            f"node {text!r}: write alias:identifier (e.g. ctl:Reactor.Temperature.PV),"
            " nsu=<namespace uri>;s=<identifier>, or i=<number> for the OPC UA namespace"
        )
    if alias not in aliases:
        raise ValueError(f"node {text!r}: namespace alias {alias!r} is not declared in namespaces")
    if not rest:
        raise ValueError(f"node {text!r}: no identifier after the alias")
    if _IDENTIFIER.match(rest):
        kind, identifier = _identifier(rest, text)
    else:
        kind, identifier = "s", rest
    return NodeRef(kind, identifier, alias=alias, text=text)


def parse_browse_step(text: str, aliases: Collection[str]) -> BrowseStep:
    """Parse one browse-path element, ``alias:BrowseName`` or ``0:BrowseName``."""
    alias, sep, name = text.partition(":")
    if not sep or not name:
        raise ValueError(f"browse path element {text!r}: write alias:BrowseName")
    if alias == "0":
        return BrowseStep(None, name)
    if not _ALIAS.match(alias) or alias not in aliases:
        raise ValueError(
            f"browse path element {text!r}: namespace alias {alias!r} is not declared in"
            " namespaces (0: is the OPC UA namespace)"
        )
    return BrowseStep(alias, name)


def namespace_index(
    alias: str | None, uri: str | None, namespaces: Mapping[str, str], server: list[str]
) -> int:
    """The server's current index for a namespace named by ``alias`` or ``uri`` (neither: 0).

    ``namespaces`` maps aliases to URIs; ``server`` is the server's namespace array. Raises
    ``LookupError`` naming the URI when the server does not have it.
    """
    if alias is None and uri is None:
        return 0
    wanted = namespaces[alias] if alias is not None else uri
    try:
        return server.index(str(wanted))
    except ValueError:
        named = f"{alias!r} ({wanted})" if alias is not None else str(wanted)
        raise LookupError(f"the server has no namespace {named}") from None


def _identifier(text: str, whole: str) -> tuple[IdentifierKind, str]:
    m = _IDENTIFIER.match(text)
    if m is None:
        raise ValueError(f"node {whole!r}: expected i=, s=, g= or b= after the namespace")
    kind: IdentifierKind = m["kind"]  # type: ignore[assignment]
    value: str = m["value"]
    if kind == "i":
        if not value.isdigit() or int(value) > _UINT32_MAX:
            raise ValueError(f"node {whole!r}: a numeric identifier is 0 to {_UINT32_MAX}")
        return kind, str(int(value))
    if kind == "g":
        try:
            return kind, str(uuid.UUID(value))
        except ValueError:
            raise ValueError(f"node {whole!r}: {value!r} is not a GUID") from None
    if kind == "b":
        if not value:
            raise ValueError(f"node {whole!r}: empty byte-string identifier")
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"node {whole!r}: a byte-string identifier is base64") from None
        return kind, value
    if not value:
        raise ValueError(f"node {whole!r}: empty string identifier")
    return kind, value
