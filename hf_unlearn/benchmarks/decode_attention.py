"""Decode-step attention that reads, for each group of rows, only the cache columns those rows attend to.

Rows that decode together share one rectangular KV cache, as wide as the longest row (with continuous batching, the
oldest row, prompt plus everything it generated); sdpa reads all of it for every row, padding included. In a decode
step on a CPU that read is the attention's whole cost: on the 2M-parameter TOFU model, half of the cache cells a
forget10 evaluation's decode steps read were padding. Here the rows are split into a few runs of adjacent rows,
each attending to the columns from the first one any of its rows attends to: a view of the cache, no copy.
:func:`decode_groups` picks the runs (more runs skip more padding, each costs one more attention call) and
:func:`grouped_decoding` routes the model's attention through :func:`grouped_sdpa_forward` while it generates.

Values are sdpa's: the columns a group leaves out are masked for all its rows. Only sdpa with full-attention layers
takes this path; on other devices than the CPU an extra kernel launch costs more than the read it saves at these
sizes (not measured here), so grouping is left off there.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask


GROUPED_SDPA = "hf_unlearn_grouped_sdpa"

# Cache bytes a group must spare reading (per layer) to be worth one more attention call on a CPU: one call's fixed
# cost (~20 us) at the ~8 GB/s a decode step's cache read reaches there (measured: see docs/evaluation_speed.md).
GROUP_WORTH_BYTES = 160 * 1024
# Rows in one run at most: keeps the search linear in the batch size (a longer run saves one call in that many rows).
MAX_GROUP_ROWS = 64


def grouped_sdpa_forward(module, query, key, value, attention_mask, *args, decode_groups=None, **kwargs):
    """sdpa, or for a one-token step with ``decode_groups`` ``(start, stop, first_column)`` one sdpa per group over
    rows ``start:stop`` and cache columns ``first_column:``; rows in no group (finished ones) get zeros."""
    if decode_groups is None or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    output = query.new_zeros(query.shape[0], 1, query.shape[1], value.shape[-1])
    for start, stop, first in decode_groups:
        mask = attention_mask[start:stop, ..., first:] if attention_mask is not None else None
        part, _ = sdpa_attention_forward(
            module, query[start:stop], key[start:stop, :, first:], value[start:stop, :, first:], mask, *args, **kwargs
        )
        output[start:stop] = part
    return output, None


AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_forward)
AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)


def decode_groups(
    first_columns: Sequence[int], alive: Sequence[bool], width: int, column_bytes: int
) -> list[tuple[int, int, int]] | None:
    """Runs of adjacent rows ``(start, stop, first_column)`` that read the fewest cache bytes in all, counting each
    run as :data:`GROUP_WORTH_BYTES` more; finished rows may be left out. ``first_columns[i]``: the first column row
    ``i`` attends to; ``column_bytes``: one row's keys and values of one column in one layer. ``None`` when one run
    over every row from column 0 is best (plain sdpa)."""
    rows = len(first_columns)
    penalty = GROUP_WORTH_BYTES / column_bytes  # in row-columns
    best = [0.0] + [float("inf")] * rows
    choice: list[tuple[int, int] | None] = [None] * (rows + 1)
    for stop in range(1, rows + 1):
        if not alive[stop - 1]:
            best[stop], choice[stop] = best[stop - 1], None
        first = width
        for start in range(stop - 1, max(stop - 1 - MAX_GROUP_ROWS, -1), -1):
            first = min(first, first_columns[start])
            cost = best[start] + (stop - start) * (width - first) + penalty
            if cost < best[stop]:
                best[stop], choice[stop] = cost, (start, first)
    groups = []
    stop = rows
    while stop > 0:
        if choice[stop] is None:
            stop -= 1
            continue
        start, first = choice[stop]
        groups.append((start, stop, first))
        stop = start
    groups.reverse()
    return None if groups == [(0, rows, 0)] else groups


def column_bytes(cache) -> int:
    """Bytes of one row's keys and values at one column of one layer of ``cache`` (its first layer)."""
    layer = cache.layers[0]
    return sum(t.shape[1] * t.shape[-1] * t.element_size() for t in (layer.keys, layer.values))


def takes_grouped_decoding(model, device: torch.device) -> bool:
    """Whether :func:`grouped_decoding` applies: sdpa on a CPU, in a model whose attention layers go through
    transformers' attention interface and whose forward hands extra keywords down to them (``**kwargs``)."""
    config = getattr(model, "config", None)
    if device.type != "cpu" or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(type(base), "_supports_attention_backend", False):
        return False
    parameters = inspect.signature(type(model).forward).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


@contextmanager
def grouped_decoding(model) -> Iterator[None]:
    """Route ``model``'s sdpa attention through :func:`grouped_sdpa_forward` inside the block (it is sdpa unless a
    forward passes ``decode_groups``); the model's own setting is restored on exit."""
    config = model.config
    config._attn_implementation = GROUPED_SDPA
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
