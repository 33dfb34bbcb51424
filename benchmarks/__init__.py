"""Benchmark harness: the same workload through the seed paths, a peer server, the raw engine and
lamini-serve, each in its own process. Entry point: `python -m benchmarks.run --help`."""
