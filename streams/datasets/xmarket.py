"""XMarket's 5-core ratings (seven Amazon markets) as purchase events: region = market.

``bench.drift`` replays them for its false alarms, ``bench.ranking_xmarket`` for region
localisation. Each line ``userId itemId rate date`` becomes a purchase at midnight UTC of
its date, price unknown (0); ``event_id`` names the market and the file's line, so ties on
a date keep the file's order.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from relevo.streams.events import Event, validate

LOCALES = {"ca": "en-CA", "de": "de-DE", "fr": "fr-FR", "in": "en-IN", "jp": "ja-JP", "mx": "es-MX", "uk": "en-GB"}


def events(root: Path) -> list[Event]:
    """Every market's ratings under ``root`` as purchase events, in (date, market, line) order."""
    rows = []
    for market, locale in LOCALES.items():
        with open(root / f"{market}_5core.txt") as fh:
            next(fh)
            for n, line in enumerate(fh):
                user, item, _rate, date = line.split()
                day = datetime.date.fromisoformat(date)
                ts = int(datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC).timestamp()) * 1000
                rows.append((ts, market, n, user, item, locale))
    rows.sort()
    return [validate({"type": "purchase", "event_id": f"xm-{m}-{n}", "ts": ts, "user_id": user,
                      "session_id": user, "region": m.upper(), "locale": locale, "item_id": item,
                      "order_id": f"xm-{m}-{n}", "price": 0.0})
            for ts, m, n, user, item, locale in rows]
