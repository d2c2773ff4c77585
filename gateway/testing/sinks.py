"""A recording sink (type ``recording``): what the runtime delivered upstream, batch by batch."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from ..api import PluginContext
from ..hookspecs import hookimpl
from ..model import Sample, Signal
from ..registry import Registry

__all__ = ["RecordingForwardingSink", "RecordingSink", "RecordingSinkOptions", "RecordingSinks"]


class RecordingSinkOptions(BaseModel):
    """Options of the ``recording`` sink."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store_and_forward: bool = Field(
        default=False,
        description="Be fed from the store through a durable cursor (a ForwardingSink: its"
        " `forward` is called, with `historical`) instead of live (`send`).",
    )


class RecordingSink:
    """A live sink keeping what it is given: the signals it was bound with, each batch, and
    whether it was entered and exited."""

    def __init__(self, options: RecordingSinkOptions, context: PluginContext) -> None:
        self.id = context.id
        self.options = options
        self.bound: list[Signal] = []
        self.batches: list[list[Sample]] = []
        """Each delivered batch, in delivery order."""
        self.entered = False
        self.exited = False

    def bind(self, signals: Sequence[Signal]) -> None:
        self.bound = list(signals)

    async def __aenter__(self) -> RecordingSink:
        self.entered = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.exited = True

    async def send(self, samples: Sequence[Sample]) -> None:
        self.batches.append(list(samples))

    @property
    def samples(self) -> list[Sample]:
        """Every delivered sample, in delivery order."""
        return [s for batch in self.batches for s in batch]

    def of(self, signal: str) -> list[Sample]:
        """The delivered samples of the signal with id ``signal``."""
        return [s for s in self.samples if s.signal == signal]


class RecordingForwardingSink(RecordingSink):
    """The ``recording`` sink with ``store_and_forward: true``: fed from the store, at least
    once; :attr:`historical` says, per batch, whether it was delivered late (the backlog)."""

    def __init__(self, options: RecordingSinkOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.historical: list[bool] = []

    async def forward(self, samples: Sequence[Sample], historical: bool) -> None:
        self.batches.append(list(samples))
        self.historical.append(historical)


class RecordingSinks:
    """A plugin registering the sink type ``recording``; keeps each sink it built, by id.

    :class:`~gateway.testing.GatewayRun` adds one, so a configuration can say
    ``sinks: [{id: upstream, type: recording}]`` and the test read ``run.sink("upstream")``.
    """

    TYPE = "recording"
    PAT_GATEWAY_API = "1.1"  # the plugin API it was written for

    def __init__(self) -> None:
        self.sinks: dict[str, RecordingSink] = {}

    def _build(self, options: RecordingSinkOptions, context: PluginContext) -> RecordingSink:
        kind = RecordingForwardingSink if options.store_and_forward else RecordingSink
        sink = kind(options, context)
        self.sinks[context.id] = sink
        return sink

    @hookimpl
    def pat_gateway_register_sinks(self, registry: Registry) -> None:
        registry.add_sink(
            self.TYPE, self._build, RecordingSinkOptions, "Test kit: keeps what it is delivered"
        )
