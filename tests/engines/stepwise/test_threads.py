"""One OpenMP team per process: loading a continuous engine (int8 weights and the T5
decoder's stacked projections included) starts no torch worker threads on the loading thread,
and its synchronous API then computes with the engine's thread count
(`app/engines/stepwise/threads.py` measures why). Run in a fresh interpreter, whose threads are
this test's alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import T5Config, T5ForConditionalGeneration

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
engine = ContinuousEngine(Path(sys.argv[1]), get_family(sys.argv[2]), precision=sys.argv[3],
                          threads={THREADS})
loaded = threads()
engine.generate([EngineRequest(engine.encode("Hi there"), max_new_tokens=4)], SamplingParams())
print(json.dumps({{"before": before, "loaded": loaded, "generated": threads()}}))
"""


def _wide_flan_t5(tiny_twin: Callable[[str], Path], directory: Path) -> Path:
    """A one-layer Flan-T5 wide enough that torch splits its weights' int8 packing across
    threads (the tiny twins' layers are packed on one thread, and would start no team)."""
    shutil.copytree(tiny_twin(FAMILY_TWINS["lamini-flan-t5"]), directory)
    config = T5Config.from_pretrained(directory)
    config.update({"d_model": 256, "d_kv": 32, "num_heads": 8, "d_ff": 1024, "num_layers": 1})
    config.num_decoder_layers = 1
    T5ForConditionalGeneration(config).save_pretrained(directory)
    return directory


@pytest.mark.parametrize(
    ("family_name", "precision"), [("lamini-gpt", "float32"), ("lamini-flan-t5", "int8")]
)
def test_loading_starts_no_team_and_generating_uses_the_engines_threads(
    tiny_twin: Callable[[str], Path], tmp_path: Path, family_name: str, precision: str
) -> None:
    checkpoint = (
        _wide_flan_t5(tiny_twin, tmp_path / "wide")
        if family_name == "lamini-flan-t5"
        else tiny_twin(FAMILY_TWINS[family_name])
    )
    env = os.environ | {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", COUNT_THREADS, str(checkpoint), family_name, precision],
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
