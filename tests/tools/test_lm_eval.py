"""lm-evaluation-harness 0.4.13 against a real server, with its default settings.

`local-completions` runs a multiple-choice task (loglikelihood: echo + logprobs on token-id
prompts) and a generate_until task (token-id prompts, stop sequences); `local-chat-completions`
runs the generation task. Both tasks and their data ship in `lm_eval_tasks/` (no hub). The
tokenizer is the server's own: with `/tokenizer_info` and `/tokenize` present, lm-eval's
"auto" tokenizer backend picks the remote one, so nothing is downloaded. A request that fails
makes lm-eval exit non-zero (`max_retries=1`), so a clean exit means none errored.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.support.server import RunningServer
from tests.support.twins import TOOLS_MODEL

pytestmark = pytest.mark.slow

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"


def run_lm_eval(
    lm_eval_bin: Path, model: str, base_url: str, tasks: str, out: Path, *extra: str
) -> dict:
    """`lm-eval run` on the shipped tasks; returns the results JSON (and fails on errors)."""
    model_args = f"model={TOOLS_MODEL},base_url={base_url},num_concurrent=1,max_retries=1"
    command = [str(lm_eval_bin / "lm_eval"), "run", "--model", model]
    command += ["--model_args", model_args, "--tasks", tasks, "--include_path", str(TASKS_DIR)]
    command += ["--output_path", str(out), "--log_samples", *extra]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        command, cwd=TASKS_DIR, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    (results,) = out.rglob("results_*.json")
    return json.loads(results.read_text())


def samples(out: Path, task: str) -> list[dict]:
    (path,) = out.rglob(f"samples_{task}_*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def reference_loglikelihood(checkpoint: Path, context: str, continuation: str) -> float:
    """The continuation's log-probability given the context, computed by transformers on the
    same token split lm-eval makes (context and continuation tokenized apart)."""
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    start = len(context_ids)
    return sum(float(logprobs[start + i - 1, token]) for i, token in enumerate(continuation_ids))


def test_local_completions_multiple_choice_and_generation(
    gpt_server: RunningServer,
    gpt_tokenizer_dir: Path,
    tool_bin: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    results = run_lm_eval(
        tool_bin("lm-eval"),
        "local-completions",
        f"{gpt_server.base_url}/v1/completions",
        "lamini_tiny_mc,lamini_tiny_gen",
        tmp_path,
    )

    assert 0.0 <= results["results"]["lamini_tiny_mc"]["acc,none"] <= 1.0
    assert "exact_match,none" in results["results"]["lamini_tiny_gen"]
    first = samples(tmp_path, "lamini_tiny_mc")[0]
    context = first["arguments"]["gen_args_0"]["arg_0"]
    continuation = first["arguments"]["gen_args_0"]["arg_1"]
    served_score = float(first["resps"][0][0][0])
    expected = reference_loglikelihood(gpt_tokenizer_dir, context, continuation)
    assert served_score == pytest.approx(expected, abs=1e-3)
    generations = [sample["resps"][0][0] for sample in samples(tmp_path, "lamini_tiny_gen")]
    assert len(generations) == 3
    assert all(isinstance(text, str) for text in generations)


def test_local_chat_completions_generation(
    gpt_server: RunningServer, tool_bin: Callable[[str], Path], tmp_path: Path
) -> None:
    results = run_lm_eval(
        tool_bin("lm-eval"),
        "local-chat-completions",
        f"{gpt_server.base_url}/v1/chat/completions",
        "lamini_tiny_gen",
        tmp_path,
        "--apply_chat_template",
    )

    assert "exact_match,none" in results["results"]["lamini_tiny_gen"]
    assert len(samples(tmp_path, "lamini_tiny_gen")) == 3
