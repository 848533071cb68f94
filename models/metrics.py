"""Ranking quality of scored lists: MRR, NDCG@10 and list log-loss.

Each list is scored by the model and labelled with graded relevance; lists
without a positive label are not counted.

>>> figures = evaluate([[0.1, 0.9, 0.5]], [[0, 2, 0]])
>>> figures["mrr"], figures["ndcg@10"], figures["lists"]
(1.0, 1.0, 1)
>>> evaluate([[0.9, 0.1]], [[0, 1]])["mrr"]
0.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def reciprocal_rank(scores: Sequence[float], labels: Sequence[int]) -> float:
    """1 / rank of the best-labelled item (ties broken by the original order)."""
    best = max(range(len(labels)), key=lambda i: (labels[i], -i))
    better = sum(1 for i, s in enumerate(scores) if s > scores[best] or (s == scores[best] and i < best))
    return 1.0 / (1 + better)


def ndcg(scores: Sequence[float], labels: Sequence[int], k: int = 10) -> float:
    """Normalised discounted cumulative gain of the top ``k``."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    gain = sum((2 ** labels[i] - 1) / math.log2(r + 2) for r, i in enumerate(order))
    ideal = sum((2 ** g - 1) / math.log2(r + 2) for r, g in enumerate(sorted(labels, reverse=True)[:k]))
    return gain / ideal if ideal else 0.0


def log_loss(scores: Sequence[float], labels: Sequence[int]) -> float:
    """-log of the softmax probability given to the best-labelled item."""
    best = max(range(len(labels)), key=lambda i: (labels[i], -i))
    top = max(scores)
    log_total = top + math.log(sum(math.exp(s - top) for s in scores))
    return log_total - scores[best]


def evaluate(scores: Sequence[Sequence[float]], labels: Sequence[Sequence[int]]) -> dict[str, float]:
    """Mean MRR, NDCG@10 and log-loss over the lists that have a positive label."""
    rows = [(s, y) for s, y in zip(scores, labels, strict=True) if max(y, default=0) > 0]
    if not rows:
        return {"mrr": 0.0, "ndcg@10": 0.0, "log_loss": 0.0, "lists": 0}
    n = len(rows)
    return {"mrr": sum(reciprocal_rank(s, y) for s, y in rows) / n,
            "ndcg@10": sum(ndcg(s, y) for s, y in rows) / n,
            "log_loss": sum(log_loss(s, y) for s, y in rows) / n,
            "lists": n}
