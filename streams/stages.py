"""Stages whose state is owned by the partition of its key, with snapshots keyed by partition.

A stage is a consumer group over an internal topic (``events.by_region``, keyed by
region; ``drift.global``): each partition's state lives in the worker the group assigns
it to. The state is snapshotted to Redis with the offset of the last record it reflects,
after its outputs were delivered: every ``checkpoint_s`` (less often when pickling a large
state would take more than ``SNAPSHOT_SHARE`` of the time), the partitions in turn, spread
over that period (pickling holds the loop the feature writes share: one partition at a
time holds it a fraction as long), at once when a partition
settles (it has applied all it was sent) or the stage goes idle after reading (within the
same share of the time), and when the partition is revoked. A partition whose state has
only heard of its sources' progress since (the region stream's heartbeats, once a second
while the shop is quiet) is saved every ``QUIET_SAVE_S`` only: such a snapshot would
differ in its offset alone, and pickling a large state again and again is most of what an
idle worker would spend. It is restored when the partition is assigned, reading resuming just after that
offset. No offsets are committed: the snapshot is the position. A worker killed at any
point therefore leaves a state that replays to exactly where it was; outputs made after
the last snapshot are made again (at least once: alerts carry stable ids, the trainer
skips searches it learned from).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import pickle
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition

from relevo.core.keys import Keys
from relevo.core.redis import retrying
from relevo.core.settings import Settings

log = logging.getLogger(__name__)
SLICE_RECORDS = 50  # region records applied between yields (one at a time cost the single-event path ~15%)
SNAPSHOT_SHARE = 0.02  # at most this share of a stage's time goes to pickling snapshots
QUIET_SAVE_S = 300.0  # a state that only heard of progress is saved this often: a restart replays that much


class PartitionState(Protocol):
    """The state of one partition of a stage: it takes records and makes outputs."""

    def handle(self, values: Sequence[bytes]) -> None:
        """Apply the records read from the partition, in order."""

    async def flush(self) -> None:
        """Send what ``handle`` produced (alerts, examples, aggregates); also called when the stage
        is idle, so what waits on the wall clock goes out without new records."""

    def dump(self) -> Any:
        """The picklable state (``make_state`` takes it back)."""

    def settled(self) -> bool:
        """Whether it holds nothing back: everything read so far is applied and its outputs made."""

    def revision(self) -> int:
        """A count that moves whenever ``handle`` changes more than its sources' progress (events
        applied, outputs made): a snapshot of the same revision would differ in its offset only."""

    def backlog(self) -> bool:
        """Whether ``handle`` left work for later (it bounds what one call does): the stage calls
        ``handle(())`` again, yielding to the loop between calls."""


MakeState = Callable[[int, Any | None], PartitionState]  # (partition, restored dump or None) -> state


async def handle_all(state: PartitionState, values: Sequence[bytes]) -> None:
    """``state.handle(values)``, then what it left for later, yielding to the loop between calls."""
    state.handle(values)
    while state.backlog():
        await asyncio.sleep(0)
        state.handle(())


class Snapshots:
    """Each partition's last state and the offset it reflects, one Redis key per (stage, partition).

    Pickle is fine here: only our own workers write these keys, and anyone who can write
    to Redis can already falsify every feature. A snapshot that cannot be read is logged
    and the partition starts from the beginning of its topic. A snapshot of another log
    epoch (``relevo.streams.epoch``) keeps its state, and its offset, which points into
    a log that is gone, becomes -1: the new log is read from its start.
    """

    def __init__(self, redis: aioredis.Redis, keys: Keys, stage: str, epoch: int = 0) -> None:
        self.redis, self.keys, self.stage, self.epoch = redis, keys, stage, epoch

    def key(self, partition: int) -> str:
        return self.keys.stage_state(self.stage, partition)

    async def save(self, partition: int, offset: int, state: Any) -> tuple[int, float]:
        """Save ``state`` as of ``offset``; its size in bytes and the CPU seconds pickling it took."""
        started = time.thread_time()  # this thread's CPU only: nothing else runs while pickle works
        data = pickle.dumps((self.epoch, offset, state), protocol=pickle.HIGHEST_PROTOCOL)
        pickling_s = time.thread_time() - started
        await self.redis.set(self.key(partition), data)
        return len(data), pickling_s

    async def load(self, partition: int) -> tuple[int, Any] | None:
        data = await self.redis.get(self.key(partition))
        if data is None:
            return None
        try:
            epoch, offset, state = pickle.loads(data)
        except Exception:  # a corrupt or foreign snapshot must not stop the worker
            log.exception("snapshot %s unreadable; the partition is read again from the start", self.key(partition))
            return None
        if epoch != self.epoch:
            log.warning("snapshot %s is of log epoch %d, the log is in epoch %d: its state is kept and the new "
                        "log read from its start", self.key(partition), epoch, self.epoch)
            return -1, state
        return offset, state


class Outputs:
    """One producer for every record a worker makes beyond the Faust agent's own (the region
    stream, examples, alerts, aggregates); ``flush`` waits until the broker has them all."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._producer: AIOKafkaProducer | None = None  # made on first use: it needs the running loop
        self._pending: list[asyncio.Future[Any]] = []

    async def start(self) -> AIOKafkaProducer:
        if self._producer is None:
            # No linger: every sender flushes right after its sends, so a linger only delays the
            # flush (the region forwarder's flush per batch: p50 6.3 → 4.4 ms at 2,000 events/s).
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all", linger_ms=0,
                                        max_batch_size=1 << 20, max_request_size=1 << 20)
            await producer.start()
            self._producer = producer
        return self._producer

    def sender(self, topic: str) -> Callable[..., Awaitable[None]]:
        async def send(value: bytes, partition: int | None = None) -> None:
            producer = await self.start()
            self._pending.append(await producer.send(topic, value, partition=partition))
        return send

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)

    async def stop(self) -> None:
        if self._producer is not None:
            await self.flush()
            await self._producer.stop()
            self._producer = None


