"""Trivago RecSys Challenge 2019 logs as Relevo events.

Mapping, one log row at a time in event-time order:

- ``clickout item`` becomes a search (``results`` = the impressions, ``query`` =
  the session's latest ``search for …`` text, or "") followed by a click on the
  referenced item at its position in the impressions, with its price.
- ``interaction item image|info|rating|deals`` becomes a click with ``kind="view"``.
- ``search for destination|poi|item`` becomes a search whose query is the
  reference. For ``search for item`` the reference is the id standing in for the
  hotel name the user typed (Trivago anonymised it), so the query is that id and
  ``results`` is that one item.
- ``filter selection`` and ``change of sort order`` are skipped: they refine a
  result list we only see at the next clickout, whose search carries the filters.
- Item actions whose reference is ``unknown`` (Trivago's missing value) are skipped.

``region`` is the platform (country) and ``locale`` comes from it. Ids are
deterministic (session, step and time: a session's step numbers can repeat a day
apart), so a replay is idempotent. ``ts`` is the log second in ms plus a
small offset per row within that second, so the stream never goes back in time
and a clickout's search precedes its click.

>>> row = dict(user_id="u1", session_id="s1", ts=1541599553000, step=3, action_type="clickout item",
...            reference="7", platform="FR", device="mobile", current_filters="Pool",
...            impressions="5|7|9", prices="80|95|120")
>>> search, click = row_events(row, session_query="Paris, France")
>>> search["results"], search["prices"], search["query"], search["locale"], search["filters"]
(['5', '7', '9'], [80.0, 95.0, 120.0], 'Paris, France', 'fr-FR', {'Pool': True})
>>> click["search_id"] == search["search_id"], click["position"], click["price"], click["ts"] - search["ts"]
(True, 1, 95.0, 1)
>>> [e["kind"] for e in row_events({**row, "action_type": "interaction item image"}, "")]
['view']
>>> [(e["query"], e["results"]) for e in row_events({**row, "action_type": "search for item"}, "")]
[('7', ['7'])]
>>> row_events({**row, "action_type": "filter selection"}, "")
[]
>>> row_events({**row, "reference": "unknown"}, "")
[]
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from relevo.streams.events import Event, validate

# Platform code -> the locale its users most likely read; anything else gets FALLBACK_LOCALE.
LOCALES = {
    "AE": "ar-AE", "AR": "es-AR", "AT": "de-AT", "AU": "en-AU", "BE": "nl-BE", "BG": "bg-BG",
    "BR": "pt-BR", "CA": "en-CA", "CH": "de-CH", "CL": "es-CL", "CN": "zh-CN", "CO": "es-CO",
    "CZ": "cs-CZ", "DE": "de-DE", "DK": "da-DK", "EC": "es-EC", "ES": "es-ES", "FI": "fi-FI",
    "FR": "fr-FR", "GR": "el-GR", "HK": "zh-HK", "HR": "hr-HR", "HU": "hu-HU", "ID": "id-ID",
    "IE": "en-IE", "IL": "he-IL", "IN": "en-IN", "IT": "it-IT", "JP": "ja-JP", "KR": "ko-KR",
    "MX": "es-MX", "MY": "en-MY", "NL": "nl-NL", "NO": "nb-NO", "NZ": "en-NZ", "PE": "es-PE",
    "PH": "en-PH", "PL": "pl-PL", "PT": "pt-PT", "RO": "ro-RO", "RS": "sr-RS", "RU": "ru-RU",
    "SE": "sv-SE", "SG": "en-SG", "SI": "sl-SI", "SK": "sk-SK", "TH": "th-TH", "TR": "tr-TR",
    "TW": "zh-TW", "UK": "en-GB", "US": "en-US", "UY": "es-UY", "VN": "vi-VN", "ZA": "en-ZA",
}
FALLBACK_LOCALE = "en"
VIEWS = ("interaction item image", "interaction item info", "interaction item rating",
         "interaction item deals")
SEARCHES = ("search for destination", "search for poi", "search for item")
MISSING = "unknown"
COLUMNS = ["user_id", "session_id", "timestamp", "step", "action_type", "reference", "platform",
           "device", "current_filters", "impressions", "prices"]


def _split(value: Any) -> list[str]:
    return value.split("|") if isinstance(value, str) and value else []


def row_events(row: dict[str, Any], session_query: str) -> list[Event]:
    """The events one log row stands for (none, one, or a clickout's search and click)."""
    action, ref, session, step = row["action_type"], row["reference"], row["session_id"], row["step"]
    common = {"ts": row["ts"], "user_id": row["user_id"], "session_id": session,
              "region": row["platform"], "locale": LOCALES.get(row["platform"], FALLBACK_LOCALE),
              "device": row["device"]}
    search_id = f"tv-{session}-{step}-{row['ts']}"  # a session's steps restart: the time keeps ids unique
    if action in SEARCHES:
        results = [ref] if action == "search for item" else []
        return [validate({**common, "type": "search", "event_id": f"{search_id}-search",
                          "search_id": search_id, "query": ref, "results": results})]
    if ref == MISSING:
        return []
    if action in VIEWS:
        return [validate({**common, "type": "click", "event_id": f"{search_id}-view",
                          "item_id": ref, "kind": "view"})]
    if action != "clickout item":
        return []
    impressions = _split(row["impressions"])
    click = {**common, "type": "click", "event_id": f"{search_id}-click", "item_id": ref,
             "kind": "click", "ts": row["ts"] + 1}
    if not impressions:
        return [validate(click)]
    filters = dict.fromkeys(_split(row["current_filters"]), True) or None
    search = {**common, "type": "search", "event_id": f"{search_id}-search", "search_id": search_id,
              "query": session_query, "results": impressions, "filters": filters}
    prices = [float(p) for p in _split(row["prices"])]
    if len(prices) == len(impressions):
        search["prices"] = prices
    click["search_id"] = search_id
    if ref in impressions:
        click["position"] = impressions.index(ref)
        if "prices" in search:
            click["price"] = prices[click["position"]]
    return [validate(search), validate(click)]


def rows(path: Path) -> list[dict[str, Any]]:
    """The log's rows in event-time order, with ``ts`` in ms unique enough to keep that order.

    Rows sharing a second get 2 ms apart (room for a clickout's search and click).
    """
    frame = pd.read_parquet(path, columns=COLUMNS).sort_values(["timestamp", "step"], kind="stable")
    within_second = frame.groupby("timestamp").cumcount().clip(upper=499)
    frame["ts"] = frame["timestamp"] * 1000 + 2 * within_second
    # Arrow turns the rows into Python dicts several times faster than DataFrame.to_dict.
    return pa.Table.from_pandas(frame, preserve_index=False).to_pylist()


def events(path: Path) -> Iterator[Event]:
    """Validated events from a Trivago log file (parquet), in event-time order."""
    session_queries: dict[str, str] = {}
    for row in rows(path):
        if row["action_type"] in SEARCHES:
            session_queries[row["session_id"]] = row["reference"]
        yield from row_events(row, session_queries.get(row["session_id"], ""))
