"""How one candidate title's signals become its score: a linear model whose weights
depend on the query (its script and its length).

Each candidate has *signals*: every dense part's cosine (``dense:use``, ``dense:e5``),
BM25 over the best BM25 among the candidates (``lexical``), the share of the query's
codes (tokens of 3+ characters holding a digit: set and model numbers, years) the title has too
(``codes``), and ``code_clash`` (both have codes and share none: LEGO 9493 is not
9492). A query has *conditions*: ``cjk`` (it is written in Chinese or Japanese
characters) and ``length`` (in hundreds of characters, at most 2). A weight is named
after a signal, or a signal and a condition (``lexical*length``); the score is the sum
of weights times those columns. Conditions on the pair (the title's script or
language against the query's) were tried and left out: on cross-market title pairs
they learn "prefer a title from another market", which that task rewards and a shop's
search would not.

Scores are logits: ``exp(a - b)`` is how much likelier title ``a`` is the one meant
than title ``b``. ``Fusion.prior`` is the rule used before anything was fit (cosines
by their encoder's inverse spread, plus 3.5 x normalised BM25); a ``Fusion`` fit on
labelled queries (``relevo.models.query_tuning``) is saved as JSON beside its
provenance, and the search service loads it.

>>> fusion = Fusion({"dense:use": 10.0, "lexical": 3.0, "lexical*length": -1.0}, encoder="use")
>>> columns = {"dense:use": np.array([0.5, 0.4]), "lexical": np.array([0.0, 1.0]),
...            "length": np.array([2.0, 2.0])}
>>> fusion.score(columns).tolist()
[5.0, 5.0]
>>> fusion.dense_weights({"length": 2.0})
{'use': 10.0}
>>> query_conditions("乐高 火车 轨道"), query_conditions("LEGO 10220 Volkswagen T1")
({'cjk': 1.0, 'length': 0.08}, {'cjk': 0.0, 'length': 0.24})
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from relevo.search.encoder import TextEncoder

FUSION_FILE = "fusion.json"  # a published fusion, in the tuning directory (see relevo.search.catalog_store)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]")  # kana and Han (not Hangul: it has spaces)
QUERY_CONDITIONS = ("cjk", "length")
# What a fit learns, besides each dense part's weight and its interactions with the
# conditions: the lexical signals, and how BM25's weight moves with the query.
LEXICAL_FEATURES = ("lexical", "codes", "code_clash", "lexical*cjk", "lexical*length")


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds Chinese or Japanese characters."""
    return bool(_CJK.search(text))


def query_conditions(query: str) -> dict[str, float]:
    """The conditions a query puts on every weight: its script and its length."""
    return {"cjk": float(has_cjk(query)), "length": round(min(len(query), 200) / 100, 4)}


def code_tokens(tokens: Iterable[str]) -> set[str]:
    """Tokens of three or more characters holding a digit: set and model numbers, sizes,
    years. Shorter ones ("Season 2", "Book 3", "Region 2") clash with everything."""
    return {t for t in tokens if len(t) >= 3 and any(ch.isdigit() for ch in t)}


def code_signals(query_codes: set[str], title_codes: Sequence[set[str]]) -> dict[str, np.ndarray]:
    """``codes`` and ``code_clash`` for each title, given the query's codes.

    >>> {k: v.tolist() for k, v in code_signals({"9493"}, [{"9493"}, {"9492"}, set()]).items()}
    {'codes': [1.0, 0.0, 0.0], 'code_clash': [0.0, 1.0, 0.0]}
    """
    if not query_codes:
        zeros = np.zeros(len(title_codes), np.float32)
        return {"codes": zeros, "code_clash": zeros}
    shared = np.array([len(query_codes & codes) for codes in title_codes], np.float32)
    clash = np.array([bool(codes) for codes in title_codes], np.float32) * (shared == 0)
    return {"codes": shared / len(query_codes), "code_clash": clash}


def features_for(parts: Iterable[str]) -> list[str]:
    """The weights a fit learns for an encoder with these parts."""
    dense = [f"dense:{p}" for p in parts]
    return [*dense, *(f"{d}*{c}" for d in dense for c in QUERY_CONDITIONS), *LEXICAL_FEATURES]


def feature_matrix(names: Sequence[str], columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """One column per weight name: a signal, or the product of a signal and a condition."""
    rows = len(next(iter(columns.values())))

    def column(name: str) -> np.ndarray:
        out = np.ones(rows, np.float32)
        for factor in name.split("*"):
            value = columns.get(factor)
            out = out * (np.broadcast_to(value, rows) if value is not None else 0.0)
        return out

    if not names:
        return np.zeros((rows, 0), np.float32)
    return np.stack([column(name) for name in names], axis=1).astype(np.float32)


@dataclass(frozen=True)
class Fusion:
    """Named weights (see the module doc), the encoder they were fit for, and, when the
    fit used one, the query tower its dense part needs (``{"e5": "e5-lora …"}``)."""

    weights: dict[str, float]
    encoder: str
    query_towers: dict[str, str] = field(default_factory=dict)
    about: dict = field(default_factory=dict)  # provenance: data, split, figures

    @classmethod
    def prior(cls, encoder: TextEncoder, lexical_weight: float = 3.5) -> Fusion:
        """The hand-set rule: each part's cosine over its spread, weighted as the encoder fuses
        them, plus ``lexical_weight`` x normalised BM25 (3.5 was the best on the cross-lingual
        bench for USE alone and USE+E5 before any split; see bench/RESULTS.md)."""
        spread = encoder.score_spread
        weights = {f"dense:{name}": scale * scale / spread for name, _, scale in encoder.layout}
        return cls({**weights, "lexical": lexical_weight}, encoder.name, encoder.query_towers, {"kind": "prior"})

    @property
    def parts(self) -> list[str]:
        return [name.split(":", 1)[1] for name in self.weights if name.startswith("dense:") and "*" not in name]

    def dense_weights(self, conditions: Mapping[str, float]) -> dict[str, float]:
        """Each dense part's weight for a query with these conditions (at least 0: for the index probe)."""
        out = {}
        for part in self.parts:
            name = f"dense:{part}"
            weight = self.weights[name] + sum(self.weights.get(f"{name}*{c}", 0.0) * conditions.get(c, 0.0)
                                              for c in QUERY_CONDITIONS)
            out[part] = max(weight, 0.0)
        return out

    def score(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """The logit of each candidate, from its signal and condition columns."""
        names = list(self.weights)
        return feature_matrix(names, columns) @ np.array([self.weights[n] for n in names], np.float32)

    def to_json(self) -> dict:
        return {"weights": self.weights, "encoder": self.encoder, "query_towers": self.query_towers,
                "about": self.about}

    def save(self, path: Path | str) -> None:
        """Write atomically: a reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path | str) -> Fusion:
        raw = json.loads(Path(path).read_text())
        return cls({k: float(v) for k, v in raw["weights"].items()}, raw["encoder"],
                   dict(raw.get("query_towers") or {}), dict(raw.get("about") or {}))
