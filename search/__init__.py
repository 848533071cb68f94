"""Search: the catalog, text encoders, the vector and lexical indexes, hybrid retrieval,
query understanding, localisation and the search service (with a re-ranker seam)."""
