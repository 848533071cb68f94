"""The catalog item contract, its validation, and loaders for item files and Amazon data.

An item is a plain dict::

    {"item_id": "sku-1", "titles": {"en-GB": "Red kettle"}, "category": "Kitchen",
     "brand": "Acme", "price": 25.0 | {"GB": 25.0, "DE": 29.9} | None, "regions": ["GB", "DE"]}

``validate_item`` returns the cleaned item or raises ``InvalidItem`` whose message says
what is wrong (the stream worker sends it to the DLQ as the reason). A deletion travels
on the same topic as a tombstone, ``{"item_id": ..., "deleted": true}``.

>>> validate_item({"item_id": "a1", "titles": {"en": "Kettle"}, "category": "Kitchen",
...                "price": {"gb": 9.5}, "regions": ["gb"]})["price"]
{'GB': 9.5}
>>> validate_item({"item_id": "a1", "titles": {}, "category": "Kitchen", "regions": ["GB"]})
Traceback (most recent call last):
...
relevo.search.catalog.InvalidItem: item 'a1': titles must map at least one locale to a title
>>> deleted_id(tombstone("a1")), deleted_id({"item_id": "a1", "titles": {"en": "Kettle"}})
('a1', None)
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from relevo.core.codes import canonical_locale, canonical_region

log = logging.getLogger(__name__)

MAX_ID_CHARS = 200
MAX_TITLE_CHARS = 1000
MAX_TEXT_CHARS = 200
FIELDS = ("item_id", "titles", "category", "brand", "price", "regions")

# Amazon marketplaces as ISO 3166 regions and the locale of each market's titles.
AMAZON_MARKETS = {"UK": ("GB", "en-GB"), "US": ("US", "en-US"), "DE": ("DE", "de-DE"),
                  "FR": ("FR", "fr-FR"), "JP": ("JP", "ja-JP")}


class InvalidItem(ValueError):
    """A catalog item that breaks the contract; the message is the DLQ reason."""


def tombstone(item_id: str) -> dict:
    """The record that deletes ``item_id`` from every replica's catalog."""
    return {"item_id": item_id, "deleted": True}


def deleted_id(raw: Any) -> str | None:
    """The item id ``raw`` deletes, when it is a tombstone."""
    if isinstance(raw, dict) and raw.get("deleted") is True and set(raw) == {"item_id", "deleted"}:
        item_id = raw["item_id"]
        return item_id if isinstance(item_id, str) and 0 < len(item_id) <= MAX_ID_CHARS else None
    return None


def _check_price(value: float, where: str, fail) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        fail(f"{where} must be a non-negative number, got {value!r}")
    return float(value)


def validate_item(raw: Any) -> dict:
    """The item with fields cleaned (locales and regions canonical), or ``InvalidItem``."""
    if not isinstance(raw, dict):
        raise InvalidItem(f"an item must be a JSON object, got {type(raw).__name__}")
    item_id = raw.get("item_id")
    if not isinstance(item_id, str) or not item_id.strip() or len(item_id) > MAX_ID_CHARS:
        raise InvalidItem(f"item_id must be a non-empty string of at most {MAX_ID_CHARS} characters, "
                          f"got {str(item_id)[:50]!r}")

    def fail(reason: str):
        raise InvalidItem(f"item {item_id!r}: {reason}")

    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        fail(f"unknown fields {unknown}; an item has {', '.join(FIELDS)}")
    titles = raw.get("titles")
    if not isinstance(titles, dict) or not titles:
        fail("titles must map at least one locale to a title")
    clean_titles = {}
    for locale, title in titles.items():
        try:
            tag = canonical_locale(locale)
        except ValueError:
            fail(f"titles has {locale!r}, which is not a locale like 'en' or 'de-AT'")
        if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE_CHARS:
            fail(f"title for {locale!r} must be a non-empty string of at most {MAX_TITLE_CHARS} characters")
        clean_titles[tag] = " ".join(title.split())
    category, brand = raw.get("category"), raw.get("brand")
    if not isinstance(category, str) or len(category) > MAX_TEXT_CHARS:
        fail(f"category must be a string of at most {MAX_TEXT_CHARS} characters")
    if brand is not None and (not isinstance(brand, str) or len(brand) > MAX_TEXT_CHARS):
        fail(f"brand must be a string of at most {MAX_TEXT_CHARS} characters or null")
    regions = raw.get("regions")
    if not isinstance(regions, list) or not regions:
        fail("regions must be a non-empty list of region codes such as 'DE'")
    clean_regions = []
    for region in regions:
        try:
            clean_regions.append(canonical_region(region))
        except ValueError:
            fail(f"regions has {region!r}, which is not a region code such as 'DE'")
    price = raw.get("price")
    if isinstance(price, dict):
        price = {str(r).upper(): _check_price(p, f"price for {r!r}", fail) for r, p in price.items()}
        stray = sorted(set(price) - set(clean_regions))
        if stray:
            fail(f"price names regions {stray} that are not in regions")
    elif price is not None:
        price = _check_price(price, "price", fail)
    return {"item_id": item_id, "titles": clean_titles, "category": category, "brand": brand or None,
            "price": price, "regions": sorted(set(clean_regions))}


def read_items(path: Path | str) -> Iterator[Any]:
    """Raw items from a JSON-lines file, or from a file holding one JSON array.

    Yields what each line parses to, unvalidated; a line that is not JSON yields
    its ``InvalidItem`` so the caller can report it with the rest.
    """
    with open(path, "rb") as fh:
        head = fh.read(1024).lstrip()
        fh.seek(0)
        if head.startswith(b"["):
            yield from orjson.loads(fh.read())
            return
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    yield InvalidItem(f"line {number} is not JSON: {exc}")


def load_amazon(path: Path | str) -> list[dict]:
    """Items from ``amazon_multilingual/product_titles_by_market.tsv``: one per product id,
    its title in each market under that market's locale, sold where it was reviewed.

    Amazon data has no brand or price, so both are None.
    """
    items: dict[str, dict] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            region, locale = AMAZON_MARKETS[row["marketplace"]]
            item = items.setdefault(row["product_id"], {
                "item_id": row["product_id"], "titles": {}, "category": row["product_category"],
                "brand": None, "price": None, "regions": set()})
            item["titles"][locale] = row["product_title"]
            item["regions"] |= {region} | {AMAZON_MARKETS[m][0] for m in row["markets_reviewed"].split(",")
                                           if m in AMAZON_MARKETS}
    for item in items.values():
        item["regions"] = sorted(item["regions"])
    log.info("read %d Amazon products from %s", len(items), path)
    return list(items.values())
