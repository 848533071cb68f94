"""The learned ranker: point-in-time context features and hashed ids, in torch.

Ids (item, region, user) are hashed into fixed tables, so there is no
vocabulary to grow or ship.

>>> ranker = Ranker(RankerConfig(item_buckets=64, user_buckets=16, region_buckets=8))
>>> example = {"items": ["a", "b"], "region": "FR", "user_id": "u",
...            "features": [[0.0] * len(FEATURES), [1.0] * len(FEATURES)], "labels": [0, 2]}
>>> ranker.scores(example).shape
torch.Size([2])
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from relevo.features.context import FEATURES, RULE

device = "cuda" if torch.cuda.is_available() else "cpu"
# Which features, in which order, a model was trained on: a model is only ever fed the same set.
FEATURE_SET = f"{zlib.crc32(','.join(FEATURES).encode()):08x}"


def bucket(kind: str, value: str, buckets: int) -> int:
    """A stable hash bucket (Python's ``hash`` is salted per process)."""
    return zlib.crc32(f"{kind}:{value}".encode()) % buckets


@dataclass(frozen=True)
class RankerConfig:
    """Sizes of the ranker; stored with every published version."""

    features: int = len(FEATURES)
    hidden: int = 32
    id_dim: int = 8
    item_buckets: int = 1 << 15
    user_buckets: int = 1 << 12
    region_buckets: int = 256
    rule_weight: float = 4.0  # initial weight of the session rule feature: start from the known baseline
    feature_set: str = FEATURE_SET

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


@dataclass
class Batch:
    """Lists padded to one length: features [B, L, F], mask [B, L], ids, labels."""

    features: torch.Tensor
    mask: torch.Tensor
    items: torch.Tensor
    regions: torch.Tensor
    users: torch.Tensor
    labels: torch.Tensor

    def to(self, where: str) -> Batch:
        return Batch(*(t.to(where) for t in vars(self).values()))


def collate(examples: Sequence[dict[str, Any]], config: RankerConfig) -> Batch:
    """Pad examples (dicts from ``ExamplesBuilder``) into one ``Batch``."""
    size, width = max(len(e["items"]) for e in examples), config.features
    features = torch.zeros(len(examples), size, width)
    mask = torch.zeros(len(examples), size, dtype=torch.bool)
    items = torch.zeros(len(examples), size, dtype=torch.long)
    labels = torch.zeros(len(examples), size)
    for b, e in enumerate(examples):
        n = len(e["items"])
        features[b, :n] = torch.tensor(e["features"], dtype=torch.float32)
        mask[b, :n] = True
        items[b, :n] = torch.tensor([bucket("item", i, config.item_buckets) for i in e["items"]])
        labels[b, :n] = torch.tensor(e.get("labels") or [0] * n, dtype=torch.float32)
    regions = torch.tensor([bucket("region", e.get("region") or "", config.region_buckets) for e in examples])
    users = torch.tensor([bucket("user", e.get("user_id") or "", config.user_buckets) for e in examples])
    return Batch(features, mask, items, regions, users, labels)


class Ranker(nn.Module):
    """Scores every item of a list; higher is better."""

    def __init__(self, config: RankerConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or RankerConfig()
        self.head = nn.Sequential(nn.Linear(config.features, config.hidden), nn.ReLU(),
                                  nn.Linear(config.hidden, config.hidden), nn.ReLU(),
                                  nn.Linear(config.hidden, 1))
        self.wide = nn.Linear(config.features, 1)  # a linear path beside the MLP
        nn.init.zeros_(self.wide.weight)
        nn.init.zeros_(self.wide.bias)
        with torch.no_grad():
            self.wide.weight[0, RULE] = config.rule_weight
        self.item = nn.Embedding(config.item_buckets, config.id_dim)
        self.item_bias = nn.Embedding(config.item_buckets, 1)
        self.region = nn.Embedding(config.region_buckets, config.id_dim)
        self.user = nn.Embedding(config.user_buckets, config.id_dim)
        for table in (self.item, self.item_bias, self.region, self.user):
            nn.init.normal_(table.weight, std=0.01)

    def id_parameters(self) -> list[nn.Parameter]:
        """The hashed id tables: sparse and easy to overfit, so the trainer slows them down."""
        return [t.weight for t in (self.item, self.item_bias, self.region, self.user)]

    def forward(self, batch: Batch) -> torch.Tensor:
        inputs = batch.features
        context = (self.region(batch.regions) + self.user(batch.users)).unsqueeze(1)
        ids = (self.item(batch.items) * context).sum(-1) + self.item_bias(batch.items).squeeze(-1)
        scores = self.head(inputs).squeeze(-1) + self.wide(inputs).squeeze(-1) + ids
        return scores.masked_fill(~batch.mask, float("-inf"))

    @torch.no_grad()
    def scores(self, example: dict[str, Any]) -> torch.Tensor:
        """Scores of one list (an example or a search with ``features``), on the CPU."""
        self.eval()
        where = next(self.parameters()).device
        return self(collate([example], self.config).to(str(where)))[0].cpu()


def listwise_loss(scores: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Softmax cross-entropy against the graded labels (2^grade - 1, normalised).

    Lists without any positive label carry no ranking signal and are skipped.
    """
    gains = (2.0 ** batch.labels - 1.0) * batch.mask
    total = gains.sum(-1, keepdim=True)
    useful = total.squeeze(-1) > 0
    if not useful.any():
        return scores.new_zeros((), requires_grad=True)
    target = gains[useful] / total[useful]
    log_probs = torch.log_softmax(scores[useful], dim=-1).masked_fill(~batch.mask[useful], 0.0)
    return -(target * log_probs).sum(-1).mean()
