"""The reliability campaign as one repeatable run, on loopback against the embedded stack.

1. schemathesis over the whole OpenAPI (admin key): every case, counting server errors;
2. an ingest fuzz of hostile events through ``POST /v1/events``: every reject must be in the
   DLQ with a reason, every valid event applied exactly once (features compared with a
   reference ``FeatureWriter`` fed the valid events once);
3. SIGKILL of the worker at random points of a replay (one event per record), restarted by
   ``relevo up``'s supervisor: features compared with the reference again;
4. SIGKILL of the trainer, of Redis and of the broker, each followed by fresh events: are they
   applied without a manual restart, and are the features still exact?
5. floods of unique users, items and queries and every region code the contract admits,
   with worker RSS, API RSS and Redis memory before and after (before the broker restart of 4,
   which comes last: an in-memory broker returns without its log).

Baseline in the same run: the worker's RSS and Redis memory on an idle stack, before anything.

    pip install -e '.[bench]' && python -m bench.reliability [--cases 1000] [--fuzz 6000] [--kills 20] [--flood 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import random
import signal
import string
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
import redis.asyncio as aioredis

from bench.report import record, table
from relevo.core.keys import Keys
from relevo.core.settings import Settings
from relevo.core.supervision import Backoff
from relevo.features.writer import FeatureWriter
from relevo.runtime.processes import Runtime, first_key
from relevo.streams.dlq import dead_letters
from relevo.streams.producer import EventProducer
from tests.streamkit import T0, decayed_as_of, synthetic_events
from tests.streamkit import counters as shard_counters

log = logging.getLogger("bench.reliability")


def rss_mb(proc: subprocess.Popen[bytes] | None) -> float:
    if proc is None or proc.poll() is not None:
        return float("nan")
    with open(f"/proc/{proc.pid}/status") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))
    return kib / 1024


def redis_mb(client: redis.Redis) -> float:
    return int(client.info("memory")["used_memory"]) / 1024 / 1024


def counters(client: redis.Redis) -> tuple[int, int]:
    """Events applied and duplicates skipped, summed over the feature shards."""
    found = shard_counters(client, "rv")
    return found.get("events_applied", 0), found.get("events_duplicate", 0)


def clear(client: redis.Redis) -> None:
    """Unlink every key of the stack a thousand at a time: one DEL of a flood's million keys
    blocks Redis past the client's timeout."""
    batch: list[bytes] = []
    for key in client.scan_iter(match="rv:*", count=10_000):
        batch.append(key)
        if len(batch) == 1000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


def wait_for(condition, timeout: float, what: str) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except (redis.exceptions.ConnectionError, httpx.HTTPError):
            pass
        time.sleep(0.2)
    log.warning("gave up waiting for %s after %.0f s", what, timeout)
    return False


def produce(settings: Settings, events: list[dict], per_record: int = 200) -> None:
    async def go() -> None:
        async with EventProducer(settings.kafka_bootstrap_servers, settings.topic_prefix, settings.partitions,
                                 batch_events=per_record) as producer:
            await producer.send(events)
    asyncio.run(go())


def reference(settings: Settings, events: list[dict], prefix: str) -> None:
    """``events`` applied once, in process, under ``prefix``: what the pipeline must match."""
    async def go() -> None:
        client = aioredis.Redis.from_url(settings.redis_url)
        await FeatureWriter(client, Keys(prefix)).process(events)
        await client.aclose()
    asyncio.run(go())


