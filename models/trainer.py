"""Incremental training: evaluate, fine-tune, gate, publish.

``Trainer.update(batch)`` is one learning step of the loop:

1. **prequential evaluation** — the serving model scores the new examples
   before it has learned from them (MRR, NDCG@10, log-loss), beside the
   session rule's MRR on the same lists;
2. a few examples go to a **hold-out** that is never trained on;
3. a copy of the model is **fine-tuned** on the rest plus a sample of the
   bounded **replay buffer** (so it does not forget older traffic);
4. the **gate** compares the candidate with the serving model on the recent
   hold-out and refuses to publish a worse one;
5. the candidate is **published** to the registry with its parent, data window
   and figures.

The last published version is the checkpoint: a new ``Trainer`` on the same
registry resumes from the serving version, and an update that dies half way
leaves the registry as it was.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from relevo.features.context import RULE
from relevo.models.metrics import evaluate
from relevo.models.ranker import Ranker, RankerConfig, collate, device, listwise_loss
from relevo.models.registry import IncompatibleModel, ModelVersion, Registry

log = logging.getLogger(__name__)

Example = dict[str, Any]


@dataclass
class UpdateReport:
    """What one update did, for logs, ``model.updates`` and benchmarks."""

    examples: int
    prequential: dict[str, float]
    published: ModelVersion | None = None
    refused: str | None = None
    trained: int = 0
    train_seconds: float = 0.0
    holdout: dict[str, float] = field(default_factory=dict)
    duplicates: int = 0  # examples of searches already learned from, skipped

    @property
    def examples_per_second(self) -> float:
        return self.trained / self.train_seconds if self.train_seconds else 0.0


class Trainer:
    """Fine-tunes the ranker on each batch of examples and publishes what passes the gate."""

    def __init__(self, registry: Registry, config: RankerConfig | None = None, *, device: str = device,
                 lr: float = 3e-3, id_lr_scale: float = 0.1, epochs: int = 2, minibatch: int = 32,
                 replay_size: int = 20_000, replay_ratio: float = 1.0, holdout_every: int = 10,
                 holdout_size: int = 500, gate_tolerance: float = 0.01, seed: int = 0,
                 remember_searches: int = 200_000) -> None:
        self.registry = registry
        self.config = config or RankerConfig()
        self.device = device
        self.lr, self.id_lr_scale, self.epochs, self.minibatch = lr, id_lr_scale, epochs, minibatch
        self.replay: deque[Example] = deque(maxlen=replay_size)
        self.replay_ratio = replay_ratio
        self.holdout: deque[Example] = deque(maxlen=holdout_size)
        self.holdout_every = holdout_every
        self.gate_tolerance = gate_tolerance
        self.random = random.Random(seed)
        torch.manual_seed(seed)
        self.version: int | None = None
        self.model = Ranker(self.config).to(device)
        self._seen = 0
        self._optimiser_state: dict[str, Any] | None = None  # Adam's moments, carried between updates
        self._incompatible: int | None = None  # a serving version this code cannot continue from
        self._learned: OrderedDict[str, None] = OrderedDict()  # search ids already learned from
        self._remember = remember_searches
        self.resume()

    def resume(self) -> None:
        """Continue from the registry's serving version (after a crash, a restart or a rollback)."""
        serving = self.registry.current()
        if serving is not None and serving not in (self.version, self._incompatible):
            try:
                self.model = self.registry.load(serving, self.device)
            except IncompatibleModel as exc:  # the feature set changed: learn a new model, parentless
                log.warning("%s; training a new model from scratch", exc)
                self._incompatible = serving
                return
            self.config = self.model.config
            self.version = serving
            self._optimiser_state = None
            log.info("trainer resumes from model v%d", serving)

    def update(self, batch: Sequence[Example]) -> UpdateReport:
        """One step of the loop; returns what was measured and published.

        An example whose search was already learned from is skipped: a worker that
        restarts from its last committed offset emits the examples since then again.
        """
        self.resume()
        unseen = self._unseen(batch)
        duplicates, batch = len(batch) - len(unseen), unseen
        if not batch:
            return UpdateReport(0, {}, duplicates=duplicates)
        report = UpdateReport(len(batch), self.evaluate(self.model, batch), duplicates=duplicates)
        # the baseline on the same lists: "items the session touched first, most recent first"
        rule = evaluate([[row[RULE] for row in e["features"]] for e in batch], [e["labels"] for e in batch])
        report.prequential["session_rule_mrr"] = rule["mrr"]
        fresh: list[Example] = []
        for example in batch:
            self._seen += 1
            (self.holdout if self._seen % self.holdout_every == 0 else fresh).append(example)
        replayed = self.random.sample(list(self.replay), min(len(self.replay),
                                                             int(len(fresh) * self.replay_ratio)))
        candidate = copy.deepcopy(self.model)
        started = time.perf_counter()
        report.trained, optimiser_state = self._fit(candidate, fresh + replayed)
        report.train_seconds = time.perf_counter() - started
        self.replay.extend(fresh)
        if self.version is not None and self.holdout:
            serving, challenger = self.evaluate(self.model, self.holdout), self.evaluate(candidate, self.holdout)
            report.holdout.update(serving_mrr=serving["mrr"], candidate_mrr=challenger["mrr"])
            if challenger["mrr"] < serving["mrr"] - self.gate_tolerance:
                report.refused = (f"hold-out MRR {challenger['mrr']:.4f} < serving "
                                  f"{serving['mrr']:.4f} - {self.gate_tolerance}")
                log.info("not publishing: %s", report.refused)
                return report
        timestamps = [e["ts"] for e in batch]
        figures = {**{f"prequential_{k}": v for k, v in report.prequential.items()}, **report.holdout,
                   "examples": len(batch)}
        report.published = self.registry.publish(candidate, parent=self.version,
                                                 window=(min(timestamps), max(timestamps)), figures=figures)
        self.model, self.version = candidate, report.published.version
        self._optimiser_state = optimiser_state
        return report

    def _unseen(self, batch: Sequence[Example]) -> list[Example]:
        fresh = []
        for example in batch:
            if example["search_id"] in self._learned:
                continue
            self._learned[example["search_id"]] = None
            fresh.append(example)
        while len(self._learned) > self._remember:
            self._learned.popitem(last=False)
        return fresh

    def _fit(self, model: Ranker, examples: list[Example]) -> tuple[int, dict[str, Any] | None]:
        """A few epochs of listwise training; returns the lists seen and the optimiser state."""
        if not examples:
            return 0, self._optimiser_state
        model.train()
        ids = {id(p) for p in model.id_parameters()}
        optimiser = torch.optim.Adam([
            {"params": [p for p in model.parameters() if id(p) not in ids]},
            {"params": model.id_parameters(), "lr": self.lr * self.id_lr_scale}], lr=self.lr)
        if self._optimiser_state is not None:
            optimiser.load_state_dict(self._optimiser_state)
        seen = 0
        for _ in range(self.epochs):
            order = self.random.sample(examples, len(examples))
            for start in range(0, len(order), self.minibatch):
                chunk = order[start:start + self.minibatch]
                batch = collate(chunk, model.config).to(self.device)
                loss = listwise_loss(model(batch), batch)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                seen += len(chunk)
        return seen, copy.deepcopy(optimiser.state_dict())

    @torch.no_grad()
    def evaluate(self, model: Ranker, examples: Sequence[Example]) -> dict[str, float]:
        """MRR, NDCG@10 and log-loss of ``model`` on labelled examples."""
        model.eval()
        examples = list(examples)
        scores: list[list[float]] = []
        for start in range(0, len(examples), 256):
            chunk = examples[start:start + 256]
            out = model(collate(chunk, model.config).to(self.device)).cpu()
            scores += [out[b, :len(e["items"])].tolist() for b, e in enumerate(chunk)]
        return evaluate(scores, [e["labels"] for e in examples])
