"""Served lists label themselves: what ``/v1/search`` and ``/v1/rank`` showed, as a search event.

Each answer carries a ``search_id`` and the list it served goes to ``events.search``
(results in the order served, prices when every one is known, region, locale and the
model version that ordered it) through the API's producer, before the answer returns,
stamped with the stream clock (``stream_time``) so a replayed stream never sees a list from the future.
A click or purchase that carries the ``search_id`` joins that list in the examples
builder, so it becomes a labelled example without the shop re-sending anything (the
round trip of Algolia's ``queryID``, inside the stream).

>>> event = served_event("q1", ts=1_700_000_000_000, user_id="u", session_id="s", region="fr",
...                      locale=None, query="", items=["a", "b"], prices=[9.5, None], model_version=3)
>>> event["search_id"] == event["event_id"] == "q1", event["region"], "prices" in event, event["model_version"]
(True, 'FR', False, 3)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException, Request

from relevo.streams.events import Event, InvalidEvent, validate


def new_search_id() -> str:
    return uuid.uuid4().hex


async def stream_time(request: Request) -> int:
    """When a list is served: the stream clock, the event time the features are read as of (a replay of
    2018 stays in 2018; live, it is about now), else the wall clock when no worker has set one."""
    store = getattr(request.app.state, "store", None)  # an app serving search alone has no online store
    return (await store.clock() if store is not None else 0) or int(time.time() * 1000)


def served_event(search_id: str, *, ts: int, user_id: str, session_id: str, region: str, locale: str | None,
                 query: str, items: Sequence[str], prices: Sequence[float | None],
                 model_version: int | None, device: str = "", filters: dict[str, Any] | None = None) -> Event:
    """The search event of a served list, checked by the event contract (422 with its reason)."""
    raw = {"type": "search", "event_id": search_id, "search_id": search_id, "ts": ts, "user_id": user_id,
           "session_id": session_id, "region": region, "locale": locale, "query": query,
           "results": list(items), "model_version": model_version, "device": device, "filters": filters}
    if prices and all(price is not None for price in prices):
        raw["prices"] = list(prices)
    try:
        return validate(raw)
    except InvalidEvent as exc:
        raise HTTPException(422, detail=str(exc)) from None


async def record(request: Request, event: Event) -> None:
    """Produce the served list to ``events.search``; returns once the broker has it."""
    await request.app.state.ingest.send([event])
