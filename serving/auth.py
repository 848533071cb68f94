"""API-key checks: ingest keys for writers, admin keys for model operations."""

from __future__ import annotations

from fastapi import Header, HTTPException, Request


def _check(key: str | None, allowed: frozenset[str], what: str) -> None:
    if not key:
        raise HTTPException(401, f"missing X-API-Key header ({what} key required)",
                            headers={"WWW-Authenticate": "ApiKey"})
    if key not in allowed:
        raise HTTPException(403, f"this API key is not a valid {what} key")


def require_ingest_key(request: Request, x_api_key: str | None = Header(default=None)) -> None:
    _check(x_api_key, request.app.state.settings.api_key_set, "ingest")


def require_admin_key(request: Request, x_api_key: str | None = Header(default=None)) -> None:
    _check(x_api_key, request.app.state.settings.admin_key_set, "admin")
