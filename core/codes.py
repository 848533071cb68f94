"""Region and locale codes: one pattern each, shared by the event contract, the catalog and the API.

A region is a market: an ISO 3166 alpha-2 or alpha-3 code, or a UN M49 number
(``419``, Latin America); a locale is a BCP 47 tag. Both are matched whole (a
trailing newline is not part of a code) and returned in canonical case.

>>> canonical_region("fr"), canonical_locale("PT-br"), canonical_locale("zh-hant-tw")
('FR', 'pt-BR', 'zh-Hant-TW')
>>> canonical_region("D1")
Traceback (most recent call last):
...
ValueError: expected a region code like FR, got 'D1'
>>> canonical_locale("en-GB\\n")
Traceback (most recent call last):
...
ValueError: expected a BCP 47 locale like es-MX, got 'en-GB\\n'
"""

from __future__ import annotations

import re

REGION = re.compile(r"[A-Za-z]{2,3}|[0-9]{3}")
LOCALE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,4}")
MAX_REGION_CHARS = 3
MAX_LOCALE_CHARS = 35


def canonical_region(value: object) -> str:
    """``value`` as an upper-case region code, or ``ValueError``."""
    if not isinstance(value, str) or not REGION.fullmatch(value):
        raise ValueError(f"expected a region code like FR, got {value!r:.40}")
    return value.upper()


def canonical_locale(value: object) -> str:
    """``value`` in BCP 47 casing (language lower, region upper, script title), or ``ValueError``."""
    if not isinstance(value, str) or not LOCALE.fullmatch(value):
        raise ValueError(f"expected a BCP 47 locale like es-MX, got {value!r:.40}")
    first, *rest = value.split("-")
    parts = [first.lower()]
    for part in rest:
        parts.append(part.upper() if len(part) == 2 else part.title() if len(part) == 4 else part.lower())
    return "-".join(parts)
