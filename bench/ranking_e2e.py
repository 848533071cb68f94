"""Ranking quality through the production path: Kafka -> worker -> trainer -> registry -> ``POST /v1/rank``.

The Trivago slice is split at its median clickout. The first half is replayed onto the
embedded broker at ``--speed``: the worker builds labelled lists, the trainer learns
and publishes, the API (a process, as a user runs it) follows the models and the region
stream. The second half is replayed in event-time order, each session's events after
its previous ones: at every clickout the bench asks the API over HTTP to
rank the clickout's impressions (``ts`` the clickout's time, ``after_ts`` the session's
last event sent, so the session's history has reached the API's context and the
clickout itself has not), takes the reciprocal rank of the clicked item, and only then
sends the clickout's search and click (and the session's later events); the stream
runs at most ``--lookahead-s`` of event time ahead of a clickout being ranked. The
model keeps learning from everything it has ranked (prequential). On the same
clickouts: the original order, the session rule (items the session touched first,
most recent first), online popularity (clicks so far), our model frozen at v1, and
LightGBM lambdarank trained in hindsight on the first half's examples and tested on
the second half's (``fit_and_score``: the offline ceiling of these features; nothing of the
second half fits or chooses anything).

    python -m bench.ranking_e2e [--speed 2000] [--limit EVENTS] [--lookahead-s 900]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from bench.ranking import clickouts
from bench.report import record, table
from relevo.core.settings import SHARED_DATA, Settings
from relevo.models.live_mrr import wait_until_quiet, windows
from relevo.models.metrics import reciprocal_rank
from relevo.models.registry import Registry
from relevo.runtime.processes import Runtime, first_key
from relevo.streams.datasets import trivago
from relevo.streams.logread import read_log
from relevo.streams.producer import EventProducer
from relevo.streams.replay import replay
from relevo.streams.topics import TRAIN_BATCHES

log = logging.getLogger(__name__)
TRIVAGO = SHARED_DATA / "trivago" / "trivago_val_100k.parquet"
METHODS = ("original order", "online popularity", "session rule", "model frozen at v1",
           "lambdarank offline (hindsight)", "/v1/rank (online)", "same versions on the worker's features")
Event = dict[str, Any]
LAMBDARANK = {"objective": "lambdarank", "metric": "map", "eval_at": [25], "learning_rate": 0.05,
              "num_leaves": 31, "min_data_in_leaf": 50, "feature_fraction": 0.9, "verbose": -1, "num_threads": 1}


def split(events: list[Event]) -> int:
    """The time of the median clickout: clickouts before it train the offline model, after it are tested."""
    times = sorted(group[0]["ts"] for group, clicked in clickouts(iter(events)) if clicked is not None)
    return times[len(times) // 2]


async def post_rank(api: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/rank``'s answer to ``body``, asking again when a kept-alive connection had just closed."""
    for attempt in range(3):
        try:
            answer = await api.post("/v1/rank", json=body)
            break
        except (httpx.ReadError, httpx.RemoteProtocolError):
            if attempt == 2:
                raise
    answer.raise_for_status()
    return answer.json()


