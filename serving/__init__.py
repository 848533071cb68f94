"""The HTTP API: ingest, features, search, suggestions, alerts, models, health and metrics."""