def mismatches(client: redis.Redis, got: str, want: str, as_of: int, settle_s: float = 30.0) -> int:
    """Feature keys whose values differ between two prefixes, once the last updates have landed
    (ids are counted when claimed, just before their updates are applied)."""
    deadline = time.monotonic() + settle_s
    while (bad := _mismatches(client, got, want, as_of)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return bad


def _mismatches(client: redis.Redis, got: str, want: str, as_of: int) -> int:
    mine, ref = decayed_as_of(client, got, as_of), decayed_as_of(client, want, as_of)
    bad = len(mine.keys() ^ ref.keys())
    for key in mine.keys() & ref.keys():
        a, b = mine[key], ref[key]
        if a.keys() != b.keys() or any(abs(a[m] - b[m]) > 1e-9 * max(1.0, abs(b[m])) for m in b):
            bad += 1
    return bad


# 1. schemathesis ---------------------------------------------------------------------------------

CATALOG = [{"item_id": f"cat-{i}", "titles": {"en-US": f"{thing} {colour}", "de-DE": f"{colour_de} {thing_de}"},
            "category": "Home", "brand": "Acme", "price": 10.0 + i, "regions": ["DE", "US"]}
           for i, (thing, thing_de, colour, colour_de) in enumerate(
               (t, td, c, cd) for t, td in (("kettle", "Wasserkocher"), ("lamp", "Lampe"), ("chair", "Stuhl"))
               for c, cd in (("red", "roter"), ("blue", "blauer"), ("green", "grüner")))]


def search_ready(api: str, key: str) -> bool:
    answer = httpx.get(f"{api}/v1/search", params={"q": "kettle"}, headers={"X-API-Key": key}, timeout=30)
    return answer.status_code == 200


def schemathesis_run(api: str, key: str, cases: int) -> dict[str, Any]:
    """Every operation of the OpenAPI with generated cases; any 5xx counts (the catalog is loaded,
    so search has no reason to answer 503)."""
    import hypothesis
    import schemathesis

    wait_for(lambda: search_ready(api, key), 300, "search to load its catalog")
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    per_op = 2 * max(1, -(-cases // len(operations)))  # some operations have only a few distinct cases
    done, errors = 0, []
    for operation in operations:
        @hypothesis.settings(max_examples=per_op, deadline=None, database=None, derandomize=True,
                             phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                             suppress_health_check=list(hypothesis.HealthCheck))
        @hypothesis.given(case=operation.as_strategy())
        def check(case) -> None:  # type: ignore[no-untyped-def]
            nonlocal done
            response = case.call(base_url=api, headers={"X-API-Key": key}, timeout=30)
            done += 1
            if response.status_code >= 500:
                errors.append(f"{case.operation.label} -> {response.status_code}: {response.text[:200]}")
        check()
        log.info("schemathesis: %s done (%d cases so far, %d server errors)", operation.label, done, len(errors))
    for error in errors[:10]:
        log.error("server error: %s", error)
    return {"operations": len(operations), "cases": done, "server_errors": len(errors)}


# 2. ingest fuzz ----------------------------------------------------------------------------------

def hostile(i: int, rng: random.Random) -> Any:
    """One hostile input: the kinds a misbehaving or malicious shop sends."""
    base = {"type": "click", "event_id": f"fz-bad-{i}", "ts": T0 + i, "user_id": "u1", "session_id": "s",
            "region": "FR", "item_id": "i1"}
    kind = i % 14
    if kind == 0:
        missing = rng.choice(["event_id", "ts", "user_id", "region"])
        return {k: v for k, v in base.items() if k != missing}
    if kind == 1:
        return {**base, "ts": rng.choice(["yesterday", 1.5, 10**16, -1, True, None, 1_000])}
    if kind == 2:
        return {**base, "user_id": "x" * rng.choice([129, 5000, 60_000])}
    if kind == 3:
        return {**base, "region": rng.choice(["FR\n", "F:R", "", "ZZZZ", "fr-FR", "1"])}
    if kind == 4:
        return {**base, "type": "".join(rng.choices(string.printable, k=12))}  # attacker text in the reason
    if kind == 5:
        return {**base, "user_id": "u\x00\x1b[31m"}
    if kind == 6:
        return {**base, "type": "search", "search_id": "q", "results": "i1,i2"}
    if kind == 7:
        return {**base, "type": "search", "search_id": "q", "filters": {"f": "z" * 70_000}}  # over 64 KiB
    if kind == 8:
        return {**base, "type": "purchase", "order_id": "o", "price": rng.choice([-5, "9.99", 1e12])}
    if kind == 9:
        return rng.choice([[1, 2], "event", 42, None, True])
    if kind == 10:
        return {**base, "kind": "like"}
    if kind == 11:
        return {**base, "type": "search", "search_id": "q", "results": ["i"] * 501}
    if kind == 12:
        return {**base, "locale": "en_US"}
    return {**base, "position": -1}


def ingest_fuzz(rt: Runtime, client: redis.Redis, n: int) -> dict[str, Any]:
    rng = random.Random(12)
    valid = synthetic_events(n // 3, seed=21, users=200, prefix="fz-ok-")
    items: list[Any] = [*valid, *(hostile(i, rng) for i in range(n - len(valid)))]
    items += rng.sample(valid, 200)  # repeats of valid events: applied once
    rng.shuffle(items)
    applied_before, duplicates_before = counters(client)
    accepted = rejected = 0
    headers = {"X-API-Key": first_key(rt.settings, "ingest"), "Content-Type": "application/json"}
    lines = [b"{not json", b'{"type": "click", "event_id": ' + b"[" * 100 + b"]" * 100 + b"}"]
    with httpx.Client(base_url=rt.api_url, timeout=60) as http:
        for start in range(0, len(items), 500):
            answer = http.post("/v1/events", content=orjson.dumps(items[start:start + 500]), headers=headers)
            answer.raise_for_status()
            accepted += answer.json()["accepted"]
            rejected += answer.json()["rejected"]
        answer = http.post("/v1/events", content=b"\n".join(lines),
                           headers={**headers, "Content-Type": "application/x-ndjson"})
        rejected += answer.json()["rejected"]
        deep = http.post("/v1/events", content=b"[" * 300 + b"]" * 300, headers=headers)  # refused whole
    unique = len({e["event_id"] for e in valid})
    wait_for(lambda: sum(counters(client)) - applied_before - duplicates_before >= accepted, 120, "fuzz applied")
    applied = counters(client)[0] - applied_before

    async def api_letters() -> list[Any]:
        return [letter async for letter in dead_letters(rt.settings) if letter.source == "api"]
    letters = asyncio.run(api_letters())
    with_reason = sum(1 for letter in letters if letter.reason and letter.reason != "(no reason)")
    reference(rt.settings, valid, "ref-fuzz")
    wrong = mismatches(client, "rv", "ref-fuzz", max(e["ts"] for e in valid))
    return {"sent": len(items) + len(lines), "accepted": accepted, "rejected": rejected,
            "dlq_with_reason": with_reason, "unique_valid": unique, "applied": applied,
            "lost": unique - applied, "wrong_features": wrong, "deep_body_status": deep.status_code}


# 3, 4. kills and restarts ------------------------------------------------------------------------

def kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def worker_kills(rt: Runtime, client: redis.Redis, kills: int, n_events: int) -> dict[str, Any]:
    clear(client)  # a fresh start for exact comparison
    events = synthetic_events(n_events, seed=31, users=60, prefix="kill-")
    reference(rt.settings, events, "ref-kill")
    rng = random.Random(5)
    points = sorted(rng.sample(range(n_events // 20, n_events - n_events // 20), kills))
    sender = threading.Thread(target=produce, args=(rt.settings, events, 1))
    sender.start()
    started, done = time.monotonic(), 0
    for point in points:
        if not wait_for(lambda at=point: sum(counters(client)) >= at, 300, f"{point} events"):
            break
        victim = rt.workers[0]
        kill(victim)
        done += 1
        log.info("killed the worker at %d events (kill %d of %d)", sum(counters(client)), done, kills)
        wait_for(lambda v=victim: rt.workers[0] is not v, 60, "the supervisor to restart the worker")
    sender.join()
    wait_for(lambda: counters(client)[0] >= n_events, 600, "the replay after the kills")
    applied, duplicates = counters(client)
    return {"kills": done, "events": n_events, "applied": applied, "redelivered_skipped": duplicates,
            "lost": n_events - applied, "wrong_features": mismatches(client, "rv", "ref-kill", events[-1]["ts"]),
            "seconds": round(time.monotonic() - started, 1)}


def after_restart(rt: Runtime, client: redis.Redis, name: str, victim, seed: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Kill ``victim()`` mid-stream; then send fresh events and see whether they are applied."""
    before = synthetic_events(2000, seed=seed, users=40, prefix=f"{name}-a-")
    after = synthetic_events(1000, seed=seed + 1, users=40, prefix=f"{name}-b-")
    clear(client)
    reference(rt.settings, before + after, f"ref-{name}")
    sender = threading.Thread(target=produce, args=(rt.settings, before, 1))
    sender.start()
    wait_for(lambda: sum(counters(client)) >= 500, 120, f"{name}: traffic")
    started, epoch, killed_ms = time.monotonic(), rt.settings.log_epoch, int(time.time() * 1000)
    kill(victim())
    sender.join()
    back = wait_for(lambda: victim() is not None and victim().poll() is None, 90, f"{name} restarted")
    if name == "broker":  # back with an empty log: the runtime starts a new epoch, the topics and the clients
        back = wait_for(lambda: rt.settings.log_epoch > epoch, 90, "a new log epoch")
        rt.wait_workers_ready(since_ms=killed_ms, timeout=90)
    restart_s = round(time.monotonic() - started, 1)
    produce(rt.settings, after)
    total = len(before) + len(after)
    wait_for(lambda: counters(client)[0] >= total, 90, f"{name}: events after the restart")
    applied = counters(client)[0]
    return {"restarted": back, "restart_s": restart_s, "events": total, "applied": applied,
            "lost": total - applied, "wrong_features": mismatches(client, "rv", f"ref-{name}", after[-1]["ts"]),
            "reference": f"ref-{name}", "as_of": after[-1]["ts"]}


def redrive_processing_failures(rt: Runtime, client: redis.Redis, outcome: dict[str, Any]) -> dict[str, Any]:
    """What ``relevo dlq redrive --reason processing`` recovers once the worker is healthy again
    (a restarted worker: the writer's script cache is rebuilt), against the same reference."""
    from relevo.streams.dlq import redrive

    victim = rt.workers[0]
    kill(victim)
    wait_for(lambda: rt.workers[0] is not victim and rt.workers[0].poll() is None, 60, "worker back")
    rt.wait_workers_ready(since_ms=int(time.time() * 1000) - 2000, timeout=120)

    async def go() -> Any:
        letters = [letter async for letter in dead_letters(rt.settings) if letter.reason.startswith("processing")]
        return await redrive(rt.settings, letters)
    report = asyncio.run(go())
    total = outcome["events"]
    wait_for(lambda: counters(client)[0] >= total, 120, "the re-driven events")
    applied = counters(client)[0]
    return {"redriven": report.events_sent, "lost": total - applied,
            "wrong_features": mismatches(client, "rv", outcome["reference"], outcome["as_of"])}


def trainer_kill(rt: Runtime) -> dict[str, Any]:
    started = time.monotonic()
    kill(rt.trainer)
    back = wait_for(lambda: rt.trainer is not None and rt.trainer.poll() is None, 90, "trainer restarted")
    # Up means consuming again: its group commits what arrives after the restart.
    return {"restarted": back, "restart_s": round(time.monotonic() - started, 1)}


# 5. floods ---------------------------------------------------------------------------------------

def region_codes() -> list[str]:
    """Every region code the contract admits: 2 or 3 letters, or 3 digits (19,252 in all)."""
    letters = string.ascii_uppercase
    return [*("".join(p) for n in (2, 3) for p in itertools.product(letters, repeat=n)),
            *(f"{i:03d}" for i in range(1000))]


def flood(rt: Runtime, client: redis.Redis, n: int) -> dict[str, Any]:
    regions = region_codes()
    before = {"worker_rss_mb": rss_mb(rt.workers[0]), "api_rss_mb": rss_mb(rt.api), "redis_mb": redis_mb(client)}
    events = [{"type": "search", "event_id": f"fl-{i}", "ts": T0 + i, "user_id": f"flood-user-{i}",
               "session_id": f"flood-session-{i}", "region": regions[i % len(regions)],
               "search_id": f"flood-q-{i}", "query": f"flood query {i}", "results": [f"flood-item-{i}"]}
              for i in range(n)]
    applied0 = counters(client)[0]
    produce(rt.settings, events)
    wait_for(lambda: counters(client)[0] - applied0 >= n, 900, "the flood")
    read_key = {"X-API-Key": first_key(rt.settings, "read")}
    with httpx.Client(base_url=rt.api_url, timeout=30, headers=read_key) as http:
        for i in range(2000):  # unique long ids over HTTP: nothing of them may stay in the API
            http.get(f"/v1/features/users/{'x' * 100}{i}")
    after = {"worker_rss_mb": rss_mb(rt.workers[0]), "api_rss_mb": rss_mb(rt.api), "redis_mb": redis_mb(client)}
    return {"events": n, "regions": len(regions), "before": before, "after": after}


def restarted(what: str, r: dict[str, Any]) -> list[object]:
    return [what, f"back: {r['restarted']} after {r['restart_s']} s",
            f"{r['lost']} of {r['events']} events not applied, {r['wrong_features']} wrong feature keys"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000, help="schemathesis cases over the whole OpenAPI")
    parser.add_argument("--fuzz", type=int, default=6000, help="events in the ingest fuzz")
    parser.add_argument("--kills", type=int, default=20, help="worker SIGKILLs during one replay")
    parser.add_argument("--replay", type=int, default=6000, help="events of the replay the kills land in")
    parser.add_argument("--flood", type=int, default=200_000, help="unique users, items and queries")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the story
    tmp = Path(tempfile.mkdtemp(prefix="relevo-reliability-"))
    settings = Settings(data_dir=tmp, api_port=0, session_timeout_s=6.0)
    from relevo.search.catalog_store import load_items
    # a small catalog: search answers instead of 503
    load_items(settings.data_dir, CATALOG, cache_dir=settings.cache_dir)
    with Runtime(settings, workers=1, trainer=True) as rt:
        rt.wait_workers_ready()
        client = rt.redis()
        baseline = {"worker_rss_mb": rss_mb(rt.workers[0]), "redis_mb": redis_mb(client)}
        stop = threading.Event()
        quick = lambda: Backoff(first_s=0.5, max_s=2.0)  # noqa: E731 - the campaign measures recovery, not patience
        supervisor = threading.Thread(target=rt.supervise, args=(stop, 0.2, quick), daemon=True)
        supervisor.start()
        try:
            fuzz = ingest_fuzz(rt, client, args.fuzz)
            log.info("fuzz: %s", fuzz)
            st = schemathesis_run(rt.api_url, first_key(rt.settings, "admin"), args.cases)
            log.info("schemathesis: %s", st)
            kills = worker_kills(rt, client, args.kills, args.replay)
            log.info("worker kills: %s", kills)
            trainer = trainer_kill(rt)
            log.info("trainer kill: %s", trainer)
            redis_restart = after_restart(rt, client, "redis", lambda: rt.stack.servers[1].proc, seed=51)
            log.info("redis restart: %s", redis_restart)
            recovered = redrive_processing_failures(rt, client, redis_restart)
            log.info("after re-driving the processing failures: %s", recovered)
            flooded = flood(rt, client, args.flood)
            log.info("flood: %s", flooded)
            # Last: the in-memory broker comes back without its log, and the worker group's committed
            # offsets then point past the new log's end.
            broker = after_restart(rt, client, "broker", lambda: rt.stack.servers[0].proc, seed=41)
            log.info("broker restart: %s", broker)
        finally:
            stop.set()
            supervisor.join()
    b, a = flooded["before"], flooded["after"]
    rows = [
        ["schemathesis, whole OpenAPI (admin key)", f"{st['cases']} cases over {st['operations']} operations",
         f"{st['server_errors']} server errors"],
        ["ingest fuzz", f"{fuzz['sent']} inputs: {fuzz['accepted']} accepted, {fuzz['rejected']} rejected",
         f"{fuzz['dlq_with_reason']} dead letters with a reason; {fuzz['applied']} of {fuzz['unique_valid']} "
         f"valid ids applied, {fuzz['wrong_features']} wrong feature keys; 300-deep body -> "
         f"{fuzz['deep_body_status']}"],
        [f"worker SIGKILLed {kills['kills']}x in a replay (1 event/record)", f"{kills['events']} events, "
         f"{kills['seconds']} s", f"{kills['lost']} lost, {kills['redelivered_skipped']} redelivered and skipped, "
         f"{kills['wrong_features']} wrong feature keys"],
        ["trainer SIGKILLed", "supervisor restart", f"back: {trainer['restarted']} after {trainer['restart_s']} s"],
        restarted("Redis (AOF) SIGKILLed mid-stream", redis_restart),
        ["then `relevo dlq redrive --reason processing`, worker restarted",
         f"{recovered['redriven']} events re-driven",
         f"{recovered['lost']} still not applied, {recovered['wrong_features']} wrong feature keys"],
        restarted("broker (in memory) SIGKILLed mid-stream", broker),
        [f"flood: {flooded['events']:,} unique users/items/queries, {flooded['regions']:,} regions (every code)",
         "before -> after", f"worker RSS {b['worker_rss_mb']:.0f} -> {a['worker_rss_mb']:.0f} MB, API RSS "
         f"{b['api_rss_mb']:.0f} -> {a['api_rss_mb']:.0f} MB, Redis {b['redis_mb']:.0f} -> {a['redis_mb']:.0f} MB"],
        ["baseline: idle stack before the campaign", "", f"worker RSS {baseline['worker_rss_mb']:.0f} MB, "
         f"Redis {baseline['redis_mb']:.1f} MB"],
    ]
    lost = fuzz["lost"] + kills["lost"] + broker["lost"] + recovered["lost"]
    notes = ("Loopback, embedded stack (Tansu in memory, Valkey with AOF), one worker, trainer and API, "
             "`relevo up`'s supervisor restarting what was killed. `lost` sums valid events never applied "
             "over the fuzz, the kills, the Redis restart after re-driving its dead letters, and the broker restart.")
    record("Reliability campaign", None, table(["what", "load", "outcome"], rows), notes)
    print(f"RESULT reliability cases={st['cases']} server_errors={st['server_errors']} lost={lost} "
          f"worker_rss_mb={a['worker_rss_mb']:.0f} redis_mb={a['redis_mb']:.0f} "
          f"api_rss_mb={a['api_rss_mb']:.0f} wrong_features={kills['wrong_features'] + fuzz['wrong_features']}")


if __name__ == "__main__":
    main()
