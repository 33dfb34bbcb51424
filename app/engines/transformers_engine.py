"""The transformers engine: the reference every faster engine is checked against, and the
fallback that runs any family on any machine with torch.

One `model.generate` call per batch. Two small hooks connect it to the shared bookkeeping: a
logits processor placed after every sampling warper keeps the final scores of each step, and a
stopping criterion feeds each row's new token (with its log-probability under those scores) to
that row's `SequenceTracker` and reports the rows the trackers have finished. So streaming
callbacks fire per step, and a row that hits a stop sequence, its own length limit or a
cancellation stops there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    GenerationConfig,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from app.core.engine_kinds import EngineKind
from app.core.families import Family
from app.engines.base import (
    Engine,
    EngineInfo,
    SamplingParams,
    SequenceTracker,
    limits_from_config,
    vocab_size_from_config,
)
from app.engines.constraint_mask import mask_disallowed
from app.engines.loading import checkpoint_load_errors, load_tokenizer


class _TrackerFeed:
    """Feeds every generated token of row i to `trackers[i]`; tells `generate` who is done.

    `keep_scores` must run as the last logits processor so the log-probabilities are those of
    the distribution the token was actually chosen from; `__call__` is the stopping criterion.
    """

    def __init__(self, trackers: list[SequenceTracker]) -> None:
        self._trackers = trackers
        self._scores: torch.Tensor | None = None

    def keep_scores(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        self._scores = scores
        return scores

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        assert self._scores is not None, "keep_scores did not run before the stopping check"
        new_tokens = input_ids[:, -1]
        logprobs = torch.log_softmax(self._scores.float(), dim=-1)
        chosen = logprobs.gather(1, new_tokens[:, None]).squeeze(1).tolist()
        done = [
            tracker.push(token_id, logprob)
            for tracker, token_id, logprob in zip(
                self._trackers, new_tokens.tolist(), chosen, strict=True
            )
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _GrammarMask:
    """A logits processor that leaves each constrained row only its grammar's allowed tokens.

    It runs after transformers' own processors (repetition penalty, min length) and before the
    sampling warpers, so they choose among allowed tokens only; rows without a constraint, and
    finished rows, are left alone. A row left with nothing (a complete answer while a minimum
    length still forbids eos) may end: eos gets back its score.
    """

    def __init__(self, trackers: list[SequenceTracker], eos_token_ids: frozenset[int]) -> None:
        self._eos = sorted(eos_token_ids)
        self._rows = [
            (row, tracker)
            for row, tracker in enumerate(trackers)
            if tracker.request.constraint is not None
        ]

    def __bool__(self) -> bool:
        return bool(self._rows)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        for row, tracker in self._rows:
            constraint = tracker.request.constraint
            if tracker.done or constraint is None:
                continue
            scores[row] = mask_disallowed(scores[row], constraint, self._eos)
        return scores


def _sampling_warpers(sampling: SamplingParams) -> list[Any]:
    """Temperature, top-k and top-p in transformers' own order (0 / 1.0 mean off)."""
    if not sampling.do_sample:
        return []
    warpers: list[Any] = []
    if sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k > 0:
        warpers.append(TopKLogitsWarper(top_k=sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=sampling.top_p))
    return warpers


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Make sampling reproducible for `seed` without disturbing anyone else's random state."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class TransformersEngine(Engine):
    """A Hugging Face checkpoint run by `transformers` in float32."""

    supports_constraints = True

    def __init__(
        self, checkpoint_dir: Path, family: Family, device: str = "cpu", threads: int | None = None
    ) -> None:
        self.family = family
        self.device = torch.device(device)
        if threads:  # unset or 0: torch's default, one per core
            torch.set_num_threads(threads)
        auto_model = AutoModelForSeq2SeqLM if family.is_seq2seq else AutoModelForCausalLM
        self.tokenizer = load_tokenizer(checkpoint_dir, family)
        with checkpoint_load_errors(checkpoint_dir, family, "transformers"):
            model = auto_model.from_pretrained(
                str(checkpoint_dir), dtype=torch.float32, trust_remote_code=False
            )
        self.model = model.to(self.device).eval()
        self._pad_token_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        max_input, max_total = limits_from_config(model.config, self.tokenizer, family)
        self.info = EngineInfo(
            kind=EngineKind.TRANSFORMERS,
            device=self.device.type,
            quantization="float32",
            max_input_tokens=max_input,
            max_total_tokens=max_total,
            vocab_size=vocab_size_from_config(model.config),
        )

    def next_token_logprobs(self, ids: list[int]) -> np.ndarray:
        return causal_next_token_logprobs(self.model, ids)

    def _padded_batch(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Input ids and attention mask; decoder-only prompts are left-padded so that every
        row's next token follows its own last prompt token."""
        width = max(len(prompt) for prompt in prompts)
        ids, mask = [], []
        for prompt in prompts:
            padding = [self._pad_token_id] * (width - len(prompt))
            ones, zeros = [1] * len(prompt), [0] * len(padding)
            if self.family.is_seq2seq:
                ids.append(prompt + padding)
                mask.append(ones + zeros)
            else:
                ids.append(padding + prompt)
                mask.append(zeros + ones)
        return (
            torch.tensor(ids, dtype=torch.long, device=self.device),
            torch.tensor(mask, dtype=torch.long, device=self.device),
        )

    def _max_new_tokens(self, trackers: list[SequenceTracker], prompt_width: int) -> int:
        """The longest request's limit, cut so a decoder-only batch never runs past the
        model's position table."""
        wanted = max(tracker.request.max_new_tokens for tracker in trackers)
        room = self.info.max_total_tokens - (0 if self.family.is_seq2seq else prompt_width)
        for tracker in trackers:
            tracker.cap(room)
        return max(1, min(wanted, room))

    def _generation_config(self, sampling: SamplingParams, max_new_tokens: int) -> GenerationConfig:
        """A fresh config: a checkpoint's own generation_config.json must not change decoding.

        The built-in sampling warpers stay off: ours run them, before the scores are kept.
        """
        builtin_warpers_off = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=sampling.min_new_tokens or None,
            do_sample=sampling.do_sample,
            num_beams=1,
            **(builtin_warpers_off if sampling.do_sample else {}),
            repetition_penalty=sampling.repetition_penalty,
            pad_token_id=self._pad_token_id,
            eos_token_id=sorted(self.eos_token_ids),
            bos_token_id=self.model.config.bos_token_id,
            decoder_start_token_id=self.model.config.decoder_start_token_id,
        )

    def _generate(self, trackers: list[SequenceTracker], sampling: SamplingParams) -> None:
        input_ids, attention_mask = self._padded_batch(
            [tracker.request.prompt_ids for tracker in trackers]
        )
        feed = _TrackerFeed(trackers)
        grammar = _GrammarMask(trackers, self.eos_token_ids)
        masks = [grammar] if grammar else []
        config = self._generation_config(
            sampling, self._max_new_tokens(trackers, input_ids.shape[1])
        )
        with torch.inference_mode(), _seeded(sampling.seed, self.device):
            self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=LogitsProcessorList(
                    [*masks, *_sampling_warpers(sampling), feed.keep_scores]
                ),
                stopping_criteria=StoppingCriteriaList([feed]),
            )


def causal_next_token_logprobs(model: PreTrainedModel, ids: list[int]) -> np.ndarray:
    """`Engine.next_token_logprobs` of a transformers decoder-only model: one forward pass over
    `ids`, log-softmax in float32."""
    input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        return torch.log_softmax(logits.logits[0].float(), dim=-1).cpu().numpy()
