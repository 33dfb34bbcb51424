"""The transformers engine on tiny twins of every family: batching, limits, stop sequences,
sampling, streaming and the token ids each prompt format produces."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from app.core.engine_kinds import EngineKind
from app.core.errors import ModelSourceError
from app.core.families import family_for_hub_id, get_family
from app.engines.base import EngineRequest, FinishReason, GeneratedToken, SamplingParams
from app.engines.transformers_engine import TransformersEngine
from tests.support.twins import FAMILY_TWINS

GREEDY = SamplingParams()
PROMPTS = ("Hello world", "Write a short poem about the sea, the sky and the wind, please.")


@pytest.fixture(scope="module")
def engine_for(tiny_twin: Callable[[str], Path]) -> Callable[[str], TransformersEngine]:
    """`engine_for(family name)` -> the engine on that family's tiny twin, opened once."""
    engines: dict[str, TransformersEngine] = {}

    def open_engine(family_name: str) -> TransformersEngine:
        if family_name not in engines:
            hub_id = FAMILY_TWINS[family_name]
            engines[family_name] = TransformersEngine(tiny_twin(hub_id), get_family(family_name))
        return engines[family_name]

    return open_engine


def _prompt_ids(engine: TransformersEngine, instruction: str) -> list[int]:
    return engine.encode(engine.family.prompt_format.wrap(instruction))


@pytest.mark.parametrize("family_name", FAMILY_TWINS)
def test_batched_greedy_output_equals_one_by_one(engine_for, family_name: str) -> None:
    engine = engine_for(family_name)
    requests = [EngineRequest(_prompt_ids(engine, p), max_new_tokens=8) for p in PROMPTS]

    batched = engine.generate(requests, GREEDY)
    alone = [engine.generate([request], GREEDY)[0] for request in requests]

    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    assert batched[0].token_ids != batched[1].token_ids, "output must depend on the prompt"
    for generation in batched:
        assert len(generation.tokens) == 8
        assert generation.finish_reason is FinishReason.LENGTH
        assert all(t.logprob <= 0 and math.isfinite(t.logprob) for t in generation.tokens)


@pytest.mark.parametrize(
    ("family_name", "max_input", "max_total"),
    [
        ("lamini-flan-t5", 512, 1024),
        ("lamini-gpt", 1023, 1024),
        ("lamini-cerebras", 2047, 2048),
        ("lamini-neo", 2047, 2048),
        ("opt-iml", 2047, 2048),
    ],
)
def test_info_reports_the_model_limits(
    engine_for, family_name: str, max_input: int, max_total: int
) -> None:
    info = engine_for(family_name).info

    assert info.kind is EngineKind.TRANSFORMERS
    assert (info.device, info.quantization) == ("cpu", "float32")
    assert (info.max_input_tokens, info.max_total_tokens) == (max_input, max_total)


def test_opt_prompt_starts_with_the_bos_token_once(engine_for) -> None:
    engine = engine_for("opt-iml")

    ids = _prompt_ids(engine, "Hello world")

    assert ids[0] == 2
    assert ids.count(2) == 1
    assert engine.tokenizer.decode(ids[1:]) == "Hello world"


def test_gpt2_prompt_has_no_special_tokens(engine_for) -> None:
    engine = engine_for("lamini-gpt")

    ids = _prompt_ids(engine, "Hello world")

    assert 50256 not in ids
    assert engine.tokenizer.decode(ids) == engine.family.prompt_format.wrap("Hello world")


def test_t5_prompt_ends_with_eos(engine_for) -> None:
    assert _prompt_ids(engine_for("lamini-t5"), "Hello world") == [8774, 296, 1]


def test_a_special_token_that_is_not_eos_is_flagged_and_kept_out_of_the_text(
    engine_for,
) -> None:
    """T5's sentinel tokens are special: a tracker knows them from the ids the engine read
    once (not by asking the tokenizer per token), flags them and leaves them out of the text."""
    engine = engine_for("lamini-t5")
    sentinel = engine.tokenizer.convert_tokens_to_ids("<extra_id_0>")
    assert sentinel in engine.special_token_ids
    assert engine.tokenizer.eos_token_id in engine.special_token_ids
    word = engine.tokenizer.encode("Hello", add_special_tokens=False)[0]
    tracker = engine.track(EngineRequest([word], max_new_tokens=8))

    tracker.push(word)
    tracker.push(sentinel)

    assert [token.special for token in tracker.tokens] == [False, True]
    assert tracker.tokens[1].text == "<extra_id_0>"
    assert tracker.text == "Hello"
    assert not tracker.done


