"""From a user's prompt to a request the batcher can run: format, tokenise, check the limits.

Every caller goes through `RequestPreparer` - the HTTP routes of every API (through
`ServedModel.prepare_all`, off the event loop) and `lamini-serve generate` - so a prompt gets
the same family prompt format, the same stop sequences in the same order, and the same limit
errors wherever it comes from.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.engines.base import Engine, SamplingParams
from app.engines.grammar import GrammarCompiler, GrammarError, ResponseGrammar, TokenConstraint
from app.serving.errors import InvalidRequestError, UnsupportedParameterError

# Below this, logits divided by the temperature overflow float32 and sampling fails.
MIN_SAMPLING_TEMPERATURE = 1e-6
# The smallest normal float32: engines compute in float32, where a smaller positive top_p
# becomes 0 and is refused (CTranslate2) - it means the same as this one.
MIN_FLOAT32 = 1.1754943508222875e-38
# A repetition penalty divides (or multiplies) logits: beyond these bounds float32 logits
# overflow to inf and sampling fails, while the effect is already total within them.
REPETITION_PENALTY_BOUNDS = (1e-6, 1e6)


def sampling_for(
    samples: bool,
    *,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    repetition_penalty: float | None,
    seed: int | None,
) -> SamplingParams:
    """The engine's settings for a request: greedy ignores the sampling warpers and the seed
    (so greedy requests batch together whatever they sent), unset values are neutral."""
    return SamplingParams(
        do_sample=samples,
        temperature=(temperature or 1.0) if samples else 1.0,
        top_p=(top_p or 1.0) if samples else 1.0,
        top_k=(top_k or 0) if samples else 0,
        repetition_penalty=repetition_penalty or 1.0,
        seed=seed if samples else None,
    )


@dataclass(frozen=True)
class GenerationOptions:
    """What a caller wants, independent of the API it spoke."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()
    truncate: int | None = None
    raw_prompt: bool = False
    # vLLM's `ignore_eos`: generate exactly `max_new_tokens` (eos is never chosen).
    ignore_eos: bool = False
    grammar: ResponseGrammar | None = None


# A prompt is text, or token ids sent as they are (no prompt format, no tokenizer).
Prompt = str | Sequence[int]


@dataclass(frozen=True)
class PreparedRequest:
    """A request checked against the model and ready for the batcher."""

    prompt: str
    prompt_ids: list[int]
    max_new_tokens: int
    stop: tuple[str, ...]
    sampling: SamplingParams
    arrived_at: float
    grammar: ResponseGrammar | None = None


@dataclass(frozen=True)
class PreparationLimits:
    """The service's own limits on a request (the model's come from the engine)."""

    max_stop_sequences: int
    default_max_new_tokens: int


