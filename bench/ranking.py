"""Ranking quality of the learning loop on the Trivago slice, prequential, end to end in process.

The slice is replayed in event-time order through the same classes the
workers use: ``ExamplesBuilder`` -> ``Trainer`` -> ``Registry`` -> ``LiveModel``.
Every clickout's impressions are ranked by the model serving at that moment,
before the clickout is learned from, beside baselines scored on the same
clickouts: original order, online popularity, "items the session touched
first", and our model frozen at its first published version.

    python -m bench.ranking [--limit ROWS] [--batch-size N]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bench.report import record, table
from relevo.core.settings import SHARED_DATA
from relevo.models.examples import ExamplesBuilder
from relevo.models.live import LiveModel
from relevo.models.metrics import reciprocal_rank
from relevo.models.registry import Registry
from relevo.models.trainer import Trainer
from relevo.streams.datasets import trivago

TRIVAGO = SHARED_DATA / "trivago" / "trivago_val_100k.parquet"
METHODS = ("original order", "online popularity", "session touched first", "model frozen at v1", "model (online)")


def clickouts(events: Iterator[dict[str, Any]]) -> Iterator[tuple[list[dict[str, Any]], str | None]]:
    """Events grouped for the replay: a search with its immediate click (and the item clicked), else one."""
    held: dict[str, Any] | None = None
    for event in events:
        if held is not None:
            if event["type"] == "click" and event.get("search_id") == held["search_id"]:
                yield [held, event], event["item_id"]
                held = None
                continue
            yield [held], None
            held = None
        if event["type"] == "search" and len(event.get("results", ())) > 1:
            held = event
        else:
            yield [event], None
    if held is not None:
        yield [held], None


def segment(recency: dict[str, int], items: list[str], clicked: str) -> str:
    """Which kind of clickout this is, by what the session touched before it."""
    touched = [i for i in items if i in recency]
    if not touched:
        return "no item the session touched is shown"
    if clicked == min(touched, key=recency.__getitem__):
        return "clicks the item it touched last"
    return "clicks another item" if clicked not in recency else "clicks an older touched item"


class Replay:
    """The in-process loop plus the bookkeeping of every method's reciprocal ranks."""

    def __init__(self, root: Path, batch_size: int, wait_s: float) -> None:
        self.registry = Registry(root)
        self.trainer = Trainer(self.registry)
        self.live = LiveModel(self.registry)
        # one in-order stream (see run), as one region partition applies it
        self.builder = ExamplesBuilder(self.emit, wait_s=wait_s, batch_size=batch_size)
        self.state = self.builder.context
        self.frozen = None
        self.clicks: Counter[str] = Counter()
        self.ranks: dict[str, list[float]] = defaultdict(list)
        self.by_region: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.by_segment: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.clicked_at: dict[str, float] = {}
        self.refresh_latency: list[float] = []
        self.reports = []

    async def emit(self, batch: list[dict[str, Any]]) -> None:
        report = self.trainer.update(batch)
        self.reports.append(report)
        if report.published:
            self.live.refresh()
            if self.frozen is None:
                self.frozen = self.registry.load(report.published.version)
            now = time.perf_counter()
            self.refresh_latency += [now - self.clicked_at.pop(e["search_id"]) for e in batch
                                     if e["search_id"] in self.clicked_at]

    def score(self, search: dict[str, Any], clicked: str) -> None:
        items = search["results"]
        if clicked not in items:
            return
        labels = [int(item == clicked) for item in items]
        search = {**search, "items": items, "features": self.state.features(search)}
        recency = {item: r for r, item in enumerate(self.state.session_items(search["session_id"]))}
        original = [-p for p in range(len(items))]
        model = self.live.scores(search) or original
        scores = {
            "original order": original,
            "online popularity": [self.clicks[i] - p / 100 for p, i in enumerate(items)],
            "session touched first": [(1000 - recency[i] if i in recency else 0) - p / 100
                                      for p, i in enumerate(items)],
            "model frozen at v1": self.frozen.scores(search).tolist() if self.frozen else original,
            "model (online)": model,
        }
        for method, values in scores.items():
            rr = reciprocal_rank(values, labels)
            self.ranks[method].append(rr)
            self.by_region[search["region"]][method].append(rr)
            self.by_segment[segment(recency, items, clicked)][method].append(rr)

    async def run(self, events: Iterator[dict[str, Any]]) -> None:
        for group, clicked in clickouts(events):
            if clicked is not None:
                self.score(group[0], clicked)
                self.clicked_at[group[0]["search_id"]] = time.perf_counter()
                self.clicks[clicked] += 1
            self.builder.apply(group, horizon=group[-1]["ts"], reach=group[-1]["ts"])
            await self.builder.flush()
        self.builder.apply([], horizon=float("inf"), reach=0)
        self.builder.batch_age_s = 0  # emit the last, partial batch too
        await self.builder.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="events to replay (default: all)")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per training batch")
    parser.add_argument("--wait-s", type=float, default=5.0, help="event-time wait for late outcomes")
    parser.add_argument("--path", type=Path, default=TRIVAGO)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a small model: more threads only contend on a busy 2-core machine
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        replay = Replay(Path(root), args.batch_size, args.wait_s)
        asyncio.run(replay.run(itertools.islice(trivago.events(args.path), args.limit)))
    elapsed = time.perf_counter() - started

    mean = statistics.fmean
    regions = sorted(replay.by_region, key=lambda r: -len(replay.by_region[r]["original order"]))[:10]
    headers = ["method", "MRR all", *[f"{r} ({len(replay.by_region[r]['original order'])})" for r in regions]]
    rows = [[m, mean(replay.ranks[m]), *[mean(replay.by_region[r][m]) for r in regions]] for m in METHODS]
    segments = sorted(replay.by_segment, key=lambda g: -len(replay.by_segment[g]["original order"]))
    by_segment = table(["method", *[f"{g} ({len(replay.by_segment[g]['original order'])})" for g in segments]],
                       [[m, *[mean(replay.by_segment[g][m]) for g in segments]] for m in METHODS])
    published = [r for r in replay.reports if r.published]
    trained = [r for r in replay.reports if r.trained]
    latency = sorted(replay.refresh_latency) or [float("nan")]
    notes = "\n".join([
        f"- clickouts ranked: {len(replay.ranks['original order'])}; updates: {len(replay.reports)}, "
        f"published: {len(published)}, refused by the gate: {sum(1 for r in replay.reports if r.refused)}",
        f"- model refresh in process (clickout replayed -> a serving version trained on it): "
        f"p50 {latency[len(latency) // 2] * 1000:.0f} ms, p95 {latency[int(len(latency) * .95)] * 1000:.0f} ms, "
        f"batch {args.batch_size} examples, event-time wait {args.wait_s:g} s",
        f"- trainer throughput on {replay.trainer.device}: "
        f"{mean([r.examples_per_second for r in trained]):,.0f} examples/s per update "
        f"(lists of ~25 items, {replay.trainer.epochs} epochs over new + replayed examples)",
        f"- events from streams.datasets.trivago; prices from the searches' impressions "
        f"(aligned with results); wall time {elapsed:.0f} s",
    ])
    record("Ranking quality, Trivago slice, prequential end to end (examples -> trainer -> registry -> "
           "serving)", None, table(headers, rows) + "\n\nMRR by kind of clickout:\n\n" + by_segment, notes)


if __name__ == "__main__":
    main()
