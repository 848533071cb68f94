"""The learning loop: examples, ranker, trainer, registry and hot reload, without Kafka."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch

from relevo.drift.regional import RegionalDrift
from relevo.features.context import FEATURES
from relevo.models.examples import ExamplesBuilder, encode_examples
from relevo.models.live import LiveModel
from relevo.models.ranker import Ranker, RankerConfig
from relevo.models.registry import CorruptModel, Registry, encode_weights
from relevo.models.trainer import Trainer
from tests.regionkit import Feeder

SMALL = RankerConfig(item_buckets=1024, user_buckets=64, region_buckets=16, hidden=16)
T0 = 1_700_000_000_000


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)  # tiny models: more threads only contend on a busy 2-core box


def planted_stream(searches: int, seed: int = 0, t0: int = T0, prefix: str = "") -> list[dict[str, Any]]:
    """Searches over 10 of 200 items; users click the one item (of each list) from a hidden liked set."""
    rng = random.Random(seed)
    catalog = [f"i{n}" for n in range(200)]
    liked = set(catalog[:20])
    events = []
    for n in range(searches):
        shown = rng.sample(catalog[20:], 9) + [rng.choice(catalog[:20])]
        rng.shuffle(shown)
        base = {"ts": t0 + n * 1000, "user_id": f"u{n % 50}", "session_id": f"{prefix}s{n}", "region": "FR"}
        search_id = f"{prefix}q{n}"
        events.append({**base, "type": "search", "event_id": search_id, "search_id": search_id, "results": shown})
        clicked = next(i for i in shown if i in liked)
        events.append({**base, "type": "click", "event_id": f"{prefix}c{n}", "item_id": clicked,
                       "search_id": search_id})
    return events


async def build_examples(events: list[dict[str, Any]], **kwargs: Any) -> list[list[dict[str, Any]]]:
    """The examples a region partition builds from ``events`` (read from one source, in order)."""
    batches: list[list[dict[str, Any]]] = []

    async def emit(batch: list[dict[str, Any]]) -> None:
        batches.append(orjson.loads(encode_examples(batch)))  # as the trainer reads them

    feeder = Feeder([ExamplesBuilder(emit, **{"wait_s": 0, "batch_size": 50, "batch_age_s": 0, **kwargs})])
    for start in range(0, len(events), 100):
        feeder.send(events[start:start + 100])
    feeder.finish()
    await feeder.flush()
    return batches


async def test_ranker_learns_a_planted_preference(tmp_path: Path) -> None:
    batches = await build_examples(planted_stream(600))
    trainer = Trainer(Registry(tmp_path), SMALL, device="cpu", lr=1e-2)
    reports = [trainer.update(batch) for batch in batches]
    first, last = reports[0].prequential["mrr"], reports[-5:]
    late = sum(r.prequential["mrr"] for r in last) / len(last)
    # Chance for one relevant item in ten is about 0.29; the untrained model scores near it.
    assert late > 0.8 and late > first + 0.2, [round(r.prequential["mrr"], 3) for r in reports]
    assert Registry(tmp_path).latest() is not None


async def test_examples_never_carry_their_own_outcome() -> None:
    base = {"user_id": "u", "session_id": "s", "region": "FR"}
    events = [
        {**base, "type": "search", "event_id": "q1", "search_id": "q1", "ts": T0, "results": ["a", "b", "c"]},
        {**base, "type": "click", "event_id": "c1", "ts": T0, "item_id": "b", "search_id": "q1"},
        {**base, "type": "purchase", "event_id": "p1", "ts": T0 + 5_000, "item_id": "b", "order_id": "o",
         "price": 10.0},
        {**base, "type": "search", "event_id": "q2", "search_id": "q2", "ts": T0 + 9_000, "results": ["c", "b"]},
    ]
    first, second = [e for batch in await build_examples(events, wait_s=60) for e in batch]
    touched, grade = FEATURES.index("touched"), FEATURES.index("touch_grade")
    assert first["labels"] == [0, 4, 0]  # joined by search id (click), then by session + item (purchase)
    assert all(row[touched] == 0 for row in first["features"])  # its own click and purchase are absent
    assert first["features"][1][FEATURES.index("region_popularity")] == 0
    assert second["features"][1][touched] == 1 and second["features"][1][grade] == 1.0  # later lists see them
    assert second["labels"] == [0, 0]  # the purchase happened before this search: not its outcome


async def test_a_search_id_sent_twice_labels_the_list_shown_first() -> None:
    base = {"user_id": "u", "session_id": "s", "region": "FR", "search_id": "q1"}
    events = [
        {**base, "type": "search", "event_id": "e1", "ts": T0, "results": ["a", "b", "c"]},
        {**base, "type": "search", "event_id": "e2", "ts": T0 + 1_000, "results": ["c", "d"]},
        {**base, "type": "click", "event_id": "e3", "ts": T0 + 2_000, "item_id": "c", "search_id": None},
        {**base, "type": "click", "event_id": "e4", "ts": T0 + 90_000, "item_id": "d", "search_id": None},
    ]  # the last click crashed the region stage: the session listed the id twice, the pending lists once
    [example] = [e for batch in await build_examples(events, wait_s=60) for e in batch]
    assert example["items"] == ["a", "b", "c"] and example["labels"] == [0, 0, 2]


def _collector() -> tuple[list[dict[str, Any]], Any]:
    emitted: list[dict[str, Any]] = []

    async def emit(batch: list[dict[str, Any]]) -> None:
        emitted.extend(orjson.loads(encode_examples(batch)))  # as the trainer reads them
    return emitted, emit


async def test_clicks_read_behind_their_searches_still_label_them() -> None:
    emitted, emit = _collector()
    feeder = Feeder([ExamplesBuilder(emit, wait_s=10, batch_size=50, batch_age_s=0)], ["search:0", "click:0"])
    events = planted_stream(200)
    # Two topics read at different paces: every search first, the clicks much later.
    feeder.send([e for e in events if e["type"] == "search"], "search:0")
    feeder.send([e for e in events if e["type"] == "click"], "click:0")
    feeder.finish()
    await feeder.flush()
    assert sum(1 for e in emitted if max(e["labels"]) > 0) == 200


async def test_a_click_read_before_its_search_labels_it_and_stays_out_of_its_features() -> None:
    emitted, emit = _collector()
    feeder = Feeder([ExamplesBuilder(emit, wait_s=10, batch_size=1)], ["search:0", "click:0"])
    search, click = planted_stream(1)
    feeder.send([click], "click:0")  # the click topic is ahead of the search topic
    feeder.send([search], "search:0")
    feeder.finish()
    await feeder.flush()
    touched = FEATURES.index("touched")
    assert emitted[0]["labels"][emitted[0]["items"].index(click["item_id"])] == 2
    assert all(row[touched] == 0 for row in emitted[0]["features"])


async def test_a_search_applied_after_its_own_click_makes_no_example() -> None:
    """Its features would hold its outcome, which serving never sees; another session's later
    events do not matter."""
    emitted, emit = _collector()
    builder = ExamplesBuilder(emit, wait_s=0, batch_size=1)
    base = {"user_id": "u", "region": "FR"}
    other = {**base, "session_id": "t", "type": "click", "event_id": "c0", "ts": T0 + 5_000, "item_id": "z"}
    click = {**base, "session_id": "s", "type": "click", "event_id": "c1", "ts": T0 + 1_000, "item_id": "b"}
    late = {**base, "session_id": "s", "type": "search", "event_id": "q1", "search_id": "q1", "ts": T0 + 1_000,
            "results": ["a", "b"]}
    fine = {**base, "session_id": "t2", "type": "search", "event_id": "q2", "search_id": "q2", "ts": T0 + 1_000,
            "results": ["b", "c"]}
    builder.apply([click, other], horizon=T0 + 5_001, reach=T0 + 5_001)  # released while the searches were in flight
    builder.apply([late, fine], horizon=float("inf"), reach=T0 + 5_000)
    await builder.flush()
    assert [e["search_id"] for e in emitted] == ["q2"] and builder.state.after_outcome == 1


async def test_a_silent_source_stops_holding_the_stream_back() -> None:
    emitted, emit = _collector()
    feeder = Feeder([ExamplesBuilder(emit, wait_s=0, batch_size=1)], ["search:0", "click:0"])
    q0, c0, q1, _, q2, _ = planted_stream(3)
    feeder.send([q0], "search:0")
    feeder.send([c0], "click:0")
    feeder.send([q1, q2], "search:0")
    await feeder.flush()
    assert emitted == []  # the click topic has only reached q0's time: q0 may still get more clicks
    feeder.quiet("click:0")  # it has read everything and goes quiet
    await feeder.flush()
    assert [e["search_id"] for e in emitted] == ["q0", "q1"]  # q2 waits for the search topic's own time


async def test_a_partition_restored_from_its_snapshot_builds_what_it_would_have() -> None:
    events = planted_stream(120)
    uninterrupted = [e for batch in await build_examples(events, wait_s=5) for e in batch]
    emitted, emit = _collector()
    feeder = Feeder([ExamplesBuilder(emit, wait_s=5, batch_size=50, batch_age_s=0)])
    feeder.send(events[:130])
    await feeder.flush()
    feeder = feeder.restarted([ExamplesBuilder(emit, wait_s=5, batch_size=50, batch_age_s=0)])
    feeder.send(events[130:])
    feeder.finish()
    await feeder.flush()
    assert emitted == uninterrupted


async def test_a_backlog_released_at_once_is_applied_in_bounded_calls_with_the_same_outcome() -> None:
    """A source that never sends holds the merge until it is idle; then everything comes out at
    once. Applied 50 events per call (yielding between calls in a stage), the examples and the
    drift buckets are those of one call."""
    events = planted_stream(150)

    async def outcome(**partition: Any) -> tuple[list[dict[str, Any]], bytes, int]:
        emitted, emit = _collector()

        async def send(value: bytes) -> None:
            """Drift's closed buckets: its state below says all they would."""
        drift = RegionalDrift(0, None, [], send)
        feeder = Feeder([ExamplesBuilder(emit, wait_s=5, batch_size=50, batch_age_s=0), drift],
                        ["search:0", "purchase:0"], **partition)
        feeder.send(events)  # all held: the purchase source has said nothing yet
        assert not emitted and len(feeder.partition.merge) == len(events)
        feeder.finish()
        await feeder.flush()
        return emitted, pickle.dumps(drift.state), feeder.calls

    whole, whole_drift, whole_calls = await outcome()
    pieces, piece_drift, piece_calls = await outcome(apply_limit=50)
    assert len(whole) == 150 and pieces == whole and piece_drift == whole_drift
    assert piece_calls >= whole_calls + len(events) // 50 - 1


