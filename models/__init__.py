"""Models: text encoder, catalog index, query understanding, ranker, suggestions, trainer, registry."""
