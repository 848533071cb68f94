"""Region localisation through the production path: XMarket ratings -> broker -> worker -> ``POST /v1/rank``.

XMarket's 5-core ratings (seven Amazon markets, ``relevo.streams.datasets.xmarket``) are replayed as
purchases (region = market) onto the embedded broker through the producer, except each
user's last rating in a market (by date; on a tie, the file's later line), which is held
out and never sent (nor the user's earlier ratings of that item). Once the worker has
applied everything and the API's ranking context has the stream, a seeded sample of the
users (``--users``; all 14,311 take about 12 minutes on a busy 2-core machine) is ranked
over HTTP: the held-out item among ``--candidates`` - 1 items of the user's market the
user never rated (seeded sample, seeded order), ranked for the user and the market as of
the replay's last event, with nDCG@10 and HR@10 of the held-out item. No model is trained
(XMarket has no result lists), so ``/v1/rank`` answers with its ``region_counts``
fallback: the region's decayed per-item interactions.

Their half-life (``RELEVO_POPULARITY_HALF_LIFE_S``) is chosen on a held-out split: the
sampled users are split in two (seeded); ``/v1/rank``'s rule ranks the dev half in this
process for each half-life of ``--half-lives-days``, the best one on dev is the stack's
setting, and every figure in the table is the test half's. The default half-life (6 h,
for a clickstream) is reported beside it on the same test users.

Baselines in the same run, from the events sent, in this process: the market's own
popularity (what ``region_counts`` reaches without decay), global popularity (all markets),
random (seeded), and ``/v1/rank``'s own rule (``relevo.models.ranking``) on a context fed
the same events here, which the API must agree with. Ties keep the candidates' order.

    python -m bench.ranking_xmarket [--limit N] [--users 8000] [--candidates 100] [--seed 0]
                                    [--half-lives-days 0.25,1,7,30,90,180,365,730,3650]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.ranking_e2e import post_rank
from bench.report import record, table
from relevo.core.settings import SHARED_DATA, Settings
from relevo.features.context import POPULARITY_HALF_LIFE_S, ContextState
from relevo.models.live import LiveModel
from relevo.models.ranking import rank
from relevo.models.registry import Registry
from relevo.runtime.processes import Runtime, first_key
from relevo.streams.datasets import xmarket
from relevo.streams.events import Event
from relevo.streams.producer import EventProducer

log = logging.getLogger(__name__)
K = 10
API, IN_PROCESS, DEFAULT = "/v1/rank", "its rule, in process", "its rule, default 6 h half-life"
METHODS = (API, IN_PROCESS, DEFAULT, "market popularity", "global popularity", "random")


@dataclass(frozen=True)
class Case:
    """One user of one market: the held-out rating and the candidates it hides among."""

    market: str
    user: str
    held: str
    candidates: list[str]
    after_ts: int  # the user's last rating sent


def hold_out(events: Sequence[Event]) -> tuple[list[Event], dict[tuple[str, str], Event]]:
    """The events to send, and each (market, user)'s last rating (``events`` are in date, line order).
    A user who rated that item before too has none of its ratings sent: the item must be new to them."""
    last = {(e["region"], e["user_id"]): e for e in events}
    held = {(e["region"], e["user_id"], e["item_id"]) for e in last.values()}
    return [e for e in events if (e["region"], e["user_id"], e["item_id"]) not in held], last


def cases(events: Sequence[Event], sent: Sequence[Event], last: dict[tuple[str, str], Event], candidates: int,
          users: int, rng: random.Random) -> list[Case]:
    """The held-out item and ``candidates - 1`` unrated items of its market per user, in a seeded order."""
    items, rated = defaultdict(set), defaultdict(set)
    for e in events:
        items[e["region"]].add(e["item_id"])
        rated[e["region"], e["user_id"]].add(e["item_id"])
    latest = {(e["region"], e["user_id"]): e["ts"] for e in sent}
    keys = sorted(k for k in last if k in latest)  # a user with every rating held out has no history sent
    if users < len(keys):
        keys = sorted(rng.sample(keys, users))
    found = []
    for market, user in keys:
        pool = sorted(items[market] - rated[market, user])
        shown = [last[market, user]["item_id"], *rng.sample(pool, min(candidates - 1, len(pool)))]
        rng.shuffle(shown)
        found.append(Case(market, user, last[market, user]["item_id"], shown, latest[market, user]))
    return found


def position(scores: Sequence[float], held: int) -> int:
    """The held-out item's place (0 first) when ``scores`` rank the list, ties in the list's order."""
    mine = scores[held]
    return sum(1 for p, s in enumerate(scores) if s > mine or (s == mine and p < held))


def gains(place: int) -> tuple[float, float]:
    """nDCG@K and HR@K of one relevant item at ``place``."""
    return (1.0 / math.log2(place + 2), 1.0) if place < K else (0.0, 0.0)


def rule_places(sent: Sequence[Event], found: Sequence[Case], now: int, half_life_s: float
                ) -> tuple[list[int], ContextState]:
    """``/v1/rank``'s rule in this process, on a context with that half-life fed ``sent``: the
    held-out item's place in each case's list."""
    context, live = ContextState(half_life_s), LiveModel(Registry(tempfile.mkdtemp(prefix="relevo-xmarket-empty-")))
    for event in sent:  # in date order
        context.observe(event)
    return [position(rank(live.serving, context.features(shown(c, now)), shown(c, now), explain=0).scores,
                     c.candidates.index(c.held)) for c in found], context


def choose_half_life(sent: Sequence[Event], dev: Sequence[Case], now: int, days: Sequence[float]
                     ) -> tuple[float, dict[float, float]]:
    """The half-life (s) whose rule ranks the dev users best (nDCG@K), and each one's dev nDCG@K."""
    scores = {}
    for d in days:
        scores[d] = statistics.fmean(gains(p)[0] for p in rule_places(sent, dev, now, d * 86_400)[0])
        log.info("dev: half-life %g days -> nDCG@%d %.4f", d, K, scores[d])
    return max(scores, key=scores.__getitem__) * 86_400, scores