class SecondHalf:
    """Replays the second half session by session, ranking each clickout through the API first."""

    def __init__(self, api: httpx.AsyncClient, producer: EventProducer, first: list[Event]) -> None:
        self.api, self.producer = api, producer
        self.clicks = Counter(group[1]["item_id"] for group, clicked in clickouts(iter(first)) if clicked)
        self.touched: dict[str, dict[str, int]] = defaultdict(dict)  # session -> item -> when last touched
        self.last_ts: dict[str, int] = {}  # session -> its latest event sent
        self.open: dict[str, int] = {}  # clickouts being ranked: search id -> ts
        self.version_of: dict[str, int | None] = {}  # search id -> the version that ranked it
        self.took_ms: list[float] = []  # the API's time per ranking, waiting for the session included
        for event in first:
            self.seen(event)
        self.ranked: dict[str, dict[str, float]] = {}  # search id -> method -> reciprocal rank
        self.clickouts: dict[str, tuple[str, str]] = {}  # search id -> (region, clicked item)
        self.served = Counter()  # what ranked: a model version or a fallback
        self.stale = 0  # clickouts ranked before the session's history had reached the API

    def seen(self, event: Event) -> None:
        if event["type"] != "search":
            self.touched[event["session_id"]][event["item_id"]] = event["ts"]
        self.last_ts[event["session_id"]] = event["ts"]

    async def step(self, before: asyncio.Task | None, group: list[Event], clicked: str | None) -> None:
        """One group of a session's events, after the session's previous group: a clickout is ranked first."""
        if before is not None:
            await before
        if clicked is not None:
            await self.rank(group[0], clicked)
        await self.producer.send(group)
        for event in group:
            self.seen(event)

    async def rank(self, search: Event, clicked: str) -> None:
        items, prices = search["results"], search.get("prices") or [None] * len(search["results"])
        if clicked not in items:
            return
        body = {"user_id": search["user_id"], "session_id": search["session_id"], "region": search["region"],
                "locale": search.get("locale") or None, "query": search.get("query", ""),
                "device": search.get("device", ""), "filters": search.get("filters"), "ts": search["ts"],
                "after_ts": self.last_ts.get(search["session_id"]), "record": False, "explain": 0,
                "candidates": [{"item_id": i, "price": p, "position": n}
                               for n, (i, p) in enumerate(zip(items, prices, strict=True))]}
        self.open[search["search_id"]] = search["ts"]
        ranked = await post_rank(self.api, body)
        del self.open[search["search_id"]]
        self.stale += not ranked["caught_up"]
        self.took_ms.append(ranked["took_ms"])
        self.served[f"v{ranked['model_version']}" if ranked["model_version"] else ranked["fallback"]] += 1
        self.version_of[search["search_id"]] = ranked["model_version"]
        order = [i["item_id"] for i in ranked["items"]]
        labels = [int(item == clicked) for item in items]
        n, touched = len(items), self.touched[search["session_id"]]
        self.ranked[search["search_id"]] = {
            "original order": reciprocal_rank([-p for p in range(n)], labels),
            "online popularity": reciprocal_rank([self.clicks[i] - p / 1000 for p, i in enumerate(items)], labels),
            "session rule": reciprocal_rank([(touched[i] if i in touched else 0) - p / 1000
                                             for p, i in enumerate(items)], labels),
            "/v1/rank (online)": 1.0 / (1 + order.index(clicked)),
        }
        self.clickouts[search["search_id"]] = (search["region"], clicked)
        self.clicks[clicked] += 1

    async def run(self, events: list[Event], lookahead_ms: int) -> None:
        """Send ``events`` in event-time order, each session's after its previous one; the stream runs
        at most ``lookahead_ms`` of event time ahead of the oldest clickout still being ranked."""
        tails: dict[str, asyncio.Task] = {}
        for group, clicked in clickouts(iter(events)):
            ts = group[0]["ts"]
            while self.open and min(self.open.values()) < ts - lookahead_ms:
                await asyncio.sleep(0.005)
            session = group[0]["session_id"]
            tails[session] = asyncio.create_task(self.step(tails.get(session), group, clicked))
        await asyncio.gather(*tails.values())


async def replay_halves(runtime: Runtime, first: list[Event], second: list[Event], speed: float,
                        lookahead_s: float) -> SecondHalf:
    settings = runtime.settings
    async with EventProducer(settings.kafka_bootstrap_servers, settings.topic_prefix,
                             settings.partitions) as producer:
        await replay(first, producer, speed=speed)
        registry = Registry(settings.registry_dir)
        deadline = time.monotonic() + 300
        while registry.current() is None and time.monotonic() < deadline:  # the first half has taught something
            await asyncio.sleep(1)
        headers = {"X-API-Key": first_key(settings, "search")}
        async with httpx.AsyncClient(base_url=runtime.api_url, headers=headers,
                                     timeout=httpx.Timeout(60, pool=None),
                                     limits=httpx.Limits(max_connections=64)) as api:
            half = SecondHalf(api, producer, first)
            await half.run(second, int(lookahead_s * 1000))
    return half


async def read_examples(settings: Settings) -> dict[str, Event]:
    """Every labelled list the worker wrote to ``train.batches``, by search id."""
    found: dict[str, Event] = {}
    async for batch in read_log(settings, [settings.topic(TRAIN_BATCHES)]):
        for kafka_record in batch:
            for example in orjson.loads(kafka_record.value):
                found.setdefault(example["search_id"], example)
    return found