async def test_redelivered_events_are_applied_once() -> None:
    events = planted_stream(20)
    once = await build_examples(events)
    twice = await build_examples(events + events)  # a shop that sent everything twice (new positions)
    assert once == twice
    emitted, emit = _collector()
    feeder = Feeder([ExamplesBuilder(emit, wait_s=0, batch_size=50, batch_age_s=0)])
    feeder.send(events)
    feeder.offsets["events:0"] = 0  # the same records read again after a crash (same positions)
    feeder.send(events)
    feeder.finish()
    await feeder.flush()
    assert [emitted] == once


async def test_the_trainer_learns_from_each_search_once(tmp_path: Path) -> None:
    first, second = (await build_examples(planted_stream(100)))[:2]
    trainer = Trainer(Registry(tmp_path), SMALL, device="cpu")
    assert trainer.update(first).examples == len(first)
    again = trainer.update(first + second)  # a restarted worker re-emits what it sent since its last commit
    assert (again.examples, again.duplicates) == (len(second), len(first))
    assert trainer.update(first).published is None


def test_published_version_round_trips_bit_exactly(tmp_path: Path) -> None:
    model = Ranker(SMALL)
    registry = Registry(tmp_path)
    meta = registry.publish(model, parent=None, window=(T0, T0 + 1), figures={"mrr": 0.5})
    loaded = registry.load(meta.version)
    assert encode_weights(loaded) == registry.read(meta.version) == encode_weights(model)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    assert registry.get(meta.version).window == (T0, T0 + 1)


