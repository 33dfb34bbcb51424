"""Encoder-decoder models (T5, Flan-T5, flant5-dolly) one step at a time.

Joining runs the encoder once over the new inputs and projects its states into each decoder
layer's cross-attention keys and values, which every step reuses; the rows then join the running
batch with an empty decoder cache and the start token, so their first token comes from the next
decode step beside the others. Measured (full Flan-T5-248M twin, int8, 2-core AVX2 AMD EPYC, a
37-token input joining 12 running rows): the encoder pass took 39-62 ms and the first decoder
step run apart from the batch 30-48 ms more, while one more row in a decode step cost 0-5 ms -
every turn that admits an input paid for a one-row pass through the whole decoder.
The encoder attends both ways over the whole input, so a prefill is not split by columns but by
layers: each turn runs as many of the encoder's layers as the turn's token budget holds (one
layer over the inputs counts as that share of their padded tokens, at least one layer a turn),
and the last turn projects the cross-attention keys and values, so a long input stalls the
running batch for about a budget's worth of tokens per step, as a decoder-only prompt does.
Measured (full Flan-T5-248M twin, int8, 2-core AVX2 EPYC, a 296-token input joining 12 running
rows, three rounds): at the default budget of 512 the pass runs in one turn, and the running
rows wait 414-438 ms, the input's whole time to first token; at 128, three turns of four
layers, the rows' longest wait 176-215 ms, the input's first token 446-527 ms; at 64, six
turns, 145-149 ms and 521-605 ms. A smaller budget trades the joining input's first token for
the running rows' inter-token latency.
The decoder's self-attention cache is left-padded like a decoder-only cache: T5's relative
position bias depends only on the distance between query and key, so padding in front of a row
changes nothing. The cross-attention cache and the encoder mask are right-padded to the longest
input. The encoder pass runs as `t5_encoder.py` computes it, and decode steps run the decoder
as `t5_decoder.py` does, each row's attention over its own columns of both caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from app.engines.stepwise.row_groups import DecodeSplit, RowWidths
from app.engines.stepwise.rows import fit_columns, stack_rows
from app.engines.stepwise.slots import CacheFormat, append_rows, compaction_order, keep_rows
from app.engines.stepwise.t5_decoder import T5DecoderStep
from app.engines.stepwise.t5_encoder import EncoderProgress, T5EncoderPass


@dataclass
class Seq2SeqRows:
    """The running rows: decoder and cross-attention caches, both masks, lengths, next ids."""

    self_cache: DynamicCache
    cross_cache: DynamicCache
    mask: torch.Tensor  # [rows, decoder columns], left-padded
    lengths: torch.Tensor  # [rows]: decoder tokens in the cache
    encoder_mask: torch.Tensor  # [rows, encoder columns], right-padded
    next_ids: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.lengths.shape[0])


@dataclass
class Seq2SeqPrefill:
    """Inputs being encoded a few layers at a time (see the module's docstring)."""

    ids: torch.Tensor  # [rows, columns], right-padded
    encoder_mask: torch.Tensor  # 1 over real tokens
    encoding: EncoderProgress | None = None  # from the first turn on
    done: int = 0  # input columns' worth encoded: the longest input times the layers' share run
    columns: int = 0  # cache columns held before the rows run: none

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])

    @property
    def width(self) -> int:
        """Columns of the longest input."""
        return int(self.ids.shape[1])

    @property
    def remaining(self) -> int:
        return self.width - self.done