def baselines(sent: Sequence[Event], found: Sequence[Case], now: int, half_life_s: float,
              rng: random.Random) -> tuple[dict[str, list[int]], str]:
    """Per baseline, the held-out item's place in each case's list; and what the rule's decay forgot."""
    market, overall = Counter((e["region"], e["item_id"]) for e in sent), Counter(e["item_id"] for e in sent)
    scorers: dict[str, Callable[[Case], list[float]]] = {
        "market popularity": lambda c: [market[c.market, i] for i in c.candidates],
        "global popularity": lambda c: [overall[i] for i in c.candidates],
        "random": lambda c: [rng.random() for _ in c.candidates],
    }
    places = {name: [position(score(c), c.candidates.index(c.held)) for c in found]
              for name, score in scorers.items()}
    places[IN_PROCESS], context = rule_places(sent, found, now, half_life_s)
    places[DEFAULT], default_context = rule_places(sent, found, now, POPULARITY_HALF_LIFE_S)
    return places, forgetting(context, found, now) + "; with the default: " + forgetting(default_context, found, now)


def forgetting(context: ContextState, found: Sequence[Case], now: int) -> str:
    """How much of the held-out items' history the region counts' decay has let go of by ``now``."""
    zero = statistics.fmean(not context.regions[c.market].popularity.get(c.held, now) for c in found)
    half_life_ms = next(iter(context.regions.values())).popularity.half_life_ms
    underflow_days = half_life_ms * 1075 / 86_400_000  # 2 ** -1075 is 0 in a double
    return (f"held-out items whose decayed count in their market was 0 as of the last event: {zero:.1%} "
            f"(half-life {half_life_ms / 3_600_000:g} h: a rating {underflow_days:.0f} days old counts 0)")


