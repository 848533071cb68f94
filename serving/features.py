"""Feature serving: ``/v1/features/users|regions|items/{id}`` and a batch endpoint (read key).

A read asks for some ``fields`` (all by default). Ids are bounded as the event contract
bounds them (``MAX_ID_LEN``), regions must be region codes, and ``as_of`` must lie in the
contract's time range and not before the stream clock (features are kept as of the latest
event applied and can only be projected forward).
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field, StringConstraints

from relevo.core.codes import MAX_REGION_CHARS, canonical_region
from relevo.features.online import REGION_FIELDS, USER_FIELDS, AsOfBeforeClock, OnlineStore
from relevo.serving.auth import READ
from relevo.serving.schemas import ERRORS, FeatureBatch, ItemFeatures, RegionFeatures, UserFeatures, orjson_response
from relevo.streams.events import MAX_FUTURE_MS, MAX_ID_LEN, MIN_TS_MS

router = APIRouter(prefix="/v1/features", tags=["features"], dependencies=[READ],
                   responses={**ERRORS, 404: ERRORS[503] | {"description": "no features for this id"}})
MAX_BATCH = 500

EntityId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LEN)]
AsOf = Annotated[int | None, Query(ge=MIN_TS_MS, le=4_102_444_800_000,  # 2100-01-01
                                   description="epoch ms; default: the stream clock")]
BatchId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LEN)]


def _region(region: str) -> str:
    try:
        return canonical_region(region)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


UserField = Literal[tuple(USER_FIELDS)]  # type: ignore[valid-type]
RegionField = Literal[tuple(REGION_FIELDS)]  # type: ignore[valid-type]
UserFields = Annotated[list[UserField] | None, Query(description="the fields to read (repeat it); default: all")]
RegionFields = Annotated[list[RegionField] | None, Query(description="the fields to read (repeat it); default: all")]


async def _one(request: Request, kind: str, entity_id: str, as_of: int | None,
               fields: list[str] | None = None) -> Response:
    store: OnlineStore = request.app.state.store
    if as_of is not None and as_of > time.time() * 1000 + MAX_FUTURE_MS:
        raise HTTPException(422, "as_of is more than a day in the future")
    try:
        found = await (store.item(entity_id) if kind == "item" else getattr(store, kind)(entity_id, as_of, fields))
    except AsOfBeforeClock as exc:
        raise HTTPException(422, str(exc)) from None
    if found is None:
        raise HTTPException(404, f"no features for {kind} {entity_id!r}")
    return orjson_response(found)


@router.get("/users/{user_id}", response_model=UserFeatures)
async def user_features(request: Request, user_id: EntityId, as_of: AsOf = None,
                        fields: UserFields = None) -> Response:
    return await _one(request, "user", user_id, as_of, fields)


@router.get("/regions/{region}", response_model=RegionFeatures)
async def region_features(request: Request, region: Annotated[str, Path(max_length=MAX_REGION_CHARS)],
                          as_of: AsOf = None, fields: RegionFields = None) -> Response:
    return await _one(request, "region", _region(region), as_of, fields)


@router.get("/items/{item_id}", response_model=ItemFeatures)
async def item_features(request: Request, item_id: EntityId) -> Response:
    return await _one(request, "item", item_id, None)


class BatchQuery(BaseModel):
    users: list[BatchId] = Field(default_factory=list, max_length=MAX_BATCH)
    regions: list[Annotated[str, StringConstraints(max_length=MAX_REGION_CHARS)]] = Field(
        default_factory=list, max_length=MAX_BATCH)
    items: list[BatchId] = Field(default_factory=list, max_length=MAX_BATCH)
    user_fields: list[UserField] | None = Field(None, description="the users' fields to read; default: all")
    region_fields: list[RegionField] | None = Field(None, description="the regions' fields to read; default: all")


@router.post("/batch", response_model=FeatureBatch)
async def batch_features(request: Request, query: BatchQuery) -> Response:
    """Features of many entities at once (up to 500 of each), in one read; unknown ones map to ``null``."""
    store: OnlineStore = request.app.state.store
    regions = [_region(r) for r in query.regions]
    users, found_regions, items = await store.many(query.users, regions, query.items, user_fields=query.user_fields,
                                                   region_fields=query.region_fields)
    return orjson_response({"users": dict(zip(query.users, users, strict=True)),
                  "regions": dict(zip(query.regions, found_regions, strict=True)),
                  "items": dict(zip(query.items, items, strict=True))})
