"""Supervision: restart what failed, after a growing pause, and say what happened.

``Backoff`` is the one restart policy (``relevo up`` uses it for child processes);
``Supervisor`` applies it to a process's own asyncio tasks (the API's followers of
Kafka topics): a task that raises is logged and started again, and ``status()``
says, per task, whether it runs and how often it failed, for ``/readyz``.

>>> b = Backoff(first_s=1.0, max_s=8.0, stable_s=60.0)
>>> [b.next_delay(now=0.0) for _ in range(5)]
[1.0, 2.0, 4.0, 8.0, 8.0]
>>> b.started(now=100.0); b.next_delay(now=200.0)  # it ran long enough: start over
1.0
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Delays between restarts: doubling from ``first_s`` up to ``max_s``, reset after a run
    of ``stable_s`` without failing."""

    first_s: float = 1.0
    max_s: float = 30.0
    stable_s: float = 60.0
    failures: int = 0
    _since: float = field(default=0.0, repr=False)

    def started(self, now: float | None = None) -> None:
        self._since = time.monotonic() if now is None else now

    def next_delay(self, now: float | None = None) -> float:
        """How long to wait before the next start, after a failure now."""
        now = time.monotonic() if now is None else now
        if self._since and now - self._since >= self.stable_s:
            self.failures = 0
        self._since = 0.0
        self.failures += 1
        return min(self.max_s, self.first_s * 2 ** (self.failures - 1))


@dataclass
class TaskStatus:
    running: bool = False
    restarts: int = 0
    last_error: str | None = None


class Supervisor:
    """Runs named coroutines as tasks, restarting each one that raises, until ``stop()``."""

    def __init__(self, backoff: Callable[[], Backoff] = Backoff) -> None:
        self._backoff = backoff
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._status: dict[str, TaskStatus] = {}

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run()`` under ``name``; a run that returns is finished, one that raises restarts."""
        self._status[name] = TaskStatus()
        self._tasks[name] = asyncio.create_task(self._keep(name, run), name=name)

    async def _keep(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        status, backoff = self._status[name], self._backoff()
        while True:
            status.running = True
            backoff.started()
            try:
                await run()
                status.running = False
                return
            except asyncio.CancelledError:
                status.running = False
                raise
            except Exception as exc:  # anything: this task restarts, the process serves on
                status.running = False
                status.restarts += 1
                status.last_error = f"{type(exc).__name__}: {exc}"[:300]
                delay = backoff.next_delay()
                log.warning("%s failed (%s); restarting in %.1fs (restart %d)", name, status.last_error, delay,
                            status.restarts)
                await asyncio.sleep(delay)

    def status(self) -> dict[str, TaskStatus]:
        return dict(self._status)

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Cancel every task; wait at most ``timeout_s`` (a task inside a thread ends when the thread does)."""
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks.values(), timeout=timeout_s)
