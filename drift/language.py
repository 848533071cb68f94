"""A cheap guess of a query's language: its script, refined by the event's locale.

The script says a lot (kana is Japanese, hangul Korean); within a script the
locale's language is the best cheap guess, since people mostly search in the
language of the site they are on. Queries with no letters (ids, numbers) have no
language.

>>> guess_language("東京 ホテル", "en-US"), guess_language("北京酒店", "ja-JP"), guess_language("北京", "en")
('ja', 'ja', 'zh')
>>> guess_language("hotel paris", "de-DE"), guess_language("hotel paris", "ja-JP")
('de', 'en')
>>> guess_language("москва", "uk-UA"), guess_language("москва", ""), guess_language("12345", "fr-FR")
('uk', 'ru', None)
"""

from __future__ import annotations

import unicodedata

# Script of each language that is not written in Latin script; everything else is Latin.
_SCRIPTS = {
    "ja": "kana", "zh": "han", "ko": "hangul", "ar": "arabic", "fa": "arabic", "ur": "arabic",
    "he": "hebrew", "el": "greek", "th": "thai", "hi": "devanagari", "mr": "devanagari",
    "ne": "devanagari", "ru": "cyrillic", "uk": "cyrillic", "bg": "cyrillic", "sr": "cyrillic",
    "be": "cyrillic", "kk": "cyrillic", "mk": "cyrillic",
}
# The language to assume for a script when the locale's language is written in another one.
_DEFAULTS = {"latin": "en", "kana": "ja", "han": "zh", "hangul": "ko", "arabic": "ar", "hebrew": "he",
             "greek": "el", "thai": "th", "devanagari": "hi", "cyrillic": "ru"}
_NAME_PREFIXES = (("HIRAGANA", "kana"), ("KATAKANA", "kana"), ("CJK", "han"), ("HANGUL", "hangul"),
                  ("ARABIC", "arabic"), ("HEBREW", "hebrew"), ("GREEK", "greek"), ("THAI", "thai"),
                  ("DEVANAGARI", "devanagari"), ("CYRILLIC", "cyrillic"), ("LATIN", "latin"))


def script_of(text: str) -> str | None:
    """The dominant script of ``text``: kana wins over han (Japanese mixes both).

    >>> script_of("Zürich"), script_of("ソウル"), script_of("--")
    ('latin', 'kana', None)
    """
    if text.isascii():
        return "latin" if any(c.isalpha() for c in text) else None
    seen: set[str] = set()
    for char in text:
        if not char.isalpha():
            continue
        name = unicodedata.name(char, "")
        seen.update(script for prefix, script in _NAME_PREFIXES if name.startswith(prefix))
    if "kana" in seen:
        return "kana"
    return next((s for _, s in _NAME_PREFIXES if s in seen), None)


def guess_language(query: str, locale: str) -> str | None:
    """A two-letter language for ``query``, or None when it has no letters."""
    script = script_of(query)
    if script is None:
        return None
    language = locale.split("-", 1)[0].lower()
    locale_script = _SCRIPTS.get(language, "latin")
    if locale_script == script or (script == "han" and language == "ja"):
        return language
    return _DEFAULTS[script]
