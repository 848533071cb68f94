"""Worker statistics kept in Redis, so every worker adds to one picture the API can show.

Counters live in one hash; feature freshness (record produced → features
written) is kept as histogram buckets for Prometheus and as a capped list of
recent samples for exact percentiles; each batch processor's time as
``seconds:<name>`` beside ``batches:<name>``.

>>> bucket_field(3.2), bucket_field(6000)
('fresh_le_5', 'fresh_le_inf')
>>> percentile([5, 1, 3, 2, 4], 0.5)
3
>>> bucket_quantile(0.5, (1, 2, 5), [0, 10, 10, 0])  # half of 20 in (1, 2], half in (2, 5]
2.0
>>> bucket_quantile(0.99, (1, 2, 5), [0, 0, 0, 3]), bucket_quantile(0.5, (1, 2), [0, 0, 0])  # past the last bound
(5, nan)
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from relevo.core.keys import SHARDS, Keys
from relevo.core.redis import pipelined, raising_errors

FRESHNESS_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
SAMPLES_KEPT = 10_000
_KIND = re.compile(r"[A-Za-z][A-Za-z_ ]{0,23}")  # the fixed prefix every reason starts with


def bucket_field(ms: float) -> str:
    for bound in FRESHNESS_BUCKETS_MS:
        if ms <= bound:
            return f"fresh_le_{bound}"
    return "fresh_le_inf"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def bucket_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float:
    """The ``q`` quantile of a histogram, interpolated within its bucket as Prometheus'
    ``histogram_quantile`` does; ``counts`` has one count per bound (values up to it, above the
    previous one) and a last one past every bound (reported as the last bound)."""
    total = sum(counts)
    if total <= 0:
        return float("nan")
    rank, seen, lower = q * total, 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=False):
        if count and seen + count >= rank:
            return lower + (bound - lower) * (rank - seen) / count
        seen, lower = seen + count, bound
    return bounds[-1]


class WorkerStats:
    """Counts what one batch did and adds it to the shared statistics in Redis."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis, self.keys = redis, keys

    async def record(self, topics: Iterable[str], events_by_topic: Counter[str],
                     dlq_reasons: Iterable[str], produced_ms: Iterable[int | None],
                     seconds: Mapping[str, float] | None = None) -> None:
        counts: Counter[str] = Counter(f"records:{t}" for t in topics)
        counts.update(f"batches:{name}" for name in seconds or ())
        counts.update({f"events:{t}": n for t, n in events_by_topic.items()})
        counts.update(f"dlq:{reason_kind(r)}" for r in dlq_reasons)
        now = time.time() * 1000
        ages = [max(0.0, now - ts) for ts in produced_ms if ts]
        counts.update(bucket_field(a) for a in ages)
        stats = self.keys.stats
        commands: list[tuple[Any, ...]] = [("HINCRBY", stats, field, n) for field, n in counts.items()]
        commands += [("HINCRBYFLOAT", stats, f"seconds:{name}", spent) for name, spent in (seconds or {}).items()]
        if ages:
            commands += [("HINCRBYFLOAT", stats, "fresh_sum_ms", sum(ages)),
                         ("LPUSH", stats + ":fresh", *(round(a, 2) for a in ages[-100:])),
                         ("LTRIM", stats + ":fresh", 0, SAMPLES_KEPT - 1)]
        raising_errors(await pipelined(self.redis, commands))  # every batch: not redis-py's slower pipeline


def reason_kind(reason: str) -> str:
    """A DLQ reason as a metric label from a bounded set: the kind before its first ``": "``.

    Every reason is ``"<kind>: <detail>"`` where the kind is a literal of our code (a contract
    field, ``malformed JSON``, ``processing``, ...) and the detail may quote what the sender
    sent; only the kind becomes a label, so attacker text never makes a new series.
    ``relevo dlq list`` shows the details.

    >>> reason_kind("ts: 99999999999999 is more than a day in the future")
    'ts'
    >>> reason_kind("type: expected one of search, click, purchase, got 'x{i}'"), reason_kind("x" * 99)
    ('type', 'other')
    """
    kind, sep, _ = reason.partition(": ")
    return kind if sep and _KIND.fullmatch(kind) else "other"


async def read_counters(redis: aioredis.Redis, keys: Keys) -> dict[str, float]:
    """The workers' counters and the feature shards' summed."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.stats)
        for shard in range(SHARDS):
            pipe.hgetall(keys.in_shard(shard, "counts"))
        hashes = await pipe.execute()
    counters: Counter[str] = Counter()
    for hash_ in hashes:
        counters.update({k.decode(): float(v) for k, v in hash_.items()})
    return dict(counters)


async def read_stats(redis: aioredis.Redis, keys: Keys) -> dict[str, Any]:
    """Counters (``read_counters``), DLQ reasons and freshness percentiles, for the API and the demo summary."""
    counters = await read_counters(redis, keys)
    samples = [float(s) for s in await redis.lrange(keys.stats + ":fresh", 0, -1)]
    return {
        "counters": counters,
        "freshness_ms": {"p50": percentile(samples, 0.5), "p99": percentile(samples, 0.99),
                         "samples": len(samples)},
    }
