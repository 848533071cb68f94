"""Tuning search's query side on labelled queries, and publishing it where serving finds it.

Two things learn from (query, wanted titles) pairs, both without touching item vectors:

- ``train_query_tower``: LoRA adapters on the rebuilt E5's query side, with a softmax
  over the frozen vectors of every catalog title (the query's own title masked out:
  when titles are the queries, the title itself is not the answer).
- ``fit_fusion``: the weights of a ``relevo.search.fusion.Fusion`` by maximising the
  likelihood of the wanted titles among each query's candidates (convex; L-BFGS).

``publish`` writes ``fusion.json`` and, when the fusion needs one, the tower's adapters
(``query-tower.safetensors``, named in the fusion by checksum) into a directory;
``load_published`` reads them back for serving, where ``E5QueryTower`` encodes queries
with the adapters merged into the base (as fast as the base alone).

>>> columns = [{"dense:e5": np.array([0.9, 0.8]), "lexical": np.array([0.0, 1.0])},
...            {"dense:e5": np.array([0.7, 0.9]), "lexical": np.array([1.0, 0.0])}]
>>> fusion = Fusion(fit_fusion(columns, [np.array([False, True]), np.array([True, False])],
...                            ["dense:e5", "lexical"]), encoder="e5")
>>> [int(np.argmax(fusion.score(c))) for c in columns]  # the wanted titles come first
[1, 0]
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from relevo.models.e5_tower import e5_query_tower
from relevo.models.lora import LoraQueryTower, mean_pool
from relevo.search.encoder import with_query_tower
from relevo.search.fusion import FUSION_FILE, Fusion, feature_matrix
from relevo.search.retrieval import CatalogIndexer

log = logging.getLogger(__name__)

TOWER_FILE = "query-tower.safetensors"
TOWER_PART = "e5"  # the encoder part whose queries the tower encodes


@dataclass(frozen=True)
class TowerConfig:
    """How the tower trains: ``steps`` optimiser steps of ``batch`` queries each."""

    steps: int = 300
    batch: int = 16
    lr: float = 1e-3
    rank: int = 8
    # E5 trained at 0.01 (its cosines bunch); on held-out dev products 0.02 did better here
    # (R@1 0.766 against 0.744 after 200 steps; bench.crosslingual's dev split)
    temperature: float = 0.02
    max_length: int = 64  # query tokens read
    seed: int = 0


def train_query_tower(queries: Sequence[str], targets: Sequence[Sequence[int]], items: np.ndarray,
                      own_rows: Sequence[int] | None = None, config: TowerConfig = TowerConfig(),
                      cache_dir: Path | str | None = None, device: str = "cpu") -> LoraQueryTower:
    """LoRA on E5's query side: query ``i`` should pick one of rows ``targets[i]`` of the frozen
    E5 item vectors ``items`` (never row ``own_rows[i]``). Logs its progress."""
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    tower = e5_query_tower(cache_dir, rank=config.rank, lr=config.lr, temperature=config.temperature,
                           max_length=config.max_length, device=device)
    item_vecs = torch.from_numpy(np.ascontiguousarray(items, np.float32))
    cases = list(range(len(queries)))
    started, losses = time.perf_counter(), []
    for step in range(1, config.steps + 1):
        batch = rng.sample(cases, min(config.batch, len(cases)))
        losses.append(tower.learn([queries[i] for i in batch], item_vecs, [rng.choice(targets[i]) for i in batch],
                                  [own_rows[i] for i in batch] if own_rows is not None else None))
        if step % 25 == 0 or step == config.steps:
            log.info("query tower step %d/%d: loss %.3f (last 25), %.0f s", step, config.steps,
                     np.mean(losses[-25:]), time.perf_counter() - started)
    return tower


def fit_fusion(columns: Sequence[Mapping[str, np.ndarray]], wanted: Sequence[np.ndarray], names: Sequence[str],
               l2: float = 1e-5) -> dict[str, float]:
    """Weights for ``names`` maximising, over queries, the log of the softmax mass on the
    ``wanted`` candidates (queries with none among their candidates teach nothing and are skipped)."""
    lists = [(torch.from_numpy(feature_matrix(names, cols)), torch.from_numpy(np.asarray(mask, bool)))
             for cols, mask in zip(columns, wanted, strict=True) if np.any(mask)]
    if not lists:
        raise ValueError("no query has a wanted title among its candidates: nothing to fit")
    weights = torch.zeros(len(names), dtype=torch.float32, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = sum(torch.logsumexp(x @ weights, 0) - torch.logsumexp((x @ weights)[m], 0) for x, m in lists)
        loss = loss / len(lists) + l2 * (weights ** 2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    log.info("fit %d fusion weights on %d queries: loss %.4f", len(names), len(lists), closure().item())
    return {name: round(float(w), 4) for name, w in zip(names, weights.detach(), strict=True)}


def adapter_checksum(state: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def tower_name(state: Mapping[str, torch.Tensor]) -> str:
    """What a fusion calls the tower it needs: the adapters' checksum."""
    return f"e5-lora {adapter_checksum(state)}"


