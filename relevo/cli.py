"""The ``relevo`` command: one subcommand per job.

    relevo demo            the whole system on the Trivago slice, with a summary
    relevo up              embedded stack + worker + API, until Ctrl-C
    relevo worker          one stream worker (needs KAFKA_BOOTSTRAP_SERVERS, REDIS_URL or `relevo up`)
    relevo serve           the HTTP API
    relevo replay DATASET  a dataset into Kafka
    relevo trainer         fine-tune the ranker from train.batches and publish versions
    relevo catalog load    load a catalog (or the Amazon multilingual sample)
    relevo suggest         query suggestions from the command line
    relevo settings        every environment variable and its default
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from typing import Any

from relevo.settings import Settings, describe

log = logging.getLogger("relevo")


def _need_servers(settings: Settings, what: str, redis: bool = True) -> Settings:
    from relevo.runtime import resolve

    settings = resolve(settings)
    if settings.embedded_kafka or (redis and settings.embedded_redis):
        raise SystemExit(f"relevo {what}: no Kafka/Redis to talk to. Start `relevo up` in another "
                         "terminal, or set KAFKA_BOOTSTRAP_SERVERS and REDIS_URL.")
    return settings


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.app import run_worker

    run_worker(_need_servers(settings, "worker"))
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from serving.app import serve

    serve(_need_servers(settings, "serve"))
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from relevo.runtime import Runtime

    with Runtime(settings, workers=args.workers, trainer=True) as runtime:
        log.info("Relevo is up: API %s (docs %s/docs), Kafka %s, Redis %s. Ctrl-C stops everything.",
                 runtime.api_url, runtime.api_url, runtime.settings.kafka_bootstrap_servers,
                 runtime.settings.redis_url)
        wait_for_interrupt(runtime)
    return 0


def wait_for_interrupt(runtime: Any) -> None:
    # Also when started in the background, where a shell leaves SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while all(p.poll() is None for p in runtime.workers):
            time.sleep(0.5)
        log.error("a worker exited; see %s", runtime.logs)
    except KeyboardInterrupt:
        log.info("stopping")


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from relevo.demo import run_demo

    return run_demo(settings, limit=args.limit, speed=args.speed, keep_running=args.keep_running,
                    inject_drift=args.inject_drift)


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    sys.stdout.write(describe() + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from models.catalog_cli import register_cli as register_catalog
    from models.suggest.cli import register_cli as register_suggest
    from models.trainer_worker import register_cli as register_trainer
    from streams.replay import register_cli as register_replay

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
    for register in (register_replay, register_catalog, register_suggest, register_trainer):
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command in ("replay", "trainer"):
        settings = _need_servers(settings, args.command, redis=False)
    elif args.command == "suggest":
        settings = _need_servers(settings, args.command)
    return args.func(args, settings)


if __name__ == "__main__":
    sys.exit(main())
