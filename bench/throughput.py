"""Stream throughput of one worker process, in events per second and in CPU time per event.

Our machines differ threefold in speed and are shared, so the figures that count
are CPU time of the measured process (user + system, psutil) per event, and ratios
to baselines measured in the same run:

- one event per Kafka record, validation + features: beside a no-op Faust agent on
  the same records (rate ratio, and CPU per record ratio);
- 200 events per record, the worker's processor sets up to the default (features,
  drift, suggestions, examples, analytics: the region stream and its stages included): CPU per
  event of the worker and of the Redis server, beside raw aiokafka reading the same
  records.

A worker's window runs from its first applied event until everything is applied and
its region and global stages have drained. Then the worker is watched for ``IDLE_S``
with nothing to read: the CPU a worker spends standing still (Faust's consumer thread,
polls, heartbeats) is in every window, and at these rates it is a large part of the
CPU per event.

    python -m bench.throughput [--copies 3] [--limit N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import redis
from aiokafka import AIOKafkaConsumer

from bench.report import record, table
from relevo.core.settings import Settings
from relevo.runtime.processes import Runtime
from relevo.runtime.stack import EmbeddedStack
from relevo.streams.datasets import open_dataset
from relevo.streams.producer import EventProducer

log = logging.getLogger("bench.throughput")
# Features alone is the single-record target's configuration; the last set is the default worker's.
PROCESSOR_SETS = ("features", "features,drift", Settings().processors)


IDLE_S = 10.0  # how long a worker is watched with nothing to read, once it has drained


@dataclass
class Run:
    seconds: float
    cpu_s: float  # of the measured process
    redis_cpu_s: float = 0.0
    idle_share: float | None = None  # CPU of a core the process spent per second with nothing to read
    machine_busy: float = 0.0  # share of all the machine's cores busy over the window (every process)


def copies_of(events: list[dict], copies: int) -> list[dict]:
    """The events repeated with fresh ids (so none is deduplicated), later copies later in time."""
    span = events[-1]["ts"] - events[0]["ts"] + 1
    return [{**e, "event_id": f"{e['event_id']}#{c}", "ts": e["ts"] + c * span}
            for c in range(copies) for e in events]


async def produce(bootstrap: str, prefix: str, events: list[dict], per_record: int) -> int:
    async with EventProducer(bootstrap, prefix, partitions=4, batch_events=per_record) as producer:
        for start in range(0, len(events), 20_000):
            await producer.send(events[start:start + 20_000])
        return producer.records_sent


def cpu_seconds(*processes: psutil.Process) -> float:
    return sum(times.user + times.system for times in (p.cpu_times() for p in processes))


def machine_cpu() -> float:
    """CPU seconds every process of the machine has used, all cores together."""
    times = psutil.cpu_times()  # on Linux, guest time is already inside user and nice
    waiting = ("idle", "iowait", "guest", "guest_nice")
    return sum(times) - sum(getattr(times, name, 0.0) for name in waiting)


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def _applied(client: redis.Redis, prefix: str) -> int:
    from relevo.core.keys import SHARDS, Keys

    keys, total = Keys(prefix), 0
    for shard in range(SHARDS):
        total += sum(int(v or 0) for v in client.hmget(keys.in_shard(shard, "counts"), "events_applied",
                                                       "events_duplicate"))
    return total


def run_worker(settings: Settings, n_events: int, workers: int = 1) -> Run:
    """Run ``workers`` worker processes over the topics of ``settings``; measure their window (see the
    module doc) and their CPU summed."""
    with Runtime(settings, workers=workers, api=False) as runtime:
        client = runtime.redis()
        deadline = time.monotonic() + 1800
        while _applied(client, settings.key_prefix) == 0:
            if time.monotonic() > deadline:
                raise TimeoutError("the worker applied nothing")
            time.sleep(0.01)
        # each worker and what it started (its stage process, with RELEVO_STAGE_PROCESS=1)
        processes = [p for w in runtime.workers for p in (psutil.Process(w.pid), *psutil.Process(w.pid).children())]
        started, cpu0, rcpu0, machine0 = time.perf_counter(), cpu_seconds(*processes), redis_cpu(client), machine_cpu()
        while _applied(client, settings.key_prefix) < n_events:
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not finish")
            time.sleep(0.05)
        if settings.processor_names != ["features"]:
            runtime.wait_drained(timeout=1800)
        seconds = time.perf_counter() - started
        run = Run(seconds, cpu_seconds(*processes) - cpu0, redis_cpu(client) - rcpu0,
                  machine_busy=(machine_cpu() - machine0) / (seconds * (psutil.cpu_count() or 1)))
        idle0 = cpu_seconds(*processes)
        time.sleep(IDLE_S)  # measuring a span of time with nothing to do: the sleep is the measurement
        run.idle_share = (cpu_seconds(*processes) - idle0) / IDLE_S
        return run


def time_noop_faust(bootstrap: str, topic: str, n_records: int, tmp: Path) -> Run:
    out = tmp / f"noop-{topic}.txt"
    proc = subprocess.Popen([sys.executable, "-m", "bench._noop_agent", bootstrap, topic, str(n_records),
                             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 900
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        seconds, cpu = (float(v) for v in out.read_text().split())
        return Run(seconds, cpu)
    finally:
        proc.terminate()
        proc.wait(30)


async def time_raw_aiokafka(bootstrap: str, topics: list[str], n_records: int) -> Run:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"raw-{time.time()}", max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    count, first, cpu0 = 0, None, 0.0
    try:
        while count < n_records:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if batch and first is None:
                first, cpu0 = time.perf_counter(), time.process_time()
            count += sum(len(v) for v in batch.values())
    finally:
        await consumer.stop()
    return Run(time.perf_counter() - (first or time.perf_counter()), time.process_time() - cpu0)


def _share(run: Run) -> str:
    return f"{run.idle_share:.0%} of a core" if run.idle_share is not None else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=3, help="copies of the slice for the batched runs")
    parser.add_argument("--limit", type=int, default=None, help="events of the slice to use")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    events = list(open_dataset("trivago"))[:args.limit]
    batched = copies_of(events, args.copies)
    tmp = Path(tempfile.mkdtemp(prefix="relevo-bench-"))
    with EmbeddedStack(tmp / "servers") as stack:
        bootstrap = stack.kafka_bootstrap
        base = replace(Settings.from_env(), kafka_bootstrap_servers=bootstrap, redis_url=stack.redis_url,
                       data_dir=tmp, partitions=4, idle_s=2.0)  # the environment's settings, on the bench's stack

        log.info("producing %d events one per record", len(events))
        asyncio.run(produce(bootstrap, "single.", events, per_record=1))
        n_clicks = sum(1 for e in events if e["type"] == "click")
        noop = time_noop_faust(bootstrap, "single.events.click", n_clicks, tmp)
        single = run_worker(Settings(**{**base.__dict__, "app_id": "bench-single", "topic_prefix": "single.",
                                        "key_prefix": "b1", "processors": "features"}), len(events))

        log.info("producing %d events batched", len(batched))
        records = asyncio.run(produce(bootstrap, "many.", batched, per_record=200))
        raw = asyncio.run(time_raw_aiokafka(bootstrap, [f"many.events.{t}" for t in
                                                        ("search", "click", "purchase")], records))
        many = {processors: run_worker(Settings(**{**base.__dict__, "app_id": f"bench-many-{n}",
                                                    "topic_prefix": "many.", "key_prefix": f"b2-{n}",
                                                    "processors": processors}), len(batched))
                for n, processors in enumerate(PROCESSOR_SETS)}

    noop_rate, single_rate = n_clicks / noop.seconds, len(events) / single.seconds
    noop_cpu, single_cpu = noop.cpu_s / n_clicks * 1e6, single.cpu_s / len(events) * 1e6
    us = {p: r.cpu_s / len(batched) * 1e6 for p, r in many.items()}
    rows = [
        ["one event per record", "no-op Faust agent (baseline)", f"{n_clicks:,}", f"{noop_rate:,.0f}",
         f"{noop_cpu:.0f}", "-", "-"],
        ["one event per record", "worker: validate + features", f"{len(events):,}",
         f"{single_rate:,.0f} ({single_rate / noop_rate:.0%} of no-op; target ≥ 75%)",
         f"{single_cpu:.0f} ({single_cpu / noop_cpu:.2f}× no-op; target ≤ 1.35×)",
         f"{single.redis_cpu_s / len(events) * 1e6:.0f}", _share(single)],
        ["200 events per record", "raw aiokafka getmany (baseline)", f"{len(batched):,}",
         f"{len(batched) / raw.seconds:,.0f}", f"{raw.cpu_s / len(batched) * 1e6:.1f}", "-", "-"],
        *[["200 events per record", f"worker: {p.replace(',', ' + ')}", f"{len(batched):,}",
           f"{len(batched) / r.seconds:,.0f}",
           f"{us[p]:.0f}" + (" (target ≤ 40)" if p == PROCESSOR_SETS[-1] else ""),
           f"{r.redis_cpu_s / len(batched) * 1e6:.0f}", _share(r)] for p, r in many.items()],
    ]
    record("Stream throughput, one worker process (Trivago events)", None,
           table(["input", "consumer", "events", "events/s (wall)", "process CPU µs/event", "Redis CPU µs/event",
                  f"idle CPU, {IDLE_S:.0f} s after draining"], rows),
           notes=f"Input: the Trivago slice ({len(events):,} events); the batched runs use {args.copies} copies "
                 "with fresh ids. The no-op agent reads the click topic only (one record each). Broker (Tansu), "
                 "Redis, producer and worker share the machine's cores; CPU is the measured process's own. Idle CPU "
                 "is part of every window: at 1,000 events/s, 20% of a core is 200 µs per event. Stages in a process "
                 f"of their own (RELEVO_STAGE_PROCESS): {'yes' if base.stage_process else 'no'}. The input ends at "
                 f"once, so a source counts as idle {base.idle_s:g} s after its last record (set here, over "
                 "RELEVO_IDLE_S): the stages' windows end that much after their last event.")
    default = many[PROCESSOR_SETS[-1]]
    print(f"RESULT throughput default_cpu_us_per_event={us[PROCESSOR_SETS[-1]]:.1f} "
          f"default_events_per_s={len(batched) / default.seconds:.0f} "
          f"single_ratio_to_noop={single_rate / noop_rate:.2f} single_cpu_ratio_to_noop={single_cpu / noop_cpu:.2f} "
          f"default_idle_core_share={default.idle_share:.2f}")


if __name__ == "__main__":
    main()
