"""Decode attention as one compiled loop over (row, head), each over its own columns.

A decode step attends one query per row over a cache padded to its longest row. PyTorch's
SDPA and batched matrix products run a decode step's attention as a few hundred tiny
matrix-vector products, and over strided views of the cache (`slots.py`), so their time follows
the calls, not the bytes. Measured on a 2-core AMD EPYC (12 layers, 32 rows of 60-240 columns,
4803 real columns, float32 cache views of a wider buffer): SDPA over the masked whole 29.0 ms,
per row group (`row_groups.py`) ~25 ms, this loop 13.5 ms - 26 GB/s, about what the memory
gives (33 GB/s for a copy). Inside a batch-32 int8 GPT-124M decode step the attention was 44 %
of the step before.

The loop is compiled with numba at its first use (`warm_up`, ~2 s, cached on disk after). Its
parallel loop runs on numba's OpenMP layer, which resolves to the libgomp torch's wheel loaded
(one OpenMP runtime, so one thread team per thread: `threads.py` says why that matters); numba's
own work queue instead, where no libgomp is found, made a step's attention as slow as one
thread. The query is float32; keys and values are read as the cache stores them, float32 (the
float32 engine) or bfloat16 (the int8 and bfloat16 engines), widened to float32 as they are
read: bfloat16 is the top half of a float32, so widening is a shift. Each (row, head)'s columns
are one run of the cache, widened in one vectorised pass: column by column, the widening made
the loop 2.3x slower; this way one layer's attention (32 rows, 60-240 columns, 2-core AVX2
EPYC) took 1.40 ms over bfloat16 against 1.33 ms over float32 - the loop's time follows its
columns more than its bytes. Sums are reordered (fast math), so results differ from SDPA's by
~1e-7.
"""

from __future__ import annotations

import logging
import math

import numba
import numpy as np
import torch
from numba import types
from numba.extending import overload

logger = logging.getLogger(__name__)

# torch's libgomp first (see above); tbb is not installed with us, the work queue is a fallback
numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]


def _as_float(stored: np.ndarray) -> np.ndarray:
    """A run of the cache as float32: float32 as it is, bfloat16 bits (uint16) widened into a
    new array. Compiled per dtype (`_as_float_for`)."""
    raise NotImplementedError("compiled only")


@overload(_as_float)
def _as_float_for(stored):  # numba types in, the implementation out (numba matches an
    # overload to its function by its parameters, annotations included: none here)
    if stored.dtype == types.float32:
        return lambda stored: stored

    def widen(stored):
        bits = np.empty(stored.shape[0], np.uint32)
        for i in range(stored.shape[0]):
            bits[i] = np.uint32(stored[i]) << np.uint32(16)  # bfloat16 is float32's top half
        return bits.view(np.float32)

    return widen


@numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _attend(
    query: np.ndarray,  # [rows, heads, width], C-contiguous
    keys: np.ndarray,  # flat, float32 or bfloat16 bits (uint16); element (row, head, column,
    # i) at row*sr + head*sh + column*width + i
    values: np.ndarray,  # flat, the same dtype and strides
    row_stride: int,
    head_stride: int,
    first: np.ndarray,  # [rows]: the first column each row attends to
    stop: np.ndarray,  # [rows]: one past its last
    scale: float,
    bias: np.ndarray,  # flat, added to the scores (empty: none)
    bias_row_stride: int,
    bias_head_stride: int,
    bias_column_stride: int,
    out: np.ndarray,  # [rows, heads, width]
) -> None:
    rows, heads, width = query.shape
    for item in numba.prange(rows * heads):
        row = item // heads
        head = item % heads
        begin, end = first[row], stop[row]
        # a (row, head)'s columns are one run of the cache, read (and widened) at once
        run_start = row * row_stride + head * head_stride + begin * width
        run_stop = run_start + (end - begin) * width
        own_query = query[row, head]
        row_keys = _as_float(keys[run_start:run_stop])
        # one column's vector as a slice: numba vectorises a loop over a slice, not over
        # computed indices (3x slower)
        scores = np.empty(end - begin, np.float32)
        highest = np.float32(-np.inf)
        for j in range(end - begin):
            key = row_keys[j * width : (j + 1) * width]
            total = np.float32(0.0)
            for i in range(width):
                total += own_query[i] * key[i]
            total *= scale
            if bias.size:
                column = begin + j
                total += bias[
                    row * bias_row_stride + head * bias_head_stride + column * bias_column_stride
                ]
            scores[j] = total
            highest = max(highest, total)
        weights = np.float32(0.0)
        for j in range(end - begin):
            scores[j] = np.exp(scores[j] - highest)
            weights += scores[j]
        row_values = _as_float(values[run_start:run_stop])
        attended = np.zeros(width, np.float32)
        for j in range(end - begin):
            value = row_values[j * width : (j + 1) * width]
            weight = scores[j]
            for i in range(width):
                attended[i] += weight * value[i]
        for i in range(width):
            out[row, head, i] = attended[i] / weights


