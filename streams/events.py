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

``decode_record`` runs for every Kafka record the worker reads, so it has a fast path:
msgspec decodes and checks a whole record in C against structs generated from ``COMMON`` and
``SCHEMAS`` (each field declares its msgspec wire type beside its check), a few checks run once
per record rather than per event, and the size rule's re-encode is skipped when the record is
too small to break it. The fast path is deliberately narrower than the contract: anything it
does not take as is (an unknown field, a null, an int id, a lower-case region, any invalid event)
makes it give up on the record, and the record goes through ``validate`` event by event, which
is what produces the DLQ reasons. Either way the events and rejects are the same.

>>> decode_record(orjson.dumps([ev, ev]), "click")[0] == [validate(ev), validate(ev)]
True
>>> _decode_fast(orjson.dumps([ev, {**ev, "region": "fr"}]), "click", 1024) is None  # not canonical
True
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import chain, repeat
from operator import attrgetter
from typing import Annotated, Any, Literal, Union

import msgspec
import orjson
from msgspec import UNSET, Meta, Struct, UnsetType

from relevo.core.codes import canonical_locale, canonical_region

EVENT_TYPES = ("search", "click", "purchase")
CLICK_KINDS = ("click", "view", "cart")

MAX_ID_LEN = 128
MAX_QUERY_LEN = 512
MAX_RESULTS = 500
MIN_TS_MS = 946_684_800_000  # 2000-01-01: older is a unit mistake (seconds, not ms)
MAX_FUTURE_MS = 24 * 3600 * 1000  # clocks drift, but not by a day

Event = dict[str, Any]


class InvalidEvent(ValueError):
    """An event that breaks the contract; the message is the reason sent to the DLQ."""


def _latest_ts() -> float:
    """The latest acceptable ``ts``: now, plus a day of clock drift."""
    return time.time() * 1000 + MAX_FUTURE_MS


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
    if value > _latest_ts():
        raise ValueError(f"{value} is more than a day in the future")
    return value


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


@dataclass(frozen=True)
class Field:
    """One field of the contract, as a factory below makes it (each rule is stated there once): ``check``
    is what ``validate`` runs, ``wire`` the msgspec type the fast path decodes. ``wire`` may be narrower (the
    fast path then gives up and ``validate`` decides), never wider; plain ``str`` checks only the type, so
    the fast path takes a value only when ``check`` returns it unchanged."""

    check: Callable[[Any], Any]
    wire: Any
    required: bool = True
    default: Any = None


# The factories of fields, each stating a kind of field's check and its wire type together.
# An optional field passes required=False, and its default if it has one.
ident = partial(Field, _id, Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)])  # wire: strings only
idents = partial(Field, _results, Annotated[list[ident().wire], Meta(max_length=MAX_RESULTS)])
timestamp = partial(Field, _ts, Annotated[int, Meta(ge=MIN_TS_MS)])  # the clock is checked once per record
amount = partial(Field, _amount, Annotated[float, Meta(ge=0, lt=1e9)])  # msgspec too makes a JSON int a float
amounts = partial(Field, _prices, Annotated[list[amount().wire], Meta(max_length=MAX_RESULTS)])
# Filter values on the wire: scalars or lists of them (no deeper than orjson encodes), ints in its range.
_SCALAR = str | bool | None | Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)] | float
filters = partial(Field, _filters, Annotated[dict[str, _SCALAR | list[_SCALAR]], Meta(max_length=64)])
code = partial(Field, wire=str)  # code(canonical): msgspec cannot canonicalize, so checked per record


def text(limit: int, **options: Any) -> Field:
    """A string of at most ``limit`` characters."""
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected string, got {type(value).__name__}")
        if len(value) > limit:
            raise ValueError(f"longer than {limit} characters")
        return value
    return Field(check, Annotated[str, Meta(max_length=limit)], **options)