def shown(case: Case, now: int) -> dict[str, Any]:
    """The list as ``/v1/rank`` builds it from the request."""
    return {"type": "search", "ts": now, "user_id": case.user, "session_id": case.user, "region": case.market,
            "results": case.candidates}


class Ranker:
    """Asks the API to rank each case's candidates, ``concurrency`` at a time."""

    def __init__(self, api: httpx.AsyncClient, now: int, concurrency: int) -> None:
        self.api, self.now, self.gate = api, now, asyncio.Semaphore(concurrency)
        self.served: Counter[str] = Counter()  # what ranked: a model version or a fallback
        self.stale = 0  # answers whose context had not reached the user's last rating
        self.took_ms: list[float] = []

    async def ask(self, case: Case) -> dict[str, Any]:
        body = {"user_id": case.user, "region": case.market, "ts": self.now, "after_ts": case.after_ts,
                "record": False, "explain": 0, "candidates": [{"item_id": i} for i in case.candidates]}
        async with self.gate:
            return await post_rank(self.api, body)

    async def place(self, case: Case) -> int:
        ranked = await self.ask(case)
        self.served[f"v{ranked['model_version']}" if ranked["model_version"] else ranked["fallback"]] += 1
        self.stale += not ranked["caught_up"]
        self.took_ms.append(ranked["took_ms"])
        return [i["item_id"] for i in ranked["items"]].index(case.held)

    async def caught_up(self, probes: Sequence[Case], timeout_s: float = 300) -> None:
        """Until the API's context has each probe's last rating (the latest of its market)."""
        deadline = time.monotonic() + timeout_s
        for probe in probes:
            while not (await self.ask(probe))["caught_up"]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the API's context did not reach {probe.market}'s last event")


async def through_api(runtime: Runtime, sent: Sequence[Event], found: Sequence[Case], now: int,
                      concurrency: int) -> tuple[list[int], Ranker, float]:
    """Send ``sent``, wait until the worker and the API have it all, then rank every case over HTTP."""
    settings = runtime.settings
    async with EventProducer(settings.kafka_bootstrap_servers, settings.topic_prefix,
                             settings.partitions) as producer:
        await producer.send(sent)
    log.info("%d events sent in %d records; waiting for the worker", len(sent), producer.records_sent)
    await asyncio.to_thread(runtime.wait_drained, 600)
    latest = {e["region"]: e for e in sent}  # the last event of each market
    probes = [Case(m, e["user_id"], "", [e["item_id"]], e["ts"]) for m, e in sorted(latest.items())]
    headers = {"X-API-Key": first_key(settings, "search")}
    async with httpx.AsyncClient(base_url=runtime.api_url, headers=headers, timeout=httpx.Timeout(60, pool=None),
                                 limits=httpx.Limits(max_connections=concurrency)) as api:
        ranker = Ranker(api, now, concurrency)
        await ranker.caught_up(probes)
        started = time.monotonic()
        places = await asyncio.gather(*(ranker.place(c) for c in found))
    return list(places), ranker, time.monotonic() - started


