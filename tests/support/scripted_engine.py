"""A small engine for in-process tests: real tokenizer, scripted tokens, no model weights.

It follows the `Engine` contract the way the real engines do - one step at a time for every
unfinished sequence, through `SequenceTracker` (stop sequences, eos, limits, cancellation,
streaming callbacks) - so the serving layer and the routes above it run unchanged. Each
sequence answers the same script, one token a step; `step_gate` can hold every step until
the test lets it go, to look at a request while it is running.
"""

from __future__ import annotations

import threading
from pathlib import Path

from transformers import GPT2TokenizerFast

from app.core.engine_kinds import EngineKind
from app.core.families import Family, get_family
from app.engines.base import Engine, EngineInfo, SamplingParams, SequenceTracker

GPT2_TOKENIZER_DIR = (
    Path(__file__).resolve().parents[2] / "model_store" / "assets" / "tokenizers" / "gpt2"
)
SCRIPT = " The answer is forty two. Then it goes on and on and on and on and on."


def gpt2_tokenizer() -> GPT2TokenizerFast:
    return GPT2TokenizerFast(
        vocab_file=str(GPT2_TOKENIZER_DIR / "vocab.json"),
        merges_file=str(GPT2_TOKENIZER_DIR / "merges.txt"),
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


class ScriptedEngine(Engine):
    """Answers every prompt with `script` (then eos), one token per step for the whole batch."""

    def __init__(
        self,
        family: Family | None = None,
        script: str = SCRIPT,
        max_input_tokens: int = 512,
        max_total_tokens: int = 1024,
    ) -> None:
        self.family = family or get_family("lamini-gpt")
        self.tokenizer = gpt2_tokenizer()
        self.info = EngineInfo(
            kind=EngineKind.TRANSFORMERS,
            device="cpu",
            quantization="float32",
            max_input_tokens=max_input_tokens,
            max_total_tokens=max_total_tokens,
        )
        self.script_ids = [*self.tokenizer.encode(script), self.tokenizer.eos_token_id]
        self.batches: list[tuple[int, SamplingParams]] = []
        self.step_gate: threading.Semaphore | None = None
        self.closed = False

    def hold_steps(self) -> None:
        """From now on every step waits for `release_steps`."""
        self.step_gate = threading.Semaphore(0)

    def release_steps(self, count: int = 10_000) -> None:
        gate = self.step_gate
        self.step_gate = None
        if gate is not None:
            gate.release(count)

    def _generate(self, trackers: list[SequenceTracker], sampling: SamplingParams) -> None:
        self.batches.append((len(trackers), sampling))
        for step, token_id in enumerate(self.script_ids):
            gate = self.step_gate
            if gate is not None:
                gate.acquire()
            running = [tracker for tracker in trackers if not tracker.done]
            if not running:
                return
            for tracker in running:
                tracker.push(token_id, logprob=-0.5 - step / 100)

    def close(self) -> None:
        self.closed = True
