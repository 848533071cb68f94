"""Which language a short text (a query, a title) is written in.

py3langid (BSD, its model inside the wheel) restricted to the languages Relevo's
encoders and taxonomy cover, with the request's locale as a prior: people mostly
search in the language of the site they are on, so a short, ambiguous text
("Paris, France") takes the locale's language unless the text says otherwise.
Text without letters (ids, numbers) has no language.

>>> identify("livre de cuisine Harry Potter", "fr-FR").code
'fr'
>>> identify("Studiokopfhörer Sony").code, identify("乐高 火车 轨道").code, identify("東京 ホテル").code
('de', 'zh', 'ja')
>>> identify("Paris, France", "en-US").code, identify("kettle", "fr-CA").code
('en', 'fr')
>>> identify("12345", "fr-FR") is None
True
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# The multilingual USE's 16 languages and the taxonomy's locales (py3langid codes).
LANGUAGES = ("ar", "cs", "da", "de", "el", "en", "es", "fr", "he", "it", "ja", "ko", "nl", "no", "pl",
             "pt", "ru", "sv", "th", "tr", "uk", "zh")
# Before reading the text, the locale's language is this many times likelier than any other.
LOCALE_PRIOR = 4.0
_ALIASES = {"nb": "no", "nn": "no", "iw": "he"}


@dataclass(frozen=True)
class Language:
    """An ISO 639-1 code and the probability the identifier gives it, prior included."""

    code: str
    confidence: float


@lru_cache(maxsize=1)
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier  # loading the model takes ~0.3 s

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(list(LANGUAGES))
    return identifier


def load() -> None:
    """Load the model now: a stream that identifies queries (drift) would otherwise pay for it
    (~0.3 s, up to a second on a busy machine) inside the first batch that has one."""
    _identifier()


def locale_language(locale: str | None) -> str:
    """The language subtag of a locale, as the identifier spells it: 'nb-NO' -> 'no'."""
    language = (locale or "").split("-", 1)[0].lower()
    return _ALIASES.get(language, language)


@lru_cache(maxsize=16_384)  # queries repeat; texts are bounded by the contract (512 characters)
def identify(text: str, locale: str | None = None) -> Language | None:
    """The most likely language of ``text`` given the ``locale`` it was typed under, or None."""
    if not any(ch.isalpha() for ch in text):
        return None
    prior = locale_language(locale)
    weighted = [(p * (LOCALE_PRIOR if code == prior else 1.0), code) for code, p in _identifier().rank(text)]
    total = sum(p for p, _ in weighted) or 1.0
    best, code = max(weighted)
    return Language(code, round(best / total, 3))
