"""``POST /v1/events``: a batch of events (JSON array or NDJSON) into Kafka.

Each event is validated with the same contract the worker uses; the answer says,
per event, whether it was accepted and why not. Rejected events also go to the
dead-letter topic, so nothing is lost silently.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request

from relevo.serving.auth import require_ingest_key
from relevo.streams.events import InvalidEvent, validate

router = APIRouter(prefix="/v1", tags=["ingest"])


def parse_batch(body: bytes) -> list[Any]:
    """A JSON array, a single JSON object, or NDJSON (one event per line).

    >>> parse_batch(b'[{"a": 1}, {"a": 2}]')
    [{'a': 1}, {'a': 2}]
    >>> parse_batch(b'{"a": 1}\\n\\n{"a": 2}\\nnot json')[2]
    b'not json'
    """
    text = body.strip()
    if text.startswith(b"["):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise HTTPException(400, f"body is not valid JSON: {exc}") from None
        return parsed
    items: list[Any] = []
    for line in text.splitlines():
        if line.strip():
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                items.append(line)  # kept as bytes: reported per event below
    return items


@router.post("/events", dependencies=[Depends(require_ingest_key)])
async def ingest_events(request: Request) -> dict[str, Any]:
    settings = request.app.state.settings
    body = await request.body()
    if len(body) > settings.max_batch_bytes:
        raise HTTPException(413, f"body of {len(body)} bytes exceeds {settings.max_batch_bytes}")
    items = parse_batch(body)
    if len(items) > settings.max_batch_events:
        raise HTTPException(413, f"{len(items)} events exceed the limit of {settings.max_batch_events}")
    accepted, results, rejects = [], [], []
    for index, item in enumerate(items):
        event_id = item.get("event_id") if isinstance(item, dict) else None
        try:
            if isinstance(item, bytes):
                raise InvalidEvent("malformed JSON")
            event = validate(item)
        except InvalidEvent as exc:
            results.append({"index": index, "event_id": event_id, "accepted": False, "reason": str(exc)})
            rejects.append((item if isinstance(item, bytes) else orjson.dumps(item), str(exc)))
            continue
        accepted.append(event)
        results.append({"index": index, "event_id": event_id, "accepted": True})
    ingest = request.app.state.ingest
    await ingest.send(accepted)
    for raw, reason in rejects:
        await ingest.dead_letter(raw, reason)
    return {"accepted": len(accepted), "rejected": len(rejects), "results": results}
