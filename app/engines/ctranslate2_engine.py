"""The CTranslate2 engine: a `Translator` for T5 models, a `Generator` for decoder-only ones.

CTranslate2 takes token strings and reports each decoding step through a callback; the callback
feeds `SequenceTracker.push`, and returning the tracker's verdict stops that row, so stop
sequences, per-request limits and cancellation end a row at the step they happen.

Two behaviours of `Generator.generate_batch(include_prompt_in_result=False)` shape `_generate`:
prompts longer than the batch's shortest one are finished token by token in the decoding loop
(those forced steps are not reported and do not count towards `max_length`), except when the
shortest prompt is a single token - then the forced prompt tokens come back as if generated.
One-token prompts therefore run as their own batch when the lengths are mixed.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ctranslate2
from transformers import AutoTokenizer

from app.engines.base import (
    Engine,
    EngineInfo,
    SamplingParams,
    SequenceTracker,
    limits_from_config,
)
from app.errors import ModelSourceError
from app.families import EngineKind, Family
from conversion.ctranslate2 import SOURCE_CONFIG_NAME


def resolve_ct2_device(setting: str) -> str:
    """`auto` means CUDA when CTranslate2 sees a GPU, else CPU."""
    if setting != "auto":
        return setting
    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


# CTranslate2 takes 32-bit seeds and treats 2**32 - 1 as "no seed" (a random one).
_CT2_SEED_SPACE = 2**32 - 1


def ct2_seed(seed: int) -> int:
    """A request's seed (TGI and OpenAI allow 64 bits) folded into what CTranslate2 honours;
    the same seed always folds the same way, so sampling stays reproducible."""
    return seed % _CT2_SEED_SPACE


def compute_type_for(quantization: str, device: str) -> str:
    """The stored precision if the device computes it efficiently, else the nearest one it does
    (a float16 entry runs in float32 on a CPU, an int8_float16 one in int8_float32)."""
    supported = ctranslate2.get_supported_compute_types(device)
    if quantization in supported:
        return quantization
    if quantization.startswith("int8") and "int8_float32" in supported:
        return "int8_float32"
    return "float32"


def _decoding_options(sampling: SamplingParams, end_token: list[int]) -> dict[str, Any]:
    """Keyword arguments shared by `translate_batch` and `generate_batch` (greedy is top-1)."""
    return {
        "beam_size": 1,
        "sampling_topk": sampling.top_k if sampling.do_sample else 1,
        "sampling_topp": sampling.top_p if sampling.do_sample else 1.0,
        "sampling_temperature": sampling.temperature if sampling.do_sample else 1.0,
        "repetition_penalty": sampling.repetition_penalty,
        "end_token": end_token,
        "return_scores": True,  # the step callback reports log-probs only with scores on
    }


def _feed(trackers: list[SequenceTracker]) -> Callable[[Any], bool]:
    """The step callback: push the token into its row's tracker; True stops that row."""

    def on_step(step: Any) -> bool:
        log_prob = step.log_prob if step.log_prob is not None else float("nan")
        return trackers[step.batch_id].push(step.token_id, log_prob)

    return on_step


# The fixed cost of one decoding step, in units of one sequence's share of it. Small batches
# forcing prompt tokens use the cores badly, so splitting only pays for real outliers.
# Measured (GPT-124M int8, 2 cores, 32 self-instruct prompts of 37-393 tokens, 64 new tokens):
# one batch 206 tok/s; with this constant at 16: ~240, 64: 272, 128: 291, 256: 286.
STEP_OVERHEAD_IN_SEQUENCES = 128


def split_by_length(trackers: list[SequenceTracker]) -> list[list[SequenceTracker]]:
    """Split a decoder-only batch into sub-batches of similar prompt length, run one by one.

    `Generator.generate_batch(include_prompt_in_result=False)` feeds every prompt at once only
    up to the batch's shortest prompt; the rest of each longer prompt is forced through the
    decoding loop one token per step, and every such step costs as much as generating. With
    real instructions (30 to 300 tokens) one mixed batch can spend more steps forcing prompts
    than generating. This picks the partition of the length-sorted batch with the fewest
    estimated step costs: sum over groups of (length spread + new tokens) x (group size +
    STEP_OVERHEAD_IN_SEQUENCES). One-token prompts never share a group with longer ones (with
    a one-token shortest prompt CTranslate2 reports the forced tokens as generated).
    """
    ordered = sorted(trackers, key=lambda t: len(t.request.prompt_ids))
    lengths = [len(t.request.prompt_ids) for t in ordered]
    best = [0.0] + [math.inf] * len(ordered)
    group_start = [0] * (len(ordered) + 1)
    for end in range(1, len(ordered) + 1):
        longest_output = 0
        for start in range(end - 1, -1, -1):
            longest_output = max(longest_output, ordered[start].request.max_new_tokens)
            if lengths[start] == 1 and lengths[end - 1] > 1:
                break
            steps = lengths[end - 1] - lengths[start] + longest_output
            cost = best[start] + steps * (end - start + STEP_OVERHEAD_IN_SEQUENCES)
            if cost < best[end]:
                best[end], group_start[end] = cost, start
    groups: list[list[SequenceTracker]] = []
    end = len(ordered)
    while end > 0:
        groups.append(ordered[group_start[end] : end])
        end = group_start[end]
    return groups[::-1]


