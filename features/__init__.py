"""Feature definitions, the Redis online store, and feature-vector assembly."""
