"""What the worker does with a validated batch of events.

The Faust agent stays a short loop: it decodes a batch of records, sends what
fails validation to the DLQ, and hands the valid events to every processor at
once (none reads another's output). A processor is plain Python, testable without Kafka.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from relevo.streams.events import Event

Send = Callable[..., Awaitable[object]]  # writes one record to an output topic: (value, partition=None)


class BatchProcessor(Protocol):
    """One consumer of the validated event stream (features, drift, suggestions, …)."""

    name: str

    async def process(self, events: Sequence[Event]) -> None:
        """Apply a batch. Must be idempotent per ``event_id``: batches are redelivered after a crash."""

    async def tick(self) -> None:
        """Called about once a second, batches or not (most processors have nothing to do)."""

    async def close(self) -> None:
        """Flush and release resources when the worker stops."""
