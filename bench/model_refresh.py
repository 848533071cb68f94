"""Model refresh latency over Kafka: a click reaches the examples builder -> a serving model trained on it.

Trivago events are replayed at a steady pace with their timestamps moved to
now, so event time runs with the wall clock. The examples builder emits to
``train.batches`` on the embedded broker, the trainer worker (``run_trainer``)
updates and announces on ``model.updates``, and two serving replicas follow: one
pushed by ``model.updates`` (``follow_updates``), one polling the registry every
2 s (``LiveModel.watch``, the baseline). The Faust hop in front of the builder
is not included (see the feature-freshness benchmark for it).

    python -m bench.model_refresh [--seconds 40] [--rate 200] [--wait-s 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import torch
from aiokafka import AIOKafkaProducer

from bench.ranking import TRIVAGO
from bench.report import record, table
from relevo.core.settings import Settings
from relevo.models.examples import ExamplesBuilder, record_emitter
from relevo.models.live import LiveModel
from relevo.models.registry import Registry
from relevo.models.trainer import Trainer
from relevo.models.trainer_worker import run_trainer
from relevo.runtime.stack import kafka_server
from relevo.streams.datasets import trivago
from relevo.streams.follow import follow_updates
from relevo.streams.topics import TRAIN_BATCHES, ensure_topics


async def measure(settings: Settings, root: Path, seconds: float, rate: float, wait_s: float,
                  batch_size: int) -> dict[str, list[float]]:
    await ensure_topics(settings)
    registry, stop = Registry(root), asyncio.Event()
    pushed, polled = LiveModel(registry), LiveModel(registry)
    tasks = [asyncio.create_task(run_trainer(settings, Trainer(registry), stop)),
             asyncio.create_task(follow_updates(pushed.refresh, settings, stop)),
             asyncio.create_task(polled.watch(2.0))]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    topic = settings.topic(TRAIN_BATCHES)
    # the worker's own emitter (records of at most 64 examples), over a producer of this process
    builder = ExamplesBuilder(record_emitter(lambda value: producer.send_and_wait(topic, value)), wait_s=wait_s,
                              batch_size=batch_size, batch_age_s=1.0)
    clicks: list[tuple[int, float]] = []  # (event time, wall time) of every clickout's click
    seen: dict[str, dict[int, float]] = {"model.updates": {}, "registry polling": {}}
    await asyncio.sleep(3)  # let the trainer's consumer group settle
    started = time.perf_counter()
    events = trivago.events(TRIVAGO)
    while time.perf_counter() - started < seconds:
        event = {**next(events), "ts": int(time.time() * 1000)}
        await builder.process([event])
        if event["type"] == "click" and event.get("search_id"):
            clicks.append((event["ts"], time.perf_counter()))
        for name, live in (("model.updates", pushed), ("registry polling", polled)):
            if live.version is not None and live.version not in seen[name]:
                seen[name][live.version] = time.perf_counter()
        await asyncio.sleep(1 / rate)
    stop.set()
    tasks[2].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await producer.stop()
    latencies: dict[str, list[float]] = {}
    for name, versions in seen.items():
        # a click is learned by the first serving version whose training window reaches its time
        served = sorted((registry.get(v).window[1], at) for v, at in versions.items())
        latencies[name] = [next(at for end, at in served if end >= ts) - wall
                           for ts, wall in clicks if any(end >= ts for end, _ in served)]
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="how long to stream")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--wait-s", type=float, default=2.0, help="event-time wait for late outcomes")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per training batch")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp, kafka_server(Path(tmp) / "kafka") as broker:
        settings = Settings(kafka_bootstrap_servers=f"127.0.0.1:{broker.port}", partitions=1,
                            session_timeout_s=6.0)
        latencies = asyncio.run(measure(settings, Path(tmp) / "models", args.seconds, args.rate,
                                        args.wait_s, args.batch_size))
    rows = []
    for name, values in latencies.items():
        values = sorted(values) or [float("nan")]
        rows.append([name, len(values), statistics.median(values), values[int(len(values) * 0.95)], values[-1]])
    record("Model refresh latency over Kafka (click -> serving model trained on it)", None,
           table(["serving follows", "clicks learned", "p50 s", "p95 s", "max s"], rows),
           f"- {args.rate:g} events/s for {args.seconds:g} s; examples wait {args.wait_s:g} s of event time "
           f"for late outcomes, batches of {args.batch_size} or 1 s; trainer on "
           f"{'cuda' if torch.cuda.is_available() else 'cpu'}; target <= 30 s")


if __name__ == "__main__":
    main()
