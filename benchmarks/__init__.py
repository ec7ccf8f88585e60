"""Benchmarks: speed lives here, never in test assertions (`make bench`, `make bench-quick`)."""
