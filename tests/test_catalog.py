"""Catalog contract, loaders, the embedding cache, the vector index and the load command."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from relevo.core.settings import Settings
from relevo.runtime.cli import build_parser
from relevo.search.catalog import InvalidItem, load_amazon, read_items, validate_item
from relevo.search.catalog_store import open_catalog
from relevo.search.encoder import CachedEncoder, TextEncoder
from relevo.search.index import VectorIndex

GOOD = {"item_id": "sku-1", "titles": {"en-gb": "Kettle"}, "category": "Kitchen", "brand": "Acme",
        "price": {"gb": 9.5}, "regions": ["gb"]}


@pytest.mark.parametrize("change, reason", [
    ({"item_id": ""}, "item_id must be a non-empty string"),
    ({"item_id": "x" * 201}, "at most 200 characters"),
    ({"titles": {"en": ""}}, "title for 'en' must be a non-empty string"),
    ({"titles": {"english": "Kettle"}}, "not a locale like 'en' or 'de-AT'"),
    ({"titles": "Kettle"}, "titles must map at least one locale"),
    ({"category": 7}, "category must be a string"),
    ({"brand": ["Acme"]}, "brand must be a string"),
    ({"regions": []}, "regions must be a non-empty list"),
    ({"regions": ["Germany"]}, "not a region code"),
    ({"price": -1}, "price must be a non-negative number"),
    ({"price": {"DE": 3.0}}, "price names regions ['DE'] that are not in regions"),
    ({"price": float("nan")}, "price must be a non-negative number"),
    ({"colour": "red"}, "unknown fields ['colour']"),
])
def test_invalid_items_say_what_is_wrong(change, reason):
    with pytest.raises(InvalidItem, match="item_id|sku-1") as caught:
        validate_item({**GOOD, **change})
    assert reason in str(caught.value)


def test_valid_item_is_cleaned():
    assert validate_item(GOOD) == {"item_id": "sku-1", "titles": {"en-GB": "Kettle"}, "category": "Kitchen",
                                   "brand": "Acme", "price": {"GB": 9.5}, "regions": ["GB"]}


def test_read_items_reports_lines_that_are_not_json(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_bytes(orjson.dumps(GOOD) + b"\n{oops\n\n")
    first, second = read_items(path)
    assert first == GOOD and isinstance(second, InvalidItem) and "line 2 is not JSON" in str(second)


def test_amazon_loader_makes_one_multilingual_item_per_product(shared_data):
    items = {i["item_id"]: i for i in load_amazon(shared_data / "amazon_multilingual/product_titles_by_market.tsv")}
    assert len(items) == 16_083
    multi = [i for i in items.values() if len(set(i["titles"].values())) > 1]
    assert len(multi) == 1_027
    assert all(validate_item(i) for i in list(items.values())[:2000])
    book = items["0141345659"]
    assert book["regions"] == ["DE", "GB", "JP"] and book["category"] == "Books" and "en-GB" in book["titles"]


class Counting(TextEncoder):
    """Deterministic pseudo-embeddings that count how many texts were encoded."""

    name, dim = "counting", 8

    def __init__(self) -> None:
        self.encoded = 0

    def _items(self, texts):
        self.encoded += len(texts)
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8) for t in texts])


def test_embedding_cache_encodes_each_text_once(tmp_path):
    texts = [f"title {n}" for n in range(600)]  # enough that some digests end in a NUL byte
    first = CachedEncoder(Counting(), tmp_path)
    vectors = first.encode_items(texts)
    again = CachedEncoder(inner := Counting(), tmp_path)
    assert np.array_equal(again.encode_items(texts[::-1]), vectors[::-1])
    again.encode_items(["one more", *texts])
    assert inner.encoded == 1 and len(list((tmp_path / "counting").glob("*.npz"))) == 2
    third = CachedEncoder(Counting(), tmp_path, max_shards=1)  # merges the two shards
    assert np.array_equal(third.encode_items(texts), vectors)
    assert len(list((tmp_path / "counting").glob("*.npz"))) == 1
    assert np.array_equal(CachedEncoder(Counting(), tmp_path).encode_items(["one more", *texts])[1:], vectors)


def test_processes_sharing_the_embedding_cache_keep_each_other_s_texts(tmp_path):
    first, second = CachedEncoder(Counting(), tmp_path), CachedEncoder(Counting(), tmp_path)  # both open it empty
    first.encode_items(["a", "b"])
    second.encode_items(["c"])
    (tmp_path / "counting" / "broken.npz").write_bytes(b"not a shard")
    third = CachedEncoder(inner := Counting(), tmp_path)
    third.encode_items(["a", "b", "c"])
    assert inner.encoded == 0 and not (tmp_path / "counting" / "broken.npz").exists()


def test_vector_index_switches_to_hnsw_and_persists(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = [f"k{n}" for n in range(300)]
    exact, ann = VectorIndex(16), VectorIndex(16, ann_threshold=100)
    for index in (exact, ann):
        index.upsert(keys[:200], vectors[:200])
        index.upsert(keys[150:], vectors[150:])  # overlapping upsert replaces rows
    assert ann.uses_ann and not exact.uses_ann and len(ann) == 300
    queries = vectors[:20] + 0.1 * rng.normal(size=(20, 16)).astype(np.float32)
    want = [[k for k, _ in hits] for hits in exact.search(queries, 5)]
    got = [[k for k, _ in hits] for hits in ann.search(queries, 5)]
    assert np.mean([len(set(w) & set(g)) / 5 for w, g in zip(want, got, strict=True)]) > 0.9
    ann.remove(["k0"])
    ann.save(tmp_path / "index")
    loaded = VectorIndex.load(tmp_path / "index")
    assert "k0" not in loaded and len(loaded) == 299
    assert [k for k, _ in loaded.search(queries[1:2], 5)[0]] == [k for k, _ in ann.search(queries[1:2], 5)[0]]


def test_catalog_load_command(tmp_path, monkeypatch):
    import relevo.search.catalog_store as cli

    monkeypatch.setattr(cli, "load_encoder", lambda name, cache_dir: CachedEncoder(Counting(), cache_dir))
    parser = build_parser()
    items = tmp_path / "items.jsonl"
    items.write_bytes(orjson.dumps(GOOD) + b"\n" + orjson.dumps({**GOOD, "item_id": "sku-2", "regions": []}))
    args = parser.parse_args(["catalog", "load", str(items)])
    settings = Settings(data_dir=tmp_path / "data")
    assert args.func(args, settings) == 0
    assert list(open_catalog(settings.data_dir).items) == ["sku-1"]
    missing = parser.parse_args(["catalog", "load", str(tmp_path / "nope.jsonl")])
    assert missing.func(missing, settings) == 2


async def test_catalog_consumer_upserts_rejects_and_saves(tmp_path):
    from relevo.search.catalog_store import CatalogConsumer
    from relevo.search.retrieval import CatalogIndexer

    catalog = CatalogIndexer(CachedEncoder(Counting(), tmp_path / "cache"))
    consumer = CatalogConsumer(catalog, tmp_path / "catalog", save_every_s=0)
    rejected = await consumer.process([GOOD, {**GOOD, "item_id": "sku-2", "price": "free"}])
    assert [reason for _, reason in rejected] == ["item 'sku-2': price must be a non-negative number, got 'free'"]
    await consumer.process([{**GOOD, "titles": {"en-GB": "Copper kettle"}}])
    reopened = CatalogIndexer.open(tmp_path / "catalog", catalog.encoder)
    assert reopened.items["sku-1"]["titles"] == {"en-GB": "Copper kettle"} and len(reopened.vectors) == 1


def test_a_catalog_saved_with_another_encoder_is_reindexed_once(tmp_path, monkeypatch):
    import relevo.search.catalog_store as store
    from relevo.search.fusion import Fusion

    class Other(Counting):
        name = "other"

    encoders = {"counting": Counting, "other": Other}
    monkeypatch.setattr(store, "load_encoder", lambda name, cache_dir: CachedEncoder(encoders[name](), cache_dir))
    store.load_items(tmp_path, [GOOD, {**GOOD, "item_id": "sku-2"}], "counting")
    # a published fusion fit for another encoder: the catalog follows it
    Fusion({"dense:other": 1.0}, "other").save(store.tuning_dir(tmp_path) / "fusion.json")
    assert store.served_encoder(tmp_path) == "other"
    catalog = store.open_catalog(tmp_path)
    assert catalog.encoder.name == "other" and sorted(catalog.items) == ["sku-1", "sku-2"] and len(catalog.vectors) == 2
    assert store.CatalogIndexer.saved_encoder(store.catalog_dir(tmp_path)) == "other"