class Seq2SeqStepper:
    """Prefill and decode steps of an encoder-decoder model; it owns no state of its own."""

    def __init__(self, model: PreTrainedModel, pad_token_id: int, cache: CacheFormat) -> None:
        self.cache_format = cache  # its bytes_per_token holds for decoder and encoder tokens alike
        self._encoder = T5EncoderPass(model)
        self._decoder = T5DecoderStep(model)
        self._pad = pad_token_id
        self._start = int(model.config.decoder_start_token_id)
        self._decoder_cache_shape = (model.config.num_heads, 0, model.config.d_kv)

    def start(self, prompts: Sequence[Sequence[int]]) -> Seq2SeqPrefill:
        width = max(len(prompt) for prompt in prompts)
        ids = torch.full((len(prompts), width), self._pad, dtype=torch.long)
        encoder_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
            encoder_mask[row, : len(prompt)] = 1
        return Seq2SeqPrefill(ids, encoder_mask)

    def advance(self, prefill: Seq2SeqPrefill, columns: int) -> tuple[Seq2SeqRows, None] | None:
        """Run the encoder's next layers, as many as `columns` of every input pay for (at
        least one); once it has run them all, the rows with their cross-attention keys and
        values. No logits: the rows' first tokens come from the step they join."""
        if prefill.encoding is None:
            prefill.encoding = self._encoder.begin(prefill.ids, prefill.encoder_mask)
        depth = self._encoder.depth
        self._encoder.advance(prefill.encoding, max(1, columns * depth // prefill.width))
        prefill.done = prefill.width * prefill.encoding.layers // depth
        if prefill.remaining:
            return None
        states = self._encoder.states(prefill.encoding)
        self_cache = self.cache_format.new_cache("left")
        cross_cache = self.cache_format.new_cache("right")
        no_token_yet = states.new_empty((prefill.size, *self._decoder_cache_shape))
        for index, (keys, values) in enumerate(self._decoder.cross_keys_values(states)):
            cross_cache.update(keys, values, index)
            self_cache.update(no_token_yet, no_token_yet, index)
        rows = Seq2SeqRows(
            self_cache=self_cache,
            cross_cache=cross_cache,
            mask=torch.ones((prefill.size, 0), dtype=torch.long),
            lengths=torch.zeros(prefill.size, dtype=torch.long),
            encoder_mask=prefill.encoder_mask,
            next_ids=torch.full((prefill.size,), self._start, dtype=torch.long),
        )
        return rows, None

    def decode(self, rows: Seq2SeqRows) -> torch.Tensor:
        rows.mask = torch.cat([rows.mask, rows.mask.new_ones((rows.size, 1))], dim=1)
        split = DecodeSplit(
            self_rows=RowWidths(tuple((rows.lengths + 1).tolist())),
            cross_rows=RowWidths(tuple(rows.encoder_mask.sum(dim=1).tolist())),
        )
        logits = self._decoder(
            rows.next_ids, rows.self_cache, rows.cross_cache, rows.mask, rows.encoder_mask, split
        )
        rows.lengths = rows.lengths + 1
        return logits

    def join(self, running: Seq2SeqRows, joining: Seq2SeqRows) -> Seq2SeqRows:
        """`joining`'s rows after `running`'s (the caches grow in place)."""
        return Seq2SeqRows(
            self_cache=append_rows(running.self_cache, joining.self_cache),
            cross_cache=append_rows(running.cross_cache, joining.cross_cache),
            mask=stack_rows(running.mask, joining.mask, 1, "left"),
            lengths=torch.cat([running.lengths, joining.lengths]),
            encoder_mask=stack_rows(running.encoder_mask, joining.encoder_mask, 1, "right"),
            next_ids=torch.cat([running.next_ids, joining.next_ids]),
        )

    def keep(self, rows: Seq2SeqRows, keep: Sequence[int]) -> tuple[Seq2SeqRows, list[int]]:
        """Only the rows `keep` (ascending), cut to the columns they use; returns them and
        which old row each new row is (`compaction_order`)."""
        order = compaction_order(rows.size, keep)
        index = torch.tensor(order, dtype=torch.long)
        lengths = rows.lengths[index]
        width = int(lengths.max())
        encoder_mask = rows.encoder_mask[index]
        encoder_width = int(encoder_mask.sum(dim=1).max())
        kept = Seq2SeqRows(
            self_cache=keep_rows(rows.self_cache, order, width),
            cross_cache=keep_rows(rows.cross_cache, order, encoder_width),
            mask=fit_columns(rows.mask[index], width, 1, "left"),
            lengths=lengths,
            encoder_mask=encoder_mask[:, :encoder_width],
            next_ids=rows.next_ids[index],
        )
        return kept, order

    def cache_bytes(self, rows: Seq2SeqRows) -> int:
        columns = rows.mask.shape[1] + rows.encoder_mask.shape[1]
        return rows.size * columns * self.cache_format.bytes_per_token

    def peak_bytes(self, horizons: Sequence[tuple[int, int]]) -> int:
        """The most cache rows with these `(input tokens, new tokens)` can ever hold: each
        row pays for the longest input (cross-attention) and the longest output (self)."""
        if not horizons:
            return 0
        longest_input = max(prompt for prompt, _ in horizons)
        longest_output = max(new for _, new in horizons) + 1
        return len(horizons) * (longest_input + longest_output) * self.cache_format.bytes_per_token

    def repetition_context(self, prompt: Sequence[int]) -> Sequence[int]:
        """What a repetition penalty starts from: the decoder's own input, the start token."""
        return [self._start]
