"""The catalog over HTTP: add or update items, delete one; both publish to ``catalog.items``.

Every API replica follows that topic and upserts what it reads into its own index
(``relevo.search.catalog_store``), so a change made through one replica reaches all.
Items are validated here with the catalog contract (``relevo.search.catalog.validate_item``)
and answered per item: the valid ones are published (keyed by item id, so one item's
changes stay in order), the others come back with their reasons and nothing else of
theirs happens. A deletion is a tombstone on the same topic. Writing the catalog needs
an ingest key, like sending events.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Path, Request

from relevo.search.catalog import MAX_ID_CHARS, InvalidItem, tombstone, validate_item
from relevo.serving.auth import INGEST
from relevo.serving.ingest import parse_batch, read_body
from relevo.serving.schemas import ERRORS, CatalogAnswer, Deleted, batch_body
from relevo.streams.topics import CATALOG

router = APIRouter(prefix="/v1/catalog", tags=["catalog"], dependencies=[INGEST], responses=ERRORS)
MAX_ITEMS = 1000


async def _publish(request: Request, items: list[dict[str, Any]]) -> None:
    state = request.app.state
    producer, topic = state.ingest.producer, state.settings.topic(CATALOG)
    for item in items:
        await producer.send_raw(topic, orjson.dumps(item), item["item_id"].encode())


@router.post("/items", response_model=CatalogAnswer, openapi_extra=batch_body("CatalogItem", "catalog items"),
             responses={413: ERRORS[503] | {"description": f"more than {MAX_ITEMS} items or too many bytes"}})
async def upsert_items(request: Request) -> dict[str, Any]:
    """Add or replace items (a JSON array, one object, or NDJSON); each is accepted or rejected with its reason."""
    raw = parse_batch(await read_body(request, request.app.state.settings.max_batch_bytes))
    raw = raw if isinstance(raw, list) else [raw]
    if len(raw) > MAX_ITEMS:
        raise HTTPException(413, f"{len(raw)} items exceed the limit of {MAX_ITEMS}")
    valid, results = [], []
    for index, item in enumerate(raw):
        item_id = item.get("item_id") if isinstance(item, dict) else None
        echo = item_id[:MAX_ID_CHARS] if isinstance(item_id, str) else None
        try:
            valid.append(validate_item(item))
            results.append({"index": index, "item_id": echo, "accepted": True})
        except InvalidItem as exc:
            results.append({"index": index, "item_id": echo, "accepted": False, "reason": str(exc)})
    await _publish(request, valid)
    return {"accepted": len(valid), "rejected": len(raw) - len(valid), "results": results}


@router.delete("/items/{item_id}", response_model=Deleted)
async def delete_item(request: Request, item_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS)]
                      ) -> dict[str, Any]:
    """Remove an item from search on every replica (deleting an unknown item changes nothing)."""
    await _publish(request, [tombstone(item_id)])
    return {"item_id": item_id, "deleted": True}
