"""Cross-lingual retrieval on amazon_multilingual, tuned on dev products, reported on test ones.

The task: for every product titled differently in markets A and B, its title in A is the
query and the product the target, searched over the whole catalog of distinct titles (the
query's own title excluded; a hit is any other title of the same product). Each title is
indexed under its market's locale.

Products are split by a hash of their id: half dev, half test. On dev only, the LoRA query
tower (E5's query side) trains on dev-train (4/5 of the dev products) against the frozen
vectors of every catalog title (items, not labels: serving has them too), and fusion weights
are fit on dev: on dev-fit (the other 1/5, which the tower never saw) for the fusion that
uses the tower, on all of dev for the one without it. Every system is measured on test.

Systems: its components alone (BM25, USE, E5, E5 with the tower), the hybrids as they were
(prior weights: USE + lexical, the served default before; USE+E5 + lexical), and the
adaptive fusion of USE + E5 (+ tower) + lexical signals. The better adaptive fusion is
published to ``<RELEVO_DATA_DIR>/search-tuning`` (where ``/v1/search`` loads it) when it
beats the served default on test; the tower goes with it only if its fusion wins.

    python -m bench.crosslingual [--steps 300] [--no-publish]

Item embeddings are cached under .relevo/cache/embeddings (the first E5 run encodes 15k
titles: minutes); the tower trains for a few minutes on CPU.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

import numpy as np
import torch

from bench.report import record, table
from relevo.core.settings import SHARED_DATA, Settings
from relevo.models.query_tuning import (
    TOWER_PART,
    E5QueryTower,
    TowerConfig,
    fit_fusion,
    publish,
    train_query_tower,
)
from relevo.search.catalog import AMAZON_MARKETS
from relevo.search.catalog_store import tuning_dir
from relevo.search.encoder import load_encoder, with_query_tower
from relevo.search.fusion import Fusion, features_for, has_cjk
from relevo.search.retrieval import CatalogIndexer, HybridRetriever, row_key, split_row_key

DATA = SHARED_DATA / "amazon_multilingual" / "product_titles_by_market.tsv"
CACHE = Path(".relevo/cache/embeddings")
COMPONENTS = ("lexical (BM25)", "use", "e5", "e5 + LoRA tower")
ADAPTIVE, TUNED = "adaptive fusion: use + e5 + lexical", "adaptive fusion: use + e5 with tower + lexical"
SERVED_BEFORE = "use + lexical (prior: the served default before)"


def split_of(product_id: str) -> str:
    """test, dev-train or dev-fit, from a hash of the id (stable across runs and machines)."""
    h = int.from_bytes(hashlib.blake2b(product_id.encode(), digest_size=8).digest(), "big")
    return "test" if h % 2 else ("dev-fit" if h // 2 % 5 == 0 else "dev-train")


@dataclass(frozen=True)
class Case:
    """One (query title, wanted titles) pair between markets ``a`` and ``b``."""

    split: str
    a: str
    b: str
    query: int
    targets: frozenset[int]


def read_titles() -> tuple[list[str], list[str], list[Case]]:
    """Distinct titles, the locale each is indexed under (its first market's), and the cases."""
    by_product: dict[str, dict[str, str]] = defaultdict(dict)
    with open(DATA, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            by_product[row["product_id"]][row["marketplace"]] = row["product_title"]
    titles = sorted({t for markets in by_product.values() for t in markets.values()})
    row = {t: i for i, t in enumerate(titles)}
    locales = [""] * len(titles)
    for markets in by_product.values():
        for market, title in sorted(markets.items()):
            locales[row[title]] = locales[row[title]] or AMAZON_MARKETS[market][1]
    cases = [Case(split_of(p), a, b, row[m[a]], frozenset(row[t] for t in m.values()) - {row[m[a]]})
             for p, m in by_product.items() for a, b in permutations(sorted(m), 2) if m[a] != m[b]]
    return titles, locales, cases


def length_class(text: str) -> str:
    return "≤ 30 chars" if len(text) <= 30 else "31-80 chars" if len(text) <= 80 else "> 80 chars"


def classes_of(case: Case, titles: list[str]) -> dict[str, str]:
    """The classes a case is reported under (the first is the headline's)."""
    query = titles[case.query]
    return {"market pair": "-".join(sorted((case.a, case.b))),
            "query script": "CJK" if has_cjk(query) else "Latin", "query length": length_class(query)}


class Bench:
    """Catalogs per encoder, query vectors per encoder, and retrieval for every system."""

    def __init__(self, titles: list[str], locales: list[str], cases: list[Case]) -> None:
        self.titles, self.cases = titles, cases
        self.keys = [row_key(f"t{i}", loc) for i, loc in enumerate(locales)]
        self.items = [{"item_id": f"t{i}", "titles": {loc: t}, "category": "", "regions": ["GB"]}
                      for i, (t, loc) in enumerate(zip(titles, locales, strict=True))]
        self.query_rows = sorted({c.query for c in cases})
        self.catalogs: dict[str, CatalogIndexer] = {}
        self.vectors: dict[str, dict[int, np.ndarray]] = {}

    def catalog(self, encoder: str) -> CatalogIndexer:
        if encoder not in self.catalogs:
            catalog = CatalogIndexer(load_encoder(encoder, cache_dir=CACHE))
            catalog.upsert(self.items)
            self.catalogs[encoder] = catalog
        return self.catalogs[encoder]

    def with_tower(self, encoder: str, tower: E5QueryTower) -> str:
        """Register ``encoder`` with its e5 queries from ``tower``, sharing the base catalog's index."""
        name = f"{encoder} with tower"
        catalog = copy.copy(self.catalog(encoder))
        catalog.encoder = with_query_tower(catalog.encoder, tower, TOWER_PART)
        self.catalogs[name] = catalog
        return name

    def query_vectors(self, encoder: str) -> dict[int, np.ndarray]:
        """Every query's vector for the catalog ``encoder``; a fusion's are put together from its
        parts' (each part encodes the queries once, whatever fuses it)."""
        if encoder not in self.vectors:
            catalog = self.catalog(encoder)
            layout, towers = catalog.encoder.layout, catalog.encoder.query_towers
            if len(layout) > 1:
                parts = [self.query_vectors(f"{name} with tower" if name in towers else name) for name, _, _ in layout]
                self.vectors[encoder] = {q: np.hstack([scale * part[q] for part, (_, _, scale)
                                                       in zip(parts, layout, strict=True)]) for q in self.query_rows}
            else:
                started = time.perf_counter()
                texts = [self.titles[q] for q in self.query_rows]
                self.vectors[encoder] = dict(zip(self.query_rows, catalog.encoder.encode_queries(texts), strict=True))
                logging.info("encoded %d queries with %s in %.0f s", len(texts), encoder,
                             time.perf_counter() - started)
        return self.vectors[encoder]

    def retriever(self, encoder: str, fusion: Fusion) -> HybridRetriever:
        return HybridRetriever(self.catalog(encoder), fusion)

    def fit(self, encoder: str, splits: set[str]) -> Fusion:
        """The adaptive fusion for ``encoder``, fit on the cases in ``splits``."""
        catalog, vectors = self.catalog(encoder), self.query_vectors(encoder)
        names = features_for(name for name, _, _ in catalog.encoder.layout)
        retriever = HybridRetriever(catalog)  # the prior's candidates: the fit only reweighs their signals
        wanted: dict[int, set[int]] = defaultdict(set)
        for case in self.cases:
            if case.split in splits:
                wanted[case.query] |= case.targets
        columns, masks = [], []
        for q, targets in wanted.items():
            found = retriever.candidates_for(self.titles[q], vectors[q], exclude={self.keys[q]})
            columns.append(found.columns)
            masks.append(np.isin([int(split_row_key(k)[0][1:]) for k in found.keys], list(targets)))
        weights = fit_fusion(columns, masks, names)
        return Fusion(weights, catalog.encoder.name, catalog.encoder.query_towers,
                      about={"kind": "fit", "data": "amazon_multilingual cross-market title pairs",
                             "fit_on": sorted(splits), "queries": len(columns)})

    def ranked(self, encoder: str, fusion: Fusion) -> tuple[dict[int, list[int]], float]:
        """Top 10 title rows for every query, and queries per second."""
        retriever, vectors = self.retriever(encoder, fusion), self.query_vectors(encoder)
        started = time.perf_counter()
        out = {q: [int(h.item_id[1:]) for h in retriever.retrieve(self.titles[q], 10, vectors[q], {self.keys[q]})]
               for q in self.query_rows}
        return out, len(out) / (time.perf_counter() - started)


def measure(ranked: dict[int, list[int]], cases: list[Case], titles: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """(R@1, R@10, MRR) per class value, per class kind, over ``cases``; "all" is the mean of market pairs."""
    by: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for case in cases:
        rank = next((n for n, row in enumerate(ranked[case.query], 1) if row in case.targets), None)
        value = (rank == 1, rank is not None, 1 / rank if rank else 0.0)
        for kind, name in classes_of(case, titles).items():
            by[kind][name].append(value)
    out = {kind: {name: np.mean(v, axis=0) for name, v in values.items()} for kind, values in by.items()}
    out["all"] = {"mean of market pairs": np.mean(list(out["market pair"].values()), axis=0)}
    return out


def sign_test(won: int, lost: int) -> float:
    """Two-sided exact sign test of ``won`` against ``lost`` paired outcomes (ties dropped).

    >>> round(sign_test(10, 0), 4), sign_test(3, 3)
    (0.002, 1.0)
    """
    n = won + lost
    tail = sum(math.comb(n, k) for k in range(min(won, lost) + 1)) / 2 ** n if n else 1.0
    return min(1.0, 2 * tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=TowerConfig.steps, help="query tower training steps")
    parser.add_argument("--no-publish", action="store_true", help="measure only; leave search-tuning alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)  # a LoRA step took 0.3 s with one thread and 5-10 s with two on a busy 2-core box
    titles, locales, cases = read_titles()
    bench = Bench(titles, locales, cases)
    test = [c for c in cases if c.split == "test"]
    dev_train = [c for c in cases if c.split == "dev-train"]
    logging.info("%d titles; %d cases: %d dev-train, %d dev-fit, %d test", len(titles), len(cases), len(dev_train),
                 sum(c.split == "dev-fit" for c in cases), len(test))

    started = time.perf_counter()
    e5 = bench.catalog("e5")
    e5_items = np.stack([e5.vectors.vector(key) for key in bench.keys])  # the frozen vectors serving has
    config = TowerConfig(steps=args.steps)
    trained = train_query_tower([titles[c.query] for c in dev_train], [sorted(c.targets) for c in dev_train],
                                e5_items, [c.query for c in dev_train], config)
    state = trained.adapter_state()
    train_s = time.perf_counter() - started
    tower = E5QueryTower(state, max_length=config.max_length)
    e5_tower, fused_tower = bench.with_tower("e5", tower), bench.with_tower("use+e5", tower)

    adaptive, tuned = bench.fit("use+e5", {"dev-train", "dev-fit"}), bench.fit(fused_tower, {"dev-fit"})
    systems = {  # name -> (catalog encoder, fusion)
        "lexical (BM25)": ("use", Fusion({"lexical": 1.0}, "use")),
        "use": ("use", Fusion({"dense:use": 1.0}, "use")),
        "e5": ("e5", Fusion({"dense:e5": 1.0}, "e5")),
        "e5 + LoRA tower": (e5_tower, Fusion({"dense:e5": 1.0}, "e5", {TOWER_PART: tower.name})),
        SERVED_BEFORE: ("use", Fusion.prior(bench.catalog("use").encoder)),
        "use+e5 + lexical (prior)": ("use+e5", Fusion.prior(bench.catalog("use+e5").encoder)),
        ADAPTIVE: ("use+e5", adaptive),
        TUNED: (fused_tower, tuned),
    }
    results, speed, top1 = {}, {}, {}
    for name, (encoder, fusion) in systems.items():
        ranked, speed[name] = bench.ranked(encoder, fusion)
        results[name] = measure(ranked, test, titles)
        top1[name] = [bool(ranked[c.query]) and ranked[c.query][0] in c.targets for c in test]
        logging.info("%s: test R@1 %.3f", name, results[name]["all"]["mean of market pairs"][0])

    def headline(name: str) -> np.ndarray:
        return results[name]["all"]["mean of market pairs"]

    tower_wins = headline(TUNED)[0] > headline(ADAPTIVE)[0] and headline(TUNED)[1] >= headline(ADAPTIVE)[1]
    served = TUNED if tower_wins else ADAPTIVE
    published = "nothing (--no-publish)"
    if not args.no_publish:
        directory = tuning_dir(Settings.from_env().data_dir)
        if headline(served)[0] > headline(SERVED_BEFORE)[0]:
            fusion = systems[served][1]
            fusion = Fusion(fusion.weights, fusion.encoder, fusion.query_towers,
                            {**fusion.about, "test": {"r1": round(float(headline(served)[0]), 4),
                                                      "r10": round(float(headline(served)[1]), 4)}})
            publish(directory, fusion, state if tower_wins else None)
            published = f"`{served}` to {directory}"
        else:
            published = f"nothing: `{served}` did not beat `{SERVED_BEFORE}` on test"

    rows = [[name, *headline(name), round(speed[name])] for name in systems]
    summary = table(["system (test split)", "R@1 (mean of market pairs)", "R@10", "MRR", "queries/s"], rows)
    sections, below, significant = [summary], [], []
    for kind in (k for k in results[served] if k != "all"):
        header = [kind, "queries", *[f"{s} R@1 / R@10" for s in systems],
                  "served vs its best component here: R@1 difference, queries won / lost, sign test p"]
        table_rows = []
        for value in sorted(results[served][kind]):
            best = max(COMPONENTS, key=lambda c: results[c][kind][value][0])
            members = [i for i, case in enumerate(test) if classes_of(case, titles)[kind] == value]
            won = sum(top1[served][i] and not top1[best][i] for i in members)
            lost = sum(top1[best][i] and not top1[served][i] for i in members)
            p = sign_test(won, lost)
            difference = results[served][kind][value][0] - results[best][kind][value][0]
            below += [f"{kind} {value}"] if difference < 0 else []
            significant += [f"{kind} {value}"] if difference < 0 and p < 0.05 else []
            table_rows.append([value, len(members),
                               *[f"{results[s][kind][value][0]:.3f} / {results[s][kind][value][1]:.3f}"
                                 for s in systems], f"{difference:+.3f} vs {best}: {won} / {lost}, p={p:.2f}"])
        sections.append(table(header, table_rows))
    weights = ", ".join(f"{k} {v:g}" for k, v in systems[served][1].weights.items())
    notes = (f"{len(titles):,} distinct titles searched, each under its market's locale; {len(cases):,} (query, "
             f"target) pairs: {len(test):,} test, {len(dev_train):,} dev-train, "
             f"{sum(c.split == 'dev-fit' for c in cases):,} dev-fit (split by product id). Test figures only. The "
             f"tower: LoRA rank {config.rank} on E5's query side, {config.steps} steps of {config.batch} dev-train "
             f"queries ({train_s:.0f} s with encoding the catalog), softmax over all {len(titles):,} frozen title "
             f"vectors at temperature {config.temperature}; `{tower.name}`. Adaptive fusion weights fit on "
             f"{adaptive.about['queries']} dev queries (without the tower) and {tuned.about['queries']} dev-fit "
             f"queries (with it). Served: `{served}` (the tower {'wins' if tower_wins else 'does not win'} on test); "
             f"published {published}. Its weights: {weights}. Classes where the served system is below its best "
             f"component: {', '.join(below) or 'none'}; significantly (p < 0.05): {', '.join(significant) or 'none'}.")
    record("Cross-lingual retrieval on held-out products, amazon_multilingual", None, "\n\n".join(sections), notes)
    r1, r10, _ = headline(served)
    print(f"RESULT crosslingual test_r1={r1:.3f} test_r10={r10:.3f} served={'tower' if tower_wins else 'no-tower'} "
          f"prior_r1={headline(SERVED_BEFORE)[0]:.3f} no_tower_r1={headline(ADAPTIVE)[0]:.3f} "
          f"classes_below_best={len(below)} significantly_below={len(significant)}")


if __name__ == "__main__":
    main()
