"""Text normalisation shared by search and suggestions.

Case, accents and full-/half-width differences are folded; CJK text is kept.

>>> normalize("  Ｃａｆé   Paris ")
'cafe paris'
>>> normalize("東京 タワー")
'東京 タワー'
>>> normalize("Straße")
'strasse'
"""

from __future__ import annotations

import unicodedata

# Latin, Greek and Cyrillic end here; marks after later scripts are part of the letter.
_LAST_ACCENTED_SCRIPT = "\u0530"


def normalize(text: str) -> str:
    """Fold case, width and accents, and collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).casefold()
    decomposed = unicodedata.normalize("NFKD", text)
    # Drop combining marks only from Latin/Greek/Cyrillic letters: in Japanese the
    # voiced-sound marks change the word (ガ is not カ), so those are recomposed.
    kept: list[str] = []
    for ch in decomposed:
        if unicodedata.combining(ch) and kept and kept[-1] < _LAST_ACCENTED_SCRIPT:
            continue
        kept.append(ch)
    return " ".join(unicodedata.normalize("NFC", "".join(kept)).split())
