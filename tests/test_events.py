"""decode_record's fast path (msgspec, per record) gives exactly what validating each event gives."""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import pytest

from relevo.streams import events
from relevo.streams.events import decode_record, validate

NOW = int(time.time() * 1000)
CLICK = {"type": "click", "event_id": "e1", "ts": 1541599523000, "user_id": "u1", "session_id": "s1",
         "region": "FR", "locale": "fr-FR", "device": "mobile", "item_id": "42", "kind": "view"}
SEARCH = {"type": "search", "event_id": "q1", "ts": 1541599523000, "user_id": "u1", "session_id": "s1",
          "region": "DE", "locale": "de-DE", "search_id": "q1", "query": "Zürich", "results": ["1", "2", "3"],
          "prices": [1.5, 2, 3e2], "filters": {"Pool": True, "stars": [4, 5]}, "model_version": 3}
PURCHASE = {"type": "purchase", "event_id": "p1", "ts": 1541599523000, "user_id": "u1", "session_id": "s1",
            "region": "US", "item_id": "42", "order_id": "o1", "price": 12, "currency": "EUR"}
BASES = {"click": CLICK, "search": SEARCH, "purchase": PURCHASE}
DROP = object()

# Each rule broken (or a corner of it taken) once; the exact path decides, the fast path must agree.
CHANGES: list[tuple[str, str, Any]] = [
    *[(t, f, DROP) for t in BASES for f in ("type", "event_id", "ts", "region", "locale", "device")],
    *[(t, f, v) for t in BASES for f, v in [
        ("event_id", None), ("event_id", ""), ("event_id", 7), ("event_id", True), ("event_id", "x" * 129),
        ("event_id", "a\nb"), ("event_id", "a\u200bb"), ("event_id", "é"), ("user_id", "u\x7f"),
        ("ts", "yesterday"), ("ts", 1541599523000.0), ("ts", True), ("ts", 946_684_799_999),
        ("ts", NOW + 2 * 86_400_000), ("ts", 10**30), ("region", "fr"), ("region", "D1"), ("region", "419"),
        ("region", ""), ("region", None), ("locale", "PT-br"), ("locale", "en-GB\n"), ("locale", None),
        ("locale", ""), ("device", None), ("device", "d" * 33), ("type", None), ("type", "foo"),
        ("type", "search" if t != "search" else "click"), ("extra", {"deep": [[1]]}), ("extra", 10**30)]],
    ("search", "results", DROP), ("search", "results", None), ("search", "results", ["1"] * 501),
    ("search", "results", [1, 2, 3]), ("search", "results", ["", "2", "3"]), ("search", "results", ["a\n", "b", "c"]),
    ("search", "prices", DROP), ("search", "prices", []), ("search", "prices", [1.0, 2.0]),
    ("search", "prices", [-1, 2, 3]), ("search", "prices", [1e9, 1, 1]), ("search", "prices", [True, 1, 1]),
    ("search", "filters", None), ("search", "filters", {}), ("search", "filters", {f"k{i}": i for i in range(65)}),
    ("search", "filters", {"a": {"b": 1}}), ("search", "filters", {"a": 2**64 - 1}),
    ("search", "filters", {"a": 2**70}),
    ("search", "query", None), ("search", "query", "q" * 513), ("search", "model_version", 2**31),
    ("click", "kind", DROP), ("click", "kind", ""), ("click", "kind", "buy"), ("click", "position", -1),
    ("click", "position", 10_001), ("click", "price", 5), ("click", "price", 1e9), ("click", "price", "5"),
    ("click", "category", ""), ("click", "category", "c" * 257), ("click", "search_id", ""),
    ("click", "search_id", "q1"),
    ("purchase", "quantity", DROP), ("purchase", "quantity", 0), ("purchase", "quantity", True),
    ("purchase", "price", DROP), ("purchase", "currency", "eur"), ("purchase", "currency", ""),
    ("purchase", "currency", None), ("purchase", "currency", "EUR\n"),
]


def changed(event_type: str, field: str, value: Any) -> dict[str, Any]:
    event = dict(BASES[event_type])
    if value is DROP:
        event.pop(field, None)
    else:
        event[field] = value
    return event


