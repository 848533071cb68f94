"""API keys: four scopes, compared in constant time, each key rate-limited.

- ``ingest`` sends events;
- ``search`` is the public key a shop may ship to browsers: search, suggest and query
  understanding, anonymous only (``user_id`` or ``session_id`` need ``read``), so it never
  returns anything about a user;
- ``read`` reads features, alerts and models, and personalises search and suggest;
- ``admin`` may do everything, including promoting and rolling back models.

Keys come from ``RELEVO_<SCOPE>_KEYS``; there are no default keys (``RELEVO_DEV=1`` accepts
``dev-<scope>-key`` where none is configured). A presented key is hashed and compared with
every configured key's hash by ``hmac.compare_digest``, so neither the time taken nor an
early exit tells how much of a key was right. Each valid key has a token bucket per API
process (``RELEVO_RATE_LIMIT_PER_S``, ``RELEVO_RATE_LIMIT_BURST``); past it the answer is 429
with ``Retry-After``.

>>> ring = KeyRing(Settings(search_keys="pub", read_keys="r"))
>>> sorted(ring.scopes_of("r")), sorted(ring.scopes_of("pub")), ring.scopes_of("nope")
(['read', 'search'], ['search'], frozenset())
>>> bucket = TokenBucket(rate=1.0, burst=2)
>>> [bucket.take(now=0.0) for _ in range(3)], bucket.take(now=1.0)
([0.0, 0.0, 1.0], 0.0)
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Depends, Header, HTTPException, Request

from relevo.core.settings import Settings

SCOPES = ("ingest", "search", "read", "admin")
GRANTS = {"ingest": {"ingest"}, "search": {"search"}, "read": {"read", "search"}, "admin": set(SCOPES)}
MAX_KEY_CHARS = 256


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass
class TokenBucket:
    """``rate`` requests per second on average, ``burst`` at once."""

    rate: float
    burst: int
    tokens: float = -1.0
    stamp: float = field(default=0.0, repr=False)

    def take(self, now: float | None = None) -> float:
        """Take one token: 0.0 if granted, else the seconds until one is there."""
        now = time.monotonic() if now is None else now
        if self.tokens < 0:
            self.tokens, self.stamp = float(self.burst), now
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class KeyRing:
    """The configured keys of every scope (as hashes) and a rate limit per key."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._keys = [(_digest(k), scope) for scope in SCOPES for k in sorted(settings.keys_for(scope))]
        self._buckets: dict[bytes, TokenBucket] = {}  # one per configured key: bounded

    def scopes_of(self, key: str) -> frozenset[str]:
        presented, granted = _digest(key), set()
        for digest, scope in self._keys:  # every key is compared: no early exit
            if hmac.compare_digest(digest, presented):
                granted |= GRANTS[scope]
        return frozenset(granted)

    def configured(self, scope: str) -> bool:
        return any(scope in GRANTS[s] for _, s in self._keys)

    def throttle(self, key: str) -> float:
        """0.0 when ``key`` may make a request now, else the seconds to wait."""
        if self.settings.rate_limit_per_s <= 0:
            return 0.0
        digest = _digest(key)
        bucket = self._buckets.get(digest)
        if bucket is None:
            bucket = self._buckets[digest] = TokenBucket(self.settings.rate_limit_per_s,
                                                         max(1, self.settings.rate_limit_burst))
        return bucket.take()


def keyring(request: Request) -> KeyRing:
    """The app's key ring, built once per settings object."""
    state = request.app.state
    ring = getattr(state, "keyring", None)
    if ring is None or ring.settings is not state.settings:
        ring = state.keyring = KeyRing(state.settings)
    return ring


def require(scope: str) -> Callable[..., frozenset[str]]:
    """A FastAPI dependency: the request's key must grant ``scope``; returns every scope it grants."""
    env = f"RELEVO_{scope.upper()}_KEYS"

    async def check(request: Request, x_api_key: str | None = Header(default=None, max_length=MAX_KEY_CHARS)
                    ) -> frozenset[str]:  # async: FastAPI would run a plain def in a thread, per request
        ring = keyring(request)
        if not ring.configured(scope):
            raise HTTPException(403, f"no {scope} keys are configured on this server: set {env} "
                                     "(or RELEVO_DEV=1 for development keys)")
        if not x_api_key:
            raise HTTPException(401, f"missing X-API-Key header ({scope} key required)",
                                headers={"WWW-Authenticate": "ApiKey"})
        granted = ring.scopes_of(x_api_key)
        if scope not in granted:
            raise HTTPException(403, f"this API key is not a valid {scope} key")
        wait = ring.throttle(x_api_key)
        if wait:
            raise HTTPException(429, f"rate limit of {ring.settings.rate_limit_per_s:g} requests/s for this key "
                                     "exceeded", headers={"Retry-After": str(max(1, round(wait)))})
        return granted
    return check


Scopes = frozenset[str]
INGEST = Depends(require("ingest"))
SEARCH = Depends(require("search"))
READ = Depends(require("read"))
ADMIN = Depends(require("admin"))


def require_personal(granted: Scopes, **ids: str | None) -> None:
    """403 when a search-only key asks for anything per user or session (``ids`` named by parameter)."""
    named = [name for name, value in ids.items() if value]
    if named and "read" not in granted:
        raise HTTPException(403, f"{' and '.join(named)} personalise the answer with a user's data: "
                                 "that needs a read key, not a search key")
