"""The CTranslate2 and ONNX engines keep the engine contract of the transformers backend.

Parameters (greedy, sampling with seed, top-k, repetition penalty, min/max new tokens, stop
sequences), outputs (token ids, log-probs, finish reasons) and the per-step callback behave the
same whichever engine runs. Includes the CTranslate2 one-token-prompt quirk.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from app.core.engine_kinds import EngineKind
from app.core.families import get_family
from app.engines.base import (
    Engine,
    EngineRequest,
    FinishReason,
    GeneratedToken,
    SamplingParams,
    SequenceTracker,
)
from app.engines.ctranslate2_engine import (
    REPLICA_STEP_OVERHEAD_IN_SEQUENCES,
    plan_groups,
    split_by_length,
    thread_layout,
)
from app.engines.transformers_engine import TransformersEngine
from app.settings import Settings
from model_store.resolver import ensure_converted, open_engine
from model_store.sources import ModelSource, resolve_source
from tests.support.twins import FAMILY_TWINS

GREEDY = SamplingParams()
FAMILIES = ("lamini-gpt", "lamini-flan-t5")
ENGINES = (EngineKind.CTRANSLATE2, EngineKind.ONNX)


def _open(source: ModelSource, kind: EngineKind, store_dir: Path) -> Engine:
    settings = Settings(store_dir=store_dir, device="cpu", quantization="float32")
    entry = ensure_converted(source, kind, settings).entry
    return open_engine(kind, entry.path, source.family, settings)


@pytest.fixture(scope="module")
def engines(twin_cache_dir: Path, store_dir: Path) -> Callable[[str, EngineKind], Engine]:
    """`engines(family, kind)`: the family's tiny twin on `kind`, opened once per module."""
    opened: dict[tuple[str, EngineKind], Engine] = {}

    def get(family: str, kind: EngineKind) -> Engine:
        if (family, kind) not in opened:
            source = resolve_source(
                f"twin:{FAMILY_TWINS[family]}@tiny", twin_cache_dir=twin_cache_dir
            )
            opened[family, kind] = (
                TransformersEngine(source.checkpoint_dir, source.family)
                if kind is EngineKind.TRANSFORMERS
                else _open(source, kind, store_dir)
            )
        return opened[family, kind]

    return get


def _prompt(engine: Engine, instruction: str) -> list[int]:
    return engine.encode(engine.family.prompt_format.wrap(instruction))


def _run(
    engine: Engine, prompts: list[list[int]], sampling: SamplingParams = GREEDY, **request: object
) -> list:
    return engine.generate(
        [EngineRequest(prompt_ids=p, max_new_tokens=8, **request) for p in prompts], sampling
    )


def test_one_token_prompt_in_a_mixed_batch_matches_transformers(engines: Callable) -> None:
    """CTranslate2 returns forced prompt tokens as generated ones when the shortest prompt of a
    batch is one token long; the engine must hide that."""
    ct2 = engines("lamini-gpt", EngineKind.CTRANSLATE2)
    reference = engines("lamini-gpt", EngineKind.TRANSFORMERS)
    one_token = ct2.encode("Hello")
    longer = ct2.encode("The quick brown fox jumps over the lazy dog")
    assert len(one_token) == 1
    assert len(longer) > 2

    batched = [g.token_ids for g in _run(ct2, [one_token, longer, one_token])]
    singles = [_run(ct2, [p])[0].token_ids for p in (one_token, longer, one_token)]
    expected = [g.token_ids for g in _run(reference, [one_token, longer, one_token])]

    assert batched == singles == expected
    assert batched[1][: len(longer) - 1] != longer[1:]  # no echoed prompt tokens


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_logprobs_and_texts_match_transformers(
    family: str, kind: EngineKind, engines: Callable
) -> None:
    engine, reference = engines(family, kind), engines(family, EngineKind.TRANSFORMERS)
    prompts = [_prompt(engine, "Name three colours."), _prompt(engine, "Hi")]

    got, expected = _run(engine, prompts), _run(reference, prompts)

    for generation, wanted in zip(got, expected, strict=True):
        assert generation.token_ids == wanted.token_ids
        assert generation.text == wanted.text
        assert generation.finish_reason is FinishReason.LENGTH
        for token, wanted_token in zip(generation.tokens, wanted.tokens, strict=True):
            assert math.isclose(token.logprob, wanted_token.logprob, abs_tol=2e-3)
            assert token.logprob <= 0


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_each_row_of_a_batch_keeps_its_own_max_new_tokens(
    family: str, kind: EngineKind, engines: Callable
) -> None:
    engine = engines(family, kind)
    prompt = _prompt(engine, "Tell me about the moon.")
    requests = [EngineRequest(prompt, max_new_tokens=n) for n in (2, 6, 4)]

    generations = engine.generate(requests, GREEDY)

    assert [len(g.tokens) for g in generations] == [2, 6, 4]
    assert generations[0].token_ids == generations[1].token_ids[:2]
    assert all(g.finish_reason is FinishReason.LENGTH for g in generations)


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_stop_sequence_ends_only_its_row(
    family: str, kind: EngineKind, engines: Callable
) -> None:
    engine = engines(family, kind)
    prompt = _prompt(engine, "Write a story about a dragon.")
    full = _run(engine, [prompt])[0]
    stop = full.tokens[3].text.strip() or full.tokens[3].text
    assert stop, "the twin's fourth token should carry text"

    stopped, untouched = engine.generate(
        [EngineRequest(prompt, 8, stop=(stop,)), EngineRequest(prompt, 8)], GREEDY
    )

    assert stopped.finish_reason is FinishReason.STOP_SEQUENCE
    assert stopped.stop_sequence == stop
    assert stopped.text.endswith(stop)
    assert len(stopped.tokens) <= 4
    assert untouched.token_ids == full.token_ids


