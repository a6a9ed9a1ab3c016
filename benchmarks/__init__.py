"""Benchmarks: `make bench` runs them; results land in benchmarks/results/."""
