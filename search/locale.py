"""Localising results: locale fallback chains, the title to show, the price in a region,
and the translator seam for items with no title in the user's language.

>>> fallback_chain("de-AT")
['de-AT', 'de', 'en']
>>> pick_title({"en-GB": "Kettle", "de-DE": "Wasserkocher"}, "de-AT")
('de-DE', 'Wasserkocher')
>>> pick_title({"fr-FR": "Bouilloire"}, "ja-JP")
('fr-FR', 'Bouilloire')
>>> price_for({"price": {"DE": 29.9, "AT": 31.0}}, "AT"), price_for({"price": 9.5}, "US")
(31.0, 9.5)
"""

from __future__ import annotations

from typing import Protocol

FALLBACK_LANGUAGE = "en"


def language_of(locale: str) -> str:
    """The language subtag: 'de-AT' -> 'de'."""
    return locale.split("-")[0].lower()


def fallback_chain(locale: str | None) -> list[str]:
    """Most specific first, then shorter prefixes, then English (the usual shared language)."""
    if not locale:
        return [FALLBACK_LANGUAGE]
    parts = locale.split("-")
    chain = ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]
    return chain if FALLBACK_LANGUAGE in chain else [*chain, FALLBACK_LANGUAGE]


def pick_title(titles: dict[str, str], locale: str | None) -> tuple[str, str]:
    """(locale, title) following the fallback chain; a title in the chain's language in
    another region beats the next step (de-AT -> de-DE before en); any title last."""
    by_lower = {tag.lower(): tag for tag in titles}
    for wanted in fallback_chain(locale):
        tag = by_lower.get(wanted.lower())
        if tag is None:
            tag = next((t for t in titles if language_of(t) == language_of(wanted)), None)
        if tag is not None:
            return tag, titles[tag]
    tag = min(titles)  # deterministic: any title beats none
    return tag, titles[tag]


def price_for(item: dict, region: str | None) -> float | None:
    """The item's price in ``region``: per-region prices, else its single price, else None."""
    price = item.get("price")
    if isinstance(price, dict):
        return price.get((region or "").upper())
    return price


class Translator(Protocol):
    """Translates a title when the catalog has none in the user's language.

    No offline machine-translation models for zh/ja/de/fr ship in the package
    registries we can use; Debian's ``apertium`` has rule-based en<->es and could back
    an implementation of this protocol. Search works without one: the encoders are
    multilingual, so only the displayed title stays in the catalog's language.
    """

    def translate(self, text: str, source: str, target: str) -> str | None:
        """``text`` from locale ``source`` into locale ``target``, or None if unsupported."""
        ...


def localized_title(titles: dict[str, str], locale: str | None,
                    translator: Translator | None = None) -> dict:
    """The title to show: ``{"title", "locale", "translated"}``.

    >>> class Shout:
    ...     def translate(self, text, source, target):
    ...         return text.upper() if target.startswith("es") else None
    >>> localized_title({"en": "kettle"}, "es-MX", Shout())
    {'title': 'KETTLE', 'locale': 'es-MX', 'translated': True}
    """
    tag, title = pick_title(titles, locale)
    if translator is not None and locale and language_of(tag) != language_of(locale):
        translated = translator.translate(title, tag, locale)
        if translated:
            return {"title": translated, "locale": locale, "translated": True}
    return {"title": title, "locale": tag, "translated": False}
