"""A Faust agent that does nothing with its records: the ceiling our worker is measured against.

Not a benchmark: ``bench.throughput`` runs it as ``python -m bench._noop_agent BOOTSTRAP TOPIC N OUT``
and prints the RESULT line. It consumes N records
and writes to OUT the seconds between the first and the Nth, and the process's CPU
seconds (user + system) over the same span.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import faust

from relevo.core.settings import Settings
from relevo.streams.app import _fetch_max_wait


def main(bootstrap: str, topic: str, n: int, out: Path) -> None:
    _fetch_max_wait(Settings.from_env().fetch_max_wait_ms)  # the same consumer settings as our worker
    app = faust.App(f"noop-{topic}", broker=f"kafka://{bootstrap}", store="memory://", web_enabled=False,
                    consumer_auto_offset_reset="earliest", broker_session_timeout=6,
                    broker_heartbeat_interval=2, datadir=str(out.parent / f"faust-noop-{topic}"))
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")

    @app.agent(source)
    async def noop(stream: faust.Stream) -> None:
        count, first, cpu = 0, 0.0, 0.0
        async for _ in stream:
            count += 1
            if count == 1:
                first, cpu = time.perf_counter(), time.process_time()
            if count == n:
                partial = out.with_suffix(".partial")  # renamed when whole: the reader polls for ``out``
                partial.write_text(f"{time.perf_counter() - first} {time.process_time() - cpu}")
                partial.replace(out)

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
