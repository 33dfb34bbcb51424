"""The CTranslate2 engine: a `Translator` for T5 models, a `Generator` for decoder-only ones.

CTranslate2 takes token strings and reports each decoding step through a callback; the callback
feeds `SequenceTracker.push`, and returning the tracker's verdict stops that row, so stop
sequences, per-request limits and cancellation end a row at the step they happen.

Two behaviours of `Generator.generate_batch(include_prompt_in_result=False)` shape `_generate`:
prompts longer than the batch's shortest one are finished token by token in the decoding loop
(those forced steps are not reported and do not count towards `max_length`), except when the
shortest prompt is a single token - then the forced prompt tokens come back as if generated.
One-token prompts therefore run as their own batch when the lengths are mixed.

On CPU the model runs as one single-threaded replica per core (`inter_threads` = cores,
`intra_threads` = 1) and each batch is cut into groups of similar prompt length that the
replicas compute side by side (`plan_groups`). These models are too small for one batch to
use two cores well: measured on 2 cores (int8, 64 new tokens, 32 shuffled self-instruct
prompts), LaMini-Flan-T5-248M made 442 tok/s as one batch on both cores and 664 tok/s as four
groups on two replicas; LaMini-GPT-124M 273 (one batch), 413 (four equal groups, two replicas)
and about 500 (groups cut where prompt lengths jump); a single request took 0.84 s on one
thread and 0.95 s on two (Flan-T5-248M).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ctranslate2
from transformers import AutoTokenizer

from app.core.engine_kinds import EngineKind
from app.core.errors import ModelSourceError
from app.core.families import Family
from app.engines.base import (
    Engine,
    EngineInfo,
    SamplingParams,
    SequenceTracker,
    cut_longest_first,
    limits_from_config,
)


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


def thread_layout(device: str, intra: int | None, inter: int | None) -> tuple[int, int]:
    """(intra_threads, inter_threads) with the unset ones chosen for the device.

    CPU: one thread per replica and one replica per core (see the module docstring); an explicit
    `intra` of 0 (all cores) or more than 1 gets as many replicas as the cores allow. CUDA: one
    replica (`intra` only sizes CPU-side work there).
    """
    intra = 1 if intra is None else intra
    if inter is None:
        cores = len(os.sched_getaffinity(0))
        inter = 1 if device == "cuda" or intra == 0 else max(1, cores // intra)
    return intra, inter


# The checkpoint's config.json, kept in a converted entry: its limits and special tokens.
SOURCE_CONFIG_NAME = "source_config.json"

# The fixed cost of one decoding step, in units of one sequence's share of it: the larger, the
# fewer groups a decoder batch is split into. A replica on one thread pays little per step, so
# splitting pays sooner than for one batch on every core.
# Measured (GPT-124M int8, 2 cores, self-instruct prompts of 37-393 tokens, 64 new tokens):
# one replica on 2 threads, 32 prompts: one batch 206 tok/s; 16: ~240, 64: 272, 128: 291, 256:
# 286. Two single-threaded replicas, tok/s at 8 / 16 / 32 shuffled prompts per batch: equal
# groups (two per replica, at least four prompts) 185 / 268 / 365; this split with 8: 291 /
# 401 / 492, 16: 290 / 394 / 500, 32: 291 / 374 / -.
STEP_OVERHEAD_IN_SEQUENCES = 128
REPLICA_STEP_OVERHEAD_IN_SEQUENCES = 12


def _step_cost(steps: int, size: int, step_overhead: int) -> int:
    """Estimated cost of a decoder group of `size` rows running `steps` decoding steps (its
    prompt spread, forced token by token, plus its longest output)."""
    return steps * (size + step_overhead)


def _group_cost(group: list[SequenceTracker], step_overhead: int) -> int:
    """`_step_cost` of one length-sorted decoder group."""
    spread = len(group[-1].request.prompt_ids) - len(group[0].request.prompt_ids)
    steps = spread + max(t.request.max_new_tokens for t in group)
    return _step_cost(steps, len(group), step_overhead)


def split_by_length(
    trackers: list[SequenceTracker], step_overhead: int = STEP_OVERHEAD_IN_SEQUENCES
) -> list[list[SequenceTracker]]:
    """Split a decoder-only batch into sub-batches of similar prompt length.

    `Generator.generate_batch(include_prompt_in_result=False)` feeds every prompt at once only
    up to the batch's shortest prompt; the rest of each longer prompt is forced through the
    decoding loop one token per step, and every such step costs as much as generating. With
    real instructions (30 to 300 tokens) one mixed batch can spend more steps forcing prompts
    than generating. This picks the partition of the length-sorted batch with the lowest sum
    of `_step_cost` over its groups. One-token prompts never share a group with longer ones
    (with a one-token shortest prompt CTranslate2 reports the forced tokens as generated).
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
            cost = best[start] + _step_cost(steps, end - start, step_overhead)
            if cost < best[end]:
                best[end], group_start[end] = cost, start
    groups: list[list[SequenceTracker]] = []
    end = len(ordered)
    while end > 0:
        groups.append(ordered[group_start[end] : end])
        end = group_start[end]
    return groups[::-1]


