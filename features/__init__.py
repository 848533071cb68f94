"""Per-entity features: declarations, event → updates, batch aggregation, the Redis writer,
the read path, and the point-in-time ranking context."""