def dumps(value: Any) -> bytes:
    """orjson's bytes, or json's for integers orjson does not write."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def both_paths(data: bytes, event_type: str | None, limit: int, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """decode_record's answer, then the exact (per event) path's, as comparable values."""
    def comparable(answer: tuple) -> tuple:
        found, rejects = answer
        wire = [orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in found]  # tells 0.0 from -0.0
        return found, wire, [(r.raw, r.reason) for r in rejects]
    fast = comparable(decode_record(data, event_type, limit))
    with monkeypatch.context() as patch:
        patch.setattr(events, "_decode_fast", lambda *args: None)
        exact = comparable(decode_record(data, event_type, limit))
    return fast, exact


@pytest.mark.parametrize("event_type, field, value", CHANGES)
def test_fast_path_agrees_with_validate(event_type: str, field: str, value: Any, monkeypatch) -> None:
    event = changed(event_type, field, value)
    base = BASES[event_type]
    for data in (dumps(event), dumps([base] * 100 + [event] + [base] * 99)):
        for topic in (event_type, None):
            fast, exact = both_paths(data, topic, 64 * 1024, monkeypatch)
            assert fast == exact, (field, value, topic)


def test_clean_records_take_the_fast_path() -> None:
    for event_type, base in BASES.items():
        data = orjson.dumps([validate(base)] * 200)
        assert events._decode_fast(data, event_type, 64 * 1024) == [validate(base)] * 200
    assert events._decode_fast(orjson.dumps(SEARCH), None, 64 * 1024) == [validate(SEARCH)]


@pytest.mark.parametrize("data", [b"", b"[", b"7", b"null", b"[]", b"{}", b"[7, null, []]", b'[{"type":"click"}]x',
                                  orjson.dumps([CLICK], option=orjson.OPT_INDENT_2),
                                  orjson.dumps(CLICK)[:-1] + b',"x":"\xff"}',  # orjson rejects what msgspec skips
                                  orjson.dumps(CLICK)[:-1] + b',"x":1e400}',
                                  orjson.dumps(CLICK)[:-1] + b',"item_id":"\\u0000"}',
                                  orjson.dumps(CLICK)[:-1] + b',"type":"search"}',
                                  orjson.dumps(SEARCH)[:-1] + b',"filters":{"a":' + b"[" * 300 + b"]" * 300 + b"}}"])
def test_odd_records_get_the_same_answer(data: bytes, monkeypatch) -> None:
    for topic in ("click", "search", None, "unknown"):
        fast, exact = both_paths(data, topic, 64 * 1024, monkeypatch)
        assert fast == exact


@pytest.mark.parametrize("price", [None, 5, 1e8, 0.1, 1.2345678901234567e-300])
def test_size_rule_near_the_limit(price: float | None, monkeypatch) -> None:
    """A raw event without defaults, and with floats written short, is shorter than its clean form."""
    slim = {k: v for k, v in CLICK.items() if k not in ("type", "locale", "device", "kind")}
    raw = orjson.dumps(slim if price is None else {**slim, "price": price})
    raw = raw.replace(b"100000000.0", b"1E8").replace(b'"price":5.0', b'"price":5')
    clean = len(orjson.dumps(validate(orjson.loads(raw), "click")))
    assert clean > len(raw)
    for limit in range(len(raw) - 2, clean + events._SIZE_SLACK["click"] + 2):
        for data in (raw, b"[" + raw + b"]"):
            fast, exact = both_paths(data, "click", limit, monkeypatch)
            assert fast == exact, limit


def test_orjson_writes_no_string_longer_than_json_can():
    """What ``_size_slack`` relies on: orjson escapes only what JSON must, and as short as JSON can."""
    must = {'"': 2, "\\": 2, "\b": 2, "\f": 2, "\n": 2, "\r": 2, "\t": 2}
    for code in [*range(0xD800), *range(0xE000, 0x10000), 0x1F600, 0x10FFFF]:
        char = chr(code)
        assert len(orjson.dumps(char)) - 2 <= must.get(char, 6 if code < 0x20 else len(char.encode()))