def publish(directory: Path | str, fusion: Fusion, tower_state: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write ``fusion`` (and the tower it needs) for serving; the fusion file goes last, so a
    reader finds either the old pair or the new one."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if fusion.query_towers:
        if tower_state is None or fusion.query_towers != {TOWER_PART: tower_name(tower_state)}:
            raise ValueError(f"fusion needs {fusion.query_towers}; pass the adapters it names")
        tmp = directory / (TOWER_FILE + ".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tower_state.items()}, str(tmp))
        tmp.replace(directory / TOWER_FILE)
    fusion.save(directory / FUSION_FILE)
    if not fusion.query_towers:
        (directory / TOWER_FILE).unlink(missing_ok=True)  # nothing serves it any more
    log.info("published %s fusion for %s%s to %s", fusion.about.get("kind", "fit"), fusion.encoder,
             f" with query tower {fusion.query_towers}" if fusion.query_towers else "", directory)


class E5QueryTower:
    """Serving side of a published tower: E5 with the adapters merged in, on the CPU.
    Implements ``relevo.search.encoder.QueryTower``."""

    def __init__(self, state: Mapping[str, torch.Tensor], cache_dir: Path | str | None = None,
                 max_length: int = TowerConfig.max_length) -> None:
        rank = next(v.shape[0] for k, v in state.items() if "lora_A" in k)
        tower = e5_query_tower(cache_dir, rank=rank, max_length=max_length, device="cpu")
        tower.load_adapter_state(state)
        self.name = tower_name(state)
        self.model = tower.model.merge_and_unload().eval()  # plain BERT again: no adapter cost per query
        self.tokenize = tower.tokenize

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenize(list(texts[start:start + batch_size]))
            out.append(mean_pool(self.model(**batch).last_hidden_state, batch["attention_mask"]).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)


def attach_published(catalog: CatalogIndexer, directory: Path | str,
                     cache_dir: Path | str | None = None) -> Fusion | None:
    """The fusion published in ``directory`` with its query tower put into ``catalog``'s encoder,
    or None (logged) when nothing is published or it does not fit the catalog: search then
    serves the prior fusion rather than fail."""
    if not (Path(directory) / FUSION_FILE).exists():
        return None
    try:
        fusion, tower = load_published(directory, cache_dir)
        encoder = with_query_tower(catalog.encoder, tower, TOWER_PART) if tower else catalog.encoder
        if fusion.encoder != encoder.name:
            raise ValueError(f"it was fit for encoder {fusion.encoder!r}, the catalog has {encoder.name!r}")
    except (OSError, ValueError, KeyError) as exc:
        log.error("the search tuning published in %s is unusable (%s); serving the prior fusion", directory, exc)
        return None
    catalog.encoder = encoder
    log.info("serving the search fusion from %s%s", directory, f" with query tower {tower.name}" if tower else "")
    return fusion


def load_published(directory: Path | str, cache_dir: Path | str | None = None) -> tuple[Fusion, E5QueryTower | None]:
    """The published fusion and, if it needs one, its query tower (checked against the name
    the fusion gives it). Raises FileNotFoundError when nothing is published."""
    directory = Path(directory)
    fusion = Fusion.load(directory / FUSION_FILE)
    if not fusion.query_towers:
        return fusion, None
    tower = E5QueryTower(load_file(str(directory / TOWER_FILE)), cache_dir)
    if fusion.query_towers != {TOWER_PART: tower.name}:
        raise ValueError(f"{directory / TOWER_FILE} is {tower.name!r}, but the fusion needs {fusion.query_towers}")
    return fusion, tower
