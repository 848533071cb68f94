"""The HTTP API's request and response models: what ``/openapi.json`` publishes.

The event contract's rules live in ``relevo.streams.events`` (one fast validator for the
API and the worker); the models here describe it for clients and documentation, with its
limits taken from the same constants, and ``tests/test_openapi.py`` checks that both name
the same fields and the same required ones. Responses are described as they are built
(feature reads, search, suggestions, alerts, models); free-form maps stay ``dict``.

>>> event_union().validate_python({"type": "click", "event_id": "e1", "ts": 1541599523000, "user_id": "u",
...                                "session_id": "s", "region": "FR", "item_id": "42"}).kind
'click'
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal

import orjson
from fastapi import Response
from pydantic import BaseModel, Field, TypeAdapter

from relevo.core.codes import MAX_LOCALE_CHARS, MAX_REGION_CHARS
from relevo.streams.events import CLICK_KINDS, MAX_ID_LEN, MAX_QUERY_LEN, MAX_RESULTS, MIN_TS_MS

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN)]
Scores = dict[str, float]


# --- the event contract -------------------------------------------------------------------------------------

class EventBase(BaseModel):
    """Fields every event carries. Unknown fields are dropped by the validator."""

    event_id: Id = Field(description="client-made and unique: events are applied once per id")
    ts: int = Field(ge=MIN_TS_MS, description="event time, epoch milliseconds; at most a day in the future")
    user_id: Id
    session_id: Id
    region: str = Field(max_length=MAX_REGION_CHARS, description="market: ISO 3166 code or UN M49 number")
    locale: str | None = Field(None, max_length=MAX_LOCALE_CHARS, description="BCP 47 tag, e.g. es-MX")
    device: str | None = Field(None, max_length=32)


class SearchEvent(EventBase):
    """A search (or a browse, with an empty query) and the result list shown."""

    type: Literal["search"]
    search_id: Id
    query: str | None = Field(None, max_length=MAX_QUERY_LEN)
    results: list[Id] | None = Field(None, max_length=MAX_RESULTS, description="item ids shown, in order")
    prices: list[float] | None = Field(None, max_length=MAX_RESULTS, description="one price per result")
    filters: dict[str, Any] | None = Field(None, description="at most 64 filters")
    model_version: int | None = Field(None, ge=1, description="the model that ordered a list the API served")


class ClickEvent(EventBase):
    """A click, view or add-to-cart on an item, after a search or not."""

    type: Literal["click"]
    item_id: Id
    search_id: Id | None = None
    position: int | None = Field(None, ge=0, le=10_000, description="0-based position in the search's results")
    kind: Literal[CLICK_KINDS] = "click"  # type: ignore[valid-type]
    price: float | None = Field(None, ge=0)
    category: str | None = Field(None, max_length=256)


class PurchaseEvent(EventBase):
    """A purchase of an item."""

    type: Literal["purchase"]
    item_id: Id
    order_id: Id
    quantity: int = Field(1, ge=1, le=100_000)
    price: float = Field(ge=0)
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$", description="ISO 4217")
    search_id: Id | None = None
    category: str | None = Field(None, max_length=256)


EVENT_MODELS = {"search": SearchEvent, "click": ClickEvent, "purchase": PurchaseEvent}
Event = Annotated[SearchEvent | ClickEvent | PurchaseEvent, Field(discriminator="type")]


@cache
def event_union() -> TypeAdapter[Event]:
    return TypeAdapter(Event)


class EventResult(BaseModel):
    index: int = Field(description="position in the batch")
    event_id: str | int | None = Field(description="the id as sent (cut to 200 characters)")
    accepted: bool
    reason: str | None = Field(None, description="why it was rejected (it went to the dead-letter topic)")


class IngestAnswer(BaseModel):
    accepted: int
    rejected: int
    results: list[EventResult]


def orjson_response(body: Any) -> Response:
    """``body`` as JSON, encoded by orjson straight to bytes. For hot routes whose ``response_model``
    documents the body: checking every answer against it again costs about as much as the work."""
    return Response(orjson.dumps(body), media_type="application/json")


# --- features -----------------------------------------------------------------------------------------------

class PriceBand(BaseModel):
    p25: float
    p50: float
    p75: float


class UserFeatures(BaseModel):
    """A user's features: the ``fields`` asked for (all by default); the others are left out."""

    user_id: str
    items: Scores = Field(default_factory=dict, description="decayed interest per item")
    categories: Scores = Field(default_factory=dict)
    recent_items: list[str] = Field(default_factory=list)
    recent_queries: list[str] = Field(default_factory=list)
    session_id: str | None = None
    session_items: list[str] = Field(default_factory=list)
    locale: str | None = None
    region: str | None = None
    price_band: PriceBand | None = None
    as_of: int = Field(description="the event time the decayed values are read at, epoch ms")


class RegionFeatures(BaseModel):
    """A region's features: the ``fields`` asked for (all by default); the others are left out."""

    region: str
    items: Scores = Field(default_factory=dict, description="decayed item popularity")
    queries: Scores = Field(default_factory=dict, description="decayed query popularity")
    categories: Scores = Field(default_factory=dict)
    activity: Scores = Field(default_factory=dict, description="decayed searches, impressions, clicks, purchases")
    searches: float = 0.0
    clicks: float = 0.0
    ctr: float = Field(0.0, description="clicks per search")
    as_of: int


class ItemCounts(BaseModel):
    impressions: float
    views: float
    clicks: float
    carts: float
    purchases: float
    ctr: float = Field(description="clicks per impression")


class ItemFeatures(ItemCounts):
    item_id: str
    by_region: dict[str, ItemCounts]


