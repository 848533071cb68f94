"""Query understanding: language, intent category, brand and attribute entities.

Language identification is a small heuristic (no language-id package is installed):
the script decides CJK, Hangul, Cyrillic, Greek, Arabic, Thai and Hebrew; Latin-script
text is scored by stopwords and letters particular to a language, falling back to the
request locale's language and then English.

>>> identify_language("東京タワーのおもちゃ"), identify_language("儿童玩具")
(('ja', 1.0), ('zh', 1.0))
>>> identify_language("Wasserkocher für die Küche"), identify_language("bouilloire électrique")
(('de', 0.9), ('fr', 0.6))
>>> identify_language("kettle", hint="fr-CA")
('fr', 0.3)
>>> extract_attributes("iphone 12 pro 128 GB schwarz")
[{'type': 'quantity', 'text': '128 gb'}]
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

from models.lexical import tokens
from models.normalize import normalize
from models.retrieval import CatalogIndexer, Hit, HybridRetriever
from models.taxonomy import IntentClassifier

_SCRIPTS = [("ja", re.compile(r"[\u3040-\u30ff]")), ("ko", re.compile(r"[\uac00-\ud7af]")),
            ("zh", re.compile(r"[\u3400-\u9fff]")), ("ru", re.compile(r"[\u0400-\u04ff]")),
            ("el", re.compile(r"[\u0370-\u03ff]")), ("ar", re.compile(r"[\u0600-\u06ff]")),
            ("th", re.compile(r"[\u0e00-\u0e7f]")), ("he", re.compile(r"[\u0590-\u05ff]"))]
_STOPWORDS = {
    "en": "the and for with of in to on by from kids men women set pack black white new",
    "de": "der die das und für mit von zum zur ein eine nicht auf kinder herren damen schwarz weiss",
    "fr": "le la les des et pour avec du un une au aux sur enfant homme femme noir blanc",
    "es": "el los las y para con del un una por en niños hombre mujer negro blanco",
    "it": "il lo gli le e per con della di un una uomo donna bambini nero bianco",
    "nl": "de het een en voor met van kinderen heren dames zwart wit",
    "pt": "o os as e para com do da um uma em homem mulher crianças preto branco",
    "pl": "i w z na dla do od dla dzieci męskie damskie czarny biały",
    "tr": "ve ile için bir çocuk erkek kadın siyah beyaz",
}
_STOPWORDS = {lang: set(words.split()) for lang, words in _STOPWORDS.items()}
_LETTERS = {"de": "äöüß", "fr": "éèêàçœùâîô", "es": "ñ¿¡áíóú", "pt": "ãõâêç", "pl": "ąęłśżźćń",
            "tr": "ğşıİ", "it": "àèìòù", "nl": "ĳ"}
_QUANTITY = re.compile(r"\b(\d+(?:[.,]\d+)?)\s?(gb|tb|mb|mah|ml|cl|l|kg|g|mg|mm|cm|m|km|in|inch|zoll|w|kw|v|"
                       r"hz|ghz|mp|k|p|x|pcs|pack|st|stk|枚|個|本|cm)\b")


def identify_language(text: str, hint: str | None = None) -> tuple[str, float]:
    """(ISO 639-1 code, confidence in [0, 1]) for a short query."""
    for language, script in _SCRIPTS:
        if script.search(text):
            return language, 1.0
    lowered = unicodedata.normalize("NFC", text.casefold())
    words = re.findall(r"[^\W\d_]+", lowered)
    scores = {lang: sum(w in stop for w in words) + sum(ch in _LETTERS[lang] for ch in lowered if lang in _LETTERS)
              for lang, stop in _STOPWORDS.items()}
    best = max(scores, key=scores.get)
    if scores[best] > 0 and list(scores.values()).count(scores[best]) == 1:
        return best, 0.9 if scores[best] > 1 else 0.6
    return ((hint.split("-")[0].lower(), 0.3) if hint else ("en", 0.2))


def extract_attributes(query: str) -> list[dict]:
    """Quantities with units (``128 gb``, ``500 ml``) in the normalised query."""
    return [{"type": "quantity", "text": f"{number} {unit}"}
            for number, unit in _QUANTITY.findall(normalize(query))]


class QueryUnderstanding:
    """Language, intent and entities of a query, against a catalog's vocabulary.

    ``catalog`` is read live (brands, BM25 vocabulary, the categories of the items a
    query retrieves); ``intents`` is an ``IntentClassifier``, or None to skip intent.
    """

    def __init__(self, catalog: CatalogIndexer, intents: IntentClassifier | None = None,
                 max_brand_words: int = 4, evidence_items: int = 10) -> None:
        self.catalog, self.intents, self.max_brand_words = catalog, intents, max_brand_words
        self.evidence_items = evidence_items
        self.retriever = HybridRetriever(catalog)
        self._brands: dict[str, str] = {}
        self._brands_version = -1

    def brands(self) -> dict[str, str]:
        """Normalised brand -> brand as the catalog spells it (rebuilt when the catalog changes)."""
        if self._brands_version != self.catalog.version:
            self._brands = {normalize(item["brand"]): item["brand"] for item in self.catalog.items.values()
                            if item.get("brand")}
            self._brands_version = self.catalog.version
        return self._brands

    def entities(self, query: str) -> dict[str, list]:
        """Brands named in the query, quantities, and model numbers the catalog knows."""
        words = normalize(query).split()
        brands = self.brands()
        found = [brands[" ".join(words[i:j])] for i in range(len(words))
                 for j in range(i + 1, min(len(words), i + self.max_brand_words) + 1)
                 if " ".join(words[i:j]) in brands]
        models = [{"type": "model", "text": t} for t in dict.fromkeys(tokens(query))
                  if any(c.isdigit() for c in t) and any(c.isalpha() for c in t)
                  and self.catalog.lexical.document_frequency(t) > 0]
        return {"brands": list(dict.fromkeys(found)), "attributes": extract_attributes(query) + models}

    def understand(self, query: str, locale: str | None = None, query_vector: np.ndarray | None = None,
                   hits: list[Hit] | None = None) -> dict:
        """Everything known about ``query``; pass ``query_vector`` and the retrieved
        ``hits`` if the caller has them already."""
        language, confidence = identify_language(query, hint=locale)
        intent = []
        if self.intents is not None and query.strip():
            if query_vector is None:
                query_vector = self.catalog.encoder.encode_queries([query])[0]
            if hits is None:
                hits = self.retriever.retrieve(query, self.evidence_items, query_vector)
            categories = [self.catalog.items[h.item_id]["category"] for h in hits[:self.evidence_items]
                          if h.item_id in self.catalog.items and self.catalog.items[h.item_id]["category"]]
            intent = self.intents.predict(query_vector[None], k=3, evidence=[categories])[0]
        return {"query": query, "normalized": normalize(query),
                "language": {"code": language, "confidence": confidence},
                "intent": intent, "entities": self.entities(query)}
