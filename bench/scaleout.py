"""Scale-out: the default worker as one process and as two on the same stream.

The Trivago slice (``--copies`` copies with fresh ids, 200 events per record) goes
into the embedded broker once per run; one worker, then two workers in one consumer
group, read it with the default processors (features, drift, suggestions, examples, analytics:
the region and global stages included) until everything is applied and the stages
have drained. The speedup is the two-worker rate over the one-worker rate of the same
run (target ≥ 1.6). On a 2-core machine the broker, Redis and the workers share the
cores, so the CPU columns say how much of the gap is the machine.

    python -m bench.scaleout [--copies 2] [--limit N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import psutil

from bench.report import record, table
from bench.throughput import copies_of, produce, run_worker
from relevo.core.settings import Settings
from relevo.runtime.stack import EmbeddedStack
from relevo.streams.datasets import open_dataset

log = logging.getLogger("bench.scaleout")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2, help="copies of the slice")
    parser.add_argument("--limit", type=int, default=None, help="events of the slice to use")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    events = copies_of(list(open_dataset("trivago"))[:args.limit], args.copies)
    tmp = Path(tempfile.mkdtemp(prefix="relevo-scaleout-"))
    runs = {}
    with EmbeddedStack(tmp / "servers") as stack:
        base = replace(Settings.from_env(), kafka_bootstrap_servers=stack.kafka_bootstrap, redis_url=stack.redis_url,
                       data_dir=tmp, partitions=4, idle_s=2.0, topic_prefix="scale.")
        log.info("producing %d events, 200 per record", len(events))
        asyncio.run(produce(stack.kafka_bootstrap, "scale.", events, per_record=200))
        for workers in (1, 2):
            log.info("%d worker(s)", workers)
            runs[workers] = run_worker(Settings(**{**base.__dict__, "app_id": f"scale-{workers}",
                                                   "key_prefix": f"s{workers}"}), len(events), workers)
    rates = {w: len(events) / r.seconds for w, r in runs.items()}
    rows = [[f"{w} worker{'s' if w > 1 else ''}" + (" (baseline)" if w == 1 else ""), f"{len(events):,}",
             f"{rates[w]:,.0f}", f"{rates[w] / rates[1]:.2f}×", f"{r.cpu_s / len(events) * 1e6:.0f}",
             f"{r.redis_cpu_s / len(events) * 1e6:.0f}", f"{r.machine_busy:.0%}"] for w, r in runs.items()]
    record("Scale-out: one and two worker processes on the same stream", None,
           table(["workers", "events", "events/s (wall)", "speedup", "workers' CPU µs/event", "Redis CPU µs/event",
                  "machine's cores busy"], rows),
           notes=f"{psutil.cpu_count()} cores shared by the broker, Redis and the workers (load average "
                 f"{os.getloadavg()[0]:.1f} at the end). Machine's cores busy: every process's CPU over the window "
                 "(psutil), the broker's, Redis's and the producer's included: a second worker needs cores left "
                 "over. Target speedup ≥ 1.6.")
    print(f"RESULT scaleout speedup={rates[2] / rates[1]:.2f} one_worker_machine_busy={runs[1].machine_busy:.2f} "
          f"two_workers_machine_busy={runs[2].machine_busy:.2f}")


if __name__ == "__main__":
    main()