class FeatureBatch(BaseModel):
    users: dict[str, UserFeatures | None]
    regions: dict[str, RegionFeatures | None]
    items: dict[str, ItemFeatures | None]


# --- search and suggestions ---------------------------------------------------------------------------------

class Signal(BaseModel):
    value: float
    weight: float
    contribution: float = Field(description="value × weight: its share of the first ranker's score")


class Learned(BaseModel):
    model_version: int
    score: float
    first_stage_position: int = Field(description="0-based position before the learned model re-ordered")


class SearchResult(BaseModel):
    item_id: str
    title: str = Field(description="in the user's locale where the catalog has it")
    locale: str = Field(description="the title's locale")
    translated: bool
    category: str | None
    brand: str | None
    price: float | None = Field(description="the price in the search's region")
    score: float
    explanation: dict[str, Signal | Learned] = Field(
        description="signal name → value, weight, contribution; ``learned`` → the model's score and version")


class Language(BaseModel):
    code: str | None
    confidence: float


class Intent(BaseModel):
    id: int | str
    path: str
    score: float


class Attribute(BaseModel):
    type: str
    text: str


class Entities(BaseModel):
    brands: list[str]
    attributes: list[Attribute]


class Understanding(BaseModel):
    query: str
    normalized: str
    language: Language
    intent: list[Intent] = Field(description="product-taxonomy categories, best first")
    entities: Entities


class Retrieval(BaseModel):
    encoder: str = Field(description="the catalog's encoder (its parts joined by +)")
    query_towers: dict[str, str] = Field(description="encoder part -> the tuned tower encoding its queries")
    fusion: str = Field(description="how the retrievers' scores are combined")


class SearchAnswer(BaseModel):
    query: str
    region: str | None
    locale: str | None
    user_id: str | None
    understanding: Understanding
    results: list[SearchResult]
    retrieval: Retrieval
    took_ms: float
    search_id: str | None = Field(None, description="send it with clicks and purchases on these results: the list "
                                                    "served is recorded under it (null without a region)")


class SuggestionOut(BaseModel):
    text: str = Field(description="as people typed it")
    query: str = Field(description="normalised")
    score: float
    signals: Scores | None = Field(None, description="with explain=true: each weighted signal")
    counts: Scores | None = Field(None, description="with explain=true: the decayed counts behind them")


class SuggestAnswer(BaseModel):
    prefix: str
    as_of: int
    suggestions: list[SuggestionOut]


# --- drift, models, catalog, operations ---------------------------------------------------------------------

Level = float | dict[str, float] | str | int


class AlertOut(BaseModel):
    id: str
    region: str = Field(description="region code, or * for the global stream")
    metric: str
    detector: str
    statistic: float
    baseline: Level
    current: Level
    window: int = Field(description="observations behind current")
    severity: Literal["warning", "critical"]
    first_seen: int = Field(description="event time, epoch ms")
    last_seen: int
    resolved: bool
    resolved_at: int | None


class AlertList(BaseModel):
    alerts: list[AlertOut]


class ModelVersionOut(BaseModel):
    version: int
    sha256: str
    parent: int | None
    window: tuple[int, int] = Field(description="event time of the oldest and newest training example")
    figures: Scores = Field(description="evaluation figures (prequential MRR, the session rule's, hold-out)")
    config: dict[str, int | float | str] = Field(description="the ranker's sizes and the feature set it was trained on")
    created: float = Field(description="epoch seconds")


class ModelList(BaseModel):
    serving: int | None
    previous: int | None = Field(description="the rollback target")
    registry_current: int | None
    versions: list[ModelVersionOut] = Field(description="newest first")


class CatalogItem(BaseModel):
    """A catalog item (validated by ``relevo.search.catalog.validate_item``)."""

    item_id: str = Field(min_length=1, max_length=200)
    titles: dict[str, str] = Field(description="locale → title, at least one")
    category: str | None = None
    brand: str | None = None
    price: float | dict[str, float] | None = Field(None, description="one price, or one per region")
    regions: list[str] = Field(description="where it is sold")


class ItemResult(BaseModel):
    index: int
    item_id: str | None
    accepted: bool
    reason: str | None = None


class CatalogAnswer(BaseModel):
    accepted: int
    rejected: int
    results: list[ItemResult]


class Deleted(BaseModel):
    item_id: str
    deleted: Literal[True]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(description="ok, or why not: Redis, the broker, each follower task")
    info: dict[str, str] = Field(description="what degrades answers without making the API unready")


class Problem(BaseModel):
    detail: Any


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text} for code, text in (
        (401, "no X-API-Key"), (403, "a key of the wrong scope"), (429, "rate limit exceeded (Retry-After)"),
        (503, "a dependency is unavailable or still loading (Retry-After)"))}


REF = "#/components/schemas/{model}"


def batch_body(model: str, what: str) -> dict[str, Any]:
    """The OpenAPI request body of a batch endpoint that reads its body itself (to answer per item):
    a JSON array of ``model``, one object, or NDJSON."""
    ref = {"$ref": REF.format(model=model)}
    content = {"application/json": {"schema": {"anyOf": [{"type": "array", "items": ref}, ref]}},
               "application/x-ndjson": {"schema": {"type": "string", "description": f"one of the {what} per line"}}}
    return {"requestBody": {"required": True, "description": f"a JSON array of {what}, one object, or NDJSON",
                            "content": content}}


def body_components() -> dict[str, Any]:
    """The schemas ``batch_body`` refers to, for ``components/schemas``."""
    found: dict[str, Any] = {}
    for name, adapter in (("Event", event_union()), ("CatalogItem", TypeAdapter(CatalogItem))):
        schema = adapter.json_schema(ref_template=REF)
        found.update(schema.pop("$defs", {}))
        found[name] = schema
    return found
