"""``POST /v1/events``: a batch of events (JSON array or NDJSON) into Kafka.

Each event is validated with the same contract and the same size rule the worker
uses (``relevo.streams.events``), so an accepted event is never dead-lettered
later; the answer says, per event, whether it was accepted and why not.
Rejected events go to the dead-letter topic with their reason, sent together
with the accepted ones. Before anything is produced the whole request is
checked: a body over ``RELEVO_MAX_BATCH_BYTES`` is refused while it streams in
(413, never read whole), and an item that could not be dead-lettered (deeper
than JSON encoding allows, or larger than a Kafka record) refuses the request
(413/422) with nothing produced.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request

from relevo.serving.auth import INGEST
from relevo.serving.schemas import ERRORS, IngestAnswer, batch_body
from relevo.streams.events import InvalidEvent, encoded, validate

router = APIRouter(prefix="/v1", tags=["ingest"])
MAX_RECORD_BYTES = 1_000_000  # what one Kafka record (a dead letter) can carry, with its headers


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {int(declared)} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


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
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise HTTPException(400, f"body is not valid JSON: {exc}") from None
    items: list[Any] = []
    for line in text.splitlines():
        if line.strip():
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                items.append(line)  # kept as bytes: reported per event below
    return items


def _raw(index: int, item: Any) -> bytes:
    """What the DLQ keeps of a rejected item: its bytes, or a 4xx for the whole request."""
    if isinstance(item, bytes):
        raw = item
    else:
        try:
            raw = orjson.dumps(item)
        except orjson.JSONEncodeError as exc:
            raise HTTPException(422, f"event {index} cannot be encoded ({exc}); nothing was accepted") from None
    if len(raw) > MAX_RECORD_BYTES:
        raise HTTPException(413, f"event {index} is {len(raw)} bytes, more than a dead letter can hold "
                                 f"({MAX_RECORD_BYTES}); nothing was accepted")
    return raw


@router.post("/events", dependencies=[INGEST], response_model=IngestAnswer,
             openapi_extra=batch_body("Event", "events"),
             responses={**ERRORS, 413: ERRORS[503] | {"description": "the batch is too large"}})
async def ingest_events(request: Request) -> dict[str, Any]:
    """A batch of events (a JSON array, one object, or NDJSON); each is accepted or rejected with its reason."""
    settings = request.app.state.settings
    items = parse_batch(await read_body(request, settings.max_batch_bytes))
    if not isinstance(items, list):
        items = [items]
    if len(items) > settings.max_batch_events:
        raise HTTPException(413, f"{len(items)} events exceed the limit of {settings.max_batch_events}")
    accepted, results, rejects = [], [], []
    for index, item in enumerate(items):
        event_id = item.get("event_id") if isinstance(item, dict) else None
        try:
            if isinstance(item, bytes):
                raise InvalidEvent("malformed JSON: not a JSON value")
            event = validate(item)
            encoded(event, settings.max_event_bytes)
        except InvalidEvent as exc:
            results.append({"index": index, "event_id": _echo(event_id), "accepted": False, "reason": str(exc)})
            rejects.append((_raw(index, item), str(exc)))
            continue
        accepted.append(event)
        results.append({"index": index, "event_id": _echo(event_id), "accepted": True})
    await request.app.state.ingest.send(accepted, rejects)
    return {"accepted": len(accepted), "rejected": len(rejects), "results": results}


def _echo(event_id: Any) -> Any:
    """The event id as sent, when it is a short scalar (the answer never grows with hostile ids)."""
    if isinstance(event_id, str):
        return event_id[:200]
    return event_id if type(event_id) is int and abs(event_id) < 2 ** 63 else None
