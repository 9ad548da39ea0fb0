"""Benchmarks: each prints figures, its last line one JSON object."""
