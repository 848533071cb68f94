"""Recording benchmark results: every run appends a dated section to bench/RESULTS.md."""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
log = logging.getLogger(__name__)


def machine() -> str:
    """Cores, memory and CPU of this machine, as one line."""
    mem_gib = 0.0
    try:
        with open("/proc/meminfo") as fh:
            kib = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
        mem_gib = kib / 1024 / 1024
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0]  # other work on the machine skews every figure: say how much there was
    return (f"{os.cpu_count()} cores, {mem_gib:.0f} GiB RAM, {platform.machine()}, "
            f"Python {platform.python_version()}, load average {load:.1f} when recorded")


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A markdown table; floats get three significant decimals."""
    def cell(value: object) -> str:
        return f"{value:,.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def record(title: str, command: str | None, table_md: str, notes: str = "") -> None:
    """Print the table and append it, with date, machine and command, to RESULTS.md."""
    if command is None:
        main = sys.modules["__main__"]
        module = main.__spec__.name if main.__spec__ else sys.argv[0]
        # settings given in the environment change the run as much as its arguments; API keys are
        # secrets and never go into a committed file
        settings = [f"{k}={v}" for k, v in sorted(os.environ.items())
                    if k.startswith("RELEVO_") and k != "RELEVO_BENCH_RECORD" and not k.endswith("_KEYS")]
        command = " ".join([*settings, "python -m", module, *sys.argv[1:]])
    section = "\n".join([
        f"## {title}",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {machine()}",
        f"- command: `{command}`",
        "",
        table_md,
        "",
        *([notes, ""] if notes else []),
    ])
    print(section)
    if os.environ.get("RELEVO_BENCH_RECORD", "1") == "0":  # a trial run: print, keep RESULTS.md as it is
        return
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEvery section is appended by a benchmark run; "
                           "newest last.\n\n")
    with RESULTS.open("a") as fh:
        fh.write(section + "\n")
    log.info("recorded %r in %s", title, RESULTS)
