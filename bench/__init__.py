"""Benchmarks: each prints a table and appends it to bench/RESULTS.md."""