def test_each_request_keeps_its_own_length_limit(engine_for) -> None:
    engine = engine_for("lamini-gpt")
    requests = [
        EngineRequest(_prompt_ids(engine, PROMPTS[0]), max_new_tokens=3),
        EngineRequest(_prompt_ids(engine, PROMPTS[1]), max_new_tokens=7),
    ]

    short, long = engine.generate(requests, GREEDY)

    assert [len(short.tokens), len(long.tokens)] == [3, 7]
    assert short.finish_reason is long.finish_reason is FinishReason.LENGTH


@pytest.mark.parametrize("family_name", ["lamini-flan-t5", "lamini-neo"])
def test_stop_sequence_ends_the_row_and_keeps_the_stop_text(engine_for, family_name) -> None:
    engine = engine_for(family_name)
    ids = _prompt_ids(engine, PROMPTS[1])
    free = engine.generate([EngineRequest(ids, max_new_tokens=12)], GREEDY)[0]
    stop = free.text[len(free.text) // 2 :][:3]
    assert stop.strip(), f"need visible text to stop on, got {free.text!r}"

    stopped = engine.generate([EngineRequest(ids, max_new_tokens=12, stop=(stop,))], GREEDY)[0]

    assert stopped.finish_reason is FinishReason.STOP_SEQUENCE
    assert stopped.stop_sequence == stop
    assert stopped.text.endswith(stop)
    assert free.text.startswith(stopped.text)
    assert len(stopped.tokens) < len(free.tokens)


def test_streaming_callback_sees_every_token_in_order(engine_for) -> None:
    engine = engine_for("lamini-cerebras")
    seen: list[GeneratedToken] = []
    request = EngineRequest(
        _prompt_ids(engine, PROMPTS[0]),
        max_new_tokens=6,
        on_token=lambda token, _last: seen.append(token),
    )

    generation = engine.generate([request], GREEDY)[0]

    assert seen == generation.tokens
    assert "".join(token.text for token in seen) == generation.text


def test_each_token_says_whether_it_is_the_last_and_finish_comes_at_once(engine_for) -> None:
    """A short request in a batch with a long one is finished (on_finish) while the long one
    still runs, and only its final token is flagged last - streaming needs no look-ahead."""
    engine = engine_for("lamini-gpt")
    flags: list[bool] = []
    finished: list[tuple[int, int]] = []  # (tokens of the finished sequence, long's tokens then)
    long_tokens: list[GeneratedToken] = []
    prompt = _prompt_ids(engine, PROMPTS[0])
    short = EngineRequest(
        prompt,
        max_new_tokens=3,
        on_token=lambda _token, last: flags.append(last),
        on_finish=lambda generation: finished.append((len(generation.tokens), len(long_tokens))),
    )
    long = EngineRequest(
        prompt, max_new_tokens=12, on_token=lambda token, _last: long_tokens.append(token)
    )

    engine.generate([short, long], GREEDY)

    assert flags == [False, False, True]
    ((short_tokens, long_tokens_then),) = finished
    assert short_tokens == 3
    assert long_tokens_then <= 3 < len(long_tokens) == 12


def test_a_sequence_cut_by_the_context_knows_its_last_token(engine_for) -> None:
    """Near the end of the position table a batch has less room than a request asked for; the
    last token the engine can make is still flagged last."""
    engine = engine_for("lamini-gpt")
    room = 4
    filler = _prompt_ids(engine, PROMPTS[0]) * engine.info.max_total_tokens
    prompt = filler[: engine.info.max_total_tokens - room]
    flags: list[bool] = []
    request = EngineRequest(
        prompt, max_new_tokens=50, on_token=lambda _token, last: flags.append(last)
    )

    generation = engine.generate([request], GREEDY)[0]

    assert flags == [False] * (room - 1) + [True]
    assert generation.finish_reason is FinishReason.LENGTH


def test_cancelled_request_stops_early(engine_for) -> None:
    engine = engine_for("lamini-gpt")
    seen: list[GeneratedToken] = []
    request = EngineRequest(
        _prompt_ids(engine, PROMPTS[0]),
        max_new_tokens=20,
        on_token=lambda token, _last: seen.append(token),
        is_cancelled=lambda: len(seen) >= 2,
    )

    generation = engine.generate([request], GREEDY)[0]

    assert generation.finish_reason is FinishReason.CANCELLED
    assert len(generation.tokens) == 2


@pytest.mark.parametrize("family_name", ["lamini-t5", "opt-iml"])
def test_sampling_is_reproducible_with_a_seed(engine_for, family_name: str) -> None:
    engine = engine_for(family_name)
    ids = _prompt_ids(engine, PROMPTS[0])

    def sample(seed: int) -> list[int]:
        params = SamplingParams(do_sample=True, temperature=1.5, top_p=0.95, seed=seed)
        return engine.generate([EngineRequest(ids, max_new_tokens=16)], params)[0].token_ids

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_top_k_one_sampling_is_greedy_with_certain_tokens(engine_for) -> None:
    engine = engine_for("lamini-gpt")
    request = EngineRequest(_prompt_ids(engine, PROMPTS[1]), max_new_tokens=6)

    greedy = engine.generate([request], GREEDY)[0]
    top1 = engine.generate([request], SamplingParams(do_sample=True, top_k=1, seed=5))[0]

    assert top1.token_ids == greedy.token_ids
    assert all(token.logprob == 0.0 for token in top1.tokens)


def test_repetition_penalty_changes_greedy_output(engine_for) -> None:
    engine = engine_for("flant5-dolly")
    request = EngineRequest(_prompt_ids(engine, "a\nb"), max_new_tokens=8)

    plain = engine.generate([request], GREEDY)[0].token_ids
    penalised = engine.generate([request], SamplingParams(repetition_penalty=3.0))[0].token_ids

    assert plain != penalised


def test_decoder_only_generation_stops_at_the_position_table(engine_for) -> None:
    engine = engine_for("lamini-gpt")
    long_prompt = [464] * (engine.info.max_total_tokens - 4)

    generation = engine.generate([EngineRequest(long_prompt, max_new_tokens=50)], GREEDY)[0]

    assert len(generation.tokens) == 4
    assert generation.finish_reason is FinishReason.LENGTH


@pytest.fixture(scope="module")
def eager_eos_checkpoint(
    tiny_twin: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A Flan-T5 twin whose eos logit is twice the greedy first token's: it ends at once
    unless eos is suppressed."""
    source = tiny_twin(FAMILY_TWINS["lamini-flan-t5"])
    engine = TransformersEngine(source, get_family("lamini-flan-t5"))
    ids = _prompt_ids(engine, PROMPTS[0])
    first = engine.generate([EngineRequest(ids, max_new_tokens=1)], GREEDY)[0].token_ids[0]
    model = AutoModelForSeq2SeqLM.from_pretrained(source)
    with torch.no_grad():
        model.lm_head.weight[1] = model.lm_head.weight[first] * 2
    out = tmp_path_factory.mktemp("eager-eos")
    model.save_pretrained(out)
    engine.tokenizer.save_pretrained(out)
    return out


def test_eos_token_finishes_with_eos_reason(eager_eos_checkpoint: Path) -> None:
    engine = TransformersEngine(eager_eos_checkpoint, get_family("lamini-flan-t5"))

    generation = engine.generate(
        [EngineRequest(_prompt_ids(engine, PROMPTS[0]), max_new_tokens=8)], GREEDY
    )[0]

    assert generation.finish_reason is FinishReason.EOS
    assert generation.token_ids == [1]
    assert generation.tokens[0].special
    assert generation.text == ""


def test_min_new_tokens_suppresses_early_eos(eager_eos_checkpoint: Path) -> None:
    engine = TransformersEngine(eager_eos_checkpoint, get_family("lamini-flan-t5"))
    request = EngineRequest(_prompt_ids(engine, PROMPTS[0]), max_new_tokens=8)

    generation = engine.generate([request], SamplingParams(min_new_tokens=3))[0]

    assert len(generation.tokens) >= 3
    assert 1 not in generation.token_ids[:3]


def test_unloadable_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}', encoding="utf-8")
    family = family_for_hub_id("MBZUAI/LaMini-GPT-124M")
    assert family is not None

    with pytest.raises(ModelSourceError, match="cannot load the lamini-gpt checkpoint"):
        TransformersEngine(tmp_path, family)
