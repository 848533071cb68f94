"""Intent accuracy: Amazon titles, in each market's language, as queries; the predicted
Google taxonomy category must fall under the one matching the title's product_category.

Systems: label similarity alone (English labels only, a baseline; labels in 12
languages), and labels plus votes from the categories of the catalog items the query
retrieves, over a catalog that holds none of the sampled products (no leakage).
Baseline: always the most common category.

    python -m bench.intent [--per-market 400] [--encoder use]
"""

from __future__ import annotations

import argparse
import csv
import logging
import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.report import record, table
from relevo.core.settings import SHARED_DATA
from relevo.search.catalog import load_amazon
from relevo.search.encoder import DEFAULT_ENCODER, load_encoder
from relevo.search.retrieval import CatalogIndexer, HybridRetriever
from relevo.search.taxonomy import IntentClassifier, read_taxonomy

DATA = SHARED_DATA / "amazon_multilingual" / "product_titles_by_market.tsv"
CACHE = Path(".relevo/cache/embeddings")
MARKET_LANGUAGE = {"UK": "en", "US": "en", "DE": "de", "FR": "fr", "JP": "ja"}
# Amazon product_category -> taxonomy path prefixes that count as right.
EXPECTED = {
    "Video DVD": ["Media > DVDs & Videos"], "Digital_Video_Download": ["Media > DVDs & Videos"],
    "Video": ["Media > DVDs & Videos"], "Music": ["Media > Music & Sound Recordings"],
    "Digital_Music_Purchase": ["Media > Music & Sound Recordings"], "Books": ["Media > Books"],
    "Digital_Ebook_Purchase": ["Media > Books"], "Mobile_Apps": ["Software"], "Software": ["Software"],
    "PC": ["Electronics"], "Electronics": ["Electronics"], "Wireless": ["Electronics"],
    "Home Entertainment": ["Electronics"], "Camera": ["Cameras & Optics"],
    "Shoes": ["Apparel & Accessories > Shoes"], "Watches": ["Apparel & Accessories > Jewelry > Watches"],
    "Video Games": ["Software > Video Game Software", "Electronics > Video Game Consoles"],
    "Musical Instruments": ["Arts & Entertainment > Hobbies & Creative Arts > Musical Instruments"],
    "Toys": ["Toys & Games"], "Home": ["Home & Garden"], "Kitchen": ["Home & Garden > Kitchen & Dining"],
    "Lawn and Garden": ["Home & Garden > Lawn & Garden"], "Furniture": ["Furniture"],
    "Sports": ["Sporting Goods"], "Outdoors": ["Sporting Goods > Outdoor Recreation"],
    "Office Products": ["Office Supplies"], "Baby": ["Baby & Toddler"], "Home Improvement": ["Hardware"],
    "Tools": ["Hardware"], "Automotive": ["Vehicles & Parts"], "Luggage": ["Luggage & Bags"],
    "Personal_Care_Appliances": ["Health & Beauty"], "Health & Personal Care": ["Health & Beauty"],
}


def sample(per_market: int, seed: int = 3) -> list[tuple[str, str, str, str]]:
    """(market, title, product_category, product_id), up to ``per_market`` per market."""
    by_market = defaultdict(list)
    with open(DATA, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            by_market[row["marketplace"]].append((row["marketplace"], row["product_title"],
                                                  row["product_category"], row["product_id"]))
    rng = random.Random(seed)
    return [case for rows in by_market.values() for case in rng.sample(rows, min(per_market, len(rows)))]


def right(path: str, category: str) -> bool:
    return any(path == p or path.startswith(p + " > ") for p in EXPECTED[category])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-market", type=int, default=400)
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cases = sample(args.per_market)
    encoder = load_encoder(args.encoder, cache_dir=CACHE)
    vectors = encoder.encode_queries([title for _, title, _, _ in cases])
    categories = [category for _, _, category, _ in cases]
    held_out = {product for *_, product in cases}
    catalog = CatalogIndexer(encoder)
    catalog.upsert(item for item in load_amazon(DATA) if item["item_id"] not in held_out)
    retriever = HybridRetriever(catalog)
    evidence = [[catalog.items[h.item_id]["category"] for h in retriever.retrieve(title, 10, vector)]
                for (_, title, _, _), vector in zip(cases, vectors, strict=True)]
    multilingual = IntentClassifier(read_taxonomy(), encoder)
    common = max(set(categories), key=categories.count)
    systems = {
        "always the most common category (baseline)": [[EXPECTED[common][0]]] * len(cases),
        "labels in English only (baseline)": IntentClassifier(read_taxonomy(locales=("en-US",)), encoder),
        "labels in 12 languages": multilingual,
        "labels in 12 languages + catalog votes": multilingual,
    }
    markets = sorted({case[0] for case in cases})
    rows = []
    for name, system in systems.items():
        votes = evidence if name.endswith("catalog votes") else None
        paths = system if isinstance(system, list) else [[c["path"] for c in hits]
                                                          for hits in system.predict(vectors, 3, votes)]
        top1 = np.array([right(p[0], c) for p, c in zip(paths, categories, strict=True)])
        top3 = np.array([any(right(x, c) for x in p) for p, c in zip(paths, categories, strict=True)])
        per_market = [top1[[case[0] == market for case in cases]].mean() for market in markets]
        rows.append([name, *[float(a) for a in per_market], float(top1.mean()), float(top3.mean())])
    headers = ["system", *[f"{m} ({MARKET_LANGUAGE[m]}) top-1" for m in markets], "all top-1", "all top-3"]
    notes = (f"{len(cases):,} titles ({args.per_market} per market), encoder `{args.encoder}`, taxonomy "
             f"paths up to 3 levels ({len(multilingual.ids):,} categories), catalog of {len(catalog):,} "
             "products (the sampled ones held out). Right = the predicted path falls under the taxonomy "
             "path mapped by hand from the Amazon product_category (see EXPECTED in bench/intent.py).")
    record("Intent accuracy, Amazon titles vs product_category", None, table(headers, rows), notes)


if __name__ == "__main__":
    main()
