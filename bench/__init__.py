"""Benchmarks (`make bench`): each prints its figures. Run one as `python -m bench.NAME`."""
