"""Diginetica (CIKM Cup 2016) item views and purchases as Relevo events.

Views become clicks with ``kind="view"``; purchases become purchase events. The
logs carry no prices, so purchases have ``price=0.0`` (features that sum spend
see nothing from this dataset). Categories come from ``product-categories.csv``.
Anonymous users (``NA``) get ``anon-<session>``, so each anonymous session is its
own user. Every event has the one shop's region, locale and currency (``Shop``:
the CIKM Cup shop is Russian, so RU, ru-RU, RUB by default). Identical purchase
rows are one purchase whose ``quantity`` is how many there are.
``ts`` is the event date at midnight UTC plus the timeframe (ms into the session).

>>> ts_ms("2016-05-09", 526309)
1462752526309
>>> view_event({"session_id": "1", "user_id": "NA", "item_id": "81766", "timeframe": "526309",
...             "eventdate": "2016-05-09"}, {"81766": "1096"}, Shop())["user_id"]
'anon-1'
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from functools import lru_cache
from pathlib import Path

import pandas as pd

from relevo.streams.events import Event, validate

VIEWS_FILE = "sample_train-item-views.csv"
PURCHASES_FILE = "train-purchases.csv"
CATEGORIES_FILE = "product-categories.csv"
ANONYMOUS = "NA"


@lru_cache(maxsize=4096)
def _midnight_ms(day: str) -> int:
    return int(datetime.combine(date.fromisoformat(day), time(), UTC).timestamp() * 1000)


def ts_ms(eventdate: str, timeframe: str | int) -> int:
    """Event time in epoch ms: the day's UTC midnight plus the timeframe."""
    return _midnight_ms(eventdate) + int(timeframe)


@dataclass(frozen=True)
class Shop:
    """Where every event of this single-shop dataset happens."""

    region: str = "RU"
    locale: str = "ru-RU"
    currency: str = "RUB"

    def common(self, session: str, user: str, ts: int) -> dict[str, object]:
        user_id = f"anon-{session}" if user == ANONYMOUS else user
        return {"ts": ts, "user_id": user_id, "session_id": session, "region": self.region,
                "locale": self.locale}


def view_event(row: dict[str, str], categories: dict[str, str], shop: Shop) -> Event:
    """A row of the item-views file as a view."""
    ts = ts_ms(row["eventdate"], row["timeframe"])
    item = row["item_id"]
    return validate({**shop.common(row["session_id"], row["user_id"], ts),
                     "type": "click", "kind": "view", "item_id": item,
                     "event_id": f"dg-{row['session_id']}-{ts}-{item}-view",
                     "category": categories.get(item)})


def purchase_event(row: dict[str, str], categories: dict[str, str], shop: Shop) -> Event:
    """A row of the purchases file, with its ``quantity``, as a purchase (the log has no price: 0.0)."""
    ts = ts_ms(row["eventdate"], row["timeframe"])
    item, order = row["itemId"], row["ordernumber"]
    return validate({**shop.common(row["sessionId"], row["userId"], ts),
                     "type": "purchase", "item_id": item, "order_id": order, "quantity": row["quantity"],
                     "price": 0.0, "currency": shop.currency,
                     "event_id": f"dg-{row['sessionId']}-{ts}-{order}-{item}-purchase",
                     "category": categories.get(item)})


def _read(path: Path) -> pd.DataFrame:
    # Everything stays text: ids are ids, and "NA" is a marker we map ourselves.
    return pd.read_csv(path, sep=";", dtype=str, keep_default_na=False)


def events(path: Path, shop: Shop = Shop()) -> Iterator[Event]:
    """Validated views and purchases from the Diginetica directory, in event-time order."""
    catalog = _read(path / CATEGORIES_FILE)
    categories = dict(zip(catalog["itemId"], catalog["categoryId"], strict=True))
    merged = [view_event(row, categories, shop)
              for row in _read(path / VIEWS_FILE).to_dict("records")]
    purchases = _read(path / PURCHASES_FILE)
    purchases = purchases.groupby(list(purchases.columns), sort=False).size().reset_index(name="quantity")
    merged += [purchase_event(row, categories, shop) for row in purchases.to_dict("records")]
    merged.sort(key=lambda event: event["ts"])
    yield from merged
