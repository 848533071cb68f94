"""What may never be suggested: personal data, blocklisted terms, unusable text.

Filters run on normalised text (``relevo.core.text.normalize``), so full-width
digits and mixed case are already folded when the patterns look at them. They run
twice: in the updater, so junk never takes memory, and in serving, so a term
added to the blocklist later disappears at once.

>>> f = QueryFilter(blocklist=["casino"])
>>> f.clean("  Ｐａｒｉｓ, France ")
'paris, france'
>>> f.clean("jane.doe@example.com") is None, f.clean("+33 6 12 34 56 78") is None
(True, True)
>>> f.clean("Online CASINO deals") is None, f.clean("casinos") is None
(True, False)
>>> f.clean("iphone 15 pro"), f.clean("東京タワー")
('iphone 15 pro', '東京タワー')
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from relevo.core.text import normalize

_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
# A run of digits with the separators people type in phone and card numbers.
_DIGIT_RUN = re.compile(r"\+?\d[\d\s().\-/]*\d")
_URL = re.compile(r"(https?://|www\.)\S+")
MIN_PERSONAL_DIGITS = 7  # shorter runs are postcodes, years, model numbers


def looks_personal(text: str) -> bool:
    """True for e-mail addresses, URLs, phone numbers and long digit strings.

    >>> [looks_personal(t) for t in ["a@b.co", "0612345678", "(555) 123-4567", "route 66", "75008 paris"]]
    [True, True, True, False, False]
    """
    if _EMAIL.search(text) or _URL.search(text):
        return True
    return any(sum(ch.isdigit() for ch in run) >= MIN_PERSONAL_DIGITS for run in _DIGIT_RUN.findall(text))


def _term_pattern(term: str) -> str:
    # Latin terms match whole words ("casino" blocks "casino deals", not "casinos");
    # scripts written without spaces (CJK, Thai) can only match as substrings.
    escaped = re.escape(term)
    return rf"(?<!\w){escaped}(?!\w)" if term.isascii() else escaped


@dataclass(frozen=True)
class QueryFilter:
    """Normalises a query and rejects what must never be suggested.

    ``max_chars`` drops pasted paragraphs; ``min_chars`` drops single keystrokes.
    """

    blocklist: Iterable[str] = ()
    min_chars: int = 2
    max_chars: int = 80

    def __post_init__(self) -> None:
        terms = sorted({normalize(t) for t in self.blocklist} - {""})
        pattern = re.compile("|".join(_term_pattern(t) for t in terms)) if terms else None
        object.__setattr__(self, "_blocked", pattern)

    def blocked(self, text: str) -> bool:
        """True when normalised ``text`` contains a blocklisted term."""
        return self._blocked is not None and self._blocked.search(text) is not None

    def allows(self, text: str) -> bool:
        """True when normalised ``text`` may be shown as a suggestion."""
        return (self.min_chars <= len(text) <= self.max_chars and not self.blocked(text)
                and not looks_personal(text))

    def clean(self, query: str) -> str | None:
        """The normalised query, or None when it must never be suggested."""
        text = normalize(query)
        return text if self.allows(text) else None
