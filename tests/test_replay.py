"""Replay adapters on the real datasets, and paced replay through a real broker."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from itertools import islice
from pathlib import Path

import orjson
import pytest

from relevo.core.settings import Settings
from relevo.runtime.cli import build_parser
from relevo.streams.datasets import DatasetNotFound, open_dataset
from relevo.streams.datasets.ndjson import events as ndjson_events
from relevo.streams.events import Event, Reject, validate
from relevo.streams.producer import EventProducer
from relevo.streams.replay import replay

TRIVAGO_SLICE = 20_000


@pytest.fixture(scope="module")
def trivago_events(shared_data: Path) -> list[Event]:
    return list(islice(open_dataset("trivago", data_dir=shared_data), TRIVAGO_SLICE))


def assert_valid_in_time_order(events: list[Event]) -> None:
    assert all(validate(event) == event for event in events)
    times = [event["ts"] for event in events]
    assert times == sorted(times)
    assert len({event["event_id"] for event in events}) == len(events)


def test_trivago_events_are_valid_and_in_time_order(trivago_events: list[Event]) -> None:
    assert_valid_in_time_order(trivago_events)
    kinds = Counter((e["type"], e.get("kind")) for e in trivago_events)
    assert set(kinds) == {("search", None), ("click", "click"), ("click", "view")}
    assert {e["region"] for e in trivago_events} >= {"FR", "US", "BR"}
    assert {e["locale"] for e in trivago_events if e["region"] == "BR"} == {"pt-BR"}


def test_trivago_clickout_is_a_search_then_a_click_at_its_position(trivago_events: list[Event]) -> None:
    searches: dict[str, Event] = {}
    latest_query: dict[str, str] = {}
    clickouts = 0
    for event in trivago_events:
        if event["type"] == "search":
            searches[event["search_id"]] = event
            if event["query"] and event["results"] != [event["query"]]:  # a typed destination or poi
                latest_query[event["session_id"]] = event["query"]
        elif event.get("search_id"):
            clickouts += 1
            search = searches[event["search_id"]]  # sent before its click
            assert search["ts"] < event["ts"] and search["session_id"] == event["session_id"]
            assert search["results"][event["position"]] == event["item_id"]
            assert event["kind"] == "click" and event["price"] > 0
            if event["session_id"] in latest_query and len(search["results"]) > 1:
                assert search["query"] == latest_query[event["session_id"]]
    assert clickouts > 1000


def test_diginetica_views_and_purchases(shared_data: Path) -> None:
    events = list(open_dataset("diginetica", data_dir=shared_data))
    assert_valid_in_time_order(events)
    purchases = [e for e in events if e["type"] == "purchase"]
    assert sum(e["type"] == "click" for e in events) == 12_391
    assert sum(e["quantity"] for e in purchases) == 18_025  # identical rows counted in the quantity
    assert {e["price"] for e in purchases} == {0.0}
    assert sum("category" in e for e in events) > len(events) // 2
    assert any(e["user_id"] == f"anon-{e['session_id']}" for e in events)
    assert {(e["region"], e["locale"]) for e in events} == {("RU", "ru-RU")}
    assert {e["currency"] for e in purchases} == {"RUB"}


def test_ndjson_reports_every_bad_line(tmp_path: Path) -> None:
    good = {"type": "purchase", "event_id": "p1", "ts": 1541599524000, "user_id": "u", "session_id": "s",
            "region": "FR", "locale": "fr-FR", "item_id": "9", "order_id": "o1", "price": 12.5,
            "currency": "EUR"}
    lines = [orjson.dumps(good), orjson.dumps([{**good, "event_id": "p0", "ts": 1541599523000},
                                               {**good, "price": "free"}]), b"{", b"   "]
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(lines))
    rejects: list[Reject] = []

    events = list(ndjson_events(path, rejects))

    assert [e["event_id"] for e in events] == ["p0", "p1"]
    reasons = [r.reason.split(":")[:2] for r in rejects]
    assert reasons == [["line 2", " price"], ["line 3", " malformed JSON"]]


def test_missing_dataset_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match="--path"):
        open_dataset("trivago", data_dir=tmp_path)
    with pytest.raises(DatasetNotFound, match="known: diginetica, ndjson, trivago"):
        open_dataset("movielens")


def synthetic(count: int, spacing_ms: int) -> list[Event]:
    return [validate({"type": "click", "event_id": f"syn-{n}", "ts": 1541599523000 + n * spacing_ms,
                      "user_id": f"u{n % 3}", "session_id": "s", "region": "US", "locale": "en-US",
                      "item_id": str(n)})
            for n in range(count)]


async def test_replay_paces_event_time_by_speed(kafka_bootstrap: str) -> None:
    prefix = uuid.uuid4().hex[:8]
    async with EventProducer(kafka_bootstrap, f"{prefix}.") as producer:
        await producer.partition_count(producer.topic_for("click"))  # topic creation is not part of the pace
        events = synthetic(11, spacing_ms=200)  # two seconds of event time

        paced = await replay(events, producer, speed=4.0, progress=False)
        fast = await replay(events, producer, progress=False)
        limited = await replay(events, producer, limit=4, progress=False)

    assert paced.sent == fast.sent == {"click": 11} and limited.sent == {"click": 4}
    assert 0.45 <= paced.elapsed_s < 1.0  # 2 s / 4
    assert fast.elapsed_s < 0.3


def test_replay_command(kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    parser = build_parser()
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in synthetic(5, spacing_ms=1)))
    args = parser.parse_args(["replay", "ndjson", "--path", str(path), "--limit", "3"])
    caplog.set_level(logging.INFO)

    assert args.func(args, Settings()) == 2
    assert "relevo up" in caplog.text

    live = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=f"{uuid.uuid4().hex[:8]}.")
    started = time.monotonic()
    assert args.func(args, live) == 0
    assert "replayed 3 events" in caplog.text and time.monotonic() - started < 10

    missing = parser.parse_args(["replay", "ndjson", "--path", str(tmp_path / "nope.ndjson")])
    assert missing.func(missing, live) == 2
    assert "not found" in caplog.text
