"""What samples become on the wire: topics and payloads. Pure, tested without a broker.

A message is a ``(topic, payload)`` pair. Payloads are the gateway's JSON form of a sample
(:func:`gateway.sample_to_json`), flagged ``"historical": true`` when delivered late; in batch
mode, a JSON array of them per signal.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from typing import Any

from gateway import Sample, Signal, historical_json, sample_to_json

from .options import check_topic

__all__ = [
    "Message",
    "TopicMap",
    "batch_messages",
    "meta_payload",
    "sample_messages",
    "status_payload",
]

Message = tuple[str, str | bytes]
"""One MQTT message: topic and payload (a ``str`` is sent as UTF-8)."""


def _split_id(signal_id: str, default_area: str) -> dict[str, str]:
    # <area>/<instrument>/<signal>; tolerate other shapes (signals of an older store).
    parts = signal_id.split("/")
    area = parts[0] if len(parts) > 1 else default_area
    return {
        "area": area,
        "instrument": "/".join(parts[1:-1]),
        "signal": parts[-1],
        "signal_id": signal_id,
    }


class TopicMap:
    """Each signal's topic (and metadata topic), from the configured templates.

    Bound signals get theirs once, in :meth:`bind`, which refuses two signals on one topic. A
    signal that was not bound (a backlog sample of a signal no longer configured) gets its
    topic on first use, from its id.
    """

    def __init__(self, template: str, meta_template: str | None, site: str, area: str) -> None:
        self.template = template
        self.meta_template = meta_template
        self.site = site
        self.area = area
        self.topics: dict[str, str] = {}
        self.meta: list[Message] = []

    def _fields(self, signal_id: str) -> dict[str, str]:
        return {"site": self.site, **_split_id(signal_id, self.area)}

    def bind(self, signals: Sequence[Signal], reserved: Iterable[str] = ()) -> None:
        """Compute every signal's topics. Signals may share a data topic (a template without
        ``{signal}``: one topic per instrument, say); each needs its own metadata topic, and no
        data topic may be a metadata topic or a ``reserved`` one (the gateway status).
        ``ValueError`` naming both owners otherwise."""
        owners = dict.fromkeys(reserved, "the gateway status")
        topics: dict[str, str] = {}
        meta: list[Message] = []

        def claim(topic: str, owner: str, what: str) -> None:
            check_topic(topic)
            other = owners.setdefault(topic, owner)
            if other != owner:
                raise ValueError(
                    f"{other} and {owner} both map to topic {topic!r}: make the {what} template"
                    " tell them apart (e.g. with {signal})"
                )

        for signal in signals:
            fields = self._fields(signal.id)
            topic = self.template.format_map(fields)
            claim(topic, "the samples", "topic")  # shared by signals, never by anything else
            topics[signal.id] = topic
            if self.meta_template is not None:
                meta_topic = self.meta_template.format_map({**fields, "topic": topic})
                claim(meta_topic, f"the metadata of {signal.id}", "meta_topic")
                meta.append((meta_topic, meta_payload(signal, self.site, fields["area"], topic)))
        self.topics = topics
        self.meta = meta

    def topic(self, signal_id: str) -> str:
        """The topic of ``signal_id`` (computed and remembered if it was not bound)."""
        topic = self.topics.get(signal_id)
        if topic is None:
            topic = check_topic(self.template.format_map(self._fields(signal_id)))
            self.topics[signal_id] = topic
        return topic


def sample_messages(samples: Sequence[Sample], historical: bool, topics: TopicMap) -> list[Message]:
    """One message per sample, in the order given."""
    known = topics.topics
    topic = topics.topic
    if historical:
        return [(known.get(s.signal) or topic(s.signal), historical_json(s)) for s in samples]
    return [(known.get(s.signal) or topic(s.signal), sample_to_json(s)) for s in samples]


def batch_messages(
    samples: Sequence[Sample],
    historical: bool,
    topics: TopicMap,
    max_bytes: int,
    owners: list[list[int]] | None = None,
) -> list[Message]:
    """Per topic (in order of first appearance), JSON arrays of its samples in the order given
    (commit order: each signal's in ``seq`` order), each at most ``max_bytes`` long unless a
    single sample is longer. With one topic per signal, that is one array per signal.

    ``owners``, if given, receives for each message the positions in ``samples`` of the
    samples it holds (to say which samples a broker refused with a message)."""
    # Every sample of a backlog drain passes here: group by signal (one topic look-up per
    # signal, not per sample), then merge the signals that share a topic back in order.
    by_signal: dict[str, list[int]] = {}
    for position, sample in enumerate(samples):
        group = by_signal.get(sample.signal)
        if group is None:
            by_signal[sample.signal] = [position]
        else:
            group.append(position)
    known = topics.topics
    shared: dict[str, list[list[int]]] = {}
    for signal, positions in by_signal.items():
        shared.setdefault(known.get(signal) or topics.topic(signal), []).append(positions)
    groups = {
        topic: lists[0] if len(lists) == 1 else sorted(itertools.chain.from_iterable(lists))
        for topic, lists in shared.items()
    }
    encode = historical_json if historical else sample_to_json
    messages: list[Message] = []
    for topic, group in groups.items():
        texts = [encode(samples[p]) for p in group]
        joined = ",".join(texts)
        if joined.isascii():  # then a text's length is its length in bytes
            if len(joined) + 2 <= max_bytes:  # the usual case: the whole array at once
                messages.append((topic, f"[{joined}]".encode()))
                if owners is not None:
                    owners.append(group)
                continue
            items: Sequence[str | bytes] = texts
        else:
            items = [text.encode() for text in texts]
        start, size = 0, 1  # size == len(b"[" + b",".join(items[start:i]) + b"]")
        for i, item in enumerate(items):
            if i > start and size + len(item) + 1 > max_bytes:
                messages.append((topic, _array(items[start:i])))
                if owners is not None:
                    owners.append(group[start:i])
                start, size = i, 1
            size += len(item) + 1
        messages.append((topic, _array(items[start:])))
        if owners is not None:
            owners.append(group[start:] if start else group)
    return messages


def _array(items: Sequence[str | bytes]) -> bytes:
    """A JSON array of encoded ``items`` (all ``str`` or all ``bytes``), as bytes."""
    if items and isinstance(items[0], str):
        return f"[{','.join(items)}]".encode()  # type: ignore[arg-type]
    return b"[" + b",".join(items) + b"]"  # type: ignore[arg-type]


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def meta_payload(signal: Signal, site: str, area: str, topic: str) -> bytes:
    """The retained description of a signal, published at every connect."""
    return _json(
        {
            "signal": signal.id,
            "unit": signal.unit,
            "kind": str(signal.kind),
            "description": signal.description,
            "instrument": signal.instrument,
            "site": site,
            "area": area,
            "topic": topic,
        }
    )


def status_payload(status: str, client_id: str) -> bytes:
    """The retained gateway status: ``online`` or ``offline``."""
    return _json({"status": status, "client_id": client_id})
