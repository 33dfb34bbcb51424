"""From a user's prompt to a request the batcher can run: format, tokenise, check the limits.

Every caller goes through `RequestPreparer` - the HTTP routes of every API (through
`ServedModel.prepare_all`, off the event loop) and `lamini-serve generate` - so a prompt gets
the same family prompt format, the same stop sequences in the same order, and the same limit
errors wherever it comes from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.engines.base import Engine, SamplingParams
from app.serving.errors import InvalidRequestError

# Below this, logits divided by the temperature overflow float32 and sampling fails.
MIN_SAMPLING_TEMPERATURE = 1e-6


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


@dataclass(frozen=True)
class PreparedRequest:
    """A request checked against the model and ready for the batcher."""

    prompt: str
    prompt_ids: list[int]
    max_new_tokens: int
    stop: tuple[str, ...]
    sampling: SamplingParams
    arrived_at: float


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

    def prepare(
        self, prompt: str, options: GenerationOptions, arrived_at: float | None = None
    ) -> PreparedRequest:
        """The checked request; `arrived_at` (monotonic) starts its timeout and its metrics."""
        arrived_at = time.monotonic() if arrived_at is None else arrived_at
        self._check_options(options)
        prompt_format = self.family.prompt_format
        model_input = prompt if options.raw_prompt else prompt_format.wrap(prompt)
        prompt_ids = self._fit_input(self.engine.encode(model_input), options.truncate)
        return PreparedRequest(
            prompt=prompt,
            prompt_ids=prompt_ids,
            max_new_tokens=self._max_new_tokens(len(prompt_ids), options.max_new_tokens),
            stop=tuple(dict.fromkeys((*options.stop, *prompt_format.stop_sequences))),
            sampling=options.sampling,
            arrived_at=arrived_at,
        )

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
