"""The seeds' path: `transformers.pipeline` exactly as the model cards call it.

The cards sample; here decoding is greedy with `min_new_tokens = max_new_tokens` so every system
produces the same number of tokens. `run_sequential` sends one prompt per call (the card's
loop); `run_batched` hands the pipeline lists with `batch_size` set, for each size asked.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.context import BenchContext
from benchmarks.offline import time_batches, to_measurement
from benchmarks.options import SystemName
from benchmarks.progress import announce
from benchmarks.results import SystemRun


def _load_pipeline(context: BenchContext) -> Any:
    import torch
    from transformers import pipeline

    family = context.source.family
    generator = pipeline(family.task.value, model=str(context.source.checkpoint_dir), device="cpu")
    if generator.tokenizer.pad_token_id is None:
        # GPT-2 style tokenizers have no pad token; batching needs one (left padding, eos as
        # pad), the usual fix users apply to run the card's pipeline on lists.
        generator.tokenizer.pad_token = generator.tokenizer.eos_token
        generator.tokenizer.padding_side = "left"
    torch.set_grad_enabled(False)
    return generator


def _batch_runner(generator: Any, context: BenchContext, max_new_tokens: int, batch_size: int):
    extra = {} if context.source.family.is_seq2seq else {"return_full_text": False}

    def run_batch(prompts: list[str]) -> list[int]:
        generator(
            prompts,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=generator.tokenizer.pad_token_id,
            **extra,
        )
        # min_new_tokens = max_new_tokens: generate stops at exactly max_new_tokens.
        return [max_new_tokens] * len(prompts)

    return run_batch


def _run(context: BenchContext, system: SystemName, batch_sizes: list[int]) -> SystemRun:
    import torch

    started = time.perf_counter()
    generator = _load_pipeline(context)
    run = SystemRun(
        system=system,
        threads={"torch_intra_op": torch.get_num_threads()},
        cold_start_s={"first_load": time.perf_counter() - started},
        notes=["output length forced with min_new_tokens = max_new_tokens (greedy)"],
    )
    options = context.options
    for max_new_tokens in options.max_new_tokens:
        for batch_size in batch_sizes:
            timing = time_batches(
                _batch_runner(generator, context, max_new_tokens, batch_size),
                context.timed(batch_size),
                batch_size,
                warmup_prompts=context.warmup(batch_size),
                time_budget_s=options.time_budget_s,
            )
            measurement = to_measurement(
                timing,
                system=system,
                variant=f"batch={batch_size}",
                quantization="float32",
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
            )
            announce(measurement)
            run.measurements.append(measurement)
    return run


def run_sequential(context: BenchContext) -> SystemRun:
    return _run(context, SystemName.PIPELINE, [1])


def run_batched(context: BenchContext) -> SystemRun:
    return _run(context, SystemName.PIPELINE_BATCHED, context.options.pipeline_batch_sizes)
