"""HTTP API for drift alerts: ``GET /v1/alerts``.

Reads the ``relevo.drift.sinks.AlertStore`` at ``app.state.alerts``. Filters: region
(``*`` is the global stream), metric, a time range in event-time epoch ms (an
alert matches when it was open at some time in [since, until]), and
``active=true`` for alerts not yet resolved. Newest first. Needs a read key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request

from relevo.drift.metrics import METRICS
from relevo.drift.sinks import AlertStore
from relevo.serving.auth import READ
from relevo.serving.schemas import ERRORS, AlertList

router = APIRouter()


@router.get("/v1/alerts", tags=["drift"], dependencies=[READ], response_model=AlertList, responses=ERRORS)
async def list_alerts(
    request: Request,
    region: str | None = Query(None, max_length=16, description="region code, or * for global"),
    metric: str | None = Query(None, description="one of the watched metrics"),
    since: int | None = Query(None, ge=0, description="event time, epoch ms"),
    until: int | None = Query(None, ge=0, description="event time, epoch ms"),
    active: bool = Query(False, description="only alerts not yet resolved"),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    if metric is not None and metric not in METRICS:
        raise HTTPException(400, f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if since is not None and until is not None and since > until:
        raise HTTPException(400, "since must not be after until")
    store: AlertStore = request.app.state.alerts
    alerts = await store.query(region=region, metric=metric, since=since, until=until,
                               active_only=active, limit=limit)
    return {"alerts": [a.to_dict() for a in alerts]}