def pattern(regex: str, what: str, **options: Any) -> Field:
    """A string that ``regex`` matches whole; ``what`` names it in the reason."""
    compiled = re.compile(regex)
    def check(value: Any) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise ValueError(f"expected {what}, got {value!r:.40}")
        return value
    empty = "?" if options.get("default") == "" else ""  # "" then means absent, and is never checked
    return Field(check, Annotated[str, Meta(pattern=rf"^(?:{regex}){empty}\Z")], **options)


def count(low: int, high: int, **options: Any) -> Field:
    """An integer in ``low..high``."""
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected integer in {low}..{high}, got {value!r:.40}")
        return value
    return Field(check, Annotated[int, Meta(ge=low, le=high)], **options)


def one_of(choices: tuple[str, ...], **options: Any) -> Field:
    """One of the strings ``choices``."""
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r:.40}")
        return value
    return Field(check, Literal[choices], **options)


COMMON: dict[str, Field] = {
    "event_id": ident(),
    "ts": timestamp(),
    "user_id": ident(),
    "session_id": ident(),
    "region": code(canonical_region),
    "locale": code(canonical_locale, required=False, default=""),
    "device": text(32, required=False, default=""),
}

SCHEMAS: dict[str, dict[str, Field]] = {
    "search": {
        "search_id": ident(),
        "query": text(MAX_QUERY_LEN, required=False, default=""),
        "results": idents(required=False, default=()),
        "prices": amounts(required=False),  # the price shown beside each result, aligned
        "filters": filters(required=False, default=None),
        "model_version": count(1, 2**31 - 1, required=False),  # the model that ordered a served list
    },
    "click": {
        "item_id": ident(),
        "search_id": ident(required=False),
        "position": count(0, 10_000, required=False),
        "kind": one_of(CLICK_KINDS, required=False, default="click"),
        "price": amount(required=False),
        "category": text(256, required=False),
    },
    "purchase": {
        "item_id": ident(),
        "order_id": ident(),
        "quantity": count(1, 100_000, required=False, default=1),
        "price": amount(),
        "currency": pattern(r"[A-Z]{3}", "an ISO 4217 code like EUR", required=False, default=""),
        "search_id": ident(required=False),
        "category": text(256, required=False),
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
    fast = _decode_fast(data, event_type, max_event_bytes)
    if fast is not None:
        return fast, []
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


# The fast path of decode_record: one msgspec struct per event type, generated from the contract.
def _struct(event_type: str) -> type[Struct]:
    """The struct of ``event_type`` events: its fields' wire types, no nulls and no unknown fields (msgspec
    would skip them more leniently than orjson parses them). An absent optional field is ``UNSET``, left out
    by ``to_builtins``, unless its default is one ``to_builtins`` hands back as is: not None, nor a tuple
    (it makes it a list; ``_decode_fast`` adds results' ())."""
    def member(name: str, spec: Field) -> tuple[Any, ...]:
        if spec.wire is str and name not in COMMON:
            raise TypeError(f"{name}: a plain str field belongs in COMMON, which _decode_fast checks")
        if spec.required:
            return name, spec.wire
        if spec.default is None or isinstance(spec.default, tuple):
            return name, spec.wire | UnsetType, UNSET
        return name, spec.wire, spec.default
    fields = [member(name, spec) for name, spec in {**COMMON, **SCHEMAS[event_type]}.items()]
    return msgspec.defstruct(f"_{event_type.title()}", fields, tag_field="type", tag=event_type,
                             kw_only=True, forbid_unknown_fields=True, gc=False)


_STRUCTS: dict[str, type[Struct]] = {name: _struct(name) for name in SCHEMAS}
_ANY = Union[tuple(_STRUCTS.values())]  # noqa: UP007 (the members are only known at run time)
_DECODERS: dict[str | None, msgspec.json.Decoder[Any]] = {
    **{name: msgspec.json.Decoder(list[struct] | struct) for name, struct in _STRUCTS.items()},
    None: msgspec.json.Decoder(list[_ANY] | _ANY),  # no topic: the type is each event's own
}
# What the wire types leave to _decode_fast, found in the contract: printable ids, canonical codes.
_FIELDS = [(name, spec) for schema in (COMMON, *SCHEMAS.values()) for name, spec in schema.items()]
_ID_FIELDS = tuple(dict.fromkeys(name for name, spec in _FIELDS if spec.check is _id))
_ID_LISTS = tuple(dict.fromkeys(name for name, spec in _FIELDS if spec.check is _results))
_CODES = [(attrgetter(name), spec.check, spec.default) for name, spec in COMMON.items() if spec.wire is str]
_ts_of = attrgetter("ts")
_ASCII_CONTROL = bytes(range(0x20)) + b"\x7f"


def _size_slack(event_type: str) -> int | None:
    """How many bytes an event's clean encoding can be longer than its raw JSON, or None when
    that is unbounded for ``event_type`` (a search has lists of floats).

    On the fast path a string, an integer or a key is never encoded longer than in any JSON that
    decodes to it, and whitespace, duplicate keys and the record around the event only add raw
    bytes. What adds up: the members filled in (``type`` and the defaults), and each float, which
    orjson may write longer than it was given (``1E8`` becomes ``100000000.0``; 24 bytes at most).
    """
    fields = {**COMMON, **SCHEMAS[event_type]}
    if any(spec.check in (_results, _prices, _filters) for spec in fields.values()):
        return None
    defaults = {name: spec.default for name, spec in fields.items() if spec.default is not None}
    floats = sum(spec.check is _amount for spec in fields.values())
    return len(orjson.dumps({"type": event_type, **defaults})) + 24 * floats


_SIZE_SLACK = {name: _size_slack(name) for name in SCHEMAS}


@lru_cache(maxsize=4096)
def _canonical(value: str, canonical: Callable[[object], str]) -> bool:
    """Whether ``value`` is valid and already in the canonical form ``canonical`` returns."""
    try:
        return canonical(value) == value
    except ValueError:
        return False


def _printable(text: str) -> bool:
    """``text.isprintable()``, about four times faster when ``text`` is ASCII."""
    if text.isascii():
        return len(text.encode("ascii").translate(None, _ASCII_CONTROL)) == len(text)
    return text.isprintable()


def _decode_fast(data: bytes, event_type: str | None, max_event_bytes: int) -> list[Event] | None:
    """The clean events of record ``data`` when it is an event or an array of events that the
    fast path takes whole (and all are valid), else None: then ``decode_record`` validates each."""
    decoder = _DECODERS.get(event_type)
    if decoder is None or type(data) is not bytes:
        return None
    try:
        structs = decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    if not isinstance(structs, list):
        structs = [structs]
    if not structs:
        return []
    if max(map(_ts_of, structs)) > _latest_ts():
        return None
    for get, canonical, default in _CODES:  # each distinct value once; the default is never checked
        if not all(_canonical(value, canonical) for value in set(map(get, structs)) if value != default):
            return None
    events: list[Event] = msgspec.to_builtins(structs)
    # Without escapes, DEL or UTF-8 every character of a string is a printable ASCII byte of data
    # (JSON forbids raw control characters in strings); otherwise every id is looked at.
    if not data.isascii() or b"\\" in data or b"\x7f" in data:
        ids = [map(dict.get, events, repeat(name), repeat("")) for name in _ID_FIELDS]
        lists = [chain.from_iterable(map(dict.get, events, repeat(name), repeat(()))) for name in _ID_LISTS]
        if not _printable("".join(chain(*ids, *lists))):
            return None
    if event_type in ("search", None):
        for event in events:
            if event["type"] == "search":
                results = event.setdefault("results", ())
                if "prices" in event and len(event["prices"]) != len(results):
                    return None
    slack = _SIZE_SLACK[event_type] if event_type else None
    if slack is None or len(data) + slack > max_event_bytes:
        if max(map(len, map(orjson.dumps, events))) > max_event_bytes:
            return None
    return events
