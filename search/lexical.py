"""Lexical matching: CJK-aware tokens, an incremental BM25 index, and query expansion
from the catalog vocabulary (typos at one deletion from a catalog word).

Brand names, model numbers and other exact tokens carry much of e-commerce relevance;
dense encoders blur them, BM25 does not. Codes written with separators also count
joined (``WH-1000XM4`` matches ``wh1000xm4``), and tokens holding digits weigh more.

>>> tokens("Sony WH-1000XM4 ヘッドホン")
['sony', 'wh', '1000xm4', 'ヘッ', 'ッド', 'ドホ', 'ホン', 'wh1000xm4']
>>> bm25 = BM25Index()
>>> bm25.upsert(["a", "b"], ["Sony WH-1000XM4 headphones", "Bose QuietComfort headphones"])
>>> [key for key, _ in bm25.search("sonny headphones", k=2)]
['a', 'b']
>>> bm25.expand(["sonny", "headphones"])
{'sonny': ['sony'], 'headphones': ['headphones']}
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from relevo.core.text import normalize

_WORD = re.compile(r"[^\W_]+")
_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]+)")
_CODE = re.compile(r"\b[0-9a-z]+(?:[-./][0-9a-z]+)+\b")


def tokens(text: str) -> list[str]:
    """Normalised words; runs of CJK characters become overlapping character bigrams
    (these scripts do not separate words with spaces)."""
    out: list[str] = []
    for word in _WORD.findall(normalize(text)):
        for part in _CJK.split(word):
            if not part:
                continue
            if _CJK.fullmatch(part):
                out.extend([part] if len(part) == 1 else [part[i:i + 2] for i in range(len(part) - 1)])
            else:
                out.append(part)
    codes = (re.sub(r"[-./]", "", code) for code in _CODE.findall(normalize(text)))
    return out + [code for code in codes if not code.isdigit() and not code.isalpha()]


def _deletes(token: str) -> set[str]:
    return {token[:i] + token[i + 1:] for i in range(len(token))}


class BM25Index:
    """Okapi BM25 over ``tokens``; documents keyed by string, upserted one batch at a time."""

    def __init__(self, k1: float = 1.2, b: float = 0.75, min_fuzzy_len: int = 4, digit_boost: float = 2.0) -> None:
        self.k1, self.b, self.min_fuzzy_len, self.digit_boost = k1, b, min_fuzzy_len, digit_boost
        self._keys: list[str | None] = []
        self._row: dict[str, int] = {}
        self._lengths: list[int] = []
        self._doc_tokens: list[tuple[str, ...]] = []
        self._length_array = np.zeros(0, np.float32)  # _lengths as an array, refreshed when rows are added
        self._postings: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        self._df: Counter[str] = Counter()
        self._by_deletion: dict[str, set[str]] = defaultdict(set)
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._alive = np.zeros(0, bool)
        self._total_length = 0

    def __len__(self) -> int:
        return len(self._row)

    def tokens_of(self, key: str) -> tuple[str, ...]:
        """The distinct tokens of document ``key`` (none if it is not indexed)."""
        row = self._row.get(key)
        return self._doc_tokens[row] if row is not None else ()

    def document_frequency(self, token: str) -> int:
        return self._df.get(token, 0)

    def upsert(self, keys: Sequence[str], texts: Sequence[str]) -> None:
        """Index ``texts`` under ``keys``, replacing earlier versions."""
        self.remove(keys)
        self._alive = np.concatenate([self._alive, np.ones(len(keys), bool)])
        for key, text in zip(keys, texts, strict=True):
            self.remove([key])  # a key repeated within the batch
            row = len(self._keys)
            counts = Counter(tokens(text))
            self._doc_tokens.append(tuple(counts))
            self._keys.append(key)
            self._row[key] = row
            self._lengths.append(sum(counts.values()))
            self._total_length += self._lengths[-1]
            for token, tf in counts.items():
                rows, tfs = self._postings[token]
                rows.append(row)
                tfs.append(tf)
                self._arrays.pop(token, None)
                if self._df[token] == 0 and len(token) >= self.min_fuzzy_len:
                    for deleted in _deletes(token) | {token}:
                        self._by_deletion[deleted].add(token)
                self._df[token] += 1

    def remove(self, keys: Sequence[str]) -> None:
        """Forget ``keys`` (unknown keys are ignored)."""
        for key in keys:
            row = self._row.pop(key, None)
            if row is None:
                continue
            self._keys[row] = None
            self._alive[row] = False
            self._total_length -= self._lengths[row]
            self._df.subtract(self._doc_tokens[row])
            self._doc_tokens[row] = ()

    def _posting_arrays(self, token: str) -> tuple[np.ndarray, np.ndarray]:
        if token not in self._arrays:
            rows, tfs = self._postings.get(token, ([], []))
            self._arrays[token] = (np.asarray(rows, np.int64), np.asarray(tfs, np.float32))
        return self._arrays[token]

    def expand(self, query_tokens: Sequence[str]) -> dict[str, list[str]]:
        """Each query token with the catalog words it matches: itself if the catalog has
        it, else words one deletion away either way (a typo), else nothing."""
        expanded = {}
        for token in query_tokens:
            if self._df.get(token, 0) > 0 or len(token) < self.min_fuzzy_len:
                expanded[token] = [token] if self._df.get(token, 0) > 0 else []
                continue
            near = set(self._by_deletion.get(token, ()))
            for deleted in _deletes(token):
                near |= self._by_deletion.get(deleted, set())
            expanded[token] = sorted(t for t in near if self._df.get(t, 0) > 0 and t != token)
        return expanded

    def scores(self, query: str, typo_weight: float = 0.5) -> np.ndarray:
        """BM25 score of every row (dead rows score 0), with typo expansions down-weighted."""
        out = np.zeros(len(self._keys), np.float32)
        alive = len(self._row)
        if not alive:
            return out
        avg_length = self._total_length / alive
        if len(self._length_array) != len(self._lengths):
            self._length_array = np.asarray(self._lengths, np.float32)
        lengths = self._length_array
        for token, matches in self.expand(tokens(query)).items():
            for match in matches:
                rows, tfs = self._posting_arrays(match)
                df = max(self._df[match], 1)
                idf = math.log(1 + (alive - df + 0.5) / (df + 0.5))
                if any(ch.isdigit() for ch in match):  # model and set numbers, sizes
                    idf *= self.digit_boost
                norm = self.k1 * (1 - self.b + self.b * lengths[rows] / avg_length)
                weight = idf * (1.0 if match == token else typo_weight / len(matches))
                out[rows] += weight * tfs * (self.k1 + 1) / (tfs + norm)
        return out * self._alive

    def score_of(self, scores: np.ndarray, keys: Sequence[str]) -> np.ndarray:
        """The entries of ``scores`` for ``keys`` (0 for keys not indexed)."""
        return np.array([scores[self._row[k]] if k in self._row else 0.0 for k in keys], np.float32)

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` best-scoring documents with a positive score, best first."""
        scores = self.scores(query)
        return self.top(scores, k)

    def top(self, scores: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` rows of ``scores`` with the best positive score, as (key, score)."""
        top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self._keys[r], float(scores[r])) for r in top if scores[r] > 0]
