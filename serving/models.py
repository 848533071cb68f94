"""Model versions over HTTP: list them (read key), promote one, roll one back (admin key).

Reads ``request.app.state.models``, a ``relevo.models.live.LiveModel``; every change
goes through its registry and is followed by ``refresh()``, so this replica
swaps at once and others follow ``model.updates`` or poll.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from relevo.models.live import LiveModel
from relevo.models.registry import CorruptModel, IncompatibleModel
from relevo.serving.auth import ADMIN, READ
from relevo.serving.schemas import ERRORS, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERRORS)


def _live(request: Request) -> LiveModel:
    return request.app.state.models


def _summary(live: LiveModel) -> dict[str, Any]:
    registry = live.registry
    return {"serving": live.version, "previous": live.previous_version,
            "registry_current": registry.current(),
            "versions": [v.to_dict() for v in reversed(registry.versions())]}


@router.get("", dependencies=[READ], response_model=ModelList)
def list_models(request: Request) -> dict[str, Any]:
    """Every published version (newest first) with its window and figures, and which one serves."""
    return _summary(_live(request))


def _change(request: Request, version: int, action: str) -> dict[str, Any]:
    live = _live(request)
    try:
        if action == "promote":
            live.registry.load(version)  # refuse to point serving at a corrupt or incompatible file
            live.registry.promote(version)
        else:
            live.registry.rollback(version)
    except KeyError:
        raise HTTPException(404, f"no model version {version}") from None
    except (ValueError, CorruptModel, IncompatibleModel) as exc:
        raise HTTPException(409, str(exc)) from None
    live.refresh()
    return _summary(live)


@router.post("/{version}/promote", dependencies=[ADMIN], response_model=ModelList)
def promote(version: int, request: Request) -> dict[str, Any]:
    """Serve ``version``; the version serving now becomes the rollback target."""
    return _change(request, version, "promote")


@router.post("/{version}/rollback", dependencies=[ADMIN], response_model=ModelList)
def rollback(version: int, request: Request) -> dict[str, Any]:
    """Stop serving ``version`` (it must be serving) and serve the one before it again."""
    return _change(request, version, "rollback")
