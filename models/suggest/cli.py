"""``relevo suggest``: what the index suggests for a few prefixes in a few regions, as a table.

The demo calls ``suggestion_table`` while a replay runs, to show suggestions move.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from features.keys import Keys
from models.suggest.service import SuggestService
from relevo.settings import Settings


async def suggestion_table(service: SuggestService, prefixes: Sequence[str], regions: Sequence[str | None],
                           user_id: str | None = None, k: int = 3) -> str:
    """A markdown table: one row per prefix and region, the top ``k`` suggestions in order."""
    lines = ["| prefix | region | suggestions |", "|---|---|---|"]
    for prefix in prefixes:
        for region in regions:
            result = await service.suggest(prefix, user_id, region, k=k)
            found = " · ".join(s.text for s in result.suggestions) or "—"
            lines.append(f"| {prefix} | {region or 'any'} | {found} |")
    return "\n".join(lines)


def register_cli(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``suggest PREFIX... [--region R]... [--user U] [--k K]``."""
    parser = subparsers.add_parser("suggest", help="show query suggestions for prefixes and regions")
    parser.add_argument("prefixes", nargs="+", help="what a user has typed")
    parser.add_argument("--region", action="append", dest="regions", help="market (repeatable)")
    parser.add_argument("--user", help="personalise for this user id")
    parser.add_argument("--k", type=int, default=5, help="suggestions per prefix")
    parser.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace, settings: Settings) -> int:
    """The ``suggest`` subcommand against ``settings.redis_url``."""
    if not settings.redis_url:
        sys.stderr.write("no Redis to read: start the stack with `relevo up`, or set REDIS_URL\n")
        return 2

    async def show() -> str:
        redis = aioredis.Redis.from_url(settings.redis_url)
        try:
            service = SuggestService(redis, Keys(settings.key_prefix))
            return await suggestion_table(service, args.prefixes, args.regions or [None], args.user, args.k)
        finally:
            await redis.aclose()
    sys.stdout.write(asyncio.run(show()) + "\n")
    return 0
