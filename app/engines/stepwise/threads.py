"""One thread computes: the engine's parallel torch work runs on the scheduler's thread only.

torch's CPU wheel runs its intra-op parallelism on GNU OpenMP, which gives every thread that
starts a parallel region a team of its own, and keeps that team while the thread lives. Once a
process holds more OpenMP threads than cores, libgomp stops spinning between parallel regions
and puts its workers to sleep on a futex after each one; a decode step is a few hundred small
regions, so every step pays the wake-ups. Measured (full GPT-124M twin, int8, 2 cores, Intel
Xeon with AMX): one decode step at batch 1 / 32 took 8.4 / 35.7 ms on the thread that loaded
the model and 15.9 / 51.4 ms on a second thread after the loading thread had its team - the
same as on the first thread with `OMP_WAIT_POLICY=PASSIVE` (16.0 / 52.4 ms). In the server the
model is loaded on one thread and decoded on the scheduler's, and one 64-token request took
1.2 s over HTTP against 0.53 s in a plain loop.

So the model is loaded with one torch thread (no team on the loading thread; loading the
GPT-124M twin so took 2.0 s), the scheduler's thread sets the engine's thread count before its
first step, and everything else the engine computes while serving (prompt scoring) is run on
that thread between steps (`StepScheduler.call`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def without_thread_team() -> Iterator[None]:
    """Run torch on the calling thread without starting OpenMP workers for it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
