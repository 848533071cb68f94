"""Our own event format: one JSON event, or a JSON array of events, per line.

Every event is validated against the contract. Nothing is lost silently: each
bad line or event becomes a ``Reject`` (appended to ``rejects`` when given) and
is counted in a warning. Events come out sorted by ``ts`` (stable, so equal
times keep file order), which means the file is read whole.

>>> import tempfile
>>> ok = ('{"type": "click", "event_id": "e%d", "ts": %d, "user_id": "u", "session_id": "s",'
...       ' "region": "FR", "item_id": "9"}')
>>> path = Path(tempfile.mkdtemp()) / "events.ndjson"
>>> _ = path.write_text("\\n".join([ok % (1, 1541599524000), "not json", "", ok % (2, 1541599523000)]))
>>> rejects = []
>>> [e["event_id"] for e in events(path, rejects)], [r.reason[:14] for r in rejects]
(['e2', 'e1'], ['line 2: malfor'])
>>> path.unlink(); path.parent.rmdir()
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from relevo.streams.events import Event, Reject, decode_record

log = logging.getLogger(__name__)


def events(path: Path, rejects: list[Reject] | None = None) -> Iterator[Event]:
    """Validated events from an NDJSON file, in event-time order; bad lines go to ``rejects``."""
    found: list[Event] = []
    bad: list[Reject] = []
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            good, wrong = decode_record(line.rstrip(b"\r\n"))
            found += good
            bad += [Reject(r.raw, f"line {number}: {r.reason}") for r in wrong]
    if bad:
        log.warning("%s: %d invalid events skipped, first: %s", path, len(bad), bad[0].reason)
    if rejects is not None:
        rejects += bad
    found.sort(key=lambda event: event["ts"])
    yield from found
