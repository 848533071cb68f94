"""A small Python client for the HTTP API.

    client = RelevoClient("http://127.0.0.1:8000", api_key=KEY)   # a key with the scopes you use
    client.send_events([...])            # per-event acceptance
    client.user("u1"), client.region("FR"), client.item("42")   # None when unknown
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import httpx
import orjson


class RelevoError(RuntimeError):
    """The API refused a request; the message is its reason."""


class RelevoClient:
    """Synchronous client over one keep-alive connection."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 5.0) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RelevoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            detail = response.json().get("detail", response.text) if response.content else response.reason_phrase
            raise RelevoError(f"{response.status_code}: {detail}")
        return response.json()

    def send_events(self, events: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """Ingest a batch; the answer says per event whether it was accepted and why not."""
        body = orjson.dumps(list(events))
        return self._json(self.http.post("/v1/events", content=body,
                                         headers={"Content-Type": "application/json"}))

    def _entity(self, path: str, fields: Iterable[str] | None = None) -> dict[str, Any] | None:
        response = self.http.get(path, params=None if fields is None else {"fields": list(fields)})
        return None if response.status_code == 404 else self._json(response)

    def user(self, user_id: str, fields: Iterable[str] | None = None) -> dict[str, Any] | None:
        """A user's features: ``fields`` of them (all by default); ``None`` if unknown."""
        return self._entity(f"/v1/features/users/{quote(user_id, safe='')}", fields)

    def region(self, region: str, fields: Iterable[str] | None = None) -> dict[str, Any] | None:
        return self._entity(f"/v1/features/regions/{quote(region, safe='')}", fields)

    def item(self, item_id: str) -> dict[str, Any] | None:
        return self._entity(f"/v1/features/items/{quote(item_id, safe='')}")

    def features(self, users: Iterable[str] = (), regions: Iterable[str] = (), items: Iterable[str] = (),
                 user_fields: Iterable[str] | None = None, region_fields: Iterable[str] | None = None,
                 ) -> dict[str, dict[str, Any]]:
        """Many entities in one call; unknown ones map to ``None``."""
        query: dict[str, Any] = {"users": list(users), "regions": list(regions), "items": list(items)}
        for name, fields in (("user_fields", user_fields), ("region_fields", region_fields)):
            if fields is not None:
                query[name] = list(fields)
        return self._json(self.http.post("/v1/features/batch", json=query))
