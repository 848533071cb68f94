"""The offline ceiling of the ranking features: LightGBM lambdarank trained in hindsight.

It learns from the labelled lists the production worker wrote to ``train.batches`` (the
same point-in-time features the online model learns from), those of the first half of
the clickouts, with the last tenth of them held out for early stopping, and scores the
lists of the second half. Nothing of the second half is used to fit or choose anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer

from relevo.core.settings import Settings
from relevo.streams.topics import TRAIN_BATCHES

log = logging.getLogger(__name__)
Example = dict[str, Any]
PARAMS = {"objective": "lambdarank", "metric": "map", "eval_at": [25], "learning_rate": 0.05,
          "num_leaves": 31, "min_data_in_leaf": 50, "feature_fraction": 0.9, "verbose": -1, "num_threads": 1}


async def read_examples(settings: Settings, quiet_s: float = 5.0, timeout_s: float = 120.0) -> dict[str, Example]:
    """Every example on ``train.batches`` by search id, once nothing new has come for ``quiet_s``."""
    consumer = AIOKafkaConsumer(settings.topic(TRAIN_BATCHES), bootstrap_servers=settings.kafka_bootstrap_servers,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20)
    found: dict[str, Example] = {}
    await consumer.start()
    try:
        deadline, last = time.monotonic() + timeout_s, time.monotonic()
        while time.monotonic() - last < quiet_s and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                last = time.monotonic()
                for record in records:
                    for example in orjson.loads(record.value):
                        found.setdefault(example["search_id"], example)
    finally:
        await consumer.stop()
    return found


def examples(settings: Settings) -> dict[str, Example]:
    return asyncio.run(read_examples(settings))


def _matrix(lists: Sequence[Example]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    features = np.array([row for e in lists for row in e["features"]], dtype=np.float32)
    labels = np.array([label for e in lists for label in e["labels"]], dtype=np.int32)
    return features, labels, [len(e["items"]) for e in lists]


def fit_and_score(train: Sequence[Example], test: Sequence[Example]) -> list[list[float]]:
    """Scores of each ``test`` list from a lambdarank model fitted on ``train`` (in event order)."""
    import lightgbm

    useful = [e for e in train if any(e["labels"])]
    cut = int(len(useful) * 0.9)
    fit, stop = _matrix(useful[:cut]), _matrix(useful[cut:])
    data = lightgbm.Dataset(fit[0], fit[1], group=fit[2])
    valid = lightgbm.Dataset(stop[0], stop[1], group=stop[2], reference=data)
    model = lightgbm.train(PARAMS, data, num_boost_round=500, valid_sets=[valid],
                           callbacks=[lightgbm.early_stopping(30, verbose=False)])
    log.info("lambdarank: %d lists, %d rounds", len(useful), model.best_iteration)
    scores = model.predict(np.array([row for e in test for row in e["features"]], dtype=np.float32),
                           num_iteration=model.best_iteration)
    out, start = [], 0
    for e in test:
        out.append(scores[start:start + len(e["items"])].tolist())
        start += len(e["items"])
    return out