def rows(found: Sequence[Case], places: dict[str, list[int]]) -> list[list[object]]:
    """Overall and per market: nDCG@K and HR@K of every method."""
    groups = {f"all ({len(found)})": range(len(found))}
    for market in sorted({c.market for c in found}, key=lambda m: -sum(c.market == m for c in found)):
        mine = [n for n, c in enumerate(found) if c.market == market]
        groups[f"{market} ({len(mine)})"] = mine
    out = []
    for label, members in groups.items():
        row: list[object] = [label]
        for method in METHODS:
            scored = [gains(places[method][n]) for n in members]
            row += [statistics.fmean(g[0] for g in scored), statistics.fmean(g[1] for g in scored)]
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N ratings, in date order")
    parser.add_argument("--users", type=int, default=8000,
                        help="rank a seeded sample of N users (of 14,311; more ranks them all)")
    parser.add_argument("--candidates", type=int, default=100, help="list length: the held-out item and N-1 others")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=8, help="/v1/rank requests in flight")
    parser.add_argument("--half-lives-days", default="0.25,1,7,30,90,180,365,730,3650",
                        help="the popularity half-lives tried on the dev users")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    events = xmarket.events(SHARED_DATA / "xmarket")[: args.limit]
    sent, last = hold_out(events)
    sampled = cases(events, sent, last, args.candidates, args.users, random.Random(args.seed))
    order = list(range(len(sampled)))
    random.Random(args.seed + 2).shuffle(order)
    dev, found = [sampled[n] for n in sorted(order[::2])], [sampled[n] for n in sorted(order[1::2])]
    now = sent[-1]["ts"]  # the replay's clock: every list is ranked as of its last event
    half_life_s, dev_scores = choose_half_life(sent, dev, now, [float(d) for d in args.half_lives_days.split(",")])
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(data_dir=Path(scratch), registry_dir=str(Path(scratch) / "models"), idle_s=1.0,
                            rerank_depth=0, rate_limit_per_s=0, api_port=0, popularity_half_life_s=half_life_s)
        with Runtime(settings, workers=1, api=True) as runtime:
            runtime.wait_workers_ready()
            api_places, ranker, ranking_s = asyncio.run(through_api(runtime, sent, found, now, args.concurrency))
    elapsed = time.monotonic() - started
    baseline_places, decay_note = baselines(sent, found, now, half_life_s, random.Random(args.seed + 1))
    places = {API: api_places, **baseline_places}
    agree = sum(a == b for a, b in zip(places[API], places[IN_PROCESS], strict=True))
    headers = ["market (users)"] + [f"{m} {figure}" for m in METHODS for figure in (f"nDCG@{K}", f"HR@{K}")]
    notes = "\n".join([
        f"- {len(events):,} XMarket 5-core ratings; {len(sent):,} sent as purchases (region = market), "
        f"each user's last rating per market held out; {len(sampled):,} users sampled, split in a dev half "
        f"(chooses the popularity half-life) and a test half (every figure here); {len(found):,} test users "
        f"ranked, each over up to "
        f"{args.candidates} candidates (the held-out item and unrated items of the market, seed {args.seed}), "
        f"as of the replay's last event",
        f"- what ranked: {dict(ranker.served)}; answers before the user's history reached the API: {ranker.stale}; "
        f"same place as its rule in process: {agree:,} of {len(found):,}; /v1/rank p50 "
        f"{statistics.median(ranker.took_ms):.1f} ms in the API, {len(found) / ranking_s:.0f} lists/s over HTTP "
        f"at {args.concurrency} in flight; wall time {elapsed:.0f} s",
        "- baselines from the sent events: the market's own counts, counts over all markets, random (seeded); "
        "\"its rule, in process\" is relevo.models.ranking on a ContextState fed the same events; " + decay_note,
        "- dev nDCG@10 of the rule by popularity half-life (days): "
        + ", ".join(f"{d:g}: {s:.3f}" for d, s in dev_scores.items())
        + f"; chosen: {half_life_s / 86_400:g} days (RELEVO_POPULARITY_HALF_LIFE_S={half_life_s:g})",
    ])
    record("Region localisation through the production path (XMarket -> Kafka -> worker -> /v1/rank)", None,
           table(headers, rows(found, places)), notes)
    overall = {m: statistics.fmean(gains(p)[0] for p in places[m]) for m in METHODS}
    hr = statistics.fmean(gains(p)[1] for p in places[API])
    print(f"RESULT ranking_xmarket ndcg10={overall[API]:.4f} hr10={hr:.4f} "
          f"pop_ndcg10={overall['global popularity']:.4f} market_pop_ndcg10={overall['market popularity']:.4f} "
          f"random_ndcg10={overall['random']:.4f} default_half_life_ndcg10={overall[DEFAULT]:.4f} "
          f"half_life_days={half_life_s / 86_400:g}")


if __name__ == "__main__":
    main()