def _halve_largest_until(groups: list[list[SequenceTracker]], count: int) -> None:
    """Split the largest group in two until there are `count` groups (or only singles)."""
    while len(groups) < count and max(len(g) for g in groups) > 1:
        largest = max(groups, key=len)
        groups.remove(largest)
        half = math.ceil(len(largest) / 2)
        groups += [largest[:half], largest[half:]]


# How several replicas share an encoder-decoder batch: up to two groups per replica, of at least
# four prompts while the batch allows (but never fewer groups than replicas). Measured on 2
# replicas (LaMini-Flan-T5-248M int8, 2 cores, shuffled self-instruct prompts, 64 new tokens) as
# tok/s for 2 / 4 groups: 633 / 664 at 32 prompts, 450 / 290 at 8 prompts.
GROUPS_PER_REPLICA = 2
MIN_GROUP_SIZE = 4


def plan_groups(
    trackers: list[SequenceTracker], replicas: int, seq2seq: bool
) -> list[list[SequenceTracker]]:
    """Cut a batch into the sub-batches the replicas compute, costliest first (so that the
    longest group does not start last and run alone).

    Decoder batches are split by `split_by_length` (with the replica step overhead when there
    are several), and the largest groups halved until every replica has one. Encoder-decoder
    batches (whose encoder takes every prompt at once) stay whole on one replica; on several
    they are sorted by length and cut into equal groups (see `GROUPS_PER_REPLICA`).
    """
    if seq2seq:
        if replicas == 1:
            return [trackers]
        count = max(
            min(len(trackers), replicas),
            min(len(trackers) // MIN_GROUP_SIZE, GROUPS_PER_REPLICA * replicas),
        )
        return cut_longest_first(trackers, count)
    if replicas == 1:
        return split_by_length(trackers)
    step_overhead = REPLICA_STEP_OVERHEAD_IN_SEQUENCES
    groups = split_by_length(trackers, step_overhead)
    _halve_largest_until(groups, min(len(trackers), replicas))
    return sorted(groups, key=lambda g: _group_cost(g, step_overhead), reverse=True)


# A format prefix shorter than this is not worth a cached state (OPT's lone `</s>`).
STATIC_PROMPT_MIN_TOKENS = 8


class CTranslate2Engine(Engine):
    """A CTranslate2 model directory from the store (converted by `conversion.ctranslate2`)."""

    def __init__(
        self,
        model_dir: Path,
        family: Family,
        quantization: str,
        device: str = "auto",
        intra_threads: int | None = None,
        inter_threads: int | None = None,
    ) -> None:
        self.family = family
        self.device = resolve_ct2_device(device)
        compute_type = compute_type_for(quantization, self.device)
        runtime = ctranslate2.Translator if family.is_seq2seq else ctranslate2.Generator
        self.intra_threads, self.replicas = thread_layout(self.device, intra_threads, inter_threads)
        self._load_runtime = functools.partial(
            runtime,
            str(model_dir),
            device=self.device,
            compute_type=compute_type,
            intra_threads=self.intra_threads,
        )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            self.model = self._load_runtime(inter_threads=self.replicas)
            config = json.loads((model_dir / SOURCE_CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelSourceError(
                f"cannot load the CTranslate2 model in {model_dir}: {reason}"
            ) from None
        max_input, max_total = limits_from_config(SimpleNamespace(**config), self.tokenizer, family)
        self.static_prompt_ids = self._static_prompt_ids()
        self.info = EngineInfo(
            kind=EngineKind.CTRANSLATE2,
            device=self.device,
            quantization=compute_type,
            max_input_tokens=max_input,
            max_total_tokens=max_total,
        )

    def _static_prompt_ids(self) -> list[int]:
        """The token ids every prompt of this family's format starts with (decoder-only).

        The Alpaca wrapper's ~30-token preamble is the same for every LaMini decoder request;
        passed as CTranslate2's `static_prompt` with `cache_static_prompt`, each replica computes
        it once and reuses its state. The prefix's last token is left out: tokens may merge
        across the boundary with the instruction, and each request is checked anyway.
        """
        prefix = self.family.prompt_format.static_prefix
        if self.family.is_seq2seq or not prefix:
            return []
        ids = self.encode(prefix)[:-1]
        return ids if len(ids) >= STATIC_PROMPT_MIN_TOKENS else []

    def _tokens(self, trackers: list[SequenceTracker], skip: int = 0) -> list[list[str]]:
        return [self.tokenizer.convert_ids_to_tokens(t.request.prompt_ids[skip:]) for t in trackers]

    def _static_prompt_for(self, trackers: list[SequenceTracker]) -> list[int]:
        """The static prompt ids if every prompt of the group starts with them (and keeps at
        least two tokens after them: see the one-token quirk), else none."""
        ids = self.static_prompt_ids
        length = len(ids)
        if ids and all(
            t.request.prompt_ids[:length] == ids and len(t.request.prompt_ids) > length + 1
            for t in trackers
        ):
            return ids
        return []

    def _options(self, sampling: SamplingParams) -> dict[str, Any]:
        return _decoding_options(sampling, sorted(self.eos_token_ids))

    def _runtime_for(self, sampling: SamplingParams) -> tuple[Any, int]:
        """The loaded model and its replica count, or for seeded sampling a fresh one-replica
        copy seeded with the request's seed.

        CTranslate2 seeds each worker thread's random generator once, when that thread first
        samples, from the global seed at that moment; a thread that has sampled before ignores
        later `set_random_seed` calls. Only new worker threads - a new model object - honour a
        per-request seed, so reproducible sampling costs one model load. One replica runs the
        groups in order on one thread, so the same seed gives the same tokens.
        """
        if not (sampling.do_sample and sampling.seed is not None):
            return self.model, self.replicas
        ctranslate2.set_random_seed(ct2_seed(sampling.seed))
        return self._load_runtime(inter_threads=1), 1

    def _generate(self, trackers: list[SequenceTracker], sampling: SamplingParams) -> None:
        """Submit every group at once (the replicas take them in order) and wait for all."""
        runtime, replicas = self._runtime_for(sampling)
        submit = self._translate if self.family.is_seq2seq else self._continue
        pending = [
            result
            for group in plan_groups(trackers, replicas, self.family.is_seq2seq)
            for result in submit(runtime, group, sampling)
        ]
        failures = []
        for result in pending:
            try:
                result.result()
            except Exception as exc:  # re-raised below, once every group has ended
                failures.append(exc)
        if failures:
            raise failures[0]

    def _translate(
        self, runtime: Any, trackers: list[SequenceTracker], sampling: SamplingParams
    ) -> list[Any]:
        return runtime.translate_batch(
            self._tokens(trackers),
            max_input_length=0,
            max_decoding_length=max(t.request.max_new_tokens for t in trackers),
            min_decoding_length=sampling.min_new_tokens,
            callback=_feed(trackers),
            asynchronous=True,
            **self._options(sampling),
        )

    def _continue(
        self, runtime: Any, trackers: list[SequenceTracker], sampling: SamplingParams
    ) -> list[Any]:
        """Decoder-only generation; the longest prompt bounds the room left in the context."""
        wanted = max(t.request.max_new_tokens for t in trackers)
        room = self.info.max_total_tokens - max(len(t.request.prompt_ids) for t in trackers)
        for tracker in trackers:
            tracker.cap(room)
        static = self._static_prompt_for(trackers)
        cached = (
            {"static_prompt": self.tokenizer.convert_ids_to_tokens(static),
             "cache_static_prompt": True}
            if static
            else {}
        )  # fmt: skip
        return runtime.generate_batch(
            self._tokens(trackers, skip=len(static)),
            max_length=max(1, min(wanted, room)),
            min_length=sampling.min_new_tokens,
            include_prompt_in_result=False,
            callback=_feed(trackers),
            asynchronous=True,
            **cached,
            **self._options(sampling),
        )
