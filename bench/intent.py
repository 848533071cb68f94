"""Intent accuracy, on Amazon titles (their product_category is the truth) and on the
taxonomy's own category names in its 17 locales.

Amazon: titles, in each market's language, as queries; right = the predicted Google
taxonomy path falls under the one mapped by hand from the title's product_category
(EXPECTED). Catalog votes come from a catalog of every other product (the sampled ones
held out). The sampled titles are split by product id (as in bench.crosslingual): the
vote weight is chosen on dev, figures are on test. Also run over the same catalog with
every item filed under one generic category ("Media"), as a shop with a flat catalog has it.

Taxonomy: every category (up to 3 levels) named in one locale is the query; right = that
category (top-1, top-3), or a category under the same top-level one (root). Labels in the
query's language are left out, so every match crosses languages.

Baselines in the same run: always the most common category; labels embedded as whole
paths and raw catalog votes (how intent worked before).

    python -m bench.intent [--per-market 400] [--encoder use]
"""

from __future__ import annotations

import argparse
import csv
import logging
import random
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from bench.crosslingual import split_of
from bench.report import record, table
from relevo.core.settings import SHARED_DATA
from relevo.search.catalog import load_amazon
from relevo.search.encoder import DEFAULT_ENCODER, load_encoder
from relevo.search.retrieval import CatalogIndexer, HybridRetriever
from relevo.search.taxonomy import LOCALES, TAXONOMY, IntentClassifier, leaf, read_taxonomy

DATA = SHARED_DATA / "amazon_multilingual" / "product_titles_by_market.tsv"
CACHE = Path(".relevo/cache/embeddings")
MARKET_LANGUAGE = {"UK": "en", "US": "en", "DE": "de", "FR": "fr", "JP": "ja"}
ALL_LOCALES = ("cs-CZ", "da-DK", "de-DE", "en-GB", "en-US", "es-ES", "fr-FR", "it-IT", "ja-JP", "nl-NL", "no-NO",
               "pl-PL", "pt-BR", "ru-RU", "sv-SE", "tr-TR", "zh-CN")
VOTE_WEIGHTS = (0.5, 1.0, 2.0, 4.0)
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


def english_paths() -> dict[int, str]:
    """Each category's path in English (another language where it has none)."""
    return {c: labels.get("en-US") or labels.get("en-GB") or next(iter(labels.values()))
            for c, labels in read_taxonomy(locales=ALL_LOCALES).items()}


def as_whole_paths(taxonomy: dict[int, dict[str, str]]) -> dict[int, dict[str, str]]:
    """The taxonomy with each label's steps joined so that its 'name' is the whole path:
    the classifier then embeds paths, as it did before."""
    return {c: {loc: path.replace(" > ", " / ") for loc, path in labels.items()} for c, labels in taxonomy.items()}