@pytest.mark.parametrize("kind", ENGINES)
def test_streaming_callback_gets_every_token_in_order(kind: EngineKind, engines: Callable) -> None:
    engine = engines("lamini-gpt", kind)
    prompt = _prompt(engine, "Count to five.")
    streamed: list[list[GeneratedToken]] = [[], []]

    generations = engine.generate(
        [
            EngineRequest(prompt, 5, on_token=lambda token, _last: streamed[0].append(token)),
            EngineRequest(prompt[:-2], 7, on_token=lambda token, _last: streamed[1].append(token)),
        ],
        GREEDY,
    )

    assert [g.tokens for g in generations] == streamed
    assert [len(tokens) for tokens in streamed] == [5, 7]


@pytest.mark.parametrize("kind", ENGINES)
def test_a_cancelled_row_stops_while_the_others_finish(kind: EngineKind, engines: Callable) -> None:
    engine = engines("lamini-flan-t5", kind)
    prompt = _prompt(engine, "Explain rain.")
    seen: list[GeneratedToken] = []

    cancelled, kept = engine.generate(
        [
            EngineRequest(
                prompt,
                8,
                on_token=lambda token, _last: seen.append(token),
                is_cancelled=lambda: len(seen) >= 2,
            ),
            EngineRequest(prompt, 8),
        ],
        GREEDY,
    )

    assert cancelled.finish_reason is FinishReason.CANCELLED
    assert len(cancelled.tokens) == 2
    assert kept.finish_reason is FinishReason.LENGTH
    assert len(kept.tokens) == 8


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_is_reproducible_with_a_seed(
    family: str, kind: EngineKind, engines: Callable
) -> None:
    engine = engines(family, kind)
    prompts = [_prompt(engine, "Invent a name for a cat.")] * 2
    sampling = SamplingParams(do_sample=True, temperature=1.5, top_p=0.95, top_k=50, seed=7)

    first = [g.token_ids for g in _run(engine, prompts, sampling)]
    again = [g.token_ids for g in _run(engine, prompts, sampling)]
    other_seeds = {
        tuple(_run(engine, prompts[:1], SamplingParams(do_sample=True, seed=seed))[0].token_ids)
        for seed in range(5)
    }

    assert first == again
    assert len(other_seeds) > 1


@pytest.mark.parametrize("seed", [2**32 - 1, 2**40 + 3, 2**63 - 1])
def test_any_64_bit_seed_is_honoured_by_ctranslate2(seed: int, engines: Callable) -> None:
    """TGI and OpenAI accept 64-bit seeds; CTranslate2 takes 32 bits and reads 2**32 - 1 as
    'pick a random seed', so the engine folds seeds - reproducibly."""
    engine = engines("lamini-gpt", EngineKind.CTRANSLATE2)
    prompts = [_prompt(engine, "Invent a name for a cat.")]
    sampling = SamplingParams(do_sample=True, temperature=1.5, seed=seed)

    runs = {tuple(_run(engine, prompts, sampling)[0].token_ids) for _ in range(3)}

    assert len(runs) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_top_k_one_and_repetition_penalty_follow_transformers(
    family: str, engines: Callable
) -> None:
    engine = engines(family, EngineKind.CTRANSLATE2)
    reference = engines(family, EngineKind.TRANSFORMERS)
    prompts = [_prompt(engine, "Repeat after me: la la la"), _prompt(engine, "Why?")]

    for sampling in (
        SamplingParams(do_sample=True, top_k=1, seed=3),
        SamplingParams(repetition_penalty=1.5),
    ):
        got = [g.token_ids for g in _run(engine, prompts, sampling)]
        assert got == [g.token_ids for g in _run(reference, prompts, sampling)], sampling


