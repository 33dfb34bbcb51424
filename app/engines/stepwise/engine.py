"""The continuous engine: a transformers model stepped by lamini-serve, owning its KV cache.

Sequences join and leave a running batch at any step, so the scheduler
(`app.serving.scheduler`) can start a request within about one step of its arrival instead of
after a whole batch. `begin` takes newcomers as their own batch, `prefill` computes their
prompts a chunk of columns at a time (decoder-only; for T5 a few encoder layers) and, when
they are complete, stacks their cache rows under the running ones - a decoder-only prompt's
first token comes from its prefill, a T5 input's from the next step (`admit` does both in one
go); `step` decodes one token for every running row; a row whose sequence is finished or
cancelled leaves the batch (and the cache) right after the step that ended it. The KV cache
is in `slots.py` (rows join and leave it without copying the others), the padding of per-row
tensors in `rows.py`, the family specifics in `causal.py` and `seq2seq.py`, the per-row token
choice in `sampler.py`. Decoder-only prompts' states are kept after their prefill
(`prefix_cache.py`), so a prompt that starts like a recent one computes only the rest.

Design, measured: on a busy AVX512-BF16 host (full GPT-124M twin, 2 threads, bfloat16, past of
100 tokens) growing transformers' `DynamicCache` by concatenation was as fast as a
preallocated buffer written in place (decode step at batch 1 / 8 / 32: 37 / 43 / 124 ms
against 41 / 61 / 124 ms); on an idle AVX2-only host in int8 the concatenation was 27 % of a
batch-32 step and each join or filter copied the whole cache (140 / 180 ms), so the cache is
now preallocated slots (see `slots.py` for the numbers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from app.core.engine_kinds import EngineKind
from app.core.families import Family
from app.engines.base import (
    Engine,
    EngineInfo,
    EngineRequest,
    FinishReason,
    SamplingParams,
    SequenceTracker,
    limits_from_config,
    vocab_size_from_config,
)
from app.engines.constraint_mask import mask_disallowed
from app.engines.grammar import TokenConstraint
from app.engines.loading import checkpoint_load_errors, load_tokenizer
from app.engines.stepwise import row_attention
from app.engines.stepwise.causal import CausalPrefill, CausalStepper
from app.engines.stepwise.precision import resolve_precision, return_freed_memory
from app.engines.stepwise.prefix_cache import BLOCK_TOKENS, PrefixCache, PrefixHit
from app.engines.stepwise.sampler import BatchSampler, RowLogitsProcessor, RowSampling
from app.engines.stepwise.seq2seq import Seq2SeqPrefill, Seq2SeqStepper
from app.engines.stepwise.slots import CacheFormat
from app.engines.stepwise.threads import without_thread_team
from app.engines.transformers_engine import causal_next_token_logprobs


def _bytes_per_token(config: Any, family: Family, dtype: torch.dtype) -> int:
    """KV-cache bytes one token takes in one row: keys and values of every decoder layer."""
    element = torch.tensor([], dtype=dtype).element_size()
    if family.is_seq2seq:
        layers = config.num_decoder_layers
        width = config.num_heads * config.d_kv
    else:
        layers, width = config.num_hidden_layers, config.hidden_size
    return 2 * layers * width * element


class ContinuousEngine(Engine):
    """A Hugging Face checkpoint decoded step by step in int8, float32 or bfloat16."""

    supports_constraints = True

    def __init__(
        self,
        checkpoint_dir: Path,
        family: Family,
        device: str = "cpu",
        threads: int | None = None,
        precision: str | None = None,
        prefix_cache_mb: float = 0,
    ) -> None:
        self.family = family
        self.device = torch.device(device)
        self.threads = threads or torch.get_num_threads()
        chosen = resolve_precision(precision, self.device.type)
        auto_model = AutoModelForSeq2SeqLM if family.is_seq2seq else AutoModelForCausalLM
        self.tokenizer = load_tokenizer(checkpoint_dir, family)
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.tokenizer.eos_token_id
        stepper = Seq2SeqStepper if family.is_seq2seq else CausalStepper
        # the steppers' own set-up computes too (T5 stacks its decoder's projections)
        with without_thread_team(), checkpoint_load_errors(checkpoint_dir, family, "transformers"):
            model = auto_model.from_pretrained(
                str(checkpoint_dir), dtype=chosen.dtype, trust_remote_code=False
            )
            self.model = chosen.apply(model.to(self.device).eval())
            cache = CacheFormat(
                _bytes_per_token(model.config, family, chosen.stored), chosen.cache_dtype
            )
            self._stepper: CausalStepper | Seq2SeqStepper = stepper(self.model, pad, cache)
        return_freed_memory()  # what loading, int8 conversion and stacking freed
        row_attention.warm_up()
        self.compute_here()  # the synchronous API computes on the loading thread
        max_input, max_total = limits_from_config(model.config, self.tokenizer, family)
        self.info = EngineInfo(
            kind=EngineKind.CONTINUOUS,
            device=self.device.type,
            quantization=chosen.name,
            max_input_tokens=max_input,
            max_total_tokens=max_total,
            vocab_size=vocab_size_from_config(model.config),
        )
        self._vocab = int(model.get_output_embeddings().out_features)
        # encoder-decoder inputs are read both ways at once: no prefix of one is reusable
        self.prefixes = (
            PrefixCache(int(prefix_cache_mb * 2**20))
            if prefix_cache_mb > 0 and not family.is_seq2seq
            else None
        )
        self._rows: Any = None
        self._joining: _Joining | None = None
        self._trackers: list[SequenceTracker] = []
        self._sampler = BatchSampler([], ())
        self._seen = torch.zeros((0, self._vocab), dtype=torch.bool)
        self._generated = torch.zeros(0, dtype=torch.long)

    # --- what the scheduler asks -------------------------------------------------------------

    def next_token_logprobs(self, ids: list[int]) -> np.ndarray:
        """Prompt scoring (decoder-only): a forward pass of its own, sharing no cache with the
        running batch; the scheduler runs it on the engine's thread between two steps."""
        return causal_next_token_logprobs(self.model, ids)

    def compute_here(self) -> None:
        """Make the calling thread the one that computes (`threads.py` says why only one)."""
        torch.set_num_threads(self.threads)
        row_attention.use_threads(self.threads)

    @property
    def running(self) -> int:
        """Sequences in the running batch."""
        return len(self._trackers)

    @property
    def first_token_from_step(self) -> bool:
        """Whether joining rows get their first token from the next decode step (encoder-
        decoder) rather than from their prefill: they decode in the turn they join."""
        return self.family.is_seq2seq

    @property
    def prefilling(self) -> bool:
        """Whether prompts are being prefilled (a chunk at a time, see `prefill`)."""
        return self._joining is not None

    def cache_bytes(self) -> int:
        """KV-cache bytes the running batch and the prompts being prefilled hold now (padding
        included)."""
        held = 0 if self._rows is None else self._stepper.cache_bytes(self._rows)
        if self._joining is not None:
            pending = self._joining.prefill
            held += pending.size * pending.columns * self._stepper.cache_format.bytes_per_token
        return held

    def cached_prefix(self, request: EngineRequest) -> int:
        """How many of `request`'s prompt tokens its prefill would not compute (cached)."""
        return 0 if self.prefixes is None else self.prefixes.peek(request.prompt_ids)

    def peak_cache_bytes(self, requests: Sequence[EngineRequest]) -> int:
        """The most KV cache `requests` can ever hold running together in one batch."""
        return self._stepper.peak_bytes([(len(r.prompt_ids), self._room(r)) for r in requests])

    def begin(self, trackers: Sequence[SequenceTracker], sampling: Sequence[SamplingParams]) -> int:
        """Start prefilling `trackers` as one batch (nothing computed yet but what the prefix
        cache holds; one batch at a time): `prefill` advances it. Returns the prompt tokens
        found in the prefix cache."""
        if self._joining is not None:
            raise RuntimeError("a prefill is already in progress")
        for tracker in trackers:
            tracker.cap(self._room(tracker.request))
        samplings = [
            RowSampling.for_request(params, self._grammar_mask(t.request.constraint))
            for t, params in zip(trackers, sampling, strict=True)
        ]
        prompts = [t.request.prompt_ids for t in trackers]
        if self.prefixes is None:
            hits: list[PrefixHit | None] = []
            prefill = self._stepper.start(prompts)
        else:
            hits = [self.prefixes.lookup(prompt) for prompt in prompts]
            prefill = self._stepper.start(prompts, hits)
        self._joining = _Joining(list(trackers), samplings, prefill, hits)
        return sum(hit.tokens for hit in hits if hit is not None)

    def prefill(self, max_tokens: int) -> int:
        """Compute about `max_tokens` more prompt tokens of the batch being prefilled (at least
        one column of it; of encoder-decoder inputs at least one encoder layer, which counts as
        that share of their tokens); once its prompts are done,
        let them join the running batch (`_start`). Returns the tokens computed (padding
        included)."""
        joining = self._joining
        if joining is None:
            return 0
        if all(t.request.is_cancelled() for t in joining.trackers):
            self._joining = None
            _cancel(joining.trackers)
            return 0
        pending = joining.prefill
        before = pending.done
        with torch.inference_mode():
            done = self._stepper.advance(pending, max(1, max_tokens // pending.size))
            if done is not None:
                self._joining = None
                self._remember_prompts(joining)
                self._start(joining, *done)
        return (pending.done - before) * pending.size

    def admit(
        self, trackers: Sequence[SequenceTracker], sampling: Sequence[SamplingParams]
    ) -> None:
        """Prefill `trackers` in one pass and let them join the running batch."""
        self.begin(trackers, sampling)
        while self.prefilling:
            self.prefill(self._joining.prefill.remaining * self._joining.prefill.size)

    def _remember_prompts(self, joining: _Joining) -> None:
        """Keep the states of the prompts just prefilled that the cache did not already hold
        (all but a partial block), for prompts that start the same way."""
        if self.prefixes is None:
            return
        for row, tracker in enumerate(joining.trackers):
            prompt = tracker.request.prompt_ids
            cached = joining.hits[row].tokens if joining.hits[row] is not None else 0
            if len(prompt) - cached >= BLOCK_TOKENS:
                states = self._stepper.prompt_states(joining.prefill, row, len(prompt))
                self.prefixes.store(prompt, states)

    def _start(self, joining: _Joining, rows: Any, logits: torch.Tensor | None) -> None:
        """Let the prefilled rows join: with their first tokens chosen from `logits` (the
        unfinished ones), or, without logits (encoder-decoder), all of them, to get their first
        tokens from the next step."""
        trackers, samplings = joining.trackers, joining.samplings
        seen = torch.zeros((len(trackers), self._vocab), dtype=torch.bool)
        for row, tracker in enumerate(trackers):
            context = self._stepper.repetition_context(tracker.request.prompt_ids)
            seen[row, torch.tensor(context, dtype=torch.long)] = True
        generated = torch.zeros(len(trackers), dtype=torch.long)
        if logits is None:
            self._join(rows, trackers, samplings, seen, generated, list(range(len(trackers))))
            return
        sampler = BatchSampler(samplings, sorted(self.eos_token_ids))
        tokens, logprobs = sampler.choose(logits, seen, generated, self._history(trackers))
        seen[torch.arange(len(trackers)), tokens] = True
        rows.next_ids = tokens
        keep = self._push(trackers, tokens, logprobs)
        if keep:
            self._join(rows, trackers, samplings, seen, generated + 1, keep)

    def _join(
        self,
        rows: Any,
        trackers: Sequence[SequenceTracker],
        samplings: Sequence[RowSampling],
        seen: torch.Tensor,
        generated: torch.Tensor,
        keep: list[int],
    ) -> None:
        """Stack the prefilled rows `keep` under the running ones (`generated` tokens each)."""
        if len(keep) < len(trackers):
            rows, keep = self._stepper.keep(rows, keep)
        index = torch.tensor(keep, dtype=torch.long)
        self._trackers += [trackers[i] for i in keep]
        self._sampler = BatchSampler(
            [*self._sampler.rows, *(samplings[i] for i in keep)], sorted(self.eos_token_ids)
        )
        self._seen = torch.cat([self._seen, seen[index]])
        self._generated = torch.cat([self._generated, generated[index]])
        self._rows = rows if self._rows is None else self._stepper.join(self._rows, rows)

    def step(self) -> int:
        """Drop cancelled rows, then decode one token for every running row; returns how
        many rows the step computed."""
        self._drop_cancelled()
        if not self._trackers:
            return 0
        computed = len(self._trackers)
        with torch.inference_mode():
            logits = self._stepper.decode(self._rows)
            tokens, logprobs = self._sampler.choose(
                logits, self._seen, self._generated, self._history(self._trackers)
            )
            self._seen[torch.arange(computed), tokens] = True
            self._generated += 1
            self._rows.next_ids = tokens
            keep = self._push(self._trackers, tokens, logprobs)
            if len(keep) < computed:
                self._keep(keep)
        return computed

    def abort(self) -> None:
        """Cancel every running sequence and every prompt being prefilled (shutdown): each is
        answered as cancelled."""
        joining = [] if self._joining is None else self._joining.trackers
        self._joining = None
        _cancel([*self._trackers, *joining])
        self._keep([])

    # --- the synchronous Engine API (CLI, parity checks): one batch, joined all at once ------

    def _generate(self, trackers: list[SequenceTracker], sampling: SamplingParams) -> None:
        self.admit(trackers, [sampling] * len(trackers))
        while self.step():
            pass

    # --- bookkeeping -------------------------------------------------------------------------

    def _room(self, request: EngineRequest) -> int:
        """New tokens `request` may have: its own limit, within the position table."""
        if self.family.is_seq2seq:
            return request.max_new_tokens
        return max(
            1, min(request.max_new_tokens, self.info.max_total_tokens - len(request.prompt_ids))
        )

    def _grammar_mask(self, constraint: TokenConstraint | None) -> RowLogitsProcessor | None:
        """A row's response grammar as its logits processor (None: the row is free)."""
        if constraint is None:
            return None
        eos = sorted(self.eos_token_ids)
        return lambda _history, scores: mask_disallowed(scores, constraint, eos)

    @staticmethod
    def _history(trackers: Sequence[SequenceTracker]) -> Callable[[int], list[int]]:
        """Row i's generated token ids, for its logits processor."""
        return lambda row: [token.id for token in trackers[row].tokens]

    @staticmethod
    def _push(
        trackers: Sequence[SequenceTracker], tokens: torch.Tensor, logprobs: torch.Tensor
    ) -> list[int]:
        """Hand each row its token; the rows still unfinished."""
        keep = []
        pairs = zip(trackers, tokens.tolist(), logprobs.tolist(), strict=True)
        for row, (tracker, token, logprob) in enumerate(pairs):
            if not tracker.push(token, logprob):
                keep.append(row)
            elif tracker.finish_reason is FinishReason.CANCELLED:
                _report_cancelled(tracker)
        return keep

    def _drop_cancelled(self) -> None:
        cancelled = [t for t in self._trackers if t.request.is_cancelled()]
        if not cancelled:
            return
        _cancel(cancelled)
        self._keep([row for row, t in enumerate(self._trackers) if not t.done])

    def _keep(self, keep: list[int]) -> None:
        """Only the rows `keep` (ascending) stay in the batch and the cache; the stepper says
        in which order, and every per-row state follows it."""
        if not keep:
            self._rows, self._trackers = None, []
            self._sampler = BatchSampler([], ())
            self._seen = self._seen[:0]
            self._generated = self._generated[:0]
            return
        with torch.inference_mode():  # the caches are inference tensors, changed in place
            self._rows, keep = self._stepper.keep(self._rows, keep)
        index = torch.tensor(keep, dtype=torch.long)
        self._trackers = [self._trackers[i] for i in keep]
        self._sampler = BatchSampler(
            [self._sampler.rows[i] for i in keep], sorted(self.eos_token_ids)
        )
        self._seen = self._seen[index]
        self._generated = self._generated[index]


@dataclass
class _Joining:
    """Requests whose prompts are being prefilled, with their rows' sampling settings."""

    trackers: list[SequenceTracker]
    samplings: list[RowSampling]
    prefill: CausalPrefill | Seq2SeqPrefill
    hits: list[PrefixHit | None]  # per row, when the prefix cache is on


def _cancel(trackers: Sequence[SequenceTracker]) -> None:
    """Finish `trackers` as cancelled and answer each."""
    for tracker in trackers:
        tracker.finish_reason = FinishReason.CANCELLED
        _report_cancelled(tracker)


def _report_cancelled(tracker: SequenceTracker) -> None:
    """Answer a cancelled sequence (the tracker answers only the ones it finishes itself)."""
    if tracker.request.on_finish is not None:
        tracker.request.on_finish(tracker.finish())