STORED_DTYPES = (torch.float32, torch.bfloat16)  # what the loop reads queries, keys, values in


def fits(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether `attend_rows` computes this (the query widened to float32 first): a query in
    float32 or bfloat16 on the CPU, one query column, keys and values in float32 or bfloat16,
    alike strided, each head's columns one contiguous run (as the slot cache's views are)."""
    return (
        query.device.type == "cpu"
        and query.dtype in STORED_DTYPES
        and keys.dtype == values.dtype
        and keys.dtype in STORED_DTYPES
        and query.shape[2] == 1
        and keys.stride() == values.stride()
        and keys.stride(-1) == 1
        and keys.stride(2) == keys.shape[3]
        and min(keys.stride()) >= 0
    )


def attend_rows(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    first: np.ndarray,
    stop: np.ndarray,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each row's query ([rows, heads, 1, width]) attending over its columns [first, stop) of
    `keys` and `values` ([rows, heads, columns, width] views of the cache, float32 or
    bfloat16: read in place, widened as they are read), scores scaled (None: 1/sqrt(width))
    and `bias` added (broadcast to [rows, heads, 1, columns]; only the attended columns are
    read, so a mask in it changes nothing). Returns [rows, heads, 1, width]; only what
    `fits`."""
    rows, heads, _, width = query.shape
    out = np.empty((rows, heads, width), np.float32)
    if bias is None:
        flat_bias, bias_strides = np.empty(0, np.float32), (0, 0, 0)
    else:
        bias = bias.float().expand(rows, heads, 1, keys.shape[2])
        flat_bias = _flat(bias)
        bias_strides = (bias.stride(0), bias.stride(1), bias.stride(3))
    _attend(
        query.reshape(rows, heads, width).contiguous().numpy(),
        _flat(keys),
        _flat(values),
        *keys.stride()[:2],
        first.astype(np.int64, copy=False),
        stop.astype(np.int64, copy=False),
        np.float32(1 / math.sqrt(width) if scale is None else scale),
        flat_bias,
        *bias_strides,
        out,
    )
    return torch.from_numpy(out).unsqueeze(2)


def warm_up() -> None:
    """Compile the loop for both stored dtypes now (or load it from numba's cache), not during
    a request; on one thread, so that the calling thread (which loads the model) starts no
    OpenMP team."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        for dtype in STORED_DTYPES:
            keys = torch.zeros(1, 1, 2, 2, dtype=dtype)
            first, stop = np.zeros(1, np.int64), np.ones(1, np.int64)
            attend_rows(torch.zeros(1, 1, 1, 2), keys, keys, first, stop)
    finally:
        numba.set_num_threads(before)
    layer = numba.threading_layer()
    if layer != "omp":
        logger.warning(
            "numba runs decode attention on its %r threading layer, not OpenMP: expect it "
            "to be slower (install libgomp1)",
            layer,
        )


def use_threads(threads: int) -> None:
    """The calling thread's parallel loops run on `threads` threads (at most numba's own)."""
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


def _flat(tensor: torch.Tensor) -> np.ndarray:
    """`tensor`'s elements in storage from its first one to its last, as a flat array (no
    copy): what its strides index. bfloat16, which numpy lacks, as its bits (uint16)."""
    span = 1 + sum(
        (size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True)
    )
    flat = tensor.as_strided((span,), (1,))
    if flat.dtype == torch.bfloat16:
        return flat.view(torch.int16).numpy().view(np.uint16)
    return flat.numpy()