class CTranslate2Engine(Engine):
    """A CTranslate2 model directory from the store (converted by `conversion.ctranslate2`)."""

    def __init__(
        self,
        model_dir: Path,
        family: Family,
        quantization: str,
        device: str = "auto",
        intra_threads: int = 0,
        inter_threads: int = 1,
    ) -> None:
        self.family = family
        self.device = resolve_ct2_device(device)
        compute_type = compute_type_for(quantization, self.device)
        runtime = ctranslate2.Translator if family.is_seq2seq else ctranslate2.Generator
        self._load_runtime = functools.partial(
            runtime,
            str(model_dir),
            device=self.device,
            compute_type=compute_type,
            intra_threads=intra_threads,
            inter_threads=inter_threads,
        )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            self.model = self._load_runtime()
            config = json.loads((model_dir / SOURCE_CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelSourceError(
                f"cannot load the CTranslate2 model in {model_dir}: {reason}"
            ) from None
        max_input, max_total = limits_from_config(SimpleNamespace(**config), self.tokenizer, family)
        self.info = EngineInfo(
            kind=EngineKind.CTRANSLATE2,
            device=self.device,
            quantization=compute_type,
            max_input_tokens=max_input,
            max_total_tokens=max_total,
        )

    def _tokens(self, trackers: list[SequenceTracker]) -> list[list[str]]:
        return [self.tokenizer.convert_ids_to_tokens(t.request.prompt_ids) for t in trackers]

    def _options(self, sampling: SamplingParams) -> dict[str, Any]:
        return _decoding_options(sampling, sorted(self.eos_token_ids))

    def _runtime_for(self, sampling: SamplingParams) -> Any:
        """The loaded model, or for seeded sampling a fresh copy seeded with the request's seed.

        CTranslate2 seeds each worker thread's random generator once, when that thread first
        samples, from the global seed at that moment; a thread that has sampled before ignores
        later `set_random_seed` calls. Only new worker threads - a new model object - honour a
        per-request seed, so reproducible sampling costs one model load.
        """
        if not (sampling.do_sample and sampling.seed is not None):
            return self.model
        ctranslate2.set_random_seed(ct2_seed(sampling.seed))
        return self._load_runtime()

    def _generate(self, trackers: list[SequenceTracker], sampling: SamplingParams) -> None:
        runtime = self._runtime_for(sampling)
        if self.family.is_seq2seq:
            self._translate(runtime, trackers, sampling)
        else:
            for group in split_by_length(trackers):
                self._continue(runtime, group, sampling)

    def _translate(
        self, runtime: Any, trackers: list[SequenceTracker], sampling: SamplingParams
    ) -> None:
        runtime.translate_batch(
            self._tokens(trackers),
            max_input_length=0,
            max_decoding_length=max(t.request.max_new_tokens for t in trackers),
            min_decoding_length=sampling.min_new_tokens,
            callback=_feed(trackers),
            **self._options(sampling),
        )

    def _continue(
        self, runtime: Any, trackers: list[SequenceTracker], sampling: SamplingParams
    ) -> None:
        """Decoder-only generation; the longest prompt bounds the room left in the context."""
        wanted = max(t.request.max_new_tokens for t in trackers)
        room = self.info.max_total_tokens - max(len(t.request.prompt_ids) for t in trackers)
        for tracker in trackers:
            tracker.cap(room)
        runtime.generate_batch(
            self._tokens(trackers),
            max_length=max(1, min(wanted, room)),
            min_length=sampling.min_new_tokens,
            include_prompt_in_result=False,
            callback=_feed(trackers),
            **self._options(sampling),
        )
