"""Stream throughput of one worker process: validation + features into Redis.

Two shapes of input, both the real Trivago events:
- one event per Kafka record, beside a no-op Faust agent on the same records;
- events batched many to a record (as the producer client and the ingest API
  write them), beside raw aiokafka consuming the same records.

    python -m bench.throughput [--copies 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from aiokafka import AIOKafkaConsumer

from bench.report import record, table
from relevo.core.settings import Settings
from relevo.runtime.processes import Runtime
from relevo.runtime.stack import EmbeddedStack
from relevo.streams.datasets import open_dataset
from relevo.streams.producer import EventProducer

log = logging.getLogger("bench.throughput")
# Features alone is the target's configuration; adding drift measures its cost; the last is the default worker.
PROCESSOR_SETS = ("features", "features,drift", "features,drift,suggestions,examples")


def copies_of(events: list[dict], copies: int) -> list[dict]:
    """The events repeated with fresh ids (so none is deduplicated), later copies later in time."""
    span = events[-1]["ts"] - events[0]["ts"] + 1
    return [{**e, "event_id": f"{e['event_id']}#{c}", "ts": e["ts"] + c * span}
            for c in range(copies) for e in events]


async def produce(bootstrap: str, prefix: str, events: list[dict], per_record: int) -> int:
    async with EventProducer(bootstrap, prefix, partitions=4,
                             batch_events=per_record) as producer:
        for start in range(0, len(events), 20_000):
            await producer.send(events[start:start + 20_000])
        return producer.records_sent


def time_worker(settings: Settings, n_events: int, tmp: Path) -> float:
    """Seconds from the worker's first applied event to its last."""
    with Runtime(settings, workers=1, api=False):
        client = redis.Redis.from_url(settings.redis_url)
        key = f"{settings.key_prefix}:stats"
        first = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            applied = sum(int(v or 0) for v in client.hmget(key, "events_applied", "events_duplicate"))
            if applied and first is None:
                first = time.perf_counter()
            if applied >= n_events:
                return time.perf_counter() - (first or time.perf_counter())
            time.sleep(0.02)
    raise TimeoutError("the worker did not finish")


def time_noop_faust(bootstrap: str, topic: str, n_records: int, tmp: Path) -> float:
    out = tmp / f"noop-{topic}.txt"
    proc = subprocess.Popen([sys.executable, "-m", "bench.noop_agent", bootstrap, topic, str(n_records),
                             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 900
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return float(out.read_text())
    finally:
        proc.terminate()
        proc.wait(30)


async def time_raw_aiokafka(bootstrap: str, topics: list[str], n_records: int) -> float:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"raw-{time.time()}", max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    count, first = 0, None
    try:
        while count < n_records:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if batch and first is None:
                first = time.perf_counter()
            count += sum(len(v) for v in batch.values())
    finally:
        await consumer.stop()
    return time.perf_counter() - (first or time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=3, help="copies of the slice for the batched run")
    parser.add_argument("--limit", type=int, default=None, help="events of the slice to use")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    events = list(open_dataset("trivago"))[:args.limit]
    batched = copies_of(events, args.copies)
    tmp = Path(tempfile.mkdtemp(prefix="relevo-bench-"))
    with EmbeddedStack(tmp / "servers") as stack:
        bootstrap = stack.kafka_bootstrap
        base = Settings(kafka_bootstrap_servers=bootstrap, redis_url=stack.redis_url, data_dir=tmp,
                        partitions=4)

        log.info("producing %d events one per record", len(events))
        asyncio.run(produce(bootstrap, "single.", events, per_record=1))
        n_clicks = sum(1 for e in events if e["type"] == "click")
        noop_s = time_noop_faust(bootstrap, "single.events.click", n_clicks, tmp)
        single = Settings(**{**base.__dict__, "app_id": "bench-single", "topic_prefix": "single.",
                             "key_prefix": "b1", "processors": "features"})
        ours_single_s = time_worker(single, len(events), tmp)

        log.info("producing %d events batched", len(batched))
        records = asyncio.run(produce(bootstrap, "many.", batched, per_record=200))
        raw_s = asyncio.run(time_raw_aiokafka(bootstrap, [f"many.events.{t}" for t in
                                                         ("search", "click", "purchase")], records))
        many_s = {}
        for n, processors in enumerate(PROCESSOR_SETS):
            many = Settings(**{**base.__dict__, "app_id": f"bench-many-{n}", "topic_prefix": "many.",
                               "key_prefix": f"b2-{n}", "processors": processors})
            many_s[processors] = time_worker(many, len(batched), tmp)

    noop_rate = n_clicks / noop_s
    single_rate = len(events) / ours_single_s
    rows = [
        ["one event per record", "no-op Faust agent (baseline)", n_clicks, f"{noop_rate:,.0f}"],
        ["one event per record", "Relevo worker: validate + features → Redis", len(events),
         f"{single_rate:,.0f} ({single_rate / noop_rate:.0%} of no-op; target ≥ 75%)"],
        ["200 events per record", "raw aiokafka getmany (baseline)", len(batched),
         f"{len(batched) / raw_s:,.0f} events/s ({records / raw_s:,.0f} records/s)"],
        *[["200 events per record", f"Relevo worker: validate + {processors.replace(',', ' + ')}", len(batched),
           f"{len(batched) / seconds:,.0f} events/s" + (" (target ≥ 25,000)" if processors == "features" else "")]
          for processors, seconds in many_s.items()],
    ]
    record("Stream throughput, one worker process (Trivago events)", None,
           table(["input", "consumer", "events", "events/s"], rows),
           notes=f"Input: the Trivago slice ({len(events):,} events); the batched run uses {args.copies} "
                 "copies with fresh ids. The no-op agent reads the click topic only (one record each). "
                 "Broker (Tansu), Redis, producer and worker share the machine's cores.")


if __name__ == "__main__":
    main()