def test_a_half_written_weights_file_is_never_served(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.publish(Ranker(SMALL), parent=None, window=(0, 1), figures={})
    live = LiveModel(registry)
    assert live.refresh() and live.version == 1
    (tmp_path / ".tmp-crashed-writer").write_bytes(b"half a model")  # a writer died mid-write
    (tmp_path / "v000009.pt").write_bytes(b"weights without metadata")  # died before its metadata
    assert [v.version for v in registry.versions()] == [1] and registry.latest() == 1
    registry.publish(Ranker(SMALL), parent=1, window=(1, 2), figures={})
    weights = tmp_path / "v000002.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # torn file under v2
    with pytest.raises(CorruptModel):
        registry.load(2)
    assert not live.refresh() and live.version == 1


def test_rollback_restores_the_previous_ranking(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    search = {"results": ["a", "b", "c"], "region": "FR", "user_id": "u",
              "features": [[float(p == 0)] + [0.0] * (SMALL.features - 1) for p in range(3)]}
    torch.manual_seed(1)
    old, new = Ranker(SMALL), Ranker(SMALL)
    registry.publish(old, parent=None, window=(0, 1), figures={})
    live = LiveModel(registry)
    live.refresh()
    before = live.scores(search)
    registry.publish(new, parent=1, window=(1, 2), figures={})
    live.refresh()
    assert live.version == 2 and live.scores(search) != before
    assert registry.rollback(2) == 1
    assert live.refresh() and live.version == 1 and live.scores(search) == before


class KilledMidUpdate(RuntimeError):
    pass


class CrashingTrainer(Trainer):
    """Dies after fine-tuning, before publishing: as a SIGKILL at the worst moment would."""

    def _fit(self, model: Ranker, examples: list[dict[str, Any]]) -> tuple[int, dict[str, Any] | None]:
        super()._fit(model, examples)
        raise KilledMidUpdate


async def test_trainer_killed_mid_update_resumes_from_the_last_published_version(tmp_path: Path) -> None:
    batches = await build_examples(planted_stream(150))
    registry = Registry(tmp_path)
    first = Trainer(registry, SMALL, device="cpu").update(batches[0]).published
    with pytest.raises(KilledMidUpdate):
        CrashingTrainer(registry, SMALL, device="cpu").update(batches[1])
    assert registry.current() == first.version and registry.latest() == first.version
    restarted = Trainer(registry, SMALL, device="cpu")
    assert restarted.version == first.version
    assert encode_weights(restarted.model) == registry.read(first.version)
    report = restarted.update(batches[1])
    assert report.published is None or report.published.parent == first.version


class SabotagingTrainer(Trainer):
    """Fine-tuning that wrecks the ranking head: the gate must refuse it."""

    def _fit(self, model: Ranker, examples: list[dict[str, Any]]) -> tuple[int, dict[str, Any] | None]:
        with torch.no_grad():
            for param in model.parameters():
                param.mul_(-50.0)
        return len(examples), None


async def test_the_gate_refuses_weights_worse_than_serving(tmp_path: Path) -> None:
    batches = await build_examples(planted_stream(1000))
    registry = Registry(tmp_path)
    trainer = Trainer(registry, SMALL, device="cpu", lr=1e-2)
    for batch in batches[:15]:
        trainer.update(batch)
    serving = registry.current()
    report = SabotagingTrainer(registry, SMALL, device="cpu", holdout_every=2).update(batches[15])
    assert report.published is None and report.refused and registry.current() == serving
