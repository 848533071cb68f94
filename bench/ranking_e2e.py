"""Ranking quality through the whole system: Kafka -> worker (examples) -> trainer -> registry.

The Trivago slice is replayed onto the embedded broker at ``--speed`` times real
time; the worker's examples processor builds labelled lists behind its
watermark, the trainer worker scores each batch with the serving version before
learning from it and records, on the same lists, the session rule's MRR (the
"items the session touched first" baseline). This bench sums those prequential
figures (``relevo.models.live_mrr``) over every version the run published, in windows of about equal
clickouts, so the table shows the live MRR as the model learns. Per-country
figures and the other baselines are in ``bench.ranking`` (in process, same
classes, same ordering).

    python -m bench.ranking_e2e [--speed 2000] [--limit EVENTS]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

from bench.report import record, table
from relevo.core.settings import SHARED_DATA, Settings
from relevo.models.live_mrr import wait_until_quiet, windows
from relevo.models.registry import Registry
from relevo.runtime.processes import Runtime
from relevo.streams.datasets import trivago
from relevo.streams.producer import EventProducer
from relevo.streams.replay import replay

log = logging.getLogger(__name__)
TRIVAGO = SHARED_DATA / "trivago" / "trivago_val_100k.parquet"


async def send(settings: Settings, events: list[dict], speed: float) -> None:
    async with EventProducer(settings.kafka_bootstrap_servers, settings.topic_prefix,
                             settings.partitions) as producer:
        await replay(events, producer, speed=speed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=2000.0, help="times real time (the slice spans 2 days)")
    parser.add_argument("--limit", type=int, default=None, help="events to replay (default: all)")
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    events = list(trivago.events(TRIVAGO))[: args.limit]
    with tempfile.TemporaryDirectory() as root:
        settings = Settings(data_dir=Path(root), registry_dir=str(Path(root) / "models"),
                            registry_keep=0)  # the live MRR reads every version's figures
        with Runtime(settings, workers=1, api=False, trainer=True) as runtime:
            runtime.wait_workers_ready()
            started = time.monotonic()
            asyncio.run(send(runtime.settings, events, args.speed))
            replayed_s = time.monotonic() - started
            versions = wait_until_quiet(Registry(settings.registry_dir), quiet_s=15, timeout_s=300)
            elapsed = time.monotonic() - started
    rows = [[f"v{w.first}-v{w.last}", w.clickouts, w.model_mrr, w.rule_mrr, w.lift]
            for w in windows(versions, args.windows)]
    rows += [["all", w.clickouts, w.model_mrr, w.rule_mrr, w.lift] for w in windows(versions, count=1)]
    refused = "versions only: refused updates publish nothing and are not counted"
    notes = (f"- {len(events):,} Trivago events replayed at {args.speed:g}x in {replayed_s:.0f} s; "
             f"{len(versions)} versions published; wall time {elapsed:.0f} s ({refused})\n"
             f"- clickouts are counted once, in the update whose model ranked them before learning from them")
    record("Ranking quality end to end through Kafka (worker examples -> trainer -> registry)", None,
           table(["versions", "clickouts", "model MRR", "session rule MRR", "lift"], rows), notes)


if __name__ == "__main__":
    main()
