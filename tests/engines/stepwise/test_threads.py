"""One OpenMP team per process: loading a continuous engine starts no torch worker threads on
the loading thread, and its synchronous API then computes with the engine's thread count
(`app/engines/stepwise/threads.py` measures why). Run in a fresh interpreter, whose threads are
this test's alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.support.twins import FAMILY_TWINS

THREADS = 2
COUNT_THREADS = f"""
import json, os, sys
from pathlib import Path
import torch
from app.core.families import get_family
from app.engines.base import EngineRequest, SamplingParams
from app.engines.stepwise.engine import ContinuousEngine

def threads():
    return len(os.listdir("/proc/self/task"))

torch.set_num_threads(1)
before = threads()
engine = ContinuousEngine(Path(sys.argv[1]), get_family("lamini-gpt"), precision="float32",
                          threads={THREADS})
loaded = threads()
engine.generate([EngineRequest(engine.encode("Hi there"), max_new_tokens=4)], SamplingParams())
print(json.dumps({{"before": before, "loaded": loaded, "generated": threads()}}))
"""


def test_loading_starts_no_team_and_generating_uses_the_engines_threads(
    tiny_twin: Callable[[str], Path],
) -> None:
    checkpoint = tiny_twin(FAMILY_TWINS["lamini-gpt"])
    env = os.environ | {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", COUNT_THREADS, str(checkpoint)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout.strip().splitlines()[-1])

    assert counts["loaded"] == counts["before"], counts
    assert counts["generated"] == counts["before"] + THREADS - 1, counts
