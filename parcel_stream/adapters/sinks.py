"""Outputs as sinks: each output topic is a sink that buffers a batch's records (``add``)
and writes them, waiting for the broker's acknowledgement (``flush``), before the batch is
acked. Adding an output means adding a sink here and its topic setting; the worker only
adds and flushes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from parcel_stream.decide import Out, Outputs
from parcel_stream.settings import Settings

# send(topic, key, value) -> awaitable that resolves when the broker acknowledged it.
SendFn = Callable[[str, bytes | None, bytes], Awaitable[Awaitable[object]]]


@dataclass
class TopicSink:
    """One output topic: which of a batch's outputs go there, buffered until flushed."""

    topic: str
    pick: Callable[[Outputs], list[Out]]
    send: SendFn
    pending: list[Out] = field(default_factory=list)

    def add(self, outputs: Outputs) -> None:
        self.pending.extend(self.pick(outputs))

    async def flush(self) -> None:
        """Send everything buffered and wait for the acknowledgements; the buffer is kept
        on failure, so a retry sends the same records again."""
        acks = [await self.send(self.topic, key, value) for key, value in self.pending]
        await asyncio.gather(*acks)
        self.pending.clear()


def output_sinks(settings: Settings, send: SendFn) -> list[TopicSink]:
    """The worker's outputs: every decision, the holds, the rejections."""
    return [
        TopicSink(settings.topic_decisions, lambda o: o.decisions, send),
        TopicSink(settings.topic_holds, lambda o: o.holds, send),
        TopicSink(settings.topic_rejects, lambda o: o.rejections, send),
    ]
