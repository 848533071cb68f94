"""The LoRA query tower learns on CPU from a small batch (a tiny random BERT; real encoders are slow)."""

from __future__ import annotations

import pytest
import torch

from relevo.models.lora import HashTokenizer, LoraQueryTower, tiny_bert


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
