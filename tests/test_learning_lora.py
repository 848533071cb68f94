"""The LoRA query tower learns on CPU from a small batch (a tiny random BERT; real encoders are slow),
alone and inside the trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.lora import HashTokenizer, ItemVectors, LoraQueryTower, query_mrr, tiny_bert
from models.registry import Registry
from models.trainer import Trainer
from models.trainer_worker import query_tower
from relevo.settings import Settings
from tests.test_learning import SMALL, build_examples, planted_stream


def test_lora_query_tower_learns_on_cpu_on_a_small_batch() -> None:
    torch.set_num_threads(1)
    tokenize = HashTokenizer(vocab_size=512)
    base = tiny_bert(vocab_size=512)
    titles = ["sea view villa", "city loft", "mountain chalet", "airport inn", "castle suite",
              "beach hut", "river barge", "desert camp"]
    with torch.no_grad():  # item vectors come from the frozen base and never change
        batch = tokenize(titles)
        hidden = base(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1)
        items = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    queries = [f"cheap stay {word}" for word in "alpha bravo charlie delta echo foxtrot golf hotel".split()]
    targets = list(range(8))[::-1]  # a mapping no text overlap could guess
    tower = LoraQueryTower(base, tokenize, rank=4, lr=2e-2, device="cpu")
    losses = [tower.learn(queries, items, targets) for _ in range(60)]
    assert losses[-1] < losses[0] / 3, losses[::10]
    picked = (tower.encode(queries) @ items.T).argmax(1).tolist()
    assert sum(p == t for p, t in zip(picked, targets, strict=True)) >= 6
    trained = tower.adapter_state()
    assert trained and all("lora" in name for name in trained)
    for name, value in tower.model.get_base_model().state_dict().items():
        if "lora" not in name:  # the base stays frozen: the catalog vectors stay valid
            assert torch.equal(value, frozen[name.replace(".base_layer", "")])


def test_adapters_round_trip_into_a_serving_tower_and_items_stay_frozen() -> None:
    torch.set_num_threads(1)
    tokenize = HashTokenizer(vocab_size=512)
    queries, titles = ["red shoes", "blue kettle", "green tea"], ["shoes", "kettle", "tea"]
    tower = LoraQueryTower(tiny_bert(vocab_size=512), tokenize, rank=4, lr=2e-2, device="cpu")
    items = tower.encode_items(titles)
    for _ in range(5):
        tower.learn(queries, items, [2, 0, 1])
    # encode_items turns the adapters off: the catalog side never moves with training
    assert torch.allclose(tower.encode_items(titles), items, atol=1e-6)
    serving = LoraQueryTower(tiny_bert(vocab_size=512), tokenize, rank=4, device="cpu")  # peft wraps in place
    assert not torch.allclose(serving.encode(queries), tower.encode(queries), atol=1e-4)
    serving.load_adapter_state(tower.adapter_state())
    assert torch.allclose(serving.encode(queries), tower.encode(queries), atol=1e-6)
    with pytest.raises(ValueError, match="rank 2"):
        LoraQueryTower(tiny_bert(vocab_size=512), tokenize, rank=2, device="cpu").load_adapter_state(
            tower.adapter_state())


def test_query_mrr_ranks_each_click_among_the_items_its_search_showed() -> None:
    tower = LoraQueryTower(tiny_bert(vocab_size=512), HashTokenizer(vocab_size=512), rank=2, device="cpu")
    vectors = {name: tower.encode([name])[0] for name in ("red shoes", "blue kettle", "green tea")}
    examples = [{"query": "red shoes", "items": ["blue kettle", "red shoes"], "labels": [0, 1]},
                {"query": "green tea", "items": ["green tea", "red shoes", "unknown"], "labels": [2, 0, 0]},
                {"query": "", "items": ["green tea", "red shoes"], "labels": [1, 0]}]  # no query: not scored
    assert query_mrr(tower, examples, vectors) == 1.0  # each query's own vector ranks its item first
    assert query_mrr(tower, examples[2:], vectors) == 0.0


async def test_the_trainer_fine_tunes_and_publishes_the_query_tower(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    events = planted_stream(400)
    # Each search's query names its clicked item's group in words the base never tied to it.
    clicked = {e["search_id"]: e["item_id"] for e in events if e["type"] == "click"}
    for event in events:
        if event["type"] == "search":
            event["query"] = f"looking for thing {int(clicked[event['search_id']][1:]) % 7}"
    batches = await build_examples(events)
    tokenize = HashTokenizer(vocab_size=512)
    tower = LoraQueryTower(tiny_bert(vocab_size=512), tokenize, rank=4, lr=1e-2, device="cpu")
    vectors = ItemVectors(tower, lambda item: f"item {item}")
    vectors.prepare([i for batch in batches for e in batch for i in e["items"]])
    registry = Registry(tmp_path)
    trainer = Trainer(registry, SMALL, device="cpu", lr=1e-2, query_tower=tower, item_vectors=vectors)
    everything = [e for batch in batches for e in batch]
    before = query_mrr(tower, everything, vectors)
    reports = [trainer.update(batch) for batch in batches]
    assert query_mrr(tower, everything, vectors) > before + 0.1
    assert "candidate_query_mrr" in reports[-1].holdout
    published = registry.load_adapter(registry.current())
    assert published is not None and all("lora_" in key for key in published)
    # A restarted trainer (or a serving replica) gets the published adapters back.
    serving = LoraQueryTower(tiny_bert(vocab_size=512), tokenize, rank=4, device="cpu")
    resumed = Trainer(registry, SMALL, device="cpu", query_tower=serving, item_vectors=vectors)
    assert resumed.version == registry.current()
    assert torch.allclose(serving.encode(["looking for thing 3"]), tower.encode(["looking for thing 3"]), atol=1e-6)


def test_the_trainer_worker_uses_the_query_tower_only_when_configured_and_a_catalog_has_text(tmp_path: Path) -> None:
    assert query_tower(Settings(data_dir=tmp_path, query_tower="off"), "cuda") is None
    assert query_tower(Settings(data_dir=tmp_path, query_tower="auto"), "cpu") is None
    assert query_tower(Settings(data_dir=tmp_path, query_tower="e5"), "cpu") is None  # no catalog loaded
    with pytest.raises(ValueError, match="RELEVO_QUERY_TOWER"):
        query_tower(Settings(data_dir=tmp_path, query_tower="yes"), "cpu")
