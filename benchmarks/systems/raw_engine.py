"""The ceiling: the runtime lamini-serve uses, called in-process on pre-tokenised batches.

CTranslate2 (`generate_batch` / `translate_batch`) for the families it converts, ONNX Runtime
through optimum for GPT-Neo (or when `--engine onnx`). Batch sizes and CTranslate2 thread
layouts are swept; for decoder-only models the shared Alpaca prefix is also measured as a
CTranslate2 `static_prompt` whose state is cached across requests.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.core.engine_kinds import EngineKind
from app.engines.loading import ort_model_class
from benchmarks.context import BenchContext
from benchmarks.offline import BatchRunner, time_batches, to_measurement
from benchmarks.options import SystemName, ThreadConfig
from benchmarks.progress import announce
from benchmarks.results import Measurement, SystemRun
from conversion.ctranslate2 import convert_to_ctranslate2
from conversion.onnx import convert_to_onnx

SYSTEM = SystemName.RAW_ENGINE


def engine_kind(context: BenchContext) -> EngineKind:
    """The engine lamini-serve would use for this model with these options."""
    if context.options.engine == "auto":
        return context.source.family.preferred_engine
    return EngineKind(context.options.engine)


def measures_static_prompt(context: BenchContext) -> bool:
    """Decoder-only prompts with a fixed preamble on CTranslate2 get the static-prompt rows."""
    family = context.source.family
    return (
        engine_kind(context) is EngineKind.CTRANSLATE2
        and not family.is_seq2seq
        and bool(family.prompt_format.static_prefix)
    )


def _tokens(context: BenchContext, tokenizer: Any) -> dict[str, list[str]]:
    """Every workload prompt as CTranslate2 token strings, encoded the way lamini-serve does."""
    add_special = not context.source.family.prompt_format.bos_text
    return {
        prompt: tokenizer.convert_ids_to_tokens(
            tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
        )
        for prompt in context.workload.prompts
    }


def _common_prefix(sequences: list[list[str]]) -> list[str]:
    prefix = sequences[0]
    for sequence in sequences[1:]:
        length = next(
            (i for i, (a, b) in enumerate(zip(prefix, sequence, strict=False)) if a != b),
            min(len(prefix), len(sequence)),
        )
        prefix = prefix[:length]
    return prefix


class _Sweep:
    """Times batch sizes for one loaded model and collects the measurements."""

    def __init__(self, context: BenchContext, run: SystemRun, quantization: str) -> None:
        self.context = context
        self.run = run
        self.quantization = quantization

    def measure(
        self,
        runner_for: Callable[[int, int], BatchRunner],
        max_new_tokens: int,
        batch_size: int,
        *,
        threads: ThreadConfig | None = None,
        static_prompt: bool = False,
    ) -> Measurement:
        # Batch 1 is the single-request latency reference: one request at a time whatever the
        # layout, in workload order (the order lamini-serve gets them in).
        parallel = threads.inter if threads and batch_size > 1 else 1
        variant = (
            f"batch={batch_size}"
            + (f" threads={threads}" if threads else "")
            + (" static-prompt" if static_prompt else "")
        )
        # An offline batch job sorts its prompts by length before batching (CTranslate2's own
        # advice: less padding, fewer forced prompt steps); the ceiling gets that advantage,
        # which an online server, taking requests as they come, cannot fully have. Unbatched,
        # sorting would only bias the time-capped sample towards the shortest prompts.
        prompts = self.context.timed(batch_size * parallel)
        timing = time_batches(
            runner_for(max_new_tokens, batch_size),
            sorted(prompts, key=len) if batch_size > 1 else prompts,
            batch_size,
            warmup_prompts=self.context.warmup(batch_size * parallel),
            time_budget_s=self.context.options.time_budget_s,
            parallel=parallel,
        )
        measurement = to_measurement(
            timing,
            system=SYSTEM,
            variant=variant,
            quantization=self.quantization,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            parallel=parallel,
            static_prompt=static_prompt,
        )
        announce(measurement)
        self.run.measurements.append(measurement)
        return measurement


def _convert(context: BenchContext, kind: EngineKind, quantization: str, run: SystemRun) -> Path:
    """Convert with lamini-serve's own converters (the same artefacts the server loads)."""
    path = context.options.work_dir / f"raw-{kind.value}-{quantization}"
    shutil.rmtree(path, ignore_errors=True)
    started = time.perf_counter()
    if kind is EngineKind.CTRANSLATE2:
        convert_to_ctranslate2(context.source.checkpoint_dir, path, quantization)
    else:
        convert_to_onnx(context.source.checkpoint_dir, path, context.source.family, quantization)
    run.cold_start_s[f"conversion_{quantization}"] = time.perf_counter() - started
    return path


def _load_ct2(path: Path, seq2seq: bool, quantization: str, threads: ThreadConfig) -> Any:
    import ctranslate2

    runtime = ctranslate2.Translator if seq2seq else ctranslate2.Generator
    return runtime(
        str(path),
        device="cpu",
        compute_type=quantization,
        intra_threads=threads.intra,
        inter_threads=threads.inter,
    )


