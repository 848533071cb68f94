"""Dead letters you can act on: list them by reason, re-drive a selection into the event topics.

Every record on ``events.dlq`` holds the original bytes and a ``reason`` header (and
``topic``: where it came from, ``api`` for rejects at the HTTP edge). ``summarise``
groups them by reason with samples (``relevo.streams.follow.follow_dead_letters`` feeds
the console's); ``redrive`` validates the selected ones again with today's contract and
sends what passes to the event topics. Re-driving is
idempotent: the feature writer de-duplicates event ids (within
``RELEVO_DEDUPE_WINDOW_S``), so an event that was already applied changes nothing.
Letters from ``train.batches`` or ``catalog.items`` are listed but never re-driven.

>>> group_of("user_id: id length must be 1..128, got 300")
'user_id: id length must be N..N, got N'
>>> group_of("type: expected one of search, click, purchase, got 'refund'")
"type: expected one of search, click, purchase, got '…'"
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from aiokafka.structs import ConsumerRecord

from relevo.core.settings import Settings
from relevo.streams.events import Event, decode_record
from relevo.streams.logread import read_log
from relevo.streams.producer import EventProducer
from relevo.streams.topics import DLQ, event_topics

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\d+")
SAMPLE_BYTES = 160


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic."""

    partition: int
    offset: int
    timestamp_ms: int
    reason: str
    source: str  # the topic it was read from, or "api"
    value: bytes

    @classmethod
    def of(cls, record: ConsumerRecord) -> DeadLetter:
        headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or ()}
        return cls(record.partition, record.offset, record.timestamp, headers.get("reason", "(no reason)"),
                   headers.get("topic", "?"), record.value or b"")


def group_of(reason: str) -> str:
    """The reason with what the sender wrote (quoted text, numbers) masked: letters of one cause share it."""
    return _NUMBER.sub("N", _QUOTED.sub("'…'", reason))[:120]


@dataclass
class ReasonGroup:
    reason: str
    count: int = 0
    sources: Counter[str] = field(default_factory=Counter)
    first_ms: int = 0
    last_ms: int = 0
    samples: list[bytes] = field(default_factory=list)


class Summary:
    """Dead letters grouped by reason as they are read (memory grows with reasons, not letters)."""

    def __init__(self, samples: int = 3) -> None:
        self.samples, self._groups, self.total = samples, {}, 0

    def add(self, letter: DeadLetter) -> None:
        key = group_of(letter.reason)
        group = self._groups.setdefault(key, ReasonGroup(key, first_ms=letter.timestamp_ms))
        self.total += 1
        group.count += 1
        group.sources[letter.source] += 1
        group.first_ms = min(group.first_ms, letter.timestamp_ms)
        group.last_ms = max(group.last_ms, letter.timestamp_ms)
        if len(group.samples) < self.samples:
            group.samples.append(letter.value[:SAMPLE_BYTES])

    def groups(self) -> list[ReasonGroup]:
        """The largest group first."""
        return sorted(self._groups.values(), key=lambda g: -g.count)


async def dead_letters(settings: Settings) -> AsyncIterator[DeadLetter]:
    """Every dead letter on the topic now, oldest first per partition."""
    async for records in read_log(settings, [settings.topic(DLQ)]):
        for record in records:
            yield DeadLetter.of(record)


@dataclass
class RedriveReport:
    selected: int = 0
    events_sent: int = 0
    not_events: int = 0  # letters from train.batches, catalog.items, ...: never re-driven
    still_invalid: Counter[str] = field(default_factory=Counter)


def events_of(letter: DeadLetter, settings: Settings) -> tuple[list[Event], list[str]] | None:
    """The valid events in ``letter`` under today's contract and the reasons of the rest, or None
    when it did not come from the event path."""
    types = event_topics(settings)
    if letter.source != "api" and letter.source not in types:
        return None
    events, rejects = decode_record(letter.value, types.get(letter.source), settings.max_event_bytes)
    return events, [r.reason for r in rejects]


async def redrive(settings: Settings, letters: Sequence[DeadLetter], dry_run: bool = False) -> RedriveReport:
    """Send the events of ``letters`` that are valid now to their event topics (nothing with ``dry_run``)."""
    report = RedriveReport(selected=len(letters))
    events: list[Event] = []
    for letter in letters:
        found = events_of(letter, settings)
        if found is None:
            report.not_events += 1
            continue
        valid, reasons = found
        events += valid
        report.still_invalid.update(group_of(r) for r in reasons)
    report.events_sent = len(events)
    if events and not dry_run:
        async with EventProducer(settings.kafka_bootstrap_servers, settings.topic_prefix,
                                 settings.partitions) as producer:
            await producer.send(events)
    return report