class RequestPreparer:
    """Formats, tokenises and checks prompts for one engine."""

    def __init__(self, engine: Engine, limits: PreparationLimits) -> None:
        self.engine = engine
        self.family = engine.family
        self.limits = limits
        self._grammars: GrammarCompiler | None = None
        self._grammars_lock = threading.Lock()

    def prepare(
        self, prompt: Prompt, options: GenerationOptions, arrived_at: float | None = None
    ) -> PreparedRequest:
        """The checked request; `arrived_at` (monotonic) starts its timeout and its metrics."""
        arrived_at = time.monotonic() if arrived_at is None else arrived_at
        self._check_options(options)
        prompt_format = self.family.prompt_format
        if isinstance(prompt, str) and options.raw_prompt:
            text, encoded = prompt, self.engine.encode(prompt)
        elif isinstance(prompt, str):
            text, encoded = prompt, self.model_input(prompt)[1]
        else:
            encoded = self.checked_ids(prompt)
            text = self.engine.tokenizer.decode(encoded, skip_special_tokens=False)
        prompt_ids = self._fit_input(encoded, options.truncate)
        max_new_tokens = self._max_new_tokens(len(prompt_ids), options.max_new_tokens)
        if options.grammar is not None:
            self.new_constraint(options.grammar)  # refuses what cannot be compiled, now
        return PreparedRequest(
            prompt=text,
            prompt_ids=prompt_ids,
            max_new_tokens=max_new_tokens,
            stop=tuple(dict.fromkeys((*options.stop, *prompt_format.stop_sequences))),
            sampling=self._engine_sampling(options, max_new_tokens),
            arrived_at=arrived_at,
            grammar=options.grammar,
        )

    def model_input(self, instruction: str) -> tuple[str, list[int]]:
        """What the model is given for `instruction`: the family-formatted text and its token
        ids (what `prepare` sends, before any limit is checked)."""
        text = self.family.prompt_format.wrap(instruction)
        return text, self.engine.encode(text)

    def new_constraint(self, grammar: ResponseGrammar) -> TokenConstraint:
        """A fresh grammar state for one sequence (each choice of a request needs its own)."""
        engine = self.engine
        if not engine.supports_constraints:
            raise UnsupportedParameterError(
                f"`response_format` needs constrained decoding, which the "
                f"{engine.info.kind.value} engine cannot do (it never exposes the logits); "
                "serve this model with `--backend transformers` (LAMINI_ENGINE=transformers)",
                "response_format",
            )
        try:
            return self._grammar_compiler().constraint(grammar)
        except GrammarError as exc:
            raise UnsupportedParameterError(
                f"`response_format`: {exc}", "response_format"
            ) from None

    def _grammar_compiler(self) -> GrammarCompiler:
        with self._grammars_lock:
            if self._grammars is None:
                engine = self.engine
                vocab_size = engine.info.vocab_size or len(engine.tokenizer)
                eos = sorted(engine.eos_token_ids)
                self._grammars = GrammarCompiler(engine.tokenizer, vocab_size, eos)
            return self._grammars

    @property
    def vocab_size(self) -> int:
        """The width of the model's logits (a tokenizer may know fewer tokens)."""
        return self.engine.info.vocab_size or len(self.engine.tokenizer)

    def checked_ids(self, ids: Sequence[int], allow_empty: bool = False) -> list[int]:
        """Token ids as sent, refused when empty or outside the vocabulary."""
        if not ids and not allow_empty:
            raise InvalidRequestError("the prompt has no tokens")
        vocab_size = self.vocab_size
        wrong = [token for token in ids if not 0 <= token < vocab_size]
        if wrong:
            raise InvalidRequestError(
                f"token id {wrong[0]} is not in this model's vocabulary (0 to {vocab_size - 1})"
            )
        return list(ids)

    def _engine_sampling(self, options: GenerationOptions, max_new_tokens: int) -> SamplingParams:
        """The request's sampling settings as the engine must get them.

        A `top_k` at least the vocabulary size keeps every token: that is top-k off, which is
        what engines are told (CTranslate2 refuses a larger k); a top_p too small for float32
        and a repetition penalty outside `REPETITION_PENALTY_BOUNDS` are brought within.
        `ignore_eos` is a minimum length of all the tokens asked for, so eos can never be
        chosen.
        """
        sampling = dataclasses.replace(
            options.sampling,
            top_p=max(options.sampling.top_p, MIN_FLOAT32),
            repetition_penalty=min(
                max(options.sampling.repetition_penalty, REPETITION_PENALTY_BOUNDS[0]),
                REPETITION_PENALTY_BOUNDS[1],
            ),
        )
        if sampling.top_k >= self.vocab_size:
            sampling = dataclasses.replace(sampling, top_k=0)
        minimum = max_new_tokens if options.ignore_eos else sampling.min_new_tokens
        if minimum > max_new_tokens:
            raise InvalidRequestError(
                f"`min_tokens` ({minimum}) must not exceed the most tokens to generate "
                f"({max_new_tokens})"
            )
        return dataclasses.replace(sampling, min_new_tokens=minimum)

    def _check_options(self, options: GenerationOptions) -> None:
        limit = self.limits.max_stop_sequences
        if len(options.stop) > limit:
            raise InvalidRequestError(
                f"`stop` has {len(options.stop)} sequences; at most {limit} are allowed"
            )
        sampling = options.sampling
        if sampling.do_sample and sampling.temperature < MIN_SAMPLING_TEMPERATURE:
            raise InvalidRequestError(
                f"`temperature` must be at least {MIN_SAMPLING_TEMPERATURE:g} when sampling; "
                "for deterministic output use greedy decoding"
            )

    def _fit_input(self, prompt_ids: list[int], truncate: int | None) -> list[int]:
        limit = self.engine.info.max_input_tokens
        if truncate is not None:
            if truncate > limit:
                raise InvalidRequestError(
                    f"`truncate` must be at most {limit} (this model's max input tokens), "
                    f"got {truncate}"
                )
            return prompt_ids[-truncate:]
        if len(prompt_ids) > limit:
            raise InvalidRequestError(
                f"the input is {len(prompt_ids)} tokens long but this model accepts at most "
                f"{limit}; shorten it or set `truncate` to keep only the last tokens"
            )
        return prompt_ids

    def _max_new_tokens(self, input_tokens: int, requested: int | None) -> int:
        """The requested count, or the default cut to what the model has room for."""
        info = self.engine.info
        used = info.max_input_tokens if self.family.is_seq2seq else input_tokens
        room = info.max_total_tokens - used
        if requested is None:
            return max(1, min(self.limits.default_max_new_tokens, room))
        if requested > room:
            raise InvalidRequestError(
                f"`max_new_tokens` must be at most {room} for this model and input "
                f"(max total tokens {info.max_total_tokens}), got {requested}"
            )
        return requested