# --- end of sequence: a twin whose eos is planted where greedy decoding will reach it ----------


def _plant_eos(checkpoint: Path, out_dir: Path, family_name: str, prompt_text: str) -> None:
    """Copy `checkpoint` with the eos row of the output layer set just above the row of the
    token greedy decoding picks second for `prompt_text`, so eos wins at that step."""
    import torch

    engine = TransformersEngine(checkpoint, get_family(family_name))
    prompt = engine.encode(engine.family.prompt_format.wrap(prompt_text))
    second = _run(engine, [prompt])[0].token_ids[1]
    model, eos = engine.model, engine.tokenizer.eos_token_id
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[eos] = head[second] * 1.05
    model.save_pretrained(out_dir)
    engine.tokenizer.save_pretrained(out_dir)


@pytest.mark.parametrize("kind", [*ENGINES, EngineKind.TRANSFORMERS])
@pytest.mark.parametrize("family", FAMILIES)
def test_eos_finishes_a_row_unless_min_new_tokens_forbids_it(
    family: str,
    kind: EngineKind,
    tiny_twin: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
    store_dir: Path,
) -> None:
    planted = tmp_path_factory.getbasetemp() / f"eos-planted-{family}"
    if not planted.exists():
        scratch = tmp_path_factory.mktemp("planting")
        _plant_eos(tiny_twin(FAMILY_TWINS[family]), scratch / "model", family, "Say hello.")
        shutil.move(scratch / "model", planted)
    source = resolve_source(str(planted), twin_cache_dir=tmp_path_factory.getbasetemp())
    engine = (
        TransformersEngine(planted, source.family)
        if kind is EngineKind.TRANSFORMERS
        else _open(source, kind, store_dir)
    )
    prompt = _prompt(engine, "Say hello.")

    ended = _run(engine, [prompt])[0]
    held = _run(engine, [prompt], SamplingParams(min_new_tokens=4))[0]

    assert ended.finish_reason is FinishReason.EOS
    assert len(ended.tokens) == 2
    assert ended.tokens[-1].special
    assert ended.tokens[-1].id == engine.tokenizer.eos_token_id
    assert len(held.tokens) >= 4
    assert engine.tokenizer.eos_token_id not in held.token_ids[:4]


def _trackers_of_lengths(lengths: list[int], new_tokens: int = 64) -> list[SequenceTracker]:
    return [
        SequenceTracker(
            EngineRequest([5] * length, new_tokens), tokenizer=None, eos_token_ids=frozenset()
        )
        for length in lengths
    ]


def test_split_by_length_separates_far_apart_prompts_and_keeps_close_ones_together() -> None:
    close = _trackers_of_lengths([40, 41, 43, 45, 47, 50] * 4)
    far = _trackers_of_lengths([40] * 16 + [300] * 16)

    assert len(split_by_length(close)) == 1
    groups = split_by_length(far)
    assert [sorted({len(t.request.prompt_ids) for t in g}) for g in groups] == [[40], [300]]


def test_split_by_length_never_mixes_one_token_prompts_with_longer_ones() -> None:
    groups = split_by_length(_trackers_of_lengths([1, 2, 1, 3]))

    lengths = [sorted(len(t.request.prompt_ids) for t in g) for g in groups]
    assert [1, 1] in lengths
    assert all(1 not in group or set(group) == {1} for group in lengths)
    assert sorted(x for group in lengths for x in group) == [1, 1, 2, 3]


def _lengths(groups: list[list[SequenceTracker]]) -> list[list[int]]:
    return [[len(t.request.prompt_ids) for t in group] for group in groups]


