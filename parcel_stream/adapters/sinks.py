"""Outputs as sinks: each output topic is a sink that picks its records from a batch's
outputs. The worker hands every sink's records to the producer, in sink order, and waits
for the broker's acknowledgements before the batch is acked (``worker.BatchProcessor``).
Adding an output means adding a sink here and its topic setting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from parcel_stream.decide import Out, Outputs
from parcel_stream.settings import Settings

# send(topic, key, value) -> awaitable that resolves when the broker acknowledged it.
SendFn = Callable[[str, bytes | None, bytes], Awaitable[Awaitable[object]]]


@dataclass(frozen=True)
class TopicSink:
    """One output topic and which of a batch's outputs go there."""

    topic: str
    pick: Callable[[Outputs], list[Out]]


def output_sinks(settings: Settings) -> list[TopicSink]:
    """The worker's outputs: every decision, the holds, the rejections."""
    return [
        TopicSink(settings.topic_decisions, lambda o: o.decisions),
        TopicSink(settings.topic_holds, lambda o: o.holds),
        TopicSink(settings.topic_rejects, lambda o: o.rejections),
    ]
