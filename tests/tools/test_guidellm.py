"""guidellm 0.8.1 (vLLM's benchmark tool) against a real server: streaming completions and chat,
a concurrent profile and a fixed output length (guidellm sends `ignore_eos`, `max_tokens` and
`stream_options.continuous_usage_stats`). guidellm exits 0 even when every request fails, so
the test reads its JSON report: no errored or incomplete request, every output as long as asked.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.server import RunningServer

pytestmark = pytest.mark.slow

REQUESTS = 6
OUTPUT_TOKENS = 8


@pytest.mark.parametrize("request_format", ["/v1/completions", "/v1/chat/completions"])
def test_guidellm_concurrent_streaming_benchmark_has_no_errors(
    request_format: str,
    gpt_server: RunningServer,
    gpt_tokenizer_dir: Path,
    tool_bin: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    report = tmp_path / "benchmarks.json"
    backend = f"kind=openai_http,target={gpt_server.base_url},request_format={request_format}"
    data = f"kind=synthetic_text,prompt_tokens=16,output_tokens={OUTPUT_TOKENS}"
    command = [str(tool_bin("guidellm") / "guidellm"), "run", "--backend", backend]
    command += ["--profile", "kind=concurrent,streams=2"]
    command += ["--constraint", f"kind=max_requests,count={REQUESTS}", "--data", data]
    command += ["--tokenizer", f"kind=huggingface_auto,model={gpt_tokenizer_dir}"]
    command += ["--disable-console", "--output", f"kind=json,path={report}"]

    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (benchmark,) = json.loads(report.read_text())["benchmarks"]
    errored = benchmark["requests"]["errored"]
    assert benchmark["metrics"]["request_totals"] == {
        "successful": REQUESTS,
        "errored": 0,
        "incomplete": 0,
        "total": REQUESTS,
    }, [request.get("error") for request in errored][:3]
    outputs = [request["output_tokens"] for request in benchmark["requests"]["successful"]]
    assert outputs == [OUTPUT_TOKENS] * REQUESTS