def amazon(encoder, per_market: int) -> tuple[str, str, dict]:
    """The Amazon tables (the informative vote weight chosen on dev) and figures for the RESULT line."""
    cases = sample(per_market)
    vectors = encoder.encode_queries([title for _, title, _, _ in cases])
    held_out = {product for *_, product in cases}
    catalog = CatalogIndexer(encoder)
    catalog.upsert(item for item in load_amazon(DATA) if item["item_id"] not in held_out)
    retriever = HybridRetriever(catalog)
    hits = [[h.item_id for h in retriever.retrieve(title, 10, vector)]
            for (_, title, _, _), vector in zip(cases, vectors, strict=True)]
    evidence = [[catalog.items[i]["category"] for i in row] for row in hits]
    counts = Counter(item["category"] for item in catalog.items.values())
    prior = {c: n / len(catalog) for c, n in counts.items()}
    english = english_paths()
    names = IntentClassifier(read_taxonomy(), encoder)
    paths = IntentClassifier(as_whole_paths(read_taxonomy()), encoder)
    categories = [category for _, _, category, _ in cases]
    dev = np.array([split_of(product) != "test" for *_, product in cases])

    def paths_of(classifier: IntentClassifier, weight: float = 1.0, votes=None, shares=None) -> list[list[str]]:
        classifier.evidence_weight = weight
        return [[english[c["id"]] for c in top] for top in classifier.predict(vectors, 3, votes, shares)]

    def scores(predicted: list[list[str]], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top1 = np.array([right(p[0], c) for p, c in zip(predicted, categories, strict=True)])
        top3 = np.array([any(right(x, c) for x in p) for p, c in zip(predicted, categories, strict=True)])
        return top1 & rows, top3 & rows

    tried = {w: scores(paths_of(names, w, evidence, prior), dev)[0].sum() / dev.sum() for w in VOTE_WEIGHTS}
    weight = max(tried, key=tried.get)
    generic = [["Media"] * len(row) for row in evidence]  # a flat catalog: every item under one category
    common = Counter(categories[i] for i in np.flatnonzero(dev)).most_common(1)[0][0]
    systems = {
        "always the most common category (baseline, from dev)": [[EXPECTED[common][0]]] * len(cases),
        "labels as whole paths (before)": paths_of(paths),
        "labels by name (now)": paths_of(names),
        "whole paths + raw catalog votes (before)": paths_of(paths, 1.0, evidence),
        "names + informative catalog votes (now)": paths_of(names, weight, evidence, prior),
        "flat catalog (all 'Media'): whole paths + raw votes (before)": paths_of(paths, 1.0, generic),
        "flat catalog (all 'Media'): names + informative votes (now)": paths_of(names, weight, generic, {"Media": 1.0}),
    }
    test = ~dev
    languages = sorted(set(MARKET_LANGUAGE.values()))
    language = np.array([MARKET_LANGUAGE[m] for m, *_ in cases])
    rows, figures = [], {}
    for name, predicted in systems.items():
        top1, top3 = scores(predicted, test)
        cells = [f"{top1[language == lang].sum() / (test & (language == lang)).sum():.3f} / "
                 f"{top3[language == lang].sum() / (test & (language == lang)).sum():.3f}" for lang in languages]
        figures[name] = (top1.sum() / test.sum(), top3.sum() / test.sum())
        rows.append([name, *cells, *figures[name]])
    headers = ["system (test titles)", *[f"{lang} top-1 / top-3" for lang in languages], "all top-1", "all top-3"]
    notes = (f"{len(cases):,} titles ({per_market} per market): {dev.sum():,} dev, {test.sum():,} test (split by "
             f"product id); catalog of {len(catalog):,} other products; taxonomy paths up to 3 levels "
             f"({len(names.ids):,} categories, labels in {len(LOCALES)} locales). Informative vote weight chosen on "
             f"dev from {VOTE_WEIGHTS}: {weight:g} (dev top-1 {', '.join(f'{w:g}: {a:.3f}' for w, a in tried.items())}"
             "); raw votes keep the weight 1 they had. Right = the predicted path falls under the taxonomy path "
             "mapped by hand from the Amazon product_category (EXPECTED in bench/intent.py).")
    return table(headers, rows), notes, {"amazon": figures["names + informative catalog votes (now)"],
                                         "flat": figures["flat catalog (all 'Media'): names + informative votes (now)"]}


def taxonomy_names(encoder) -> tuple[str, str, dict]:
    """Each category's name in one locale as the query, labels in the other languages."""
    every, english = read_taxonomy(locales=ALL_LOCALES), english_paths()
    root = {c: path.split(" > ")[0] for c, path in english.items()}
    common_root, _ = Counter(root.values()).most_common(1)[0]
    rows, pooled = [], defaultdict(list)
    for locale in ALL_LOCALES:
        language = locale.split("-")[0]
        labels = tuple(loc for loc in LOCALES if not loc.startswith(language))
        queries = [(c, leaf(names[locale])) for c, names in every.items() if names.get(locale)]
        vectors = encoder.encode_queries([q for _, q in queries])
        wanted = [c for c, _ in queries]
        cells = [len(queries), float(np.mean([root[c] == common_root for c in wanted]))]
        for name, taxonomy in (("paths", as_whole_paths(read_taxonomy(locales=labels))),
                               ("names", read_taxonomy(locales=labels))):
            top = [[h["id"] for h in hits] for hits in IntentClassifier(taxonomy, encoder).predict(vectors, 3)]
            hit1 = [t[0] == c for t, c in zip(top, wanted, strict=True)]
            hit3 = [c in t for t, c in zip(top, wanted, strict=True)]
            in_root = [root[t[0]] == root[c] for t, c in zip(top, wanted, strict=True)]
            food = [r for r, c in zip(in_root, wanted, strict=True) if root[c] == "Food, Beverages & Tobacco"]
            for key, values in (("top1", hit1), ("top3", hit3), ("root", in_root), ("food", food)):
                pooled[(name, key)].extend(values)
            cells += [float(np.mean(hit1)), float(np.mean(hit3)), float(np.mean(in_root)), float(np.mean(food))]
        rows.append([locale, *cells])
    rows.append(["all", sum(r[1] for r in rows), float(np.mean([root[c] == common_root for c in every])),
                 *[float(np.mean(pooled[(name, key)])) for name in ("paths", "names")
                   for key in ("top1", "top3", "root", "food")]])
    headers = ["query locale", "queries", f"baseline: always '{common_root}' (root top-1)",
               *[f"{name}: {m}" for name in ("whole paths (before)", "names (now)")
                 for m in ("top-1", "top-3", "root top-1", "Food names: root top-1")]]
    notes = (f"{len(every):,} categories up to 3 levels; each one's name (the last step of its path) in the query "
             f"locale is the query; labels from the {len(LOCALES)} label locales minus the query's language. "
             "Right: the category itself (top-1, top-3), or one under its top-level category (root top-1). "
             "'Food names' are the queries naming a category under Food, Beverages & Tobacco.")
    return table(headers, rows), notes, {key: float(np.mean(pooled[("names", key)])) for key in
                                         ("top1", "top3", "root", "food")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-market", type=int, default=400)
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not TAXONOMY.exists():
        raise SystemExit(f"no taxonomy at {TAXONOMY}")
    encoder = load_encoder(args.encoder, cache_dir=CACHE)
    amazon_table, amazon_notes, amazon_figures = amazon(encoder, args.per_market)
    record(f"Intent accuracy, Amazon titles vs product_category (encoder `{args.encoder}`)", None, amazon_table,
           amazon_notes)
    names_table, names_notes, names_figures = taxonomy_names(encoder)
    record(f"Intent accuracy, taxonomy category names in 17 locales (encoder `{args.encoder}`)", None, names_table,
           names_notes)
    print(f"RESULT intent amazon_top1={amazon_figures['amazon'][0]:.3f} amazon_top3={amazon_figures['amazon'][1]:.3f} "
          f"flat_catalog_top1={amazon_figures['flat'][0]:.3f} taxonomy_top1={names_figures['top1']:.3f} "
          f"taxonomy_top3={names_figures['top3']:.3f} taxonomy_root_top1={names_figures['root']:.3f} "
          f"food_root_top1={names_figures['food']:.3f}")


if __name__ == "__main__":
    main()
