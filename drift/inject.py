"""Planted drift for benchmarks and demos: rewrite a replayed stream from a chosen time on.

Both take and return an iterable of events, so they chain in front of any replay.

>>> base = {"region": "BR", "user_id": "u", "session_id": "s"}
>>> stream = [{**base, "type": "search", "ts": t, "search_id": f"q{t}", "results": ["a", "b", "c"]}
...           for t in range(100)]
>>> stream += [{**base, "type": "click", "kind": "click", "ts": t, "search_id": f"q{t}", "item_id": "a",
...             "position": 0} for t in range(100)]
>>> len([e for e in drop_clicks(stream, "BR", start_ts=50, fraction=0.5) if e["type"] == "click"])
79
>>> moved = [e for e in random_clicks(stream, "BR", start_ts=50) if e["type"] == "click" and e["ts"] >= 50]
>>> sorted({e["position"] for e in moved}), all(e["item_id"] == "abc"[e["position"]] for e in moved)
([0, 1, 2], True)
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from relevo.streams.events import Event


def _clicks_in(event: Event, region: str, start_ts: int) -> bool:
    return (event["type"] == "click" and event.get("kind", "click") == "click"
            and event["region"] == region and event["ts"] >= start_ts)


def drop_clicks(events: Iterable[Event], region: str, start_ts: int, fraction: float,
                seed: int = 0) -> Iterator[Event]:
    """Lose ``fraction`` of ``region``'s clicks from ``start_ts`` on: a click-through drop."""
    rng = random.Random(seed)
    for event in events:
        if not (_clicks_in(event, region, start_ts) and rng.random() < fraction):
            yield event


def random_clicks(events: Iterable[Event], region: str, start_ts: int, seed: int = 0) -> Iterator[Event]:
    """Make ``region``'s clicks on search results land on a random result from ``start_ts`` on.

    Click-through stays the same; its quality (the rank of what is clicked) collapses.
    """
    rng = random.Random(seed)
    results: dict[str, list[str]] = {}  # search_id -> results, for the region's recent searches
    for event in events:
        if event["type"] == "search" and event["region"] == region and event.get("results"):
            results[event["search_id"]] = event["results"]
            if len(results) > 10_000:
                del results[next(iter(results))]
        shown = results.get(event.get("search_id") or "")
        if shown and _clicks_in(event, region, start_ts):
            position = rng.randrange(len(shown))
            event = {**event, "item_id": shown[position], "position": position}
        yield event