def test_replicas_get_groups_of_neighbouring_lengths_costliest_first() -> None:
    lengths = [37, 393, 52, 66, 120, 48, 81, 190, 55, 70, 46, 136, 51, 93, 61, 175] * 2
    trackers = _trackers_of_lengths(lengths)
    groups = _lengths(plan_groups(trackers, replicas=2, seq2seq=False))

    assert len(groups) >= 2
    assert sorted(x for group in groups for x in group) == sorted(lengths)  # each prompt once
    # Groups are runs of the length-sorted batch: no two groups' length ranges interleave.
    ranges = sorted((min(group), max(group)) for group in groups)
    assert all(high <= next_low for (_, high), (next_low, _) in itertools.pairwise(ranges))
    # The far outliers run alone rather than force ~200 prompt steps on their neighbours.
    assert [393, 393] in groups
    costs = [(max(g) - min(g) + 64) * (len(g) + REPLICA_STEP_OVERHEAD_IN_SEQUENCES) for g in groups]
    assert costs == sorted(costs, reverse=True)


def test_every_replica_gets_a_group_even_when_the_lengths_are_equal() -> None:
    groups = _lengths(plan_groups(_trackers_of_lengths([50] * 8), replicas=2, seq2seq=False))

    assert sorted(len(g) for g in groups) == [4, 4]


def test_small_batches_keep_groups_of_four_but_use_every_replica() -> None:
    def sizes(count: int) -> list[int]:
        trackers = _trackers_of_lengths(list(range(10, 10 + count)))
        return [len(g) for g in plan_groups(trackers, replicas=2, seq2seq=True)]

    assert sizes(8) == [4, 4]
    assert sizes(16) == [4, 4, 4, 4]
    assert sizes(3) == [2, 1]
    assert sizes(1) == [1]


def test_one_token_prompts_get_their_own_group_across_replicas() -> None:
    groups = _lengths(plan_groups(_trackers_of_lengths([1, 9, 1, 7, 8, 6]), 2, seq2seq=False))

    assert [1, 1] in groups
    assert all(1 not in group for group in groups if group != [1, 1])


def test_one_replica_splits_decoder_batches_by_length_and_keeps_seq2seq_whole() -> None:
    trackers = _trackers_of_lengths([40] * 16 + [300] * 16)

    assert len(plan_groups(trackers, replicas=1, seq2seq=False)) == 2
    assert len(plan_groups(trackers, replicas=1, seq2seq=True)) == 1


def test_cpu_runs_one_single_threaded_replica_per_core() -> None:
    cores = len(os.sched_getaffinity(0))

    assert thread_layout("cpu", None, None) == (1, cores)
    assert thread_layout("cpu", 0, None) == (0, 1)  # all cores on one batch
    assert thread_layout("cpu", 2, None) == (2, max(1, cores // 2))
    assert thread_layout("cpu", None, 3) == (1, 3)
    assert thread_layout("cuda", None, None) == (1, 1)


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_shared_by_replicas_matches_transformers(
    family: str, replicas: int, engines: Callable, twin_cache_dir: Path, store_dir: Path
) -> None:
    source = resolve_source(f"twin:{FAMILY_TWINS[family]}@tiny", twin_cache_dir=twin_cache_dir)
    settings = Settings(
        store_dir=store_dir, device="cpu", quantization="float32", inter_threads=replicas
    )
    entry = ensure_converted(source, EngineKind.CTRANSLATE2, settings).entry
    ct2 = open_engine(EngineKind.CTRANSLATE2, entry.path, source.family, settings)
    assert ct2.replicas == replicas
    texts = ["Hi", "Name a colour.", "Write a haiku about the sea.", "Count to three, slowly."]
    texts += [f"Explain topic number {n} " + "in detail " * n for n in range(1, 8)]
    prompts = [_prompt(ct2, text) for text in texts]

    batched = [g.token_ids for g in _run(ct2, prompts)]
    expected = [g.token_ids for g in _run(engines(family, EngineKind.TRANSFORMERS), prompts)]

    assert batched == expected


def test_the_alpaca_preamble_runs_as_a_cached_static_prompt_with_parity(engines: Callable) -> None:
    ct2 = engines("lamini-gpt", EngineKind.CTRANSLATE2)
    reference = engines("lamini-gpt", EngineKind.TRANSFORMERS)
    preamble = ct2.static_prompt_ids
    wrapped = [_prompt(ct2, text) for text in ("Name a colour.", "Write a haiku about rain.")]
    unwrapped = ct2.encode("Plain text that does not start with the preamble")

    assert len(preamble) >= 20
    assert all(prompt[: len(preamble)] == preamble for prompt in wrapped)
    assert engines("lamini-flan-t5", EngineKind.CTRANSLATE2).static_prompt_ids == []
    for batch in (wrapped, [*wrapped, unwrapped]):  # cached prefix, and a group without it
        assert [g.token_ids for g in _run(ct2, batch)] == [
            g.token_ids for g in _run(reference, batch)
        ]
