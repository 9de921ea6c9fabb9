"""Benchmarks run by `make bench`; their figures go in docs/benchmarks.md."""
