"""Feature definitions: declarations of what is kept, per entity, and how it ages.

A definition says nothing about Redis; ``relevo.features.updates`` turns events into
updates of these features and ``relevo.features.writer`` keeps them. Every aggregation
is order-independent, so a redelivered or reordered stream ends in the same
state as a single in-order pass:

- ``decayed``: per-member sums of weights, each weight decaying with the age of
  its event (forward decay: ``w * 2 ** ((t - landmark) / half_life)``).
- ``latest``: per-member latest event time, keeping the ``max_members`` newest.
- ``count``: plain integer counters.

>>> USER_ITEMS.entity, USER_ITEMS.aggregation, USER_ITEMS.half_life_s / DAY
('user', 'decayed', 7.0)
>>> sorted(f.name for f in FEATURES if f.entity == "region")
['activity', 'categories', 'items', 'queries']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

HOUR = 3600.0
DAY = 24 * HOUR

Entity = Literal["user", "region", "item"]
Aggregation = Literal["decayed", "latest", "count"]


@dataclass(frozen=True, eq=False)  # identity hashing: features are module constants, hashed per update
class Feature:
    """One feature: what entity it describes, how it aggregates, how it ages and expires."""

    name: str
    entity: Entity
    aggregation: Aggregation
    doc: str
    ttl_s: int
    half_life_s: float | None = None
    max_members: int | None = None

    def __post_init__(self) -> None:
        if (self.aggregation == "decayed") != (self.half_life_s is not None):
            raise ValueError(f"{self.entity}.{self.name}: a half-life is for decayed features only")


USER_ITEMS = Feature("items", "user", "decayed", "interest in each item (view 1, click 2, cart 3, buy 5)",
                     ttl_s=int(30 * DAY), half_life_s=7 * DAY, max_members=200)
USER_CATEGORIES = Feature("categories", "user", "decayed", "interest in each category",
                          ttl_s=int(30 * DAY), half_life_s=14 * DAY, max_members=50)
USER_RECENT_ITEMS = Feature("recent_items", "user", "latest", "last items touched",
                            ttl_s=int(30 * DAY), max_members=20)
USER_RECENT_QUERIES = Feature("recent_queries", "user", "latest", "last queries typed",
                              ttl_s=int(30 * DAY), max_members=20)
USER_SESSIONS = Feature("sessions", "user", "latest", "latest session ids",
                        ttl_s=int(30 * DAY), max_members=3)
USER_LOCALES = Feature("locales", "user", "decayed", "locales the user browses in",
                       ttl_s=int(30 * DAY), half_life_s=30 * DAY, max_members=8)
USER_REGIONS = Feature("regions", "user", "decayed", "regions the user shops in",
                       ttl_s=int(30 * DAY), half_life_s=30 * DAY, max_members=8)
USER_PRICES = Feature("prices", "user", "decayed", "prices clicked and paid, in quarter-octave buckets",
                      ttl_s=int(30 * DAY), half_life_s=30 * DAY, max_members=64)
# Kept under the user, not a session entity of its own: a read of the user's latest session
# items is then one call in the user's slot (members are ``session_item(session, item)``).
USER_SESSION_ITEMS = Feature("session_items", "user", "latest", "items touched in the user's latest sessions",
                             ttl_s=int(2 * HOUR), max_members=50)
REGION_ITEMS = Feature("items", "region", "decayed", "item popularity (click 1, cart 2, buy 4)",
                       ttl_s=int(14 * DAY), half_life_s=1 * DAY, max_members=2000)
REGION_QUERIES = Feature("queries", "region", "decayed", "query popularity",
                         ttl_s=int(14 * DAY), half_life_s=1 * DAY, max_members=2000)
REGION_ACTIVITY = Feature("activity", "region", "decayed", "searches, impressions, clicks, purchases",
                          ttl_s=int(14 * DAY), half_life_s=1 * DAY)
REGION_CATEGORIES = Feature("categories", "region", "decayed", "category mix of clicks and purchases",
                            ttl_s=int(14 * DAY), half_life_s=7 * DAY, max_members=500)
ITEM_COUNTS = Feature("counts", "item", "count", "impressions, clicks, purchases, overall and per region",
                      ttl_s=int(30 * DAY))

FEATURES: tuple[Feature, ...] = (
    USER_ITEMS, USER_CATEGORIES, USER_RECENT_ITEMS, USER_RECENT_QUERIES, USER_SESSIONS,
    USER_LOCALES, USER_REGIONS, USER_PRICES, USER_SESSION_ITEMS,
    REGION_ITEMS, REGION_QUERIES, REGION_ACTIVITY, REGION_CATEGORIES, ITEM_COUNTS,
)

# How much each interaction says about interest: a purchase says more than a glance.
USER_WEIGHTS = {"view": 1.0, "click": 2.0, "cart": 3.0, "purchase": 5.0}
REGION_WEIGHTS = {"view": 0.0, "click": 1.0, "cart": 2.0, "purchase": 4.0}
