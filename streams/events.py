"""The event contract: one schema for search, click and purchase events.

The same ``validate`` runs at the HTTP edge and in the stream, so an event the
API accepted is never rejected later for a different reason.

>>> ev = {"type": "click", "event_id": "e1", "ts": 1541599523000, "user_id": "u1",
...       "session_id": "s1", "region": "FR", "locale": "fr-FR", "item_id": "42"}
>>> validate(ev)["kind"]
'click'
>>> validate({**ev, "ts": "yesterday"})
Traceback (most recent call last):
...
relevo.streams.events.InvalidEvent: ts: expected integer epoch milliseconds, got str
>>> events, rejects = decode_record(b'[{"type": "click"}, 7]', "click")
>>> events, [r.reason for r in rejects]
([], ['event_id: required', 'event: not a JSON object'])

The size rule is the same everywhere too: an event is measured as its clean encoding
(what ``encode`` makes of the validated event, which is what the API produces), so the
API and the worker accept exactly the same events, whatever else shares the record.

>>> len(encoded(validate(ev), 1024))
157
>>> encoded(validate({**ev, "item_id": "x" * 100}), 128)
Traceback (most recent call last):
...
relevo.streams.events.InvalidEvent: event: 255 bytes exceed the limit of 128 per event
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from relevo.core.codes import canonical_locale, canonical_region

EVENT_TYPES = ("search", "click", "purchase")
CLICK_KINDS = ("click", "view", "cart")

MAX_ID_LEN = 128
MAX_QUERY_LEN = 512
MAX_RESULTS = 500
MIN_TS_MS = 946_684_800_000  # 2000-01-01: older is a unit mistake (seconds, not ms)
MAX_FUTURE_MS = 24 * 3600 * 1000  # clocks drift, but not by a day

_CURRENCY = re.compile(r"[A-Z]{3}")

Event = dict[str, Any]


class InvalidEvent(ValueError):
    """An event that breaks the contract; the message is the reason sent to the DLQ."""


def _id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"expected string id, got {type(value).__name__}")
    value = str(value)
    if not value or len(value) > MAX_ID_LEN:
        raise ValueError(f"id length must be 1..{MAX_ID_LEN}, got {len(value)}")
    if not value.isprintable():
        raise ValueError("id has control characters")
    return value


def _ts(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected integer epoch milliseconds, got {type(value).__name__}")
    if value < MIN_TS_MS:
        raise ValueError(f"{value} is before 2000-01-01 (seconds instead of milliseconds?)")
    if value > time.time() * 1000 + MAX_FUTURE_MS:
        raise ValueError(f"{value} is more than a day in the future")
    return value


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not regex.fullmatch(value):
            raise ValueError(f"expected {what}, got {value!r:.40}")
        return value
    return check


def _text(limit: int) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected string, got {type(value).__name__}")
        if len(value) > limit:
            raise ValueError(f"longer than {limit} characters")
        return value
    return check


def _count(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected integer in {low}..{high}, got {value!r:.40}")
        return value
    return check


def _amount(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise ValueError(f"expected a non-negative number, got {value!r:.40}")
    return float(value)


def _results(value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_RESULTS:
        raise ValueError(f"expected a list of at most {MAX_RESULTS} item ids")
    # The common case checked in bulk: a search shows dozens of ids, and this runs per event.
    if all(type(v) is str and 0 < len(v) <= MAX_ID_LEN for v in value) and "".join(value).isprintable():
        return value
    return [_id(v) for v in value]


def _prices(value: Any) -> list[float]:
    if not isinstance(value, list) or len(value) > MAX_RESULTS:
        raise ValueError(f"expected a list of at most {MAX_RESULTS} prices, one per result")
    return [_amount(v) for v in value]


def _filters(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) > 64:
        raise ValueError("expected an object of at most 64 filters")
    return value


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r:.40}")
        return value
    return check


@dataclass(frozen=True)
class Field:
    """One field of the contract: its check, and its default when optional."""

    check: Callable[[Any], Any]
    required: bool = True
    default: Any = None


COMMON: dict[str, Field] = {
    "event_id": Field(_id),
    "ts": Field(_ts),
    "user_id": Field(_id),
    "session_id": Field(_id),
    "region": Field(canonical_region),
    "locale": Field(canonical_locale, required=False, default=""),
    "device": Field(_text(32), required=False, default=""),
}

SCHEMAS: dict[str, dict[str, Field]] = {
    "search": {
        "search_id": Field(_id),
        "query": Field(_text(MAX_QUERY_LEN), required=False, default=""),
        "results": Field(_results, required=False, default=()),
        "prices": Field(_prices, required=False),  # the price shown beside each result, aligned
        "filters": Field(_filters, required=False, default=None),
        "model_version": Field(_count(1, 2**31 - 1), required=False),  # the model that ordered a served list
    },
    "click": {
        "item_id": Field(_id),
        "search_id": Field(_id, required=False),
        "position": Field(_count(0, 10_000), required=False),
        "kind": Field(_one_of(CLICK_KINDS), required=False, default="click"),
        "price": Field(_amount, required=False),
        "category": Field(_text(256), required=False),
    },
    "purchase": {
        "item_id": Field(_id),
        "order_id": Field(_id),
        "quantity": Field(_count(1, 100_000), required=False, default=1),
        "price": Field(_amount),
        "currency": Field(_pattern(_CURRENCY, "an ISO 4217 code like EUR"), required=False, default=""),
        "search_id": Field(_id, required=False),
        "category": Field(_text(256), required=False),
    },
}


def validate(raw: Any, event_type: str | None = None) -> Event:
    """Check ``raw`` against the contract and return a clean event.

    ``event_type`` is the type implied by the topic; an event that names a
    different ``type`` is rejected. Unknown fields are dropped.
    """
    if not isinstance(raw, dict):
        raise InvalidEvent("event: not a JSON object")
    declared = raw.get("type", event_type)
    if declared not in SCHEMAS:
        raise InvalidEvent(f"type: expected one of {', '.join(EVENT_TYPES)}, got {declared!r:.40}")
    if event_type is not None and declared != event_type:
        raise InvalidEvent(f"type: {declared!r} event on the {event_type} topic")
    event: Event = {"type": declared}
    for schema in (COMMON, SCHEMAS[declared]):
        for name, spec in schema.items():
            value = raw.get(name)
            if value is None or (value == "" and spec.default == ""):
                if spec.required:
                    raise InvalidEvent(f"{name}: required")
                if spec.default is not None:
                    event[name] = spec.default
                continue
            try:
                event[name] = spec.check(value)
            except ValueError as exc:
                raise InvalidEvent(f"{name}: {exc}") from None
    if "prices" in event and len(event["prices"]) != len(event["results"]):
        raise InvalidEvent(f"prices: {len(event['prices'])} prices for {len(event['results'])} results")
    return event


def encoded(event: Event, max_bytes: int) -> bytes:
    """The wire form of a validated ``event``, or ``InvalidEvent`` when it breaks the size rule:
    more than ``max_bytes``, or nested deeper than JSON encoding allows (orjson: 254 levels)."""
    try:
        data = orjson.dumps(event)
    except orjson.JSONEncodeError as exc:
        raise InvalidEvent(f"event: cannot be encoded ({exc})") from None
    if len(data) > max_bytes:
        raise InvalidEvent(f"event: {len(data)} bytes exceed the limit of {max_bytes} per event")
    return data


@dataclass(frozen=True)
class Reject:
    """Something that failed validation: the original bytes and why."""

    raw: bytes
    reason: str


def decode_record(data: bytes, event_type: str | None = None,
                  max_event_bytes: int = 64 * 1024) -> tuple[list[Event], list[Reject]]:
    """Decode one Kafka record (an event or a JSON array of events) and validate each,
    with the size rule of ``encoded`` per event (a large neighbour never rejects a small event).

    Never raises: whatever cannot be used comes back as a ``Reject``.
    """
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return [], [Reject(data, f"malformed JSON: {exc}")]
    items = parsed if isinstance(parsed, list) else [parsed]
    events: list[Event] = []
    rejects: list[Reject] = []
    for item in items:
        try:
            event = validate(item, event_type)
            encoded(event, max_event_bytes)
            events.append(event)
        except InvalidEvent as exc:
            rejects.append(Reject(data if len(items) == 1 else _item_bytes(item, data), str(exc)))
    return events, rejects


def _item_bytes(item: Any, record: bytes) -> bytes:
    """One item of a record as bytes; the whole record when the item cannot be re-encoded."""
    try:
        return orjson.dumps(item)
    except orjson.JSONEncodeError:
        return record


def encode(event: Event | list[Event]) -> bytes:
    """The wire form of an event, or of a batch of events in one record."""
    return orjson.dumps(event)
