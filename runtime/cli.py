"""The ``relevo`` command: one subcommand per job, and the only place arguments are parsed.

    relevo demo            the whole system on the Trivago slice, with a summary
    relevo up              embedded stack + worker + API, until Ctrl-C
    relevo worker          one stream worker (needs KAFKA_BOOTSTRAP_SERVERS, REDIS_URL or `relevo up`)
    relevo serve           the HTTP API
    relevo replay DATASET  a dataset into Kafka
    relevo trainer         fine-tune the ranker from train.batches and publish versions
    relevo topics create   create every topic (partitions and replication from the settings)
    relevo catalog load    load a catalog (or the Amazon multilingual sample)
    relevo suggest         query suggestions from the command line
    relevo dlq list        dead letters by reason, with samples
    relevo dlq redrive     send a selection of dead letters back to the event topics
    relevo features rebuild   rebuild the online features from the event topics
    relevo settings        every environment variable and its default

Each command imports what it runs when it runs, so ``relevo --help`` and
``relevo settings`` answer at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from relevo.core.settings import Settings, describe
from relevo.search.encoder import DEFAULT_ENCODER, ENCODERS
from relevo.streams.datasets import DATASETS

log = logging.getLogger("relevo")
STARTS_ITS_OWN_STACK = ("demo", "up", "settings")


def _need_servers(settings: Settings, what: str, redis: bool = True) -> Settings:
    if settings.embedded_kafka or (redis and settings.embedded_redis):
        raise SystemExit(f"relevo {what}: no Kafka/Redis to talk to. Start `relevo up` in another "
                         "terminal, or set KAFKA_BOOTSTRAP_SERVERS and REDIS_URL.")
    return settings


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from relevo.runtime.worker import run_worker

    run_worker(_need_servers(settings, "worker"))
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from relevo.serving.app import serve

    serve(_need_servers(settings, "serve"))
    return 0


def cmd_topics_create(args: argparse.Namespace, settings: Settings) -> int:
    """Create the topics before anything else starts (a deployment's first step); existing ones stay."""
    from relevo.streams.topics import all_topics, ensure_topics

    asyncio.run(ensure_topics(_need_servers(settings, "topics create", redis=False)))
    for name, partitions in all_topics(settings).items():
        sys.stdout.write(f"{name}\tpartitions={partitions}\n")
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from relevo.runtime.processes import Runtime, stack_file

    with Runtime(settings, workers=args.workers, trainer=True) as runtime:
        log.info("Relevo is up: API %s (docs %s/docs), Kafka %s, Redis %s; API keys of this run in %s. "
                 "Crashed processes are restarted; Ctrl-C stops everything.",
                 runtime.api_url, runtime.api_url, runtime.settings.kafka_bootstrap_servers,
                 runtime.settings.redis_url, stack_file(runtime.settings))
        runtime.wait_for_interrupt()
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from relevo.runtime.demo import run_demo

    return run_demo(settings, limit=args.limit, speed=args.speed, keep_running=args.keep_running,
                    inject_drift=args.inject_drift)


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    sys.stdout.write(describe() + "\n")
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Replay a dataset into ``settings.kafka_bootstrap_servers``."""
    from relevo.streams.datasets import DatasetNotFound, open_dataset
    from relevo.streams.replay import replay_to_kafka

    if not settings.kafka_bootstrap_servers:
        log.error("no Kafka to replay into: start the stack with `relevo up`, or set KAFKA_BOOTSTRAP_SERVERS")
        return 2
    try:
        events = open_dataset(args.dataset, args.path)
    except DatasetNotFound as exc:
        log.error("%s", exc)
        return 2
    stats = asyncio.run(replay_to_kafka(events, settings, args.speed, args.limit))
    log.info("replayed %d events in %.1f s (%.0f events/s): %s", stats.total, stats.elapsed_s,
             stats.events_per_s, ", ".join(f"{n} {t}" for t, n in sorted(stats.sent.items())))
    return 0


def cmd_trainer(args: argparse.Namespace, settings: Settings) -> int:
    import torch

    from relevo.models.registry import Registry
    from relevo.models.trainer import Trainer
    from relevo.models.trainer_worker import registry_dir, run_trainer

    settings = _need_servers(settings, "trainer", redis=False)
    torch.set_num_threads(args.threads)  # small models: extra threads only contend on a busy CPU
    registry = Registry(args.registry or registry_dir(settings), keep=settings.registry_keep or None)
    trainer = Trainer(registry, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    log.info("trainer on %s, registry %s, serving v%s", trainer.device, registry.root, trainer.version)
    try:
        asyncio.run(run_trainer(settings, trainer))
    except KeyboardInterrupt:
        log.info("trainer stopped")
    return 0


def cmd_catalog_load(args: argparse.Namespace, settings: Settings) -> int:
    """Validate and index every item of ``args.file``; report rejected items with reasons."""
    from relevo.search.catalog import load_amazon, read_items
    from relevo.search.catalog_store import load_items

    path = Path(args.file)
    if not path.exists():
        log.error("no such file: %s", path)
        return 2
    items = load_amazon(path) if args.amazon else read_items(path)
    loaded, rejected = load_items(settings.data_dir, items, args.encoder, args.batch, settings.cache_dir)
    return 0 if loaded or not rejected else 1


def cmd_suggest(args: argparse.Namespace, settings: Settings) -> int:
    """A table of what the suggestion index completes each prefix to, per region."""
    if not settings.redis_url:
        sys.stderr.write("no Redis to read: start the stack with `relevo up`, or set REDIS_URL\n")
        return 2
    sys.stdout.write(asyncio.run(_suggestion_table(settings, args.prefixes, args.regions or [None],
                                                   args.user, args.k)) + "\n")
    return 0


async def _suggestion_table(settings: Settings, prefixes: Sequence[str], regions: Sequence[str | None],
                            user_id: str | None, k: int) -> str:

    from relevo.core.keys import Keys
    from relevo.core.redis import connect
    from relevo.suggestions.config import SuggestConfig
    from relevo.suggestions.service import SuggestService

    redis = connect(settings.redis_url)
    try:
        service = SuggestService(redis, Keys(settings.key_prefix), SuggestConfig.from_settings(settings))
        lines = ["| prefix | region | suggestions |", "|---|---|---|"]
        for prefix in prefixes:
            for region in regions:
                result = await service.suggest(prefix, user_id, region, k=k)
                found = " · ".join(s.text for s in result.suggestions) or "—"
                lines.append(f"| {prefix} | {region or 'any'} | {found} |")
        return "\n".join(lines)
    finally:
        await redis.aclose()


def _epoch_ms(text: str) -> int:
    """Epoch milliseconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    from datetime import UTC, datetime

    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epoch ms or an ISO time like 2026-12-01T10:00, got {text!r}") \
            from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)


def _letter_filter(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from relevo.core.stats import reason_kind

    def keep(letter) -> bool:  # type: ignore[no-untyped-def]
        return ((args.reason is None or args.reason.lower() in letter.reason.lower())
                and (args.kind is None or reason_kind(letter.reason) == args.kind)
                and (args.source is None or letter.source == args.source)
                and (args.since is None or letter.timestamp_ms >= args.since)
                and (args.until is None or letter.timestamp_ms <= args.until))
    return keep


def cmd_dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    """A table of the dead letters by reason: count, sources, time range and samples."""
    from relevo.streams.dlq import Summary, dead_letters

    settings = _need_servers(settings, "dlq", redis=False)
    keep = _letter_filter(args)

    async def read() -> Summary:
        summary = Summary(args.samples)
        async for letter in dead_letters(settings):
            if keep(letter):
                summary.add(letter)
        return summary
    summary = asyncio.run(read())
    out = [f"{summary.total} dead letters on {settings.topic('events.dlq')}" + (" (filtered)" if any(
        getattr(args, k) is not None for k in ("reason", "kind", "source", "since", "until")) else "")]
    for group in summary.groups():
        sources = ", ".join(f"{s} {n}" for s, n in group.sources.most_common())
        out.append(f"\n{group.count:>8}  {group.reason}\n          from {sources}; "
                   f"record times {group.first_ms}..{group.last_ms}")
        out += [f"          sample: {sample.decode('utf-8', 'replace')!r}" for sample in group.samples]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def cmd_dlq_redrive(args: argparse.Namespace, settings: Settings) -> int:
    """Validate the selected dead letters again and send the events that pass to the event topics."""
    from relevo.streams.dlq import dead_letters, redrive

    settings = _need_servers(settings, "dlq", redis=False)
    keep = _letter_filter(args)

    async def go():  # type: ignore[no-untyped-def]
        selected = []
        async for letter in dead_letters(settings):
            if keep(letter) and (args.limit is None or len(selected) < args.limit):
                selected.append(letter)
        return await redrive(settings, selected, dry_run=args.dry_run)
    report = asyncio.run(go())
    verb = "would send" if args.dry_run else "sent"
    sys.stdout.write(f"{report.selected} dead letters selected: {verb} {report.events_sent} events to the event "
                     f"topics; {report.not_events} not from the event path (left alone)\n")
    for reason, n in report.still_invalid.most_common():
        sys.stdout.write(f"{n:>8}  still invalid: {reason}\n")
    return 0


def cmd_features_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    """Replay the event topics from their start through the feature writer into Redis."""
    from relevo.core.redis import connect
    from relevo.features.rebuild import FeaturesExist, rebuild_features

    settings = _need_servers(settings, "features rebuild")

    async def go():  # type: ignore[no-untyped-def]
        client = connect(settings.redis_url)
        try:
            return await rebuild_features(settings, client, fresh=args.fresh)
        finally:
            await client.aclose()
    try:
        report = asyncio.run(go())
    except FeaturesExist as exc:
        log.error("%s", exc)
        return 2
    log.info("rebuilt features from %d records: %d events applied, %d invalid skipped, in %.1f s",
             report.records, report.events, report.rejected, report.seconds)
    return 0


def _add_letter_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", help="only reasons containing this text (case-insensitive)")
    parser.add_argument("--kind", help="only this kind of reason (the metric label: ts, user_id, malformed JSON, ...)")
    parser.add_argument("--source", help="only letters from this topic (or 'api' for rejects at the HTTP edge)")
    parser.add_argument("--since", type=_epoch_ms, help="only letters dead-lettered at or after (epoch ms or ISO)")
    parser.add_argument("--until", type=_epoch_ms, help="only letters dead-lettered at or before (epoch ms or ISO)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relevo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run everything on the Trivago slice and print a summary")
    demo.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    demo.add_argument("--speed", type=float, default=2000.0,
                      help="compress event time by this factor (2000: the two days in about a minute)")
    demo.add_argument("--keep-running", action="store_true", help="stay up after the summary")
    demo.add_argument("--inject-drift", metavar="REGION", default=None,
                      help="drop half of REGION's clicks from 40%% of the replay on (e.g. BR), to see an alert")
    demo.set_defaults(func=cmd_demo)

    up = sub.add_parser("up", help="embedded stack + workers + API until Ctrl-C")
    up.add_argument("--workers", type=int, default=1)
    up.set_defaults(func=cmd_up)
    sub.add_parser("worker", help="one stream worker").set_defaults(func=cmd_worker)
    sub.add_parser("serve", help="the HTTP API").set_defaults(func=cmd_serve)
    sub.add_parser("settings", help="environment variables and defaults").set_defaults(func=cmd_settings)
    topics = sub.add_parser("topics", help="manage Relevo's topics").add_subparsers(dest="topics_command",
                                                                                  required=True)
    topics.add_parser("create", help="create every topic Relevo uses").set_defaults(func=cmd_topics_create)

    replay = sub.add_parser("replay", help="replay a dataset into Kafka in event-time order")
    replay.add_argument("dataset", choices=sorted(DATASETS), help="which dataset adapter to use")
    replay.add_argument("--path", type=Path, help="the dataset file or directory (default: ../shared/data)")
    replay.add_argument("--speed", type=float,
                        help="compress event time by this factor (60: an hour a minute); default: no pacing")
    replay.add_argument("--limit", type=int, help="send at most this many events")
    replay.set_defaults(func=cmd_replay)

    trainer = sub.add_parser("trainer", help="fine-tune the ranker from train.batches and publish versions")
    trainer.add_argument("--registry", type=Path, default=None,
                         help="model registry directory (default: RELEVO_REGISTRY_DIR, else RELEVO_DATA_DIR/models)")
    trainer.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    trainer.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    trainer.set_defaults(func=cmd_trainer)

    catalog = sub.add_parser("catalog", help="manage the searchable catalog")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    load = catalog_commands.add_parser("load", help="load items (JSON lines or a JSON array) into the search index")
    load.add_argument("file", help="items file, or product_titles_by_market.tsv with --amazon")
    load.add_argument("--amazon", action="store_true", help="FILE is amazon_multilingual product titles")
    load.add_argument("--encoder", choices=ENCODERS,
                      help=f"text encoder (default: the one the published search tuning was fit for, else "
                           f"{DEFAULT_ENCODER})")
    load.add_argument("--batch", type=int, default=512, help="items encoded at once")
    load.set_defaults(func=cmd_catalog_load)

    suggest = sub.add_parser("suggest", help="show query suggestions for prefixes and regions")
    suggest.add_argument("prefixes", nargs="+", help="what a user has typed")
    suggest.add_argument("--region", action="append", dest="regions", help="market (repeatable)")
    suggest.add_argument("--user", help="personalise for this user id")
    suggest.add_argument("--k", type=int, default=5, help="suggestions per prefix")
    suggest.set_defaults(func=cmd_suggest)

    dlq = sub.add_parser("dlq", help="inspect and re-drive dead letters").add_subparsers(
        dest="dlq_command", required=True)
    dlq_list = dlq.add_parser("list", help="dead letters by reason, with samples")
    _add_letter_filters(dlq_list)
    dlq_list.add_argument("--samples", type=int, default=3, help="samples shown per reason")
    dlq_list.set_defaults(func=cmd_dlq_list)
    dlq_redrive = dlq.add_parser("redrive", help="validate dead letters again and send the valid events on; "
                                                 "idempotent (the writer de-duplicates event ids)")
    _add_letter_filters(dlq_redrive)
    dlq_redrive.add_argument("--limit", type=int, help="re-drive at most this many letters")
    dlq_redrive.add_argument("--dry-run", action="store_true", help="only say what would be sent")
    dlq_redrive.set_defaults(func=cmd_dlq_redrive)

    features = sub.add_parser("features", help="manage the online features").add_subparsers(
        dest="features_command", required=True)
    rebuild = features.add_parser("rebuild", help="rebuild the features from the event topics' log")
    rebuild.add_argument("--fresh", action="store_true",
                         help="delete this prefix's features (and dedupe sets, clock) first")
    rebuild.set_defaults(func=cmd_features_rebuild)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command not in STARTS_ITS_OWN_STACK:
        from relevo.runtime.processes import resolve

        settings = resolve(settings)  # the servers of a running `relevo up`, unless configured
    return args.func(args, settings)


if __name__ == "__main__":
    sys.exit(main())