class PartitionedStage:
    """A consumer group over ``topic`` with one ``PartitionState`` per assigned partition."""

    def __init__(self, name: str, bootstrap_servers: str, topic: str, group: str, make_state: MakeState,
                 snapshots: Snapshots, outputs: Outputs, checkpoint_s: float = Settings.checkpoint_s,
                 session_timeout_s: float = Settings.session_timeout_s, max_records: int = 500,
                 fetch_max_wait_ms: int = Settings.stage_fetch_max_wait_ms) -> None:
        self.name, self.topic, self.make_state = name, topic, make_state
        self.snapshots, self.outputs, self.checkpoint_s = snapshots, outputs, checkpoint_s
        self.states: dict[int, PartitionState] = {}
        self.offsets: dict[int, int] = {}  # offset of the last record each state reflects (-1: none)
        self._saved: dict[int, int] = {}  # the offset each partition's last snapshot reflects
        self._saved_revision: dict[int, tuple[int, float]] = {}  # its state's revision then, and when (monotonic)
        self._settled: dict[int, bool] = {}  # whether each partition settled (and saved) after its last records
        self._idle_save_after: dict[int, float] = {}  # when an idle partition may be saved again (monotonic)
        self.max_records = max_records
        session_ms = int(session_timeout_s * 1000)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=session_ms, fetch_max_wait_ms=fetch_max_wait_ms,
            heartbeat_interval_ms=max(500, session_ms // 3), max_poll_interval_ms=max(300_000, session_ms))
        self._due: dict[int, float] = {}  # when each partition's periodic snapshot is due (monotonic)
        self._pickling_s: dict[int, float] = {}  # what pickling each partition took last
        self._every_s = checkpoint_s

    async def run(self, stop: asyncio.Event) -> None:
        await self.consumer.start()
        self.consumer.subscribe([self.topic], listener=_Listener(self))
        try:
            while not stop.is_set():
                polled = await self.consumer.getmany(timeout_ms=200, max_records=self.max_records)
                for tp, records in polled.items():
                    await self._handle(tp.partition, records)
                if not any(polled.values()):  # idle: what waits on the wall clock (a throttled write) goes out
                    for partition, state in list(self.states.items()):
                        await self._flush(partition, state, idle=True)
                due = min(self._due, key=self._due.__getitem__, default=None)
                if due is not None and self._due[due] <= time.monotonic():
                    await retrying(functools.partial(self.checkpoint, [due]))
        finally:
            await retrying(lambda: self.checkpoint(list(self.states), everything=True))
            await self.consumer.stop()

    async def _handle(self, partition: int, records: Sequence[ConsumerRecord]) -> None:
        """Apply ``records`` in slices of ``SLICE_RECORDS``, yielding to the loop between them: it
        is shared with the feature writes, whose freshness a long run of region records would hold up."""
        state = self.states.get(partition)
        for start in range(0, len(records), SLICE_RECORDS):
            if state is None or self.states.get(partition) is not state:
                return  # revoked meanwhile
            piece = records[start:start + SLICE_RECORDS]
            await handle_all(state, [record.value for record in piece])
            self.offsets[partition] = piece[-1].offset  # so a snapshot taken between slices is exact
            await asyncio.sleep(0)
        if state is not None:
            await self._flush(partition, state, idle=False)

    async def _flush(self, partition: int, state: PartitionState, idle: bool) -> None:
        """Let ``state`` send what it holds back; snapshot it when it settles, or when the stage
        goes ``idle`` with records read since its last snapshot (a state that is always settled,
        the global stage's, never settles anew)."""
        await retrying(state.flush)
        # Both are rare and the stage has time then: a snapshot now leaves a restart nothing to
        # replay, and whoever waits for the stage sees it done. A partition new here counts as
        # unsettled: its first records may settle it at once. Idle snapshots keep to SNAPSHOT_SHARE
        # (a region partition reads a heartbeat every second).
        was_settled, self._settled[partition] = self._settled.get(partition, False), state.settled()
        due = idle and time.monotonic() >= self._idle_save_after.get(partition, 0.0)
        if self._settled[partition] and (not was_settled or (due and self._worth_saving(partition))):
            await retrying(lambda: self.checkpoint([partition]))

    def _worth_saving(self, partition: int, everything: bool = False) -> bool:
        """Whether ``partition`` read records since its last snapshot (with ``everything``: any at
        all; else ones that changed its state, or only progress for ``QUIET_SAVE_S``)."""
        offset, state = self.offsets.get(partition, -1), self.states.get(partition)
        if state is None or offset < 0 or self._saved.get(partition) == offset:
            return False
        revision, when = self._saved_revision.get(partition, (None, 0.0))
        return everything or state.revision() != revision or time.monotonic() - when >= QUIET_SAVE_S

    async def checkpoint(self, partitions: Sequence[int], everything: bool = False) -> None:
        """Deliver every output made so far, then snapshot those of ``partitions`` worth saving
        (``everything``: every one that read records since its last snapshot)."""
        await self.outputs.flush()
        for partition in partitions:
            if self._worth_saving(partition, everything):
                state, offset = self.states[partition], self.offsets[partition]
                revision = state.revision()
                size, seconds = await self.snapshots.save(partition, offset, state.dump())
                self._saved[partition], self._pickling_s[partition] = offset, seconds
                self._saved_revision[partition] = revision, time.monotonic()
                self._idle_save_after[partition] = time.monotonic() + seconds / SNAPSHOT_SHARE
                log.debug("%s p%d: snapshot of %d bytes at offset %d in %.3f s", self.name, partition, size,
                          offset, seconds)
        # what a round of every partition costs sets how often each is due, from this snapshot on
        self._every_s = max(self.checkpoint_s, sum(self._pickling_s.values()) / SNAPSHOT_SHARE)
        for partition in partitions:
            if partition in self._due:
                self._due[partition] = time.monotonic() + self._every_s

    async def assign(self, partitions: Sequence[int]) -> None:
        for n, partition in enumerate(partitions, start=1):
            self._due[partition] = time.monotonic() + self._every_s * n / len(partitions)  # spread over a round
            saved = await self.snapshots.load(partition)
            offset, dump = saved if saved is not None else (-1, None)
            self.states[partition], self.offsets[partition] = self.make_state(partition, dump), offset
            self._saved[partition] = offset
            self._saved_revision[partition] = self.states[partition].revision(), time.monotonic()
            tp = TopicPartition(self.topic, partition)
            if offset >= 0:
                self.consumer.seek(tp, offset + 1)
            else:
                await self.consumer.seek_to_beginning(tp)
            log.info("%s p%d assigned, resuming after offset %d", self.name, partition, offset)

    async def revoke(self, partitions: Sequence[int]) -> None:
        await self.checkpoint(partitions, everything=True)
        for partition in partitions:
            self.states.pop(partition, None)
            self.offsets.pop(partition, None)
            self._saved.pop(partition, None)
            self._saved_revision.pop(partition, None)
            self._settled.pop(partition, None)
            self._idle_save_after.pop(partition, None)
            self._due.pop(partition, None)
            self._pickling_s.pop(partition, None)


async def run_all(stages: Sequence[PartitionedStage], stop: asyncio.Event) -> None:
    """Run ``stages`` until ``stop`` is set; when one fails, the others stop (and save) too."""
    try:
        await asyncio.gather(*(stage.run(stop) for stage in stages))
    finally:
        stop.set()


class _Listener(ConsumerRebalanceListener):
    def __init__(self, stage: PartitionedStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.stage.revoke(sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.stage.assign(sorted(tp.partition for tp in assigned))