def _matrix(lists: list[Event]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    features = np.array([row for e in lists for row in e["features"]], dtype=np.float32)
    labels = np.array([label for e in lists for label in e["labels"]], dtype=np.int32)
    return features, labels, [len(e["items"]) for e in lists]


def fit_and_score(train: list[Event], test: list[Event]) -> list[list[float]]:
    """Scores of each ``test`` list from a LightGBM lambdarank fitted on ``train`` (in event order), the
    last tenth of it held out for early stopping."""
    import lightgbm

    useful = [e for e in train if any(e["labels"])]
    cut = int(len(useful) * 0.9)
    fit, stop = _matrix(useful[:cut]), _matrix(useful[cut:])
    data = lightgbm.Dataset(fit[0], fit[1], group=fit[2])
    valid = lightgbm.Dataset(stop[0], stop[1], group=stop[2], reference=data)
    model = lightgbm.train(LAMBDARANK, data, num_boost_round=500, valid_sets=[valid],
                           callbacks=[lightgbm.early_stopping(30, verbose=False)])
    log.info("lambdarank: %d lists, %d rounds", len(useful), model.best_iteration)
    scores = model.predict(np.array([row for e in test for row in e["features"]], dtype=np.float32),
                           num_iteration=model.best_iteration)
    out, start = [], 0
    for e in test:
        out.append(scores[start:start + len(e["items"])].tolist())
        start += len(e["items"])
    return out


def offline(settings: Settings, half: SecondHalf, split_ts: int) -> None:
    """Add the frozen v1 model's and the hindsight lambdarank's reciprocal ranks to ``half.ranked``."""
    found = asyncio.run(read_examples(settings))
    train = sorted((e for e in found.values() if e["ts"] < split_ts), key=lambda e: e["ts"])
    test = [found[s] for s in half.ranked if s in found]
    registry = Registry(settings.registry_dir)
    models = {1: registry.load(1)}
    for example, scores in zip(test, fit_and_score(train, test), strict=True):
        search_id = example["search_id"]
        labels = [int(item == half.clickouts[search_id][1]) for item in example["items"]]
        version = half.version_of[search_id] or 1
        if version not in models:
            models[version] = registry.load(version)
        half.ranked[search_id].update({
            "lambdarank offline (hindsight)": reciprocal_rank(scores, labels),
            "model frozen at v1": reciprocal_rank(models[1].scores(example).tolist(), labels),
            # the check of train/serve skew: the version /v1/rank used, on the features the worker computed
            "same versions on the worker's features": reciprocal_rank(models[version].scores(example).tolist(),
                                                                      labels)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=2000.0, help="first half, times real time")
    parser.add_argument("--limit", type=int, default=None, help="events to replay (default: all)")
    parser.add_argument("--lookahead-s", type=float, default=900.0,
                        help="second half: how far (event time) the stream may run ahead of a clickout being ranked")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the run's logs and state here")
    parser.add_argument("--regions", type=int, default=8, help="countries shown")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    events = list(trivago.events(TRIVAGO))[: args.limit]
    split_ts = split(events)
    first, second = [e for e in events if e["ts"] < split_ts], [e for e in events if e["ts"] >= split_ts]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.data_dir or scratch
        settings = Settings(data_dir=Path(root), registry_dir=str(Path(root) / "models"), registry_keep=0,
                            idle_s=1.0, rerank_depth=0, rate_limit_per_s=0, api_port=0)
        with Runtime(settings, workers=1, api=True, trainer=True) as runtime:
            runtime.wait_workers_ready()
            half = asyncio.run(replay_halves(runtime, first, second, args.speed, args.lookahead_s))
            replayed_s = time.monotonic() - started
            versions = wait_until_quiet(Registry(runtime.settings.registry_dir), quiet_s=15, timeout_s=300)
            offline(runtime.settings, half, split_ts)
    elapsed = time.monotonic() - started
    scored = {s: m for s, m in half.ranked.items() if len(m) == len(METHODS)}  # every method ranked it
    by_region: dict[str, list[dict[str, float]]] = defaultdict(list)
    for search_id, ranks in scored.items():
        by_region[half.clickouts[search_id][0]].append(ranks)
    regions = sorted(by_region, key=lambda r: -len(by_region[r]))[: args.regions]
    mean = statistics.fmean
    rows = [[f"all ({len(scored)})", *[mean(r[m] for r in scored.values()) for m in METHODS]]]
    rows += [[f"{r} ({len(by_region[r])})", *[mean(x[m] for x in by_region[r]) for m in METHODS]] for r in regions]
    live = windows(versions, count=1)
    notes = "\n".join([
        f"- {len(events):,} Trivago events; first half ({len(first):,} events, before the median clickout) "
        f"replayed at {args.speed:g}x; second half ({len(second):,}) in event-time order, each clickout ranked "
        f"through POST /v1/rank before it and the rest of its session were sent (other sessions' events up to "
        f"{args.lookahead_s:g} s of event time later could reach the region counts first); replay {replayed_s:.0f} s, "
        f"wall time {elapsed:.0f} s",
        f"- MRR over the {len(scored):,} second-half clickouts every method ranked (of {len(half.ranked):,} "
        f"ranked; the rest had no example on train.batches); what ranked: {dict(half.served.most_common(6))}; "
        f"ranked before the session's history reached the API: {half.stale}; "
        f"/v1/rank took p50 {statistics.median(half.took_ms):.0f} ms (waiting for the session included)",
        f"- {len(versions)} versions published; trainer prequential over the whole run: "
        + (f"model {live[0].model_mrr:.4f}, session rule {live[0].rule_mrr:.4f} on {live[0].clickouts:,} lists"
           if live else "none"),
        "- lambdarank: LightGBM on the worker's examples of the first half (last tenth for early stopping), "
        "the same features, scored on the second half's examples",
    ])
    record("Ranking quality through the production path (Kafka -> worker -> trainer -> registry -> /v1/rank)",
           None, table(["country (clickouts)", *METHODS], rows), notes)
    overall = {m: mean(r[m] for r in scored.values()) for m in METHODS}
    print(f"RESULT ranking mrr={overall['/v1/rank (online)']:.4f} rule_mrr={overall['session rule']:.4f} "
          f"lgbm_mrr={overall['lambdarank offline (hindsight)']:.4f} original_mrr={overall['original order']:.4f} "
          f"popularity_mrr={overall['online popularity']:.4f} frozen_v1_mrr={overall['model frozen at v1']:.4f}")


if __name__ == "__main__":
    main()
