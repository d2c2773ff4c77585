"""The members a plugin's objects must have, per kind, and the optional capabilities the runtime
finds by name (``forward``, ``bind``, ``write``...), checked for their form.

The runtime discovers optional capabilities with ``getattr`` (a sink that defines ``forward``
is a :class:`~gateway.api.ForwardingSink`), so a plugin written before the protocols existed
keeps working. What it cannot do is notice a capability declared wrongly: a ``forward`` written
without ``async`` returns ``None`` where the runtime awaits, a processor's ``async def process``
returns a coroutine that nobody awaits (nothing is ever derived). Those are found here, when a
class factory is registered and again when the loader builds an instance.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["capability_problems"]

# (member, required, must be a coroutine function): the protocols of gateway.api, by kind (a
# PluginKind value: registry.py imports this module).
_MEMBERS: dict[str, tuple[tuple[str, bool, bool], ...]] = {
    "driver": (
        ("channels", True, False),
        ("run", True, True),
        ("write", False, True),  # WritableDriver
        ("read_back", False, True),
        ("commands", False, False),  # CommandDriver
        ("command", False, True),
    ),
    "sink": (
        ("__aenter__", True, True),
        ("__aexit__", True, True),
        ("send", False, True),
        ("forward", False, True),  # ForwardingSink
        ("reachable", False, True),
        ("bind", False, False),  # BindingSink
        ("publish_anchor", False, True),
        ("device_identified", False, False),
    ),
    "processor": (
        ("inputs", True, False),
        ("channels", True, False),
        ("bind", True, False),
        ("process", True, False),
        ("run", False, True),
        ("controls", False, False),
        ("bind_controls", False, False),
        ("commands", False, False),
        ("status", False, False),
    ),
    "emulator": (
        ("__aenter__", True, True),
        ("__aexit__", True, True),
        ("process_time_h", False, False),
    ),
}


def _is_async(function: object) -> bool:
    # A decorator that keeps __wrapped__ (functools.wraps) around an async def still counts.
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        inspect.unwrap(function)  # type: ignore[arg-type]
    )


def capability_problems(kind: str, target: object) -> list[str]:
    """What is wrong with ``target`` (a class a factory is, or an object a factory built) as a
    ``kind``: one line per missing required member or malformed capability; empty if none.

    Kinds without objects (commands, model kinds) have nothing to check here."""
    members = _MEMBERS.get(kind)
    if members is None:
        return []
    problems: list[str] = []
    for name, required, must_be_async in members:
        # The runtime treats a member that is None (or absent) as "not offered".
        member = getattr(target, name, None)
        if member is None:
            if required:
                problems.append(f"has no {name}()")
            continue
        if not callable(member):
            problems.append(f"{name} is not callable ({type(member).__name__})")
        elif must_be_async and not _is_async(member):
            problems.append(f"{name} must be a coroutine function (async def)")
        elif not must_be_async and _is_async(member):
            problems.append(f"{name} must be a plain function, not async def")
    if kind == "sink":
        offers = {name for name in ("send", "forward") if getattr(target, name, None) is not None}
        if not offers:
            problems.append("has neither send() nor forward()")
        problems.extend(_concurrency_problem(getattr(target, "max_concurrent_forwards", None)))
    if kind == "driver":
        offers = {name for name in ("write", "read_back") if getattr(target, name, None)}
        if len(offers) == 1:
            [half] = offers
            other = "read_back" if half == "write" else "write"
            problems.append(f"defines {half}() without {other}() (a writable driver has both)")
        offers = {name for name in ("commands", "command") if getattr(target, name, None)}
        if len(offers) == 1:
            [half] = offers
            other = "command" if half == "commands" else "commands"
            problems.append(f"defines {half}() without {other}() (a command driver has both)")
    if kind == "emulator" and not inspect.isclass(target):
        endpoint = _instance_endpoint(target)
        if endpoint is not None and not isinstance(endpoint, str):
            problems.append(f"endpoint is not a str ({type(endpoint).__name__})")
    return problems


def _concurrency_problem(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return [f"max_concurrent_forwards must be a whole number >= 1, not {value!r}"]
    return []


def _instance_endpoint(target: object) -> object:
    # Before __aenter__ an emulator may not know its endpoint yet (a port chosen by the OS, a
    # pty path) and its property may raise: only a value it already has is checked.
    try:
        return getattr(target, "endpoint", None)
    except Exception:
        return None
