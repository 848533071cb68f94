"""``POST /v1/rank``: the learned model ranks the caller's own candidates for a user, session and region.

A shop sends the items it would show (from its own search, a category page, a
recommendation list) with their prices and positions when it has them; the answer is
the same items best first, each with its score and explanation, the model version
that ranked them, or the ``fallback`` that did when no model serves yet
(``relevo.models.ranking``). Features are the examples builder's point-in-time
features, computed from the region's context the API follows (``RegionContexts``).
The served list is recorded as a search event under the returned ``search_id``
(``relevo.serving.served``) unless ``record`` is false.

Needs a search key: candidates and ids come from the shop's own backend.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from relevo.features.context import ContextState
from relevo.models.ranking import rank
from relevo.serving import served
from relevo.serving.auth import SEARCH
from relevo.serving.schemas import ERRORS
from relevo.streams.events import MAX_ID_LEN, MAX_RESULTS

router = APIRouter(prefix="/v1", tags=["rank"])

MAX_WAIT_S = 5.0
Fallback = Literal["session_rule", "region_counts", "given_order"]


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: str = Field(min_length=1, max_length=MAX_ID_LEN)
    price: float | None = Field(None, ge=0, lt=1e9, description="the price shown with it")
    position: int | None = Field(None, ge=0, le=10_000, description="where it would be shown without us")


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=MAX_ID_LEN)
    session_id: str | None = Field(None, min_length=1, max_length=MAX_ID_LEN, description="default: user_id")
    region: str = Field(min_length=2, max_length=3, description="market, e.g. DE")
    locale: str | None = Field(None, max_length=35, description="BCP 47, e.g. de-AT")
    query: str = Field("", max_length=512, description="the query the list answers, if any")
    device: str = Field("", max_length=32, description="e.g. mobile")
    filters: dict[str, Any] | None = Field(None, description="filters the shopper applied (at most 64)")
    candidates: list[Candidate] = Field(min_length=1, max_length=MAX_RESULTS)
    ts: int | None = Field(None, description="rank as of this time, epoch ms (default: the stream clock)")
    after_ts: int | None = Field(None, description="wait (up to 5 s) until the session's events up to this "
                                                   "time have reached the ranking context: read your writes")
    record: bool = Field(True, description="record the served list as a search event under search_id")
    explain: int = Field(3, ge=0, le=10, description="reasons per item")

    @model_validator(mode="after")
    def _consistent(self) -> RankRequest:
        ids = [c.item_id for c in self.candidates]
        if len(set(ids)) != len(ids):
            raise ValueError("candidates: each item_id may appear once")
        given = [c.position for c in self.candidates if c.position is not None]
        if given and (len(given) != len(ids) or len(set(given)) != len(given)):
            raise ValueError("candidates: give a distinct position to every candidate, or to none")
        return self


class RankedItem(BaseModel):
    item_id: str
    score: float
    position: int = Field(description="its place in the list as given (by position when given)")
    explanation: dict[str, float] = Field(description="model: the features that moved its score most "
                                                      "(score change without them); fallback: the signals used")


class RankResponse(BaseModel):
    search_id: str | None = Field(description="send it with clicks and purchases on this list")
    model_version: int | None
    fallback: Fallback | None = Field(description="what ranked when no model serves")
    caught_up: bool = Field(description="false when after_ts was asked and the context had not reached it")
    items: list[RankedItem]
    took_ms: float


async def _context(request: Request, region: str, session_id: str, after_ts: int | None) -> tuple[ContextState,
                                                                                                   bool]:
    """The region's ranking context, once it has the session's events up to ``after_ts`` (bounded wait)."""
    contexts = request.app.state.contexts
    deadline = time.monotonic() + MAX_WAIT_S
    while True:
        context = contexts.for_region(region)
        session = context.sessions.get(session_id)
        caught_up = after_ts is None or (session is not None and (session.last_ts or 0) >= after_ts)
        if caught_up or time.monotonic() >= deadline:
            return context, caught_up
        await asyncio.sleep(0.02)


@router.post("/rank", dependencies=[SEARCH], responses=ERRORS)
async def rank_candidates(body: RankRequest, request: Request) -> RankResponse:
    """The candidates best first for this user, session and region, with explanations."""
    started = time.perf_counter()
    candidates = (sorted(body.candidates, key=lambda c: c.position) if body.candidates[0].position is not None
                  else body.candidates)
    session_id = body.session_id or body.user_id
    search_id = served.new_search_id()
    shown = served.served_event(search_id, ts=body.ts or await served.stream_time(request), user_id=body.user_id,
                                session_id=session_id, region=body.region, locale=body.locale, query=body.query,
                                items=[c.item_id for c in candidates], prices=[c.price for c in candidates],
                                model_version=None, device=body.device, filters=body.filters)
    context, caught_up = await _context(request, shown["region"], session_id, body.after_ts)
    state = request.app.state
    features = context.features(shown)  # here: the context changes on this event loop, under no lock
    ranked = await asyncio.get_running_loop().run_in_executor(state.cpu, rank, state.models.serving, features, shown,
                                                              body.explain)  # the model's scoring, off the loop
    if ranked.version is not None:
        shown["model_version"] = ranked.version
    if body.record:
        shown["results"] = [shown["results"][p] for p in ranked.order]
        if "prices" in shown:
            shown["prices"] = [shown["prices"][p] for p in ranked.order]
        await served.record(request, shown)
    items = [RankedItem(item_id=candidates[p].item_id, score=round(ranked.scores[p], 6), position=p,
                        explanation=ranked.explanations[p]) for p in ranked.order]
    return RankResponse(search_id=search_id if body.record else None, model_version=ranked.version,
                        fallback=ranked.fallback, caught_up=caught_up, items=items,
                        took_ms=round((time.perf_counter() - started) * 1000, 2))
