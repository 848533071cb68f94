"""HTTP routes for search and query understanding.

Reads its service from ``request.app.state.search`` (a ``relevo.search.service.SearchService``).
A search key searches anonymously; ``user_id`` and ``session_id`` need a read key.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request

from relevo.core.codes import canonical_locale, canonical_region
from relevo.serving import served
from relevo.serving.auth import SEARCH, Scopes, require_personal
from relevo.serving.schemas import ERRORS, SearchAnswer, Understanding
from relevo.streams.events import MAX_ID_LEN

router = APIRouter(tags=["search"], responses=ERRORS)

MAX_QUERY_CHARS = 500


def _service(request: Request):
    service = getattr(request.app.state, "search", None)
    if service is None:
        raise HTTPException(503, detail="search is not ready: no catalog is loaded")
    return service


def _check(query: str, region: str | None, locale: str | None) -> tuple[str, str | None, str | None]:
    """The query stripped, and region and locale in canonical form (or 422 with the reason)."""
    query = query.strip()
    if not query:
        raise HTTPException(422, detail="q must contain some text")
    try:
        region = canonical_region(region) if region is not None else None
    except ValueError:
        raise HTTPException(422, detail=f"region must be a region code such as 'DE', got {region[:20]!r}") from None
    try:
        locale = canonical_locale(locale) if locale is not None else None
    except ValueError:
        raise HTTPException(422, detail=f"locale must be a BCP 47 tag such as 'de-AT', got {locale[:20]!r}") from None
    return query, region, locale


@router.get("/v1/search", response_model=SearchAnswer)
async def search(request: Request,
                 q: str = Query(..., max_length=MAX_QUERY_CHARS, description="query text, any language"),
                 user_id: str | None = Query(None, max_length=MAX_ID_LEN),
                 session_id: str | None = Query(None, max_length=MAX_ID_LEN,
                                                description="the shopper's session: the learned ranker uses what it "
                                                            "touched (default: user_id)"),
                 region: str | None = Query(None, description="market, e.g. DE; items not sold there are hidden"),
                 locale: str | None = Query(None, description="BCP 47, e.g. de-AT; picks the titles shown"),
                 k: int = Query(20, ge=1, le=100, description="how many results"),
                 granted: Scopes = SEARCH) -> dict:
    """Items for ``q`` ranked for the user and region, with explanations."""
    require_personal(granted, user_id=user_id, session_id=session_id)
    query, region, locale = _check(q, region, locale)
    answer = await _service(request).search(query, user_id=user_id, region=region, locale=locale, k=k,
                                            session_id=session_id)
    answer["search_id"] = await _record(request, answer, session_id or user_id)
    return answer


async def _record(request: Request, answer: dict, session_id: str | None) -> str | None:
    """Record the served list (``relevo.serving.served``); its search id, or None without a region
    or results (an anonymous shopper is a session of one search)."""
    results = answer["results"]
    if not answer["region"] or not results:
        return None
    search_id = served.new_search_id()
    versions = {r.get("explanation", {}).get("learned", {}).get("model_version") for r in results}
    await served.record(request, served.served_event(
        search_id, ts=await served.stream_time(request), user_id=answer["user_id"] or search_id,
        session_id=session_id or search_id, region=answer["region"], locale=answer["locale"], query=answer["query"],
        items=[r["item_id"] for r in results], prices=[r.get("price") for r in results],
        model_version=max((v for v in versions if v), default=None)))
    return search_id


@router.get("/v1/query/understand", dependencies=[SEARCH], response_model=Understanding)
async def understand(request: Request, q: str = Query(..., max_length=MAX_QUERY_CHARS),
                     locale: str | None = Query(None)) -> dict:
    """Language, intent categories and entities of ``q``."""
    query, _, locale = _check(q, None, locale)
    return await _service(request).understand(query, locale)
