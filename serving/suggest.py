"""Query suggestions: ``GET /v1/suggest``, served by ``app.state.suggest`` (a ``SuggestService``).

A search key suggests anonymously; ``user_id`` needs a read key. The response is
encoded with orjson directly (``orjson_response``): at a few milliseconds per request,
FastAPI's generic encoder would be a noticeable share of the budget.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field, field_validator

from relevo.core.codes import MAX_LOCALE_CHARS, MAX_REGION_CHARS, canonical_locale, canonical_region
from relevo.serving.auth import SEARCH, Scopes, require_personal
from relevo.serving.schemas import ERRORS, SuggestAnswer, orjson_response
from relevo.streams.events import MAX_ID_LEN
from relevo.suggestions.ranking import Suggestion
from relevo.suggestions.service import MAX_K, SuggestService

router = APIRouter(prefix="/v1", tags=["suggest"], responses=ERRORS)


def _explain(s: Suggestion) -> dict[str, dict[str, float]]:
    """The weighted signals, and the decayed counts (as of the stream clock) they came from."""
    c = s.candidate
    counts = {"support": c.support, "user": c.user, **c.popularity,
              **{f"{scope}_recent": v for scope, v in c.recent.items()}}
    return {"signals": {name: round(v, 6) for name, v in s.signals.items()},
            "counts": {name: round(v, 6) for name, v in counts.items()}}


class SuggestQuery(BaseModel):
    """The query string of ``GET /v1/suggest``; one model validates in one call, not six."""

    prefix: str = Field(max_length=200, description="what the user has typed")
    user_id: str | None = Field(None, max_length=MAX_ID_LEN)
    region: str | None = Field(None, max_length=MAX_REGION_CHARS)
    locale: str | None = Field(None, max_length=MAX_LOCALE_CHARS)
    k: int = Field(10, ge=1, le=MAX_K)
    explain: bool = Field(False, description="include each ranking signal and count")

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        return None if value is None else canonical_region(value)

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        return None if value is None else canonical_locale(value)


@router.get("/suggest", response_model=SuggestAnswer)  # documents the orjson body below
async def suggest(request: Request, q: Annotated[SuggestQuery, Query()], granted: Scopes = SEARCH) -> Response:
    """Completions of ``prefix`` ranked for the user, region and locale, best first (``user_id``
    needs a read key: it brings in the user's own queries)."""
    require_personal(granted, user_id=q.user_id)
    service: SuggestService = request.app.state.suggest
    result = await service.suggest(q.prefix, q.user_id, q.region, q.locale, q.k)
    items = [{"text": s.text, "query": s.query, "score": round(s.score, 6),
              **(_explain(s) if q.explain else {})} for s in result.suggestions]
    body = {"prefix": result.prefix, "as_of": result.as_of, "suggestions": items}
    return orjson_response(body)
