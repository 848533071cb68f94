"""Feature serving: ``/v1/features/users|regions|items/{id}`` and a batch endpoint."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

router = APIRouter(prefix="/v1/features", tags=["features"])
MAX_BATCH = 500


async def _one(request: Request, kind: str, entity_id: str, as_of: int | None) -> dict[str, Any]:
    store = request.app.state.store
    found = await (store.item(entity_id) if kind == "item" else getattr(store, kind)(entity_id, as_of))
    if found is None:
        raise HTTPException(404, f"no features for {kind} {entity_id!r}")
    return found


@router.get("/users/{user_id}")
async def user_features(request: Request, user_id: str, as_of: int | None = None) -> dict[str, Any]:
    return await _one(request, "user", user_id, as_of)


@router.get("/regions/{region}")
async def region_features(request: Request, region: str, as_of: int | None = None) -> dict[str, Any]:
    return await _one(request, "region", region, as_of)


@router.get("/items/{item_id}")
async def item_features(request: Request, item_id: str) -> dict[str, Any]:
    return await _one(request, "item", item_id, None)


class BatchQuery(BaseModel):
    users: list[str] = Field(default_factory=list, max_length=MAX_BATCH)
    regions: list[str] = Field(default_factory=list, max_length=MAX_BATCH)
    items: list[str] = Field(default_factory=list, max_length=MAX_BATCH)


@router.post("/batch")
async def batch_features(request: Request, query: BatchQuery) -> dict[str, dict[str, Any]]:
    """Features of many entities at once; unknown ones map to ``null``."""
    store = request.app.state.store
    users, regions, items = await asyncio.gather(
        asyncio.gather(*(store.user(u) for u in query.users)),
        asyncio.gather(*(store.region(r) for r in query.regions)),
        asyncio.gather(*(store.item(i) for i in query.items)),
    )
    return {"users": dict(zip(query.users, users, strict=True)),
            "regions": dict(zip(query.regions, regions, strict=True)),
            "items": dict(zip(query.items, items, strict=True))}