def _ct2_runner(
    model: Any, seq2seq: bool, tokens: dict[str, list[str]], static_prompt: list[str] | None
) -> Callable[[int, int], BatchRunner]:
    def runner_for(max_new_tokens: int, batch_size: int) -> BatchRunner:
        def run_batch(prompts: list[str]) -> list[int]:
            batch = [tokens[prompt] for prompt in prompts]
            if seq2seq:
                results = model.translate_batch(
                    batch,
                    max_batch_size=batch_size,
                    beam_size=1,
                    max_decoding_length=max_new_tokens,
                    min_decoding_length=max_new_tokens,
                )
                return [len(result.hypotheses[0]) for result in results]
            extra: dict[str, Any] = {}
            if static_prompt:
                batch = [sequence[len(static_prompt) :] for sequence in batch]
                extra = {"static_prompt": static_prompt, "cache_static_prompt": True}
            results = model.generate_batch(
                batch,
                max_batch_size=batch_size,
                beam_size=1,
                max_length=max_new_tokens,
                min_length=max_new_tokens,
                include_prompt_in_result=False,
                **extra,
            )
            return [len(result.sequences_ids[0]) for result in results]

        return run_batch

    return runner_for


def _best_batch_size(measurements: list[Measurement]) -> int:
    best = max(measurements, key=lambda m: m.tokens_per_s)
    assert best.batch_size is not None
    return best.batch_size


def _run_ct2(context: BenchContext, run: SystemRun) -> None:
    from transformers import AutoTokenizer

    options = context.options
    seq2seq = context.source.family.is_seq2seq
    tokenizer = AutoTokenizer.from_pretrained(context.source.checkpoint_dir)
    tokens = _tokens(context, tokenizer)
    shared_prefix = _common_prefix(list(tokens.values())) if measures_static_prompt(context) else []
    if shared_prefix:
        run.notes.append(f"static prompt: the shared {len(shared_prefix)}-token prompt prefix")
    for quantization in options.quantizations:
        path = _convert(context, EngineKind.CTRANSLATE2, quantization, run)
        sweep = _Sweep(context, run, quantization)
        for threads in options.ct2_threads:
            started = time.perf_counter()
            model = _load_ct2(path, seq2seq, quantization, threads)
            run.cold_start_s.setdefault(f"first_load_{quantization}", time.perf_counter() - started)
            run.threads[f"ct2 {threads}"] = (
                f"intra={threads.intra or os.cpu_count()} inter={threads.inter}"
            )
            plain = _ct2_runner(model, seq2seq, tokens, None)
            for max_new_tokens in options.max_new_tokens:
                swept = [
                    sweep.measure(plain, max_new_tokens, size, threads=threads)
                    for size in options.engine_batch_sizes
                ]
                if shared_prefix:
                    cached = _ct2_runner(model, seq2seq, tokens, shared_prefix)
                    for size in sorted({1, _best_batch_size(swept)}):
                        sweep.measure(
                            cached, max_new_tokens, size, threads=threads, static_prompt=True
                        )
            del model


def _onnx_runner(
    model: Any, tokenizer: Any, context: BenchContext
) -> Callable[[int, int], BatchRunner]:
    import torch

    seq2seq = context.source.family.is_seq2seq
    add_special = not context.source.family.prompt_format.bos_text

    def runner_for(max_new_tokens: int, batch_size: int) -> BatchRunner:
        def run_batch(prompts: list[str]) -> list[int]:
            inputs = tokenizer(
                prompts, return_tensors="pt", padding=True, add_special_tokens=add_special
            )
            with torch.no_grad():
                output = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    min_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            # Seq2seq output starts with the decoder start token; causal output with the
            # (left-padded) prompt. Forced length makes every row equally long.
            generated = output.shape[1] - (1 if seq2seq else inputs["input_ids"].shape[1])
            return [int(generated)] * len(prompts)

        return run_batch

    return runner_for


def _run_onnx(context: BenchContext, run: SystemRun) -> None:
    import torch
    from transformers import AutoTokenizer

    family = context.source.family
    tokenizer = AutoTokenizer.from_pretrained(context.source.checkpoint_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right" if family.is_seq2seq else "left"
    run.threads["onnxruntime_intra_op"] = f"default (one per core: {os.cpu_count()})"
    # As in lamini-serve's ONNX engine: torch only runs the per-step glue, and its OpenMP threads
    # would spin against ONNX Runtime's pool.
    torch.set_num_threads(1)
    run.threads["torch_intra_op"] = "1 (generation glue only)"
    for quantization in context.options.quantizations:
        path = _convert(context, EngineKind.ONNX, quantization, run)
        started = time.perf_counter()
        model = ort_model_class(family).from_pretrained(path)
        run.cold_start_s[f"first_load_{quantization}"] = time.perf_counter() - started
        sweep = _Sweep(context, run, quantization)
        runner_for = _onnx_runner(model, tokenizer, context)
        for max_new_tokens in context.options.max_new_tokens:
            for size in context.options.engine_batch_sizes:
                sweep.measure(runner_for, max_new_tokens, size)
        del model


def run(context: BenchContext) -> SystemRun:
    kind = engine_kind(context)
    result = SystemRun(system=SYSTEM, notes=[f"engine: {kind.value}"])
    if kind is EngineKind.CTRANSLATE2:
        _run_ct2(context, result)
    else:
        _run_onnx(context, result)
    return result
