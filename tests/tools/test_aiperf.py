"""aiperf 0.13 (NVIDIA's benchmark tool) against a real server, streaming chat with the
`--extra-inputs ignore_eos:true` its documentation suggests for fixed output lengths. The test
reads aiperf's per-request export: no record carries an error, every output is as long as
asked.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.server import RunningServer
from tests.support.twins import TOOLS_MODEL

pytestmark = pytest.mark.slow

REQUESTS = 4
OUTPUT_TOKENS = 8


def test_aiperf_streaming_chat_with_ignore_eos_has_no_errors(
    gpt_server: RunningServer,
    gpt_tokenizer_dir: Path,
    tool_bin: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    artifacts = tmp_path / "artifacts"
    command = [str(tool_bin("aiperf") / "aiperf"), "profile", "--model", TOOLS_MODEL]
    command += ["--url", gpt_server.base_url, "--endpoint-type", "chat", "--streaming"]
    command += ["--tokenizer", str(gpt_tokenizer_dir), "--concurrency", "2"]
    command += ["--request-count", str(REQUESTS), "--synthetic-input-tokens-mean", "16"]
    command += ["--output-tokens-mean", str(OUTPUT_TOKENS), "--extra-inputs", "ignore_eos:true"]
    command += ["--use-server-token-count", "--ui", "none", "--artifact-dir", str(artifacts)]

    # aiperf 0.13 in HF offline mode resolves even a local tokenizer path through the hub
    # cache and fails; online mode loads the local directory without touching the network.
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env
    )

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    (export,) = artifacts.rglob("profile_export.jsonl")
    records = [json.loads(line) for line in export.read_text().splitlines() if line.strip()]
    assert len(records) == REQUESTS
    assert [record.get("error") for record in records] == [None] * REQUESTS
    lengths = [record["metrics"]["output_sequence_length"]["value"] for record in records]
    assert lengths == [OUTPUT_TOKENS] * REQUESTS
