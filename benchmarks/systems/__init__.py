"""One module per benchmarked system. In-process systems expose `run(context) -> SystemRun` and
are started by `benchmarks.worker`; HTTP systems start their server and drive it from the
orchestrator."""
