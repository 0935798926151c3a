"""Benchmarks behind docs/performance.md (not timed tests): `./run bench NAME`."""
